//! The sinks, one file each, chosen by the scheme of a `--to` URL.

use super::sink::{Sink, SinkError};

pub mod smtp;
pub mod webhook;

/// The URL schemes [`open`] knows, for error messages and `--help`.
pub const SCHEMES: &[&str] = &["smtp", "lmtp", "http", "https"];

/// Opens the sink a `--to` URL names.
///
/// # Errors
/// An unknown scheme or a URL the sink cannot use.
pub fn open(url: &str) -> Result<Box<dyn Sink>, SinkError> {
    let scheme = url.split_once(':').map_or(url, |(s, _)| s);
    if smtp::SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Ok(Box::new(smtp::SmtpSink::new(url)?));
    }
    if matches!(scheme, "http" | "https") {
        return Ok(Box::new(webhook::Webhook::open(url)?));
    }
    Err(SinkError(format!(
        "{url:?}: unknown sink {scheme:?}; known: {}",
        SCHEMES.join(", ")
    )))
}
