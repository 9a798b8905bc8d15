//! The NATS JetStream sink: each parcel becomes one JetStream publish per
//! destination subject, acknowledged by the stream before it counts as
//! delivered. Owns the URL's parsing, the subject template, the stream and
//! object-store set-up, and the mapping of publish acks to [`Verdict`]s;
//! batching, checkpoints and retries are the consumer's.
//!
//! URL: `nats://host:port[,host:port...]/SUBJECT[?stream=NAME&...]`. SUBJECT
//! is a template of `.`-separated tokens, each literal or one placeholder:
//! `{rcpt_domain}` (one publish per distinct recipient domain, key
//! `<key>:<domain>`), `{node}` (the spool's node id, dots made `_`),
//! `{shard}` (the shard number). README.md, "Shipping to NATS JetStream",
//! is the user's documentation; keep the two in step.
//!
//! async-nats is tokio-based, so the sink owns a current-thread runtime and
//! [`Sink::deliver`] blocks on it: this runs in the `ringmx ship` process,
//! never on a shard thread. The runtime (and with it the client's reader
//! task) runs only inside `deliver`; between batches the connection may go
//! stale, and async-nats reconnects on the next use.
//!
//! A batch is published without waiting per message: every publish is sent,
//! then every ack awaited against one deadline, so a dead server costs one
//! timeout per batch, not one per parcel. A publish whose ack does not
//! arrive (timeout, reconnect, leader election) is `Deferred`; its retry
//! carries the same `Nats-Msg-Id`, so the stream's duplicate window turns a
//! publish that did land into a `duplicate: true` ack, which is `Accepted`.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, context::PublishErrorKind, object_store, stream};
use async_nats::{ConnectOptions, HeaderMap};
use tokio::runtime::Runtime;
use tokio::time::Instant;

use crate::outlet::sink::{Parcel, Sink, SinkError, Verdict};

/// The header fields copied into headers, every occurrence, in order:
/// (field name, NATS header name).
const COPIED_FIELDS: &[(&str, &str)] = &[
    ("From", "Ringmx-Hdr-From"),
    ("To", "Ringmx-Hdr-To"),
    ("Subject", "Ringmx-Hdr-Subject"),
    ("Message-ID", "Ringmx-Hdr-Message-ID"),
    ("Date", "Ringmx-Hdr-Date"),
    ("List-Id", "Ringmx-Hdr-List-Id"),
    ("Auto-Submitted", "Ringmx-Hdr-Auto-Submitted"),
];

/// Bytes of one header value at most: RFC 5322 §2.1.1's line limit, so a
/// consumer can put it back into a mail header; longer values are cut at a
/// character boundary.
const MAX_HEADER_VALUE_BYTES: usize = 998;

/// Bytes of room left between the estimated and the real size of a
/// message's headers when deciding whether it fits in `max_payload`.
const HEADER_SLACK: usize = 256;

/// JetStream's own default duplicate window (2 minutes): a retry within it
/// is acknowledged as a duplicate instead of stored twice.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The query parameters the URL takes, for error messages.
const PARAMS: &str = "stream, replicas, bucket, timeout, connect_timeout, batch";

/// One token of a subject template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// Literal text (no `.`, no wildcard, no whitespace).
    Lit(String),
    /// `{rcpt_domain}`: the recipient domain, its labels as tokens.
    Domain,
    /// `{node}`: the node id, one token.
    Node,
    /// `{shard}`: the shard number, one token.
    Shard,
}

/// A parsed subject template.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template(Vec<Token>);

impl Template {
    fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("no subject: give one after the host, e.g. nats://127.0.0.1:4222/mail.in.{rcpt_domain}".into());
        }
        let tokens = s
            .split('.')
            .map(|t| match t {
                "{rcpt_domain}" => Ok(Token::Domain),
                "{node}" => Ok(Token::Node),
                "{shard}" => Ok(Token::Shard),
                "" => Err(format!("subject {s:?} has an empty token")),
                "*" | ">" => Err(format!(
                    "subject {s:?}: wildcards cannot be published to; use {{rcpt_domain}}, {{node}} or {{shard}}"
                )),
                t if t.contains(['{', '}']) => Err(format!(
                    "subject {s:?}: {t:?} is not a placeholder; a token is literal text or exactly one of {{rcpt_domain}}, {{node}}, {{shard}}"
                )),
                t if t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                    Err(format!("subject {s:?}: no whitespace in subjects"))
                }
                t => Ok(Token::Lit(t.to_owned())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(tokens))
    }

    /// Whether each recipient domain gets a publish of its own.
    fn per_domain(&self) -> bool {
        self.0.contains(&Token::Domain)
    }

    /// The subject filter a created stream listens on: `{node}` and
    /// `{shard}` become `*`; a domain has any number of labels, so from the
    /// first `{rcpt_domain}` on, `>` covers the rest.
    fn pattern(&self) -> String {
        let mut out = Vec::new();
        for t in &self.0 {
            match t {
                Token::Lit(l) => out.push(l.as_str()),
                Token::Node | Token::Shard => out.push("*"),
                Token::Domain => {
                    out.push(">");
                    break;
                }
            }
        }
        out.join(".")
    }

    /// The subject for one destination (`domain` already made subject-safe).
    fn render(&self, node: &str, shard: u32, domain: &str) -> String {
        let mut out = String::new();
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            match t {
                Token::Lit(l) => out.push_str(l),
                Token::Domain => out.push_str(domain),
                Token::Node => out.push_str(&node_token(node)),
                Token::Shard => out.push_str(&shard.to_string()),
            }
        }
        out
    }
}

/// A node id as one subject token: its dots made `_` (node ids hold only
/// `A-Z a-z 0-9 . _ -`), `_` for none (a version 1 segment).
fn node_token(node: &str) -> String {
    if node.is_empty() {
        return "_".into();
    }
    node.replace('.', "_")
}

/// A recipient's domain as subject tokens: lowercased, the part after the
/// last `@` (`_` for a recipient without one, such as `postmaster`), a
/// trailing dot dropped, whitespace, control characters, `*` and `>` made
/// `_`, and an empty label made `_`, so every domain is a valid subject.
fn domain_tokens(rcpt: &str) -> String {
    let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
    let domain = domain.trim_end_matches('.').to_lowercase();
    if domain.is_empty() {
        return "_".into();
    }
    domain
        .split('.')
        .map(|label| {
            if label.is_empty() {
                return "_".to_owned();
            }
            label
                .chars()
                .map(|c| {
                    if c.is_whitespace() || c.is_control() || c == '*' || c == '>' {
                        '_'
                    } else {
                        c
                    }
                })
                .collect()
        })
        .collect::<Vec<String>>()
        .join(".")
}

/// What the `nats://` URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Config {
    /// `host:port` (or `user:pass@host:port`) of each seed server.
    servers: Vec<String>,
    subject: Template,
    /// The stream that must take the subjects (created if missing).
    stream: String,
    /// Replicas of a stream or bucket the sink creates.
    replicas: usize,
    /// The object store bucket for messages over the server's max payload.
    bucket: String,
    /// The wait for a batch's acks (and for each JetStream API request).
    timeout: Duration,
    /// The wait for a connection.
    connect_timeout: Duration,
    /// Parcels per batch at most.
    batch: usize,
}

impl Config {
    fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("nats://")
            .ok_or("a NATS URL starts with nats://")?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, subject) = rest
            .split_once('/')
            .ok_or("no subject: give one after the host, e.g. nats://127.0.0.1:4222/mail.in")?;
        let servers: Vec<String> = hosts.split(',').map(str::to_owned).collect();
        if servers.iter().any(|s| s.is_empty()) {
            return Err("an empty host: give host:port[,host:port...]".into());
        }
        let subject = Template::parse(&percent_decode(subject)?)?;
        let mut cfg = Self {
            servers,
            subject,
            stream: "RINGMX".into(),
            replicas: 1,
            bucket: "RINGMX".into(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            batch: 64,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v)?;
            match k {
                "stream" => cfg.stream = name_param(k, v)?,
                "bucket" => cfg.bucket = name_param(k, v)?,
                "replicas" => cfg.replicas = num_param(k, &v, 1, 5)?,
                "batch" => cfg.batch = num_param(k, &v, 1, 4096)?,
                "timeout" => cfg.timeout = secs_param(k, &v)?,
                "connect_timeout" => cfg.connect_timeout = secs_param(k, &v)?,
                _ => return Err(format!("unknown parameter {k:?}; known: {PARAMS}")),
            }
        }
        Ok(cfg)
    }
}

/// A stream or bucket name: letters, digits, `-` and `_` (what object
/// store bucket names allow, and a safe subset of stream names).
fn name_param(k: &str, v: String) -> Result<String, String> {
    if v.is_empty()
        || v.len() > 64
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("{k}={v:?}: 1 to 64 letters, digits, - and _"));
    }
    Ok(v)
}

fn num_param(k: &str, v: &str, min: usize, max: usize) -> Result<usize, String> {
    v.parse()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("{k}={v:?}: a whole number from {min} to {max}"))
}

fn secs_param(k: &str, v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{k}={v:?}: seconds, more than 0 and at most 3600 (e.g. 2.5)"))
}

/// `%XX` escapes decoded (so `%7Brcpt_domain%7D` works where a tool escapes
/// braces).
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{s:?}: a % not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?}: not UTF-8 once decoded"))
}

/// A live connection, and whether the stream was seen to exist on it.
struct Conn {
    client: async_nats::Client,
    js: jetstream::Context,
    stream_ready: bool,
    objects: Option<object_store::ObjectStore>,
}

/// The NATS JetStream sink; see the module docs.
pub struct NatsSink {
    cfg: Config,
    /// The URL without credentials, for messages.
    shown: String,
    rt: Runtime,
    conn: Option<Conn>,
    /// Acks that said `duplicate: true`: publishes an earlier try had
    /// already stored.
    duplicates: u64,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("url", &self.shown)
            .finish()
    }
}

/// One publish: a parcel to one subject.
struct Dest {
    parcel: usize,
    subject: String,
    key: String,
    /// The recipients this publish carries (all, or one domain's).
    rcpts: Vec<String>,
}

/// How a publish ended.
enum Outcome {
    Acked,
    /// Refused for good: the parcel is Rejected.
    Refused(String),
    /// Not known to be stored: the parcel is Deferred.
    Failed(String),
}

impl NatsSink {
    /// Parses the URL and sets up the runtime; connects on the first
    /// [`Sink::deliver`], so a NATS server that is down at start-up is an
    /// ordinary retry, not a failure to start.
    ///
    /// # Errors
    /// A URL this sink cannot use (the message says what to write), or no
    /// runtime (out of threads or file descriptors).
    ///
    /// # Example
    /// ```
    /// use ringmx::outlet::sinks::nats::NatsSink;
    /// use ringmx::outlet::Sink;
    /// // Nothing is contacted yet: that happens on the first batch.
    /// let sink = NatsSink::open("nats://127.0.0.1:4222/mail.in.{rcpt_domain}?stream=MAIL&batch=128")?;
    /// assert_eq!(sink.max_batch(), 128);
    /// assert!(NatsSink::open("nats://127.0.0.1:4222/mail.*").is_err());
    /// # Ok::<(), ringmx::outlet::SinkError>(())
    /// ```
    pub fn open(url: &str) -> Result<Self, SinkError> {
        let shown = hide_password(url);
        let cfg = Config::parse(url).map_err(|e| SinkError(format!("{shown}: {e}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SinkError(format!("{shown}: cannot start a tokio runtime: {e}")))?;
        Ok(Self {
            cfg,
            shown,
            rt,
            conn: None,
            duplicates: 0,
        })
    }

    /// How many publishes the stream acknowledged as duplicates so far
    /// (stored by an earlier try, within the duplicate window): retries
    /// that cost nothing, for logs and tests.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Connects (trying each seed server) within `connect_timeout`.
    async fn connect(cfg: &Config, shown: &str) -> Result<Conn, SinkError> {
        let servers: Vec<String> = cfg.servers.iter().map(|s| format!("nats://{s}")).collect();
        let opts = ConnectOptions::new()
            .name("ringmx ship")
            .connection_timeout(cfg.connect_timeout)
            .request_timeout(Some(cfg.timeout))
            .event_callback(|event| async move {
                log::info!("nats sink: {event}");
            });
        let client = tokio::time::timeout(
            cfg.connect_timeout,
            async_nats::connect_with_options(servers, opts),
        )
        .await
        .map_err(|_| {
            SinkError(format!(
                "{shown}: no connection within {:?}",
                cfg.connect_timeout
            ))
        })?
        .map_err(|e| SinkError(format!("{shown}: cannot connect: {e}")))?;
        // Acks in flight are bounded by the batch (at most 4,096 parcels
        // times their domains), not by the client: its default of 5,000
        // would make a large batch wait for permits that only awaiting
        // its own acks frees.
        let js = jetstream::ContextBuilder::new()
            .timeout(cfg.timeout)
            .max_ack_inflight(1 << 22)
            .build(client.clone());
        Ok(Conn {
            client,
            js,
            stream_ready: false,
            objects: None,
        })
    }

    /// Connects if not connected, waits out a reconnect, and makes sure the
    /// stream exists.
    async fn ready<'c>(
        cfg: &Config,
        shown: &str,
        conn: &'c mut Option<Conn>,
    ) -> Result<&'c mut Conn, SinkError> {
        let c = match conn {
            Some(c) => c,
            None => conn.insert(Self::connect(cfg, shown).await?),
        };
        // Publishing into a lost connection only queues copies in the
        // client until it is back (and a retry would queue more): wait for
        // the reconnect instead, as long as for a connection.
        let until = Instant::now() + cfg.connect_timeout;
        while c.client.connection_state() != State::Connected {
            if Instant::now() >= until {
                return Err(SinkError(format!(
                    "{shown}: disconnected, not reconnected within {:?}",
                    cfg.connect_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !c.stream_ready {
            ensure_stream(cfg, shown, &c.js).await?;
            c.stream_ready = true;
        }
        Ok(c)
    }

    async fn deliver_async(
        cfg: &Config,
        shown: &str,
        conn: &mut Option<Conn>,
        duplicates: &mut u64,
        batch: &[Parcel<'_>],
    ) -> Result<Vec<Verdict>, SinkError> {
        let c = Self::ready(cfg, shown, conn).await?;
        let dests = destinations(cfg, batch);
        let max_payload = c.client.max_payload();

        // Send every publish first; an ack is awaited only after. Sending
        // has one deadline too, moved on by the time object store puts take
        // (they have their own).
        let mut send_deadline = Instant::now() + cfg.timeout;
        let mut pending = Vec::with_capacity(dests.len());
        // The parcel whose data the object store holds now (its publishes
        // per domain are next to each other and share the object).
        let mut stored: Option<usize> = None;
        for d in &dests {
            let p = &batch[d.parcel];
            let mut headers = parcel_headers(p, d);
            let mut payload = p.data;
            // HEADER_SLACK: should the estimate fall short, the message
            // still goes to the object store instead of being refused.
            if headers.wire_len + p.data.len() + HEADER_SLACK > max_payload {
                if headers.wire_len + HEADER_SLACK > max_payload {
                    pending.push(Err(Outcome::Refused(format!(
                        "its headers alone ({} bytes, {} recipients) exceed the server's max payload of {max_payload} bytes",
                        headers.wire_len,
                        d.rcpts.len()
                    ))));
                    continue;
                }
                // Too big for one message: the data goes to the object store,
                // under the parcel's key, and the message names it.
                let put = if stored == Some(d.parcel) {
                    Ok(())
                } else {
                    let t = Instant::now();
                    let r = store_object(cfg, c, p, t + cfg.timeout).await;
                    send_deadline += t.elapsed();
                    r
                };
                match put {
                    Ok(()) => {
                        stored = Some(d.parcel);
                        headers.push("Ringmx-Object", format!("{}/{}", cfg.bucket, p.key));
                        payload = &[];
                    }
                    Err(e) => {
                        pending.push(Err(Outcome::Failed(e)));
                        continue;
                    }
                }
            }
            let msg = jetstream::message::PublishMessage::build()
                .payload(bytes::Bytes::copy_from_slice(payload))
                .headers(headers.map)
                .message_id(&d.key);
            let sent =
                tokio::time::timeout_at(send_deadline, c.js.send_publish(d.subject.clone(), msg))
                    .await;
            pending.push(match sent {
                Ok(Ok(ack)) => Ok(ack),
                Ok(Err(e)) => Err(publish_outcome(&e, &d.subject)),
                Err(_) => Err(Outcome::Failed(format!(
                    "publish not sent within {:?}",
                    cfg.timeout
                ))),
            });
        }

        // Then every ack, against one deadline counted from the last send
        // (object store puts before it have their own): a timed-out wait
        // still takes an ack that has already arrived (the inner future is
        // polled first).
        let deadline = Instant::now() + cfg.timeout;
        let mut outcomes = Vec::with_capacity(pending.len());
        for (p, d) in pending.into_iter().zip(&dests) {
            outcomes.push(match p {
                Err(o) => o,
                Ok(ack) => match tokio::time::timeout_at(deadline, ack.into_future()).await {
                    Ok(Ok(ack)) => {
                        *duplicates += u64::from(ack.duplicate);
                        Outcome::Acked
                    }
                    Ok(Err(e)) => publish_outcome(&e, &d.subject),
                    Err(_) => Outcome::Failed(format!("no publish ack within {:?}", cfg.timeout)),
                },
            });
        }

        let mut stream_missing = false;
        let verdicts = verdicts(batch.len(), &dests, outcomes, &mut stream_missing);
        if stream_missing {
            // Deleted under us, or never covered the subject: check again
            // (and create it if gone) before the next batch.
            c.stream_ready = false;
        }
        if let Some(Verdict::Deferred(first)) = verdicts.first() {
            if verdicts.iter().all(|v| matches!(v, Verdict::Deferred(_))) {
                // No responders is also what a cluster answers for a moment
                // while it moves a stream's leader: a hint, not a verdict.
                let hint = if stream_missing {
                    format!(
                        " (if this persists, stream {:?} does not take these subjects: it must listen on {:?}, or name another with ?stream=)",
                        cfg.stream,
                        cfg.subject.pattern()
                    )
                } else {
                    String::new()
                };
                return Err(SinkError(format!(
                    "{shown}: none of {} parcels acknowledged: {first}{hint}",
                    batch.len()
                )));
            }
        }
        Ok(verdicts)
    }
}

/// Every publish a batch needs, in parcel order.
fn destinations(cfg: &Config, batch: &[Parcel<'_>]) -> Vec<Dest> {
    let mut dests = Vec::with_capacity(batch.len());
    for (i, p) in batch.iter().enumerate() {
        let env = &p.msg.envelope;
        let shard = p.msg.id.shard();
        if cfg.subject.per_domain() {
            // Domains in the order their first recipient came.
            let mut order: Vec<(String, Vec<String>)> = Vec::new();
            let mut at: HashMap<String, usize> = HashMap::new();
            for r in &env.rcpts {
                let d = domain_tokens(r);
                let n = *at.entry(d.clone()).or_insert_with(|| {
                    order.push((d, Vec::new()));
                    order.len() - 1
                });
                order[n].1.push(r.clone());
            }
            for (domain, rcpts) in order {
                dests.push(Dest {
                    parcel: i,
                    subject: cfg.subject.render(&p.msg.node_id, shard, &domain),
                    key: format!("{}:{domain}", p.key),
                    rcpts,
                });
            }
        } else {
            dests.push(Dest {
                parcel: i,
                subject: cfg.subject.render(&p.msg.node_id, shard, "_"),
                key: p.key.to_owned(),
                rcpts: env.rcpts.clone(),
            });
        }
    }
    dests
}

/// One verdict per parcel from the outcomes of its publishes: Accepted when
/// all were acked, Rejected when one was refused for good (naming that
/// publish's recipients when others went through), else Deferred.
fn verdicts(
    parcels: usize,
    dests: &[Dest],
    outcomes: Vec<Outcome>,
    stream_missing: &mut bool,
) -> Vec<Verdict> {
    let mut out = vec![Verdict::Accepted; parcels];
    let mut refused: Vec<Vec<String>> = vec![Vec::new(); parcels];
    let mut acked = vec![0usize; parcels];
    let mut total = vec![0usize; parcels];
    for (d, o) in dests.iter().zip(outcomes) {
        total[d.parcel] += 1;
        match o {
            Outcome::Acked => acked[d.parcel] += 1,
            Outcome::Refused(reason) => {
                refused[d.parcel].extend(d.rcpts.iter().cloned());
                if !matches!(out[d.parcel], Verdict::Deferred(_)) {
                    out[d.parcel] = Verdict::Rejected {
                        reason: format!("{}: {reason}", d.subject),
                        rcpts: None,
                    };
                }
            }
            Outcome::Failed(reason) => {
                if reason.starts_with(STREAM_NOT_FOUND) {
                    *stream_missing = true;
                }
                // A temporary failure wins: the retry re-publishes, and
                // the refused part is refused again then.
                out[d.parcel] = Verdict::Deferred(format!("{}: {reason}", d.subject));
            }
        }
    }
    for (i, v) in out.iter_mut().enumerate() {
        if let Verdict::Rejected { rcpts, .. } = v {
            if acked[i] > 0 && acked[i] < total[i] {
                *rcpts = Some(std::mem::take(&mut refused[i]));
            }
        }
    }
    out
}

/// The start of the reason for a publish no stream took.
const STREAM_NOT_FOUND: &str = "no stream takes the subject";

/// A failed publish or ack, sorted into permanent and temporary.
fn publish_outcome(e: &jetstream::context::PublishError, subject: &str) -> Outcome {
    match e.kind() {
        PublishErrorKind::StreamNotFound => {
            Outcome::Failed(format!("{STREAM_NOT_FOUND} {subject}"))
        }
        PublishErrorKind::MaxPayloadExceeded => Outcome::Refused(e.to_string()),
        PublishErrorKind::Other => {
            // The stream answered with an API error: a message over its own
            // max_msg_size stays over it; anything else (storage full, no
            // quorum) may pass later.
            let api =
                std::error::Error::source(e).and_then(|s| s.downcast_ref::<jetstream::Error>());
            match api {
                Some(a)
                    if a.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM =>
                {
                    Outcome::Refused(a.to_string())
                }
                Some(a) => Outcome::Failed(a.to_string()),
                None => Outcome::Failed(e.to_string()),
            }
        }
        _ => Outcome::Failed(e.to_string()),
    }
}

/// Headers of one publish, and their size on the wire (`NATS/1.0` line,
/// `Name: value` lines, the blank line), to compare with max payload.
struct Headers {
    map: HeaderMap,
    wire_len: usize,
}

impl Headers {
    fn new() -> Self {
        Self {
            map: HeaderMap::new(),
            // "NATS/1.0\r\n" ... "\r\n", and the Nats-Msg-Id line added later
            // (its value is at most the key plus a domain).
            wire_len: 12,
        }
    }

    fn push(&mut self, name: &'static str, value: String) {
        self.wire_len += name.len() + 2 + value.len() + 2;
        self.map.append(name, value);
    }
}

/// Cleans a value for a NATS header: CR and LF dropped (a header line
/// cannot hold them), invalid UTF-8 made U+FFFD, cut to
/// [`MAX_HEADER_VALUE_BYTES`] at a character boundary.
fn header_value(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(raw.len().min(MAX_HEADER_VALUE_BYTES));
    for c in text.chars().filter(|&c| c != '\r' && c != '\n') {
        if out.len() + c.len_utf8() > MAX_HEADER_VALUE_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

/// The headers of one publish (README.md, "Shipping to NATS JetStream",
/// lists them).
fn parcel_headers(p: &Parcel<'_>, d: &Dest) -> Headers {
    let env = &p.msg.envelope;
    let mut h = Headers::new();
    h.wire_len += "Nats-Msg-Id: \r\n".len() + d.key.len();
    h.push("Ringmx-Queue-Id", p.msg.id.to_string());
    h.push("Ringmx-Node", header_value(p.msg.node_id.as_bytes()));
    let from = if env.mail_from.is_empty() {
        "<>".to_owned()
    } else {
        header_value(env.mail_from.as_bytes())
    };
    h.push("Ringmx-Mail-From", from);
    for r in &d.rcpts {
        h.push("Ringmx-Rcpt-To", header_value(r.as_bytes()));
    }
    if let Some(addr) = env.client {
        h.push("Ringmx-Client", addr.to_string());
    }
    h.push("Ringmx-Arrival", env.arrival_unix.to_string());
    for &(field, header) in COPIED_FIELDS {
        for v in p.headers.get_all(field) {
            h.push(header, header_value(v));
        }
    }
    h
}

/// Puts a parcel's data into the object store under its key (creating the
/// bucket once per connection). Awaits every chunk's ack: durable when it
/// returns.
async fn store_object(
    cfg: &Config,
    c: &mut Conn,
    p: &Parcel<'_>,
    deadline: Instant,
) -> Result<(), String> {
    let work = async {
        let store = match c.objects.take() {
            Some(s) => s,
            None => match c.js.get_object_store(&cfg.bucket).await {
                Ok(s) => s,
                Err(_) => {
                    c.js.create_object_store(object_store::Config {
                        bucket: cfg.bucket.clone(),
                        storage: stream::StorageType::File,
                        num_replicas: cfg.replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("object store bucket {:?}: {e}", cfg.bucket))?
                }
            },
        };
        let store = c.objects.insert(store);
        // Chunks as large as a message may be (less room for the chunk's
        // subject and framing): fewer chunks, fewer acks to wait for.
        let max_payload = c.client.max_payload();
        let chunk = if max_payload > 8192 {
            max_payload - 4096
        } else {
            max_payload / 2
        };
        let meta = object_store::ObjectMetadata {
            name: p.key.to_owned(),
            chunk_size: Some(chunk.max(1)),
            ..Default::default()
        };
        let mut data = p.data;
        store
            .put(meta, &mut data)
            .await
            .map_err(|e| format!("object store put {:?}: {e}", p.key))?;
        Ok(())
    };
    tokio::time::timeout_at(deadline, work).await.map_err(|_| {
        format!(
            "object store put {:?} not done within {:?}",
            p.key, cfg.timeout
        )
    })?
}

/// Makes sure the stream exists: used as it is when it does, created over
/// the template's subject pattern (file storage, the configured replicas,
/// a 2-minute duplicate window) when it does not.
async fn ensure_stream(
    cfg: &Config,
    shown: &str,
    js: &jetstream::Context,
) -> Result<(), SinkError> {
    let missing = match js.get_stream(&cfg.stream).await {
        Ok(_) => return Ok(()),
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                e
            }
            _ => {
                return Err(SinkError(format!(
                    "{shown}: cannot look up stream {:?}: {e} (JetStream not enabled on the server, nats-server -js, or not ready yet)",
                    cfg.stream
                )))
            }
        },
    };
    let pattern = cfg.subject.pattern();
    let created = js
        .create_stream(stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![pattern.clone()],
            storage: stream::StorageType::File,
            num_replicas: cfg.replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await;
    match created {
        Ok(_) => {
            log::info!(
                "nats sink: created stream {:?} over {pattern:?} ({} replicas)",
                cfg.stream,
                cfg.replicas
            );
            Ok(())
        }
        // Another sink of this process may have created it meanwhile.
        Err(e) if js.get_stream(&cfg.stream).await.is_ok() => {
            log::debug!("nats sink: stream {:?} created by another: {e}", cfg.stream);
            Ok(())
        }
        Err(e) => Err(SinkError(format!(
            "{shown}: stream {:?} is missing ({missing}) and could not be created over {pattern:?}: {e}; create it yourself, or name an existing one with ?stream=NAME",
            cfg.stream
        ))),
    }
}

/// The URL with any `user:password@` made `user:***@`.
fn hide_password(url: &str) -> String {
    let Some(rest) = url.strip_prefix("nats://") else {
        return url.to_owned();
    };
    let (hosts, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let hosts: Vec<String> = hosts
        .split(',')
        .map(|h| match h.rsplit_once('@') {
            Some((cred, host)) => match cred.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => format!("***@{host}"),
            },
            None => h.to_owned(),
        })
        .collect();
    format!("nats://{}/{tail}", hosts.join(","))
}

impl Sink for NatsSink {
    fn deliver(&mut self, batch: &[Parcel<'_>]) -> Result<Vec<Verdict>, SinkError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let Self {
            cfg,
            shown,
            rt,
            conn,
            duplicates,
        } = self;
        rt.block_on(Self::deliver_async(cfg, shown, conn, duplicates, batch))
    }

    fn max_batch(&self) -> usize {
        self.cfg.batch
    }

    /// The most one batch can take, object store puts aside (each of those
    /// adds up to `timeout`): a connection and a reconnect wait
    /// (`connect_timeout` each), the stream's look-up and creation, the
    /// sends and the acks (`timeout` each).
    fn timeout(&self) -> Duration {
        self.cfg.connect_timeout * 2 + self.cfg.timeout * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_defaults_and_params() {
        let c = Config::parse("nats://127.0.0.1:4222/mail.in").unwrap();
        assert_eq!(c.servers, ["127.0.0.1:4222"]);
        assert_eq!(
            c.subject,
            Template(vec![Token::Lit("mail".into()), Token::Lit("in".into())])
        );
        assert_eq!((c.stream.as_str(), c.replicas, c.batch), ("RINGMX", 1, 64));
        let c = Config::parse(
            "nats://a:1,b:2/m.%7Brcpt_domain%7D?stream=MAIL&replicas=3&timeout=2.5&batch=8&bucket=BIG",
        )
        .unwrap();
        assert_eq!(c.servers, ["a:1", "b:2"]);
        assert_eq!(c.subject.0[1], Token::Domain);
        assert_eq!(c.stream, "MAIL");
        assert_eq!(c.bucket, "BIG");
        assert_eq!(c.replicas, 3);
        assert_eq!(c.batch, 8);
        assert_eq!(c.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn bad_urls_say_what_to_write() {
        for (url, want) in [
            ("nats://h:1", "no subject"),
            ("nats://h:1/", "no subject"),
            ("nats://h:1/a..b", "empty token"),
            ("nats://h:1/a.*", "wildcards"),
            ("nats://h:1/a.x{node}", "not a placeholder"),
            ("nats://h:1/a.{domain}", "not a placeholder"),
            ("nats://h:1/a?stream=a.b", "stream="),
            ("nats://h:1/a?bucket=a$b", "bucket="),
            ("nats://h:1/a?replicas=7", "replicas="),
            ("nats://h:1/a?timeout=0", "timeout="),
            ("nats://h:1/a?nope=1", "unknown parameter"),
            ("nats://,h:1/a", "empty host"),
            ("nats://h:1/a%zz", "hex"),
            ("smtp://h:1/a", "nats://"),
        ] {
            let e = Config::parse(url).unwrap_err();
            assert!(e.contains(want), "{url}: {e}");
        }
    }

    #[test]
    fn patterns_cover_rendered_subjects() {
        let t = Template::parse("mail.{node}.{shard}.in.{rcpt_domain}").unwrap();
        assert_eq!(t.pattern(), "mail.*.*.in.>");
        assert_eq!(
            t.render("mx1.example", 3, &domain_tokens("A@Sub.Example.COM.")),
            "mail.mx1_example.3.in.sub.example.com"
        );
        let t = Template::parse("mail.{rcpt_domain}.x").unwrap();
        assert_eq!(t.pattern(), "mail.>");
        assert!(t.per_domain());
        let t = Template::parse("mail.in").unwrap();
        assert_eq!(t.pattern(), "mail.in");
        assert!(!t.per_domain());
        assert_eq!(t.render("", 0, "_"), "mail.in");
        assert_eq!(
            Template::parse("m.{node}").unwrap().render("", 0, "_"),
            "m._"
        );
    }

    #[test]
    fn domains_are_valid_subject_tokens() {
        for (rcpt, want) in [
            ("user@example.com", "example.com"),
            ("postmaster", "_"),
            ("a@", "_"),
            ("a@b..c", "b._.c"),
            ("a@x*y", "x_y"),
            ("a@[127.0.0.1]", "[127.0.0.1]"),
            ("a@b c\t>", "b_c__"),
            ("\"a@b\"@Ex.org", "ex.org"),
        ] {
            assert_eq!(domain_tokens(rcpt), want, "{rcpt}");
        }
    }

    #[test]
    fn header_values_lose_line_ends_and_are_capped() {
        assert_eq!(header_value(b"a\r\n b\rc\nd"), "a bcd");
        assert_eq!(header_value(b"\xffx"), "\u{fffd}x");
        let long = "é".repeat(1000);
        let v = header_value(long.as_bytes());
        assert!(v.len() <= MAX_HEADER_VALUE_BYTES && v.len() >= MAX_HEADER_VALUE_BYTES - 1);
        assert!(v.chars().all(|c| c == 'é'));
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            hide_password("nats://u:secret@h:1,h2:2/s?x=1"),
            "nats://u:***@h:1,h2:2/s?x=1"
        );
        assert_eq!(hide_password("nats://tok@h:1/s"), "nats://***@h:1/s");
    }

    fn dest(parcel: usize, rcpts: &[&str]) -> Dest {
        Dest {
            parcel,
            subject: format!("s{parcel}"),
            key: String::new(),
            rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn verdicts_from_outcomes() {
        let dests = [
            dest(0, &["a@x"]),
            dest(0, &["b@y"]),
            dest(1, &["c@x"]),
            dest(1, &["d@y"]),
            dest(2, &["e@x"]),
            dest(3, &["f@x"]),
            dest(3, &["g@y"]),
        ];
        let mut missing = false;
        let v = verdicts(
            4,
            &dests,
            vec![
                Outcome::Acked,
                Outcome::Acked,
                Outcome::Acked,
                Outcome::Refused("too big".into()),
                Outcome::Failed(format!("{STREAM_NOT_FOUND} s2")),
                Outcome::Refused("no".into()),
                Outcome::Failed("timeout".into()),
            ],
            &mut missing,
        );
        assert_eq!(v[0], Verdict::Accepted);
        assert_eq!(
            v[1],
            Verdict::Rejected {
                reason: "s1: too big".into(),
                rcpts: Some(vec!["d@y".into()])
            }
        );
        assert!(matches!(&v[2], Verdict::Deferred(r) if r.contains(STREAM_NOT_FOUND)));
        assert!(matches!(&v[3], Verdict::Deferred(r) if r.contains("timeout")));
        assert!(missing);
    }
}
