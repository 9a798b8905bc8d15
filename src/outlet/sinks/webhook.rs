//! The HTTP webhook sink: `POST` each message to a URL, the way inbound-parse
//! services (SendGrid, Mailgun) hand mail to their users, so a receiver
//! written for them needs little change.
//!
//! One request per parcel: `multipart/form-data` (RFC 7578) with an
//! `envelope` part (JSON: key, queue id, node id, envelope, arrival time,
//! selected header fields) and a `message` part (`message/rfc822`, the
//! parcel's bytes exactly), plus an `Idempotency-Key: <key>` header that is
//! the same on every redelivery. README.md ("Shipping to an HTTP webhook")
//! shows a request.
//!
//! Options travel in the URL's fragment, which HTTP never sends (RFC 3986
//! §3.5), so they can never collide with the endpoint's own query:
//! `https://hooks.example/mail?token=x#permanent=400,422&timeout=10s`.
//!
//! Answers: `2xx` is [`Verdict::Accepted`]; a status in the permanent set
//! (default 400, 404, 410, 413, 415, 422) is [`Verdict::Rejected`]; anything
//! else (408, 429, other `4xx`, `5xx`, `3xx`, a timeout, a refused or lost
//! connection) is [`Verdict::Deferred`], and the parcels after a deferred
//! one are not sent (they would be sent again anyway). A `Retry-After` on
//! `429`/`503` goes into the reason as `retry after N s`, which
//! [`retry_after`] reads back for the consumer's backoff.
//!
//! The client is `ureq`: blocking (sinks run on threads of the ship
//! process, never on a shard), keep-alive pooled, rustls with the ring
//! provider. Every wait is bounded by the connect and request timeouts.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use memchr::memmem;
use serde::Serialize;

use crate::civil::DateTime;
use crate::outlet::sink::{Parcel, Sink, SinkError, Verdict};

/// Statuses that refuse a message for good unless the URL says otherwise:
/// the request itself is wrong (400, 415, 422), the endpoint is gone (404,
/// 410), or the message is too large for it (413). Sending it again cannot
/// help.
pub const DEFAULT_PERMANENT: &[u16] = &[400, 404, 410, 413, 415, 422];

/// Whole-request timeout unless `timeout=` says otherwise: connect, send,
/// answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connect timeout (TCP and TLS handshake) unless `connect-timeout=` says
/// otherwise; a peer that has not connected in 10 s is down, not slow.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Parcels per batch unless `batch=` says otherwise.
pub const DEFAULT_BATCH: usize = 64;

/// The longest `Retry-After` passed on: a peer (or a proxy) that asks for
/// days must not stall shipping for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How much of an answer's body is read: enough for an error message,
/// and the connection can be reused after a short body.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// How much of an answer's body goes into a verdict's reason.
const REASON_BODY_CHARS: usize = 200;

/// The options a webhook URL's fragment may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `permanent=400,404`: the `4xx` statuses that reject a message for
    /// good; empty (`permanent=`) defers every `4xx`.
    pub permanent: Vec<u16>,
    /// `timeout=30s`: the whole request, connect to last answer byte.
    pub timeout: Duration,
    /// `connect-timeout=10s`: TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// `batch=64`: parcels per batch.
    pub batch: usize,
    /// `ca=/path/ca.pem`: trust these PEM certificates instead of Mozilla's
    /// roots (a private CA).
    pub ca: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            permanent: DEFAULT_PERMANENT.to_vec(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            batch: DEFAULT_BATCH,
            ca: None,
        }
    }
}

impl Options {
    /// Reads the options from a URL fragment (without the `#`):
    /// `name=value` pairs joined by `&`.
    ///
    /// # Errors
    /// An unknown name or a value that does not parse; the message says
    /// what is allowed.
    ///
    /// # Example
    /// ```
    /// use ringmx::outlet::sinks::webhook::Options;
    /// use std::time::Duration;
    ///
    /// let o = Options::parse("permanent=404,410&timeout=10s").unwrap();
    /// assert_eq!(o.permanent, [404, 410]);
    /// assert_eq!(o.timeout, Duration::from_secs(10));
    /// assert!(Options::parse("permanent=503").is_err());
    /// ```
    pub fn parse(fragment: &str) -> Result<Self, String> {
        let mut o = Self::default();
        for pair in fragment.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "permanent" => {
                    o.permanent = value
                        .split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(parse_permanent)
                        .collect::<Result<_, _>>()?;
                }
                "timeout" => o.timeout = parse_timeout(name, value)?,
                "connect-timeout" => o.connect_timeout = parse_timeout(name, value)?,
                "batch" => {
                    o.batch = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=10_000).contains(n))
                        .ok_or_else(|| format!("batch={value:?}: use a count from 1 to 10000"))?;
                }
                "ca" if !value.is_empty() => o.ca = Some(value.to_owned()),
                "ca" => return Err("ca=: name a PEM file of CA certificates".to_owned()),
                _ => {
                    return Err(format!(
                        "unknown option {name:?} after '#': use permanent=, timeout=, \
                         connect-timeout=, batch= or ca="
                    ))
                }
            }
        }
        Ok(o)
    }
}

fn parse_permanent(code: &str) -> Result<u16, String> {
    let code = code.trim();
    match code.parse::<u16>() {
        Ok(408 | 429) => Err(format!(
            "permanent={code}: {code} asks to try again later; it is always deferred"
        )),
        Ok(n @ 400..=499) => Ok(n),
        _ => Err(format!(
            "permanent: {code:?} is not a 4xx status (2xx accepts, 5xx always defers)"
        )),
    }
}

fn parse_timeout(name: &str, value: &str) -> Result<Duration, String> {
    match crate::units::parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("{name}=0: a timeout must be longer than zero")),
        Err(e) => Err(format!("{name}=: {e}")),
    }
}

/// The webhook sink. One per (consumer, shard); its `ureq` agent keeps
/// connections alive between parcels.
pub struct Webhook {
    agent: ureq::Agent,
    /// The URL requests go to: the `--to` URL without its fragment.
    endpoint: String,
    /// The URL as reasons and errors show it: no user info, no query (either
    /// may hold a secret).
    shown: String,
    opts: Options,
    /// The request body, reused from parcel to parcel.
    body: Vec<u8>,
}

impl Webhook {
    /// Opens a sink for an `http://` or `https://` URL, options in its
    /// fragment (see [`Options::parse`]). Nothing is sent yet.
    ///
    /// # Errors
    /// A URL that is not `http(s)://host...`, a bad option, or a `ca=` file
    /// that cannot be read as PEM certificates.
    pub fn open(url: &str) -> Result<Self, SinkError> {
        let (endpoint, fragment) = url.split_once('#').unwrap_or((url, ""));
        let shown = redact(endpoint);
        let bad = |why: String| SinkError(format!("webhook {shown}: {why}"));
        let uri: ureq::http::Uri = endpoint
            .parse()
            .map_err(|e| bad(format!("not a URL ({e}): use http(s)://host[:port]/path")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(bad("use http(s)://host[:port]/path".to_owned()));
        }
        let opts = Options::parse(fragment).map_err(bad)?;
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(opts.timeout))
            .timeout_connect(Some(opts.connect_timeout))
            // Statuses are verdicts here, not errors.
            .http_status_as_error(false)
            // A redirected POST would have to be sent again, body and all,
            // to a place the operator did not name: report it instead.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("ringmx/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &opts.ca {
            let pem = std::fs::read(path).map_err(|e| bad(format!("ca={path}: {e}")))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                    Ok(_) => {}
                    Err(e) => return Err(bad(format!("ca={path}: {e}"))),
                }
            }
            if certs.is_empty() {
                return Err(bad(format!("ca={path}: no PEM certificate in it")));
            }
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        Ok(Self {
            agent: config.build().into(),
            endpoint: endpoint.to_owned(),
            shown,
            opts,
            body: Vec::new(),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Posts one parcel and maps the answer to a verdict.
    fn post(&mut self, p: &Parcel<'_>) -> Verdict {
        let boundary = build_body(&mut self.body, p);
        let sent = self
            .agent
            .post(&self.endpoint)
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .header("Idempotency-Key", p.key)
            .send(&self.body[..]);
        // After a huge message, give the memory back rather than hold it
        // for the rest of the run.
        if self.body.capacity() > 4 * 1024 * 1024 {
            self.body = Vec::new();
        }
        let mut answer = match sent {
            Ok(a) => a,
            Err(e) => {
                let why = describe(&e, &self.opts);
                return Verdict::Deferred(format!("POST {}: {why}", self.shown));
            }
        };
        let status = answer.status();
        let code = status.as_u16();
        if status.is_success() {
            // The status line is the acknowledgement; the body is read only
            // so that the connection can carry the next request.
            let _ = answer
                .body_mut()
                .with_config()
                .limit(MAX_ANSWER_BYTES)
                .read_to_vec();
            return Verdict::Accepted;
        }
        let retry = if matches!(code, 429 | 503) {
            answer
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now_unix()))
        } else {
            None
        };
        let location = answer
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = answer
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .lossy_utf8(true)
            .read_to_string()
            .unwrap_or_default();
        let mut reason = format!("POST {}: HTTP {code}", self.shown);
        if let Some(name) = status.canonical_reason() {
            reason.push(' ');
            reason.push_str(name);
        }
        let text = one_line(&text);
        if !text.is_empty() {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        if status.is_redirection() {
            reason.push_str(&format!(
                " (redirect to {} not followed: point the URL there)",
                location.as_deref().map_or("?".into(), redact)
            ));
        }
        if let Some(secs) = retry {
            reason.push_str(&format!("; retry after {secs} s"));
        }
        if self.opts.permanent.contains(&code) {
            Verdict::Rejected {
                reason,
                rcpts: None,
            }
        } else {
            Verdict::Deferred(reason)
        }
    }
}

impl Sink for Webhook {
    fn deliver(&mut self, batch: &[Parcel<'_>]) -> Result<Vec<Verdict>, SinkError> {
        let mut verdicts = Vec::with_capacity(batch.len());
        for p in batch {
            let v = self.post(p);
            let deferred = matches!(v, Verdict::Deferred(_));
            verdicts.push(v);
            if deferred {
                // The consumer retries from the first deferred parcel on;
                // sending the rest now would only load a struggling peer and
                // deliver them twice.
                let skipped = Verdict::Deferred("not sent: an earlier message was deferred".into());
                verdicts.resize(batch.len(), skipped);
                break;
            }
        }
        Ok(verdicts)
    }

    fn max_batch(&self) -> usize {
        self.opts.batch
    }

    fn timeout(&self) -> Duration {
        self.opts.timeout
    }
}

/// The `retry after N s` a [`Verdict::Deferred`] reason carries when the
/// peer sent `Retry-After`, for the consumer to back off at least that long.
/// At most [`MAX_RETRY_AFTER`] whatever the text says: the reason also
/// quotes the peer's answer, which could end in those words.
///
/// # Example
/// ```
/// use ringmx::outlet::sinks::webhook::retry_after;
/// use std::time::Duration;
///
/// let reason = "POST https://h/x: HTTP 429 Too Many Requests; retry after 30 s";
/// assert_eq!(retry_after(reason), Some(Duration::from_secs(30)));
/// assert_eq!(retry_after("POST https://h/x: HTTP 502 Bad Gateway"), None);
/// ```
pub fn retry_after(reason: &str) -> Option<Duration> {
    let (_, rest) = reason.rsplit_once("retry after ")?;
    let secs: u64 = rest.strip_suffix(" s")?.parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// RFC 9110 §10.2.3: `Retry-After` is delay-seconds or an HTTP-date (only
/// the IMF-fixdate form is read: `Sun, 06 Nov 1994 08:49:37 GMT`). Seconds
/// to wait, capped at [`MAX_RETRY_AFTER`]; a date in the past is 0.
fn parse_retry_after(value: &str, now_unix: i64) -> Option<u64> {
    let v = value.trim();
    let secs = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only: a failed parse is an overflow, i.e. a very long wait.
        v.parse::<u64>().unwrap_or(u64::MAX)
    } else {
        let at = parse_imf_fixdate(v)?;
        u64::try_from(at.saturating_sub(now_unix)).unwrap_or(0)
    };
    Some(secs.min(MAX_RETRY_AFTER.as_secs()))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → unix seconds.
fn parse_imf_fixdate(v: &str) -> Option<i64> {
    let mut it = v.split_ascii_whitespace();
    let _weekday = it.next().filter(|w| w.ends_with(','))?;
    let day: i64 = it.next()?.parse().ok()?;
    let month = it.next()?;
    let month = crate::civil::MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|n| n.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if it.next()? != "GMT" || it.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || !(0..24).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    if !(0..=60).contains(&s) || !(1..=9999).contains(&year) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// (year, month 1–12, day) → days since 1970-01-01: Howard Hinnant's
/// `days_from_civil`, the inverse of [`crate::civil::days_to_civil`].
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What a transport error means to an operator reading the dead-letter
/// record or the log.
fn describe(e: &ureq::Error, opts: &Options) -> String {
    use crate::units::format_duration;
    match e {
        ureq::Error::Timeout(ureq::Timeout::Connect) => format!(
            "timed out: not connected within connect-timeout={}",
            format_duration(opts.connect_timeout)
        ),
        ureq::Error::Timeout(t) => format!(
            "timed out: no answer within timeout={} ({t})",
            format_duration(opts.timeout)
        ),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the connection closed before an answer (the message may have arrived; \
             it is sent again with the same Idempotency-Key)"
                .to_owned()
        }
        other => other.to_string(),
    }
}

/// A URL without user info and query, which may hold secrets.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = rest[..end]
        .rsplit_once('@')
        .map_or(&rest[..end], |(_, h)| h);
    let path = &rest[end..];
    let path = match path.split_once('?') {
        Some((p, _)) => format!("{p}?…"),
        None => path.to_owned(),
    };
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// A peer's answer body as one short line for a reason.
fn one_line(text: &str) -> String {
    let mut out: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(REASON_BODY_CHARS)
        .collect();
    if out.chars().count() == REASON_BODY_CHARS {
        out.push('…');
    }
    out
}

/// The `envelope` part.
#[derive(Serialize)]
struct Envelope<'a> {
    key: &'a str,
    queue_id: String,
    node_id: &'a str,
    mail_from: &'a str,
    mail_params: &'a str,
    rcpts: &'a [String],
    client: Option<String>,
    helo: &'a str,
    arrival: String,
    size: usize,
    headers: Headers<'a>,
}

/// The selected header fields: the first of each name, unfolded, RFC 2047
/// words left encoded; absent fields are left out.
#[derive(Serialize)]
struct Headers<'a> {
    #[serde(rename = "From", skip_serializing_if = "Option::is_none")]
    from: Option<Cow<'a, str>>,
    #[serde(rename = "To", skip_serializing_if = "Option::is_none")]
    to: Option<Cow<'a, str>>,
    #[serde(rename = "Cc", skip_serializing_if = "Option::is_none")]
    cc: Option<Cow<'a, str>>,
    #[serde(rename = "Subject", skip_serializing_if = "Option::is_none")]
    subject: Option<Cow<'a, str>>,
    #[serde(rename = "Message-ID", skip_serializing_if = "Option::is_none")]
    message_id: Option<Cow<'a, str>>,
    #[serde(rename = "Date", skip_serializing_if = "Option::is_none")]
    date: Option<Cow<'a, str>>,
    #[serde(rename = "List-Id", skip_serializing_if = "Option::is_none")]
    list_id: Option<Cow<'a, str>>,
    #[serde(rename = "Auto-Submitted", skip_serializing_if = "Option::is_none")]
    auto_submitted: Option<Cow<'a, str>>,
}

/// RFC 3339 in UTC: `2026-11-30T08:04:59Z`.
fn rfc3339(unix: i64) -> String {
    let t = DateTime::from_unix(unix);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// The envelope JSON of a parcel.
fn envelope_json(p: &Parcel<'_>) -> Vec<u8> {
    // JSON strings are Unicode: bytes that are not UTF-8 (raw 8-bit
    // headers) become U+FFFD here; the message part keeps them exactly.
    let field = |name: &str| p.headers.get(name).map(String::from_utf8_lossy);
    let env = &p.msg.envelope;
    let e = Envelope {
        key: p.key,
        queue_id: p.msg.id.to_string(),
        node_id: &p.msg.node_id,
        mail_from: &env.mail_from,
        mail_params: &env.mail_params,
        rcpts: &env.rcpts,
        client: env.client.map(|c| c.to_string()),
        helo: &env.helo,
        arrival: rfc3339(env.arrival_unix),
        size: p.data.len(),
        headers: Headers {
            from: field("From"),
            to: field("To"),
            cc: field("Cc"),
            subject: field("Subject"),
            message_id: field("Message-ID"),
            date: field("Date"),
            list_id: field("List-Id"),
            auto_submitted: field("Auto-Submitted"),
        },
    };
    // Strings and numbers only: serializing cannot fail.
    serde_json::to_vec(&e).unwrap_or_default()
}

/// Writes the multipart body of `p` into `out` (cleared first) and returns
/// its boundary.
fn build_body(out: &mut Vec<u8>, p: &Parcel<'_>) -> String {
    let json = envelope_json(p);
    let boundary = pick_boundary(&[&json, p.data]);
    out.clear();
    out.reserve(json.len() + p.data.len() + 400);
    let b = boundary.as_bytes();
    out.extend_from_slice(b"--");
    out.extend_from_slice(b);
    out.extend_from_slice(
        b"\r\nContent-Disposition: form-data; name=\"envelope\"\r\n\
          Content-Type: application/json\r\n\r\n",
    );
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\r\n--");
    out.extend_from_slice(b);
    // A file name makes web frameworks keep the part as bytes instead of
    // decoding it as form text.
    out.extend_from_slice(
        b"\r\nContent-Disposition: form-data; name=\"message\"; filename=\"message.eml\"\r\n\
          Content-Type: message/rfc822\r\n\r\n",
    );
    out.extend_from_slice(p.data);
    out.extend_from_slice(b"\r\n--");
    out.extend_from_slice(b);
    out.extend_from_slice(b"--\r\n");
    boundary
}

/// A boundary (RFC 2046 §5.1.1) that occurs in none of the parts, derived
/// from their contents so that a redelivery sends the same bytes.
fn pick_boundary(parts: &[&[u8]]) -> String {
    // FNV-1a over the parts: cheap, and a message cannot make every
    // candidate collide without containing them all.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().take(64 * 1024) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let mut n = 0u64;
    loop {
        let boundary = format!("ringmx-{:016x}", h.wrapping_add(n));
        let needle = format!("--{boundary}");
        if !parts
            .iter()
            .any(|p| memmem::find(p, needle.as_bytes()).is_some())
        {
            return boundary;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_default_and_parse() {
        assert_eq!(Options::parse("").unwrap(), Options::default());
        let o = Options::parse("permanent=400, 422&timeout=1.5s&connect-timeout=200ms&batch=5")
            .unwrap();
        assert_eq!(o.permanent, vec![400, 422]);
        assert_eq!(o.timeout, Duration::from_millis(1500));
        assert_eq!(o.connect_timeout, Duration::from_millis(200));
        assert_eq!(o.batch, 5);
        assert!(Options::parse("permanent=").unwrap().permanent.is_empty());
        assert_eq!(
            Options::parse("ca=/x.pem").unwrap().ca.as_deref(),
            Some("/x.pem")
        );
    }

    #[test]
    fn options_refuse_what_cannot_work() {
        for bad in [
            "permanent=429",
            "permanent=408",
            "permanent=503",
            "permanent=200",
            "permanent=4o4",
            "timeout=0",
            "timeout=soon",
            "connect-timeout=",
            "batch=0",
            "batch=x",
            "ca=",
            "retries=3",
        ] {
            let e = Options::parse(bad).expect_err(bad);
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn open_checks_the_url() {
        assert!(Webhook::open("http://127.0.0.1:9/hook").is_ok());
        assert!(Webhook::open("https://hooks.example/x?token=s#timeout=5s").is_ok());
        assert!(Webhook::open("https://user:pw@hooks.example:8443/x").is_ok());
        for bad in [
            "http://",
            "ftp://host/x",
            "http:// spaced/",
            "http://h/#nope=1",
            "https://h/#ca=/nonexistent/ca.pem",
        ] {
            let Err(e) = Webhook::open(bad) else {
                panic!("{bad} opened")
            };
            assert!(e.0.starts_with("webhook "), "{bad}: {e}");
        }
        // Secrets in the URL never reach an error message.
        let Err(e) = Webhook::open("https://user:pw@h/x?token=s3cret#bogus") else {
            panic!("opened")
        };
        assert!(!e.0.contains("pw") && !e.0.contains("s3cret"), "{e}");
    }

    #[test]
    fn redact_drops_user_info_and_query() {
        assert_eq!(redact("https://u:p@h:8/a/b?t=1"), "https://h:8/a/b?…");
        assert_eq!(redact("http://h"), "http://h");
        assert_eq!(redact("http://h?x"), "http://h?…");
    }

    #[test]
    fn retry_after_seconds_dates_and_caps() {
        let now = parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(now, 784_111_777);
        assert_eq!(parse_retry_after("7", now), Some(7));
        assert_eq!(parse_retry_after(" 0 ", now), Some(0));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(60)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(0)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(3600)
        );
        for bad in ["", "-1", "soon", "Sun, 06 Nov 1994 08:49:37 PST", "1.5"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
        assert_eq!(
            retry_after("POST x: HTTP 429 Too Many Requests; retry after 7 s"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_after("POST x: HTTP 503"), None);
        assert_eq!(
            retry_after("POST x: HTTP 503: text that says retry after 99999 s"),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn days_from_civil_inverts_civil() {
        for days in [-800_000, -1, 0, 1, 10_957, 20_787, 2_932_896] {
            let (y, m, d) = crate::civil::days_to_civil(days);
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days);
        }
    }

    #[test]
    fn rfc3339_stamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(784_111_777), "1994-11-06T08:49:37Z");
    }

    #[test]
    fn boundary_avoids_the_parts() {
        assert_eq!(pick_boundary(&[b"hi"]), pick_boundary(&[b"hi"]), "stable");
        // Only the first 64 KiB are hashed, so a message can hold the very
        // boundary its start would give: the next candidate must be taken.
        let mut msg = vec![b'a'; 64 * 1024];
        let first = pick_boundary(&[&msg]);
        msg.extend_from_slice(format!("\r\n--{first}\r\n").as_bytes());
        let b = pick_boundary(&[&msg]);
        assert_ne!(b, first);
        assert!(memmem::find(&msg, format!("--{b}").as_bytes()).is_none());
    }
}
