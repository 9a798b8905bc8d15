//! `maildir:/path`: each message becomes one file in a Maildir (the
//! format Dovecot, Courier, mutt and notmuch read), for a mailbox on this
//! host, or as the simplest durable hand-off to a program that watches
//! `new/`.
//!
//! A message is written to `tmp/`, fsync'd, renamed into `new/`; the
//! batch's renames are made durable by one fsync of `new/` before any
//! parcel is `Accepted`. The file is `Return-Path: <sender>`, the server's
//! `Received:` field and the body, with CRLF turned into LF (the Maildir
//! convention, as `ringmx spool export --format maildir` writes). Its name,
//! `<arrival>.<key>.ringmx`, derives from the idempotency key, so a
//! re-delivery after a crash replaces the same file instead of adding a
//! second (once a mail reader has moved it to `cur/`, a re-delivery does
//! add one to `new/`).
//!
//! The directory and its `tmp/ new/ cur/` are created when the sink opens.
//! A write that fails later (the disk is full, the directory is gone) defers
//! that parcel and the rest of the batch: the consumer retries them.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::outlet::sink::{Parcel, Sink, SinkError, Verdict};

/// The sink.
pub struct Maildir {
    root: PathBuf,
}

impl Maildir {
    /// Opens (creating if needed) the Maildir `rest` names: the part of a
    /// `maildir:` URL after the scheme (`maildir:/var/mail/in`, or
    /// `maildir:///var/mail/in`).
    ///
    /// # Errors
    /// An empty path, or one where the directories cannot be created.
    pub fn open(rest: &str) -> Result<Self, SinkError> {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(SinkError(
                "maildir: no path; write maildir:/path/to/Maildir".into(),
            ));
        }
        let root = PathBuf::from(path);
        for sub in ["tmp", "new", "cur"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|e| {
                SinkError(format!(
                    "maildir: cannot create {}: {e} (check the path and its permissions)",
                    d.display()
                ))
            })?;
        }
        Ok(Self { root })
    }

    /// The file name a parcel gets.
    pub fn file_name(p: &Parcel<'_>) -> String {
        let key: String = p
            .key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}.{key}.ringmx", p.msg.envelope.arrival_unix)
    }

    /// Writes one parcel into `tmp/` and renames it into `new/`.
    fn put(&self, p: &Parcel<'_>, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        buf.extend_from_slice(&p.msg.return_path());
        buf.extend_from_slice(p.data);
        crlf_to_lf(buf);
        let name = Self::file_name(p);
        let tmp = self.root.join("tmp").join(&name);
        let mut f = File::create(&tmp)?;
        f.write_all(buf)?;
        f.sync_data()?;
        drop(f);
        fs::rename(&tmp, self.root.join("new").join(&name))
    }
}

/// Turns every CRLF into LF, in place (a bare CR stays). Jumps from CR to
/// CR with memchr and moves the runs between: a byte-at-a-time loop was
/// half of a shipped message's instructions.
fn crlf_to_lf(buf: &mut Vec<u8>) {
    let mut w = 0;
    let mut r = 0;
    while let Some(i) = memchr::memchr(b'\r', &buf[r..]) {
        let cr = r + i;
        if buf.get(cr + 1) == Some(&b'\n') {
            // Keep r..cr, drop the CR.
            buf.copy_within(r..cr, w);
            w += cr - r;
            r = cr + 1;
        } else {
            // A bare CR: kept with the run.
            buf.copy_within(r..=cr, w);
            w += cr + 1 - r;
            r = cr + 1;
        }
    }
    let n = buf.len() - r;
    buf.copy_within(r.., w);
    buf.truncate(w + n);
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Sink for Maildir {
    fn deliver(&mut self, batch: &[Parcel<'_>]) -> Result<Vec<Verdict>, SinkError> {
        let mut buf = Vec::new();
        let mut written = 0;
        let mut failure = None;
        for p in batch {
            match self.put(p, &mut buf) {
                Ok(()) => written += 1,
                Err(e) => {
                    failure = Some(format!(
                        "maildir {}: writing {}: {e}",
                        self.root.display(),
                        p.key
                    ));
                    break;
                }
            }
        }
        if written > 0 {
            let new = self.root.join("new");
            sync_dir(&new).map_err(|e| {
                SinkError(format!("maildir: syncing directory {}: {e}", new.display()))
            })?;
        }
        let mut v = vec![Verdict::Accepted; written];
        if let Some(why) = failure {
            v.resize(batch.len(), Verdict::Deferred(why));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_becomes_lf_and_a_bare_cr_stays() {
        for (inp, out) in [
            (&b"a\r\nb\r\n"[..], &b"a\nb\n"[..]),
            (b"\r\r\n\r", b"\r\n\r"),
            (b"", b""),
            (b"\n\r\n", b"\n\n"),
            (b"no line end", b"no line end"),
            (b"x\ry\r\nz\r", b"x\ry\nz\r"),
            (b"\r\n\r\n\r\n", b"\n\n\n"),
            (b"\r\r\r", b"\r\r\r"),
        ] {
            let mut v = inp.to_vec();
            crlf_to_lf(&mut v);
            assert_eq!(v, out, "{inp:?}");
        }
    }

    #[test]
    fn a_url_without_a_path_is_refused_with_the_form_to_use() {
        let e = Maildir::open("").err().unwrap();
        assert!(e.0.contains("maildir:/path"), "{e}");
    }
}
