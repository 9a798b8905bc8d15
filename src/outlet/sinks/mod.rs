//! The sinks, one file each, chosen by the scheme of a `--to` URL.

pub mod nats;

use super::sink::{Sink, SinkError};

/// The URL schemes [`open`] knows, for error messages and `--help`.
pub const SCHEMES: &[&str] = &["nats"];

/// Opens the sink a `--to` URL names.
///
/// # Errors
/// An unknown scheme or a URL the sink cannot use.
pub fn open(url: &str) -> Result<Box<dyn Sink>, SinkError> {
    let scheme = url.split_once(':').map_or(url, |(s, _)| s);
    if scheme == "nats" {
        return Ok(Box::new(nats::NatsSink::open(url)?));
    }
    Err(SinkError(format!(
        "{url:?}: unknown sink {scheme:?}; known: {}",
        SCHEMES.join(", ")
    )))
}
