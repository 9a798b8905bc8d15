//! `ringmx spool ls | cat | export | verify | stats`: the operator's view of a
//! spool directory, built on [`SpoolReader`]. The binary embeds [`SpoolArgs`]
//! (`Spool(ringmx::spool::cli::SpoolArgs)`: the subcommand plus a global
//! `--spool DIR`, default `./spool`) and calls [`SpoolArgs::run`], or uses
//! [`SpoolCommand`] with its own `--spool` and [`run`]. Errors are returned,
//! for the binary to print; `verify` finding damage is exit status 1.
//! Everything writes to a caller-given `Write` ([`run_to`]), so it is
//! testable without a process.
//!
//! Output formats:
//! * `ls`: one line per committed message, `ID  ARRIVAL(UTC)  BODY-BYTES  <FROM>  RCPT,...`;
//!   `--json`: one JSON object per line (JSON Lines).
//! * `cat ID`: the message as a delivery agent would hand it on:
//!   `Return-Path: <from>`, the `Received:` header, the body, CRLF as stored.
//! * `export --format eml DIR`: `DIR/<ID>.eml` per message, CRLF as stored.
//!   `maildir`: `DIR/{tmp,new,cur}`, each message written to `tmp/` and
//!   renamed into `new/`, lines ending in LF (the Maildir convention).
//!   `mbox`: one file `DIR/ringmx.mbox` in mboxrd form: a `From ` separator
//!   line per message, LF line ends, `>*From ` lines quoted with one more `>`.
//! * `verify`: one line per damaged spot naming segment file and offset;
//!   exit status 1 if there is any.
//! * `stats`: per-shard counts from disk (`--json` for one JSON object).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::error::SpoolError;
use super::queue_id::QueueId;
use super::reader::{ShardSummary, SpoolReader, StoredMessage};
use crate::civil::DateTime;

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

/// Formats for `ringmx spool export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One mboxrd file, `DIR/ringmx.mbox`.
    Mbox,
    /// A Maildir: `DIR/new/<time>.<id>.ringmx`.
    Maildir,
    /// `DIR/<id>.eml` per message.
    Eml,
}

impl SpoolArgs {
    /// Runs the command on `--spool`, writing to stdout; see [`run`].
    ///
    /// # Errors
    /// As [`run`].
    pub fn run(self) -> Result<ExitCode, SpoolError> {
        run(self.command, &self.spool)
    }
}

impl SpoolCommand {
    /// Runs the command on the spool at `spool_dir`, writing to stdout; see [`run`].
    ///
    /// # Errors
    /// As [`run`].
    pub fn run(self, spool_dir: &Path) -> Result<ExitCode, SpoolError> {
        run(self, spool_dir)
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

/// Runs `args.command` on `args.spool`, writing to stdout.
///
/// # Errors
/// As [`run`].
pub fn run_args(args: SpoolArgs) -> Result<ExitCode, SpoolError> {
    run(args.command, &args.spool)
}

/// Runs a command on the spool at `spool_dir`, writing to stdout. A closed
/// stdout (`ringmx spool ls | head`) ends the command quietly.
///
/// # Errors
/// The spool cannot be read, a message is not found (`cat`), the export
/// target cannot be written; a corrupt record met by `ls`, `cat` or `export`.
pub fn run(cmd: SpoolCommand, spool_dir: &Path) -> Result<ExitCode, SpoolError> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let r = run_to(cmd, spool_dir, &mut out).and_then(|o| {
        out.flush()
            .map_err(|e| SpoolError::io("writing", "stdout", e))?;
        Ok(o)
    });
    match r {
        Ok(Outcome::Clean) => Ok(ExitCode::SUCCESS),
        Ok(Outcome::Problems) => Ok(ExitCode::from(1)),
        Err(SpoolError::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => {
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e),
    }
}

fn werr(e: io::Error) -> SpoolError {
    SpoolError::io("writing", "output", e)
}

/// [`run`], writing to `out`.
///
/// # Errors
/// As [`run`].
pub fn run_to(
    cmd: SpoolCommand,
    spool_dir: &Path,
    out: &mut dyn Write,
) -> Result<Outcome, SpoolError> {
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

fn ls(reader: &SpoolReader, json: bool, out: &mut dyn Write) -> Result<Outcome, SpoolError> {
    for m in reader.messages()? {
        let m = m?;
        if json {
            let v = serde_json::json!({
                "id": m.id.as_str(),
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
    Ok(Outcome::Clean)
}

fn verify(reader: &SpoolReader, out: &mut dyn Write) -> Result<Outcome, SpoolError> {
    let shards = reader.verify()?;
    let mut problems = 0usize;
    for s in &shards {
        for p in &s.problems {
            problems += 1;
            writeln!(
                out,
                "CORRUPT {} offset {}: {}",
                p.path.display(),
                p.offset,
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

fn stats(reader: &SpoolReader, json: bool, out: &mut dyn Write) -> Result<Outcome, SpoolError> {
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

fn export(
    reader: &SpoolReader,
    format: ExportFormat,
    dir: &Path,
    out: &mut dyn Write,
) -> Result<Outcome, SpoolError> {
    fs::create_dir_all(dir).map_err(|e| SpoolError::io("creating", dir, e))?;
    let mut n = 0u64;
    match format {
        ExportFormat::Eml => {
            for m in reader.messages()? {
                let m = m?;
                let path = dir.join(format!("{}.eml", m.id));
                let mut f = create(&path)?;
                m.write_to(&mut f)?;
                f.flush().map_err(|e| SpoolError::io("writing", &path, e))?;
                n += 1;
            }
        }
        ExportFormat::Maildir => {
            for sub in ["tmp", "new", "cur"] {
                let d = dir.join(sub);
                fs::create_dir_all(&d).map_err(|e| SpoolError::io("creating", &d, e))?;
            }
            for m in reader.messages()? {
                let m = m?;
                // Maildir names: time.unique.host; the queue id is unique.
                let name = format!("{}.{}.ringmx", m.envelope.arrival_unix, m.id);
                let tmp = dir.join("tmp").join(&name);
                let mut f = create(&tmp)?;
                let mut lf = LfWriter::new(&mut f, false);
                write_converted(&m, &mut lf)?;
                lf.finish()
                    .map_err(|e| SpoolError::io("writing", &tmp, e))?;
                f.flush().map_err(|e| SpoolError::io("writing", &tmp, e))?;
                drop(f);
                let new = dir.join("new").join(&name);
                fs::rename(&tmp, &new).map_err(|e| SpoolError::io("renaming into", &new, e))?;
                n += 1;
            }
        }
        ExportFormat::Mbox => {
            let path = dir.join("ringmx.mbox");
            let mut f = create(&path)?;
            for m in reader.messages()? {
                let m = m?;
                let sender = if m.envelope.mail_from.is_empty() {
                    "MAILER-DAEMON"
                } else {
                    m.envelope.mail_from.as_str()
                };
                writeln!(f, "From {sender} {}", asctime(m.envelope.arrival_unix))
                    .map_err(|e| SpoolError::io("writing", &path, e))?;
                let mut lf = LfWriter::new(&mut f, true);
                write_converted(&m, &mut lf)?;
                lf.finish()
                    .map_err(|e| SpoolError::io("writing", &path, e))?;
                // mbox: a message ends with a blank line before the next `From `.
                f.write_all(b"\n")
                    .map_err(|e| SpoolError::io("writing", &path, e))?;
                n += 1;
            }
            f.flush().map_err(|e| SpoolError::io("writing", &path, e))?;
        }
    }
    writeln!(out, "exported {n} messages to {}", dir.display()).map_err(werr)?;
    Ok(Outcome::Clean)
}

fn create(path: &Path) -> Result<BufWriter<File>, SpoolError> {
    File::create(path)
        .map(BufWriter::new)
        .map_err(|e| SpoolError::io("creating", path, e))
}

fn write_converted<W: Write>(m: &StoredMessage, lf: &mut LfWriter<W>) -> Result<(), SpoolError> {
    m.write_to(lf)
}

/// Streams bytes with CRLF turned into LF and, for mboxrd, every line that
/// matches `>*From ` quoted with one more `>`. Constant memory: at a line
/// start it holds at most a count of `>` and four bytes of `From`.
struct LfWriter<W: Write> {
    inner: W,
    mbox: bool,
    pending_cr: bool,
    /// At a line start: `>` seen, then bytes of "From " matched.
    line_start: Option<(usize, usize)>,
    out: Vec<u8>,
}

const FROM: &[u8] = b"From ";

impl<W: Write> LfWriter<W> {
    fn new(inner: W, mbox: bool) -> Self {
        Self {
            inner,
            mbox,
            pending_cr: false,
            line_start: Some((0, 0)),
            out: Vec::with_capacity(8192),
        }
    }

    /// After CRLF → LF: handles the `From ` quoting.
    fn emit(&mut self, b: u8) {
        if !self.mbox {
            self.out.push(b);
            return;
        }
        if let Some((gts, matched)) = self.line_start {
            if matched == 0 && b == b'>' {
                self.line_start = Some((gts + 1, 0));
                return;
            }
            if b == FROM[matched] {
                if matched + 1 == FROM.len() {
                    self.out.push(b'>');
                    self.out.extend(std::iter::repeat_n(b'>', gts));
                    self.out.extend_from_slice(FROM);
                    self.line_start = None;
                } else {
                    self.line_start = Some((gts, matched + 1));
                }
                return;
            }
            self.flush_line_start();
        }
        self.out.push(b);
        if b == b'\n' {
            self.line_start = Some((0, 0));
        }
    }

    fn flush_line_start(&mut self) {
        if let Some((gts, matched)) = self.line_start.take() {
            self.out.extend(std::iter::repeat_n(b'>', gts));
            self.out.extend_from_slice(&FROM[..matched]);
        }
    }

    fn feed(&mut self, b: u8) {
        if self.pending_cr {
            self.pending_cr = false;
            if b == b'\n' {
                self.emit(b'\n');
                return;
            }
            self.emit(b'\r');
        }
        if b == b'\r' {
            self.pending_cr = true;
        } else {
            self.emit(b);
        }
    }

    /// Flushes what is held back at the end of a message.
    fn finish(&mut self) -> io::Result<()> {
        if self.pending_cr {
            self.pending_cr = false;
            self.emit(b'\r');
        }
        self.flush_line_start();
        self.line_start = Some((0, 0));
        self.inner.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }
}

impl<W: Write> Write for LfWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.feed(b);
        }
        if self.out.len() >= 8192 {
            self.inner.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.write_all(&self.out)?;
        self.out.clear();
        self.inner.flush()
    }
}

/// `2026-11-29 13:44:42` (UTC).
fn iso_date(unix: i64) -> String {
    let t = DateTime::from_unix(unix);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// `Sun Nov 29 13:44:42 2026`: the asctime form mbox `From ` lines use.
fn asctime(unix: i64) -> String {
    let t = DateTime::from_unix(unix);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        t.weekday_name(),
        t.month_name(),
        t.day,
        t.hour,
        t.minute,
        t.second,
        t.year
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
        assert_eq!(asctime(1_795_959_882), "Sun Nov 29 13:44:42 2026");
        assert_eq!(asctime(1_795_880_682), "Sat Nov 28 15:44:42 2026");
        assert_eq!(asctime(951_782_400), "Tue Feb 29 00:00:00 2000");
        assert_eq!(asctime(0), "Thu Jan  1 00:00:00 1970");
    }

    fn convert(input: &[u8], mbox: bool, chunk: usize) -> Vec<u8> {
        let mut v = Vec::new();
        let mut w = LfWriter::new(&mut v, mbox);
        for c in input.chunks(chunk) {
            w.write_all(c).unwrap();
        }
        w.finish().unwrap();
        drop(w);
        v
    }

    #[test]
    fn mboxrd_quoting_and_lf_at_every_split() {
        let input: &[u8] =
            b"From me\r\n>From x\r\n>>From y\r\nFro\r\nFrom\r\n>Fromage\r\nbare\rcr\r\n\r\nFrom ";
        let want: &[u8] = b">From me\n>>From x\n>>>From y\nFro\nFrom\n>Fromage\nbare\rcr\n\n>From ";
        for chunk in 1..=input.len() {
            assert_eq!(convert(input, true, chunk), want, "chunk {chunk}");
        }
        let maildir = convert(input, false, 3);
        assert_eq!(
            maildir,
            b"From me\n>From x\n>>From y\nFro\nFrom\n>Fromage\nbare\rcr\n\nFrom "
        );
        assert_eq!(convert(b"x\r", true, 1), b"x\r");
        assert_eq!(convert(b">>", true, 1), b">>");
    }
}
