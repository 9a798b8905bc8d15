//! The sinks, one file each, chosen by the scheme of a `--to` URL.

pub mod maildir;
pub mod nats;
pub mod smtp;
pub mod webhook;

use super::sink::{Sink, SinkError};

/// The URL schemes [`open`] knows, for error messages and `--help`.
pub const SCHEMES: &[&str] = &["maildir", "smtp", "lmtp", "nats", "http", "https"];

/// Opens the sink a `--to` URL names.
///
/// # Errors
/// An unknown scheme or a URL the sink cannot use.
pub fn open(url: &str) -> Result<Box<dyn Sink>, SinkError> {
    let scheme = url.split_once(':').map_or(url, |(s, _)| s);
    let rest = url.split_once(':').map_or("", |(_, r)| r);
    match scheme.to_ascii_lowercase().as_str() {
        "maildir" => Ok(Box::new(maildir::Maildir::open(rest)?)),
        "smtp" | "lmtp" => Ok(Box::new(smtp::SmtpSink::new(url)?)),
        "nats" => Ok(Box::new(nats::NatsSink::open(url)?)),
        "http" | "https" => Ok(Box::new(webhook::Webhook::open(url)?)),
        _ => Err(SinkError(format!(
            "{url:?}: unknown sink {scheme:?}; known: {}",
            SCHEMES.join(", ")
        ))),
    }
}
