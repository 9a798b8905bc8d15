//! `ringmx spool export`: committed messages as `.eml` files, a Maildir or
//! one mboxrd file (formats in the [parent module's docs](super)). Maildir
//! and mbox get LF line ends; mbox quotes `>*From ` lines.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use ringmx::civil::DateTime;
use ringmx::spool::{SpoolReader, StoredMessage};

use super::{werr, CliError, Outcome};

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

/// `ringmx spool export --format FORMAT DIR`: every committed message into
/// `dir` (created if missing); one summary line to `out`.
pub(super) fn export(
    reader: &SpoolReader,
    format: ExportFormat,
    dir: &Path,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    fs::create_dir_all(dir).map_err(|e| CliError::write("creating", dir, e))?;
    let mut damage = 0;
    let n = match format {
        ExportFormat::Eml => eml(reader, dir, &mut damage)?,
        ExportFormat::Maildir => maildir(reader, dir, &mut damage)?,
        ExportFormat::Mbox => mbox(reader, dir, &mut damage)?,
    };
    writeln!(out, "exported {n} messages to {}", dir.display()).map_err(werr)?;
    Ok(if damage == 0 {
        Outcome::Clean
    } else {
        Outcome::Problems
    })
}

/// The intact messages of `reader`, in order: damage met on the way, and
/// messages whose body fails its check, are reported on stderr, counted
/// into `damage` and skipped; any other error ends the walk.
fn intact<'a>(
    reader: &'a SpoolReader,
    damage: &'a mut usize,
) -> Result<impl Iterator<Item = Result<StoredMessage, CliError>> + 'a, CliError> {
    Ok(reader.messages()?.filter_map(move |m| match m {
        Ok(m) => match io::copy(&mut m.body(), &mut io::sink()) {
            // Read once to check every fragment before anything is written.
            Ok(_) => Some(Ok(m)),
            Err(e) => {
                *damage += 1;
                eprintln!("ringmx spool: skipping message {}: {e}", m.id);
                None
            }
        },
        Err(e) => super::report_damage(e, damage).map(|e| Err(e.into())),
    }))
}

/// `DIR/<id>.eml` per message, CRLF as stored; the number written.
fn eml(reader: &SpoolReader, dir: &Path, damage: &mut usize) -> Result<u64, CliError> {
    let mut n = 0;
    for m in intact(reader, damage)? {
        let m = m?;
        let path = dir.join(format!("{}.eml", m.id));
        let mut f = create(&path)?;
        m.write_to(&mut f)?;
        f.flush()
            .map_err(|e| CliError::write("writing", &path, e))?;
        n += 1;
    }
    Ok(n)
}

/// A Maildir: each message written to `tmp/`, then renamed into `new/`.
fn maildir(reader: &SpoolReader, dir: &Path, damage: &mut usize) -> Result<u64, CliError> {
    for sub in ["tmp", "new", "cur"] {
        let d = dir.join(sub);
        fs::create_dir_all(&d).map_err(|e| CliError::write("creating", &d, e))?;
    }
    let mut n = 0;
    for m in intact(reader, damage)? {
        let m = m?;
        // Maildir names: time.unique.host; the queue id is unique.
        let name = format!("{}.{}.ringmx", m.envelope.arrival_unix, m.id);
        let tmp = dir.join("tmp").join(&name);
        let mut f = create(&tmp)?;
        let mut lf = LfWriter::new(&mut f, false);
        write_converted(&m, &mut lf)?;
        lf.finish()
            .map_err(|e| CliError::write("writing", &tmp, e))?;
        f.flush().map_err(|e| CliError::write("writing", &tmp, e))?;
        drop(f);
        let new = dir.join("new").join(&name);
        fs::rename(&tmp, &new).map_err(|e| CliError::write("renaming into", &new, e))?;
        n += 1;
    }
    Ok(n)
}

/// One mboxrd file, `DIR/ringmx.mbox`.
fn mbox(reader: &SpoolReader, dir: &Path, damage: &mut usize) -> Result<u64, CliError> {
    let path = dir.join("ringmx.mbox");
    let werr = |e| CliError::write("writing", &path, e);
    let mut f = create(&path)?;
    let mut n = 0;
    for m in intact(reader, damage)? {
        let m = m?;
        let sender = if m.envelope.mail_from.is_empty() {
            "MAILER-DAEMON"
        } else {
            m.envelope.mail_from.as_str()
        };
        writeln!(f, "From {sender} {}", asctime(m.envelope.arrival_unix)).map_err(werr)?;
        let mut lf = LfWriter::new(&mut f, true);
        write_converted(&m, &mut lf)?;
        lf.finish().map_err(werr)?;
        // mbox: a message ends with a blank line before the next `From `.
        f.write_all(b"\n").map_err(werr)?;
        n += 1;
    }
    f.flush().map_err(werr)?;
    Ok(n)
}

fn create(path: &Path) -> Result<BufWriter<File>, CliError> {
    File::create(path)
        .map(BufWriter::new)
        .map_err(|e| CliError::write("creating", path, e))
}

fn write_converted<W: Write>(m: &StoredMessage, lf: &mut LfWriter<W>) -> Result<(), CliError> {
    Ok(m.write_to(lf)?)
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

/// `Sun Nov 29 13:44:42 2026` (UTC): the asctime form mbox `From ` lines use.
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

    #[test]
    fn asctime_dates() {
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
