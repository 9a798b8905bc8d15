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
//! * `stats`: per-shard counts from disk (`--json` for one JSON object).

mod export;

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ringmx::civil::DateTime;
use ringmx::spool::{QueueId, ShardSummary, SpoolError, SpoolReader};

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
    /// Counts per shard: segments, bytes, messages, fragments, orphans.
    Stats {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
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
            Self::Spool(_) => return false,
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
    }
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
        let v = serde_json::json!({ "shards": per, "total": row(&total) });
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
