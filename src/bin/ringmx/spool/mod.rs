//! `ringmx spool ls | cat | export | verify | stats`: the operator's view of a
//! spool directory, built on the library's [`SpoolReader`]. Command-line
//! only, so it lives beside the binary: `main.rs` embeds [`SpoolArgs`] (the
//! subcommand plus a global `--spool DIR`, default `./spool`) and calls
//! [`SpoolArgs::run`]. Errors are returned, for `main` to print; `verify`
//! finding damage is exit status 1. tests/spool_cli.rs drives it through the
//! built binary.
//!
//! Output formats:
//! * `ls`: one line per committed message, `ID  ARRIVAL(UTC)  BODY-BYTES  <FROM>  RCPT,...`;
//!   `--json`: one JSON object per line (JSON Lines), with the writing
//!   host's `node` id (empty for version 1 segments). Damage is stepped
//!   over: one line per damaged range on stderr, every intact message
//!   listed, exit status 1. `export` does the same, and also skips (and
//!   reports) a message whose body fails its check.
//! * `cat ID`: the message as a delivery agent would hand it on:
//!   `Return-Path: <from>`, the `Received:` header, the body, CRLF as stored.
//! * `export --format eml DIR`: `DIR/<ID>.eml` per message, CRLF as stored.
//!   `maildir`: `DIR/{tmp,new,cur}`, each message written to `tmp/` and
//!   renamed into `new/`, lines ending in LF (the Maildir convention).
//!   `mbox`: one file `DIR/ringmx.mbox` in mboxrd form: a `From ` separator
//!   line per message, LF line ends, `>*From ` lines quoted with one more `>`.
//! * `verify`: one line per damaged range naming segment file, offset and
//!   length (every range, not only the first); exit status 1 if there is any.
//! * `stats`: per-shard counts from disk (`--json` for one JSON object), then
//!   per consumer and shard what it has not shipped yet: messages, body
//!   bytes, the age of the oldest (a damaged checkpoint is reported there,
//!   not fatal).
//! * `gc [--dry-run] [--retention DURATION]`: deletes the sealed segments
//!   every consumer has passed, by the server's rule (`ringmx::spool::reclaim`);
//!   one line per segment removed (or that would be). Refused while a server
//!   holds the spool: it reclaims on its own, and only it knows which
//!   segments hold fragments of messages still arriving.

mod export;

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ringmx::civil::DateTime;
use ringmx::spool::reclaim::{consumer_positions, lag, Lag, Reclaimer, Shared};
use ringmx::spool::{DirLock, QueueId, ShardSummary, SpoolError, SpoolReader};

use export::{export, ExportFormat};

/// `ringmx spool …`: the spool directory and what to do with it.
#[derive(Debug, Clone, clap::Args)]
pub struct SpoolArgs {
    /// The spool directory (the server's `spool.dir`).
    #[arg(long, value_name = "DIR", default_value = "spool", global = true)]
    pub spool: PathBuf,
    /// The command.
    #[command(subcommand)]
    pub command: SpoolCommand,
}

/// The `ringmx spool` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum SpoolCommand {
    /// List committed messages: id, arrival time, body size, sender, recipients.
    Ls {
        /// One JSON object per line instead of columns.
        #[arg(long)]
        json: bool,
    },
    /// Print one message as stored: Return-Path, Received header, body.
    Cat {
        /// The queue id (from `ls`, or the server's `250 ... queued as ID`).
        id: String,
    },
    /// Write every committed message into DIR.
    Export {
        /// mbox (one mboxrd file), maildir (tmp/new/cur) or eml (one file per message).
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Target directory; created if missing.
        dir: PathBuf,
    },
    /// Check every record's checksum and structure; exit 1 naming segment and
    /// offset of any damage.
    Verify,
    /// Counts per shard: segments, bytes, messages, fragments, orphans; and
    /// each consumer's lag.
    Stats {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete the sealed segments every consumer has passed (as a running
    /// server does on its own); refused while a server holds the spool.
    Gc {
        /// Print what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep segments younger than this (the server's spool.retention), e.g. 1h.
        #[arg(long, value_name = "DURATION", value_parser = ringmx::units::parse_duration, default_value = "0s")]
        retention: std::time::Duration,
    },
}

impl SpoolArgs {
    /// Runs the command on `--spool`, writing to stdout; see [`run`].
    ///
    /// # Errors
    /// As [`run`].
    pub fn run(self) -> Result<ExitCode, CliError> {
        run(self.command, &self.spool)
    }
}

/// Why a `ringmx spool` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The spool could not be read, or holds something unreadable.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The command cannot run now; the text says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// Writing the output (stdout, an export file or directory) failed.
    #[error("{op} {}: {source}", path.display())]
    Write {
        /// What was being done, e.g. "creating".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl CliError {
    fn write(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Write {
            op,
            path: path.into(),
            source,
        }
    }

    /// The reader of our stdout went away (`ringmx spool ls | head`).
    fn is_broken_pipe(&self) -> bool {
        let kind = match self {
            Self::Write { source, .. } => source.kind(),
            Self::Spool(SpoolError::Io { source, .. }) => source.kind(),
            Self::Spool(_) | Self::Refused(_) => return false,
        };
        kind == io::ErrorKind::BrokenPipe
    }
}

/// How a command ended, when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All good: exit 0.
    Clean,
    /// The command ran and found damage (`verify`): exit 1.
    Problems,
}

/// Runs a command on the spool at `spool_dir`, writing to stdout. A closed
/// stdout (`ringmx spool ls | head`) ends the command quietly.
///
/// # Errors
/// The spool cannot be read, a message is not found (`cat`), the export
/// target cannot be written; a corrupt record met by `ls`, `cat` or `export`.
pub fn run(cmd: SpoolCommand, spool_dir: &Path) -> Result<ExitCode, CliError> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let r = run_to(cmd, spool_dir, &mut out).and_then(|o| {
        out.flush()
            .map_err(|e| CliError::write("writing", "stdout", e))?;
        Ok(o)
    });
    match r {
        Ok(Outcome::Clean) => Ok(ExitCode::SUCCESS),
        Ok(Outcome::Problems) => Ok(ExitCode::from(1)),
        Err(e) if e.is_broken_pipe() => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
    }
}

fn werr(e: io::Error) -> CliError {
    CliError::write("writing", "output", e)
}

/// [`run`], writing to `out`.
///
/// # Errors
/// As [`run`].
pub fn run_to(
    cmd: SpoolCommand,
    spool_dir: &Path,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let reader = SpoolReader::open(spool_dir)?;
    match cmd {
        SpoolCommand::Ls { json } => ls(&reader, json, out),
        SpoolCommand::Cat { id } => {
            let id: QueueId = id.parse()?;
            reader.get(id)?.write_to(out)?;
            Ok(Outcome::Clean)
        }
        SpoolCommand::Export { format, dir } => export(&reader, format, &dir, out),
        SpoolCommand::Verify => verify(&reader, out),
        SpoolCommand::Stats { json } => stats(&reader, json, out),
        SpoolCommand::Gc { dry_run, retention } => gc(&reader, dry_run, retention, out),
    }
}

fn gc(
    reader: &SpoolReader,
    dry_run: bool,
    retention: std::time::Duration,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let root = reader.root();
    // A running server's in-flight messages (fragments written, commit to
    // come) are known only to it: deleting by hand could take their
    // fragments. It reclaims on its own; hold the lock so none starts meanwhile.
    let _lock = match DirLock::acquire(root) {
        Ok(l) => l,
        Err(SpoolError::Locked { dir, pid }) => {
            let who = pid.map_or("a ringmx server".to_owned(), |p| {
                format!("ringmx (pid {p})")
            });
            return Err(CliError::Refused(format!(
                "spool {} is in use by {who}: a running server reclaims space on its own \
                 (spool.reclaim_interval, spool.retention); stop it to run gc by hand",
                dir.display()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let cfg = ringmx::config::SpoolConfig {
        retention,
        ..Default::default()
    };
    // No server runs (we hold the lock), so nothing is in flight: no pins.
    let mut r = Reclaimer::new(root, &cfg, Shared::new(0));
    let report = r.pass(dry_run)?;
    let verb = if dry_run { "would remove" } else { "removed" };
    let (mut n, mut bytes) = (0u64, 0u64);
    for s in &report.shards {
        if let Some(why) = &s.held {
            writeln!(out, "shard {}: keeping everything: {why}", s.shard).map_err(werr)?;
        }
        for (_, path, len) in &s.delete {
            writeln!(out, "{verb} {} ({len} bytes)", path.display()).map_err(werr)?;
            n += 1;
            bytes += len;
        }
    }
    writeln!(out, "gc: {verb} {n} segments, {bytes} bytes").map_err(werr)?;
    Ok(Outcome::Clean)
}

/// One consumer in one shard: its lag, or why its checkpoint is unreadable.
type LagRow = (String, u32, Result<Lag, String>);

/// Each consumer's lag per shard, for `stats`.
fn consumer_lags(reader: &SpoolReader) -> Result<Vec<LagRow>, CliError> {
    let mut rows = Vec::new();
    for shard in reader.shards()? {
        for c in consumer_positions(reader.root(), shard)? {
            let lag = match c.position {
                Ok(p) => Ok(lag(reader.root(), shard, p)?),
                Err(why) => Err(why),
            };
            rows.push((c.name, shard, lag));
        }
    }
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    Ok(rows)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A damaged range a listing stepped over: reported on stderr and counted,
/// `None`; any other error is handed back to end the command.
fn report_damage(e: SpoolError, damage: &mut usize) -> Option<SpoolError> {
    if let SpoolError::Corrupt { .. } = e {
        *damage += 1;
        eprintln!("ringmx spool: skipping damage: {e}");
        None
    } else {
        Some(e)
    }
}

fn ls(reader: &SpoolReader, json: bool, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let mut damage = 0;
    for m in reader.messages()? {
        let m = match m {
            Ok(m) => m,
            Err(e) => match report_damage(e, &mut damage) {
                None => continue,
                Some(e) => return Err(e.into()),
            },
        };
        if json {
            let v = serde_json::json!({
                "id": m.id.as_str(),
                "node": m.node_id,
                "shard": m.id.shard(),
                "segment": m.location.segment,
                "offset": m.location.offset,
                "arrival_unix": m.envelope.arrival_unix,
                "client": m.envelope.client.map(|a| a.to_string()),
                "helo": m.envelope.helo,
                "mail_from": m.envelope.mail_from,
                "mail_params": m.envelope.mail_params,
                "rcpts": m.envelope.rcpts,
                "tls_version": m.envelope.tls_version,
                "tls_cipher": m.envelope.tls_cipher,
                "auth": m.envelope.auth_id,
                "body_bytes": m.body_len,
                "fragments": m.fragments(),
            });
            writeln!(out, "{v}").map_err(werr)?;
        } else {
            writeln!(
                out,
                "{}  {}  {:>10}  <{}>  {}",
                m.id,
                iso_date(m.envelope.arrival_unix),
                m.body_len,
                m.envelope.mail_from,
                m.envelope.rcpts.join(",")
            )
            .map_err(werr)?;
        }
    }
    Ok(if damage == 0 {
        Outcome::Clean
    } else {
        Outcome::Problems
    })
}

fn verify(reader: &SpoolReader, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let shards = reader.verify()?;
    let mut problems = 0usize;
    for s in &shards {
        for p in &s.problems {
            problems += 1;
            writeln!(
                out,
                "CORRUPT {} offset {}{}: {}",
                p.path.display(),
                p.offset,
                if p.bytes > 0 {
                    format!(" length {}", p.bytes)
                } else {
                    String::new()
                },
                p.reason
            )
            .map_err(werr)?;
        }
        for p in &s.in_progress {
            writeln!(
                out,
                "in progress {} offset {}: {} (a server holds the spool: likely a write under way)",
                p.path.display(),
                p.offset,
                p.reason
            )
            .map_err(werr)?;
        }
        if s.holes > 0 {
            writeln!(
                out,
                "shard {}: {} damaged range(s), {} bytes, repaired earlier: copies in the shard's quarantine-*.bin files",
                s.shard, s.holes, s.hole_bytes
            )
            .map_err(werr)?;
        }
        writeln!(
            out,
            "shard {}: {} segments, {} records, {} messages, {} orphan fragments{}",
            s.shard,
            s.segments,
            s.records,
            s.messages,
            s.orphan_fragments(),
            if s.problems.is_empty() {
                ", ok"
            } else {
                ", DAMAGED"
            }
        )
        .map_err(werr)?;
    }
    if problems == 0 {
        writeln!(out, "verify: ok").map_err(werr)?;
        Ok(Outcome::Clean)
    } else {
        writeln!(out, "verify: {problems} damaged spot(s)").map_err(werr)?;
        Ok(Outcome::Problems)
    }
}

fn stats(reader: &SpoolReader, json: bool, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let shards = reader.disk_stats()?;
    let total = shards.iter().fold(ShardSummary::default(), |mut t, s| {
        t.segments += s.segments;
        t.sealed_segments += s.sealed_segments;
        t.bytes += s.bytes;
        t.records += s.records;
        t.messages += s.messages;
        t.body_bytes += s.body_bytes;
        t.fragments += s.fragments;
        t.fragment_bytes += s.fragment_bytes;
        t.referenced_fragments += s.referenced_fragments;
        t
    });
    if json {
        let row = |s: &ShardSummary| {
            serde_json::json!({
                "segments": s.segments,
                "sealed_segments": s.sealed_segments,
                "bytes": s.bytes,
                "records": s.records,
                "messages": s.messages,
                "body_bytes": s.body_bytes,
                "fragments": s.fragments,
                "orphan_fragments": s.orphan_fragments(),
                "oldest_arrival_unix": s.oldest_arrival,
                "newest_arrival_unix": s.newest_arrival,
            })
        };
        let per: serde_json::Map<String, serde_json::Value> = shards
            .iter()
            .map(|s| (s.shard.to_string(), row(s)))
            .collect();
        let lags: Vec<serde_json::Value> = consumer_lags(reader)?
            .into_iter()
            .map(|(name, shard, lag)| match lag {
                Ok(l) => serde_json::json!({
                    "consumer": name,
                    "shard": shard,
                    "messages": l.messages,
                    "body_bytes": l.body_bytes,
                    "oldest_age_secs": l.oldest_arrival.map(|t| (now_unix() - t).max(0)),
                }),
                Err(why) => serde_json::json!({
                    "consumer": name,
                    "shard": shard,
                    "error": why,
                }),
            })
            .collect();
        let v = serde_json::json!({ "shards": per, "total": row(&total), "consumers": lags });
        writeln!(out, "{v}").map_err(werr)?;
        return Ok(Outcome::Clean);
    }
    writeln!(
        out,
        "{:>6} {:>9} {:>14} {:>10} {:>14} {:>10} {:>8}  oldest .. newest arrival",
        "shard", "segments", "bytes", "messages", "body bytes", "fragments", "orphans"
    )
    .map_err(werr)?;
    for s in &shards {
        let span = match (s.oldest_arrival, s.newest_arrival) {
            (Some(a), Some(b)) => format!("{} .. {}", iso_date(a), iso_date(b)),
            _ => "-".to_owned(),
        };
        writeln!(
            out,
            "{:>6} {:>9} {:>14} {:>10} {:>14} {:>10} {:>8}  {span}",
            s.shard,
            s.segments,
            s.bytes,
            s.messages,
            s.body_bytes,
            s.fragments,
            s.orphan_fragments()
        )
        .map_err(werr)?;
    }
    writeln!(
        out,
        "{:>6} {:>9} {:>14} {:>10} {:>14} {:>10} {:>8}",
        "total",
        total.segments,
        total.bytes,
        total.messages,
        total.body_bytes,
        total.fragments,
        total.orphan_fragments()
    )
    .map_err(werr)?;
    let lags = consumer_lags(reader)?;
    if !lags.is_empty() {
        writeln!(
            out,
            "\n{:<20} {:>6} {:>10} {:>14} {:>12}",
            "consumer", "shard", "unshipped", "body bytes", "oldest age"
        )
        .map_err(werr)?;
    }
    for (name, shard, lag) in lags {
        match lag {
            Ok(l) => writeln!(
                out,
                "{name:<20} {shard:>6} {:>10} {:>14} {:>12}",
                l.messages,
                l.body_bytes,
                l.oldest_arrival
                    .map_or("-".to_owned(), |t| format!("{}s", (now_unix() - t).max(0)))
            ),
            Err(why) => writeln!(out, "{name:<20} {shard:>6} damaged checkpoint: {why}"),
        }
        .map_err(werr)?;
    }
    Ok(Outcome::Clean)
}

/// `2026-11-29 13:44:42` (UTC).
fn iso_date(unix: i64) -> String {
    let t = DateTime::from_unix(unix);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(clap::Subcommand)]
    enum Top {
        Spool(SpoolArgs),
    }

    fn parse(args: &[&str]) -> SpoolArgs {
        let Top::Spool(a) = Cli::try_parse_from(args).unwrap().cmd;
        a
    }

    #[test]
    fn spool_flag_works_before_and_after_the_subcommand() {
        let a = parse(&["ringmx", "spool", "ls", "--json", "--spool", "/x"]);
        assert_eq!(
            (a.spool, a.command),
            (PathBuf::from("/x"), SpoolCommand::Ls { json: true })
        );
        let a = parse(&[
            "ringmx", "spool", "--spool", "/y", "export", "--format", "maildir", "out",
        ]);
        assert_eq!(a.spool, PathBuf::from("/y"));
        assert_eq!(
            a.command,
            SpoolCommand::Export {
                format: ExportFormat::Maildir,
                dir: "out".into()
            }
        );
        let a = parse(&["ringmx", "spool", "verify"]);
        assert_eq!(
            (a.spool, a.command),
            (PathBuf::from("spool"), SpoolCommand::Verify)
        );
        assert!(
            Cli::try_parse_from(["ringmx", "spool", "export", "--format", "pst", "d"]).is_err()
        );
    }

    #[test]
    fn dates() {
        assert_eq!(iso_date(0), "1970-01-01 00:00:00");
        assert_eq!(iso_date(1_795_959_882), "2026-11-29 13:44:42");
    }
}
