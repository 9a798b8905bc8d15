//! Dead letters: copies of the messages a consumer's sink refused for good
//! ([`Verdict::Rejected`](super::Verdict::Rejected)), so the consumer can move
//! past them without losing them, and an operator can list them and send
//! them again (`ringmx ship --dead-letters`, `--redrive`).
//!
//! ```text
//! <spool>/consumers/<name>/dead/<key>.eml    the message: Received: field + body, as stored (CRLF)
//! <spool>/consumers/<name>/dead/<key>.json   what it was and why it was refused (DeadLetter)
//! ```
//!
//! A message whose body cannot be read from the spool (a CRC mismatch, a
//! fragment missing for good) gets a JSON file only, with `damaged` set and
//! a reason saying so: listed, never silently dropped, and not redriven.
//! A redrive of a dead letter that some recipients refused (`refused_rcpts`)
//! goes to those recipients only.
//!
//! They are copies, so space reclamation never keeps a segment for them.
//! Each file is written to a temporary name, fsync'd and renamed; the JSON
//! file goes last, so a dead letter without one is an unfinished copy
//! (listing ignores it; the next refusal of that message writes it again).
//! The directory is fsync'd before the consumer's checkpoint moves past the
//! message. `<key>` is the parcel's idempotency key, so a message refused
//! twice (after a `--reset`) is one dead letter.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint::ConsumerDir;
use super::{OutletError, Parcel};
use crate::spool::{Location, QueueId, StoredEnvelope, StoredMessage};

/// The directory under a consumer's directory that holds its dead letters.
pub const DEAD_DIR: &str = "dead";

/// The JSON half of a dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The parcel's idempotency key (`<node_id>.<queue_id>`); names the files.
    pub key: String,
    /// The queue id.
    pub queue_id: String,
    /// The node id of the host that accepted it (empty for version 1 segments).
    pub node_id: String,
    /// Where it was stored: shard, segment, offset (the spool may have
    /// reclaimed that segment since).
    pub shard: u32,
    /// The segment it was stored in.
    pub segment: u64,
    /// Its record's offset there.
    pub offset: u64,
    /// The envelope.
    pub envelope: DeadEnvelope,
    /// Bytes of the message file that are the server's `Received:` field
    /// (folded over several lines); the body follows.
    pub received_bytes: usize,
    /// The next hop's answer.
    pub reason: String,
    /// The recipients refused, when only some were (LMTP); `null`: all.
    pub refused_rcpts: Option<Vec<String>>,
    /// When it was refused, unix seconds.
    pub time_unix: i64,
    /// The message could not be read from the spool (a CRC mismatch, a
    /// fragment missing for good): there is no `.eml`, nothing to redrive;
    /// the record says which message was lost to the damage.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub damaged: bool,
}

/// The envelope, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadEnvelope {
    /// Arrival time, unix seconds.
    pub arrival_unix: i64,
    /// The client's address, when known.
    pub client: Option<String>,
    /// HELO/EHLO name.
    pub helo: String,
    /// Reverse path; empty for the null sender.
    pub mail_from: String,
    /// MAIL FROM parameters.
    pub mail_params: String,
    /// Recipients.
    pub rcpts: Vec<String>,
}

/// A consumer's dead letters.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    dir: PathBuf,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A key as a file name: it is made of node id and queue id characters
/// already; anything else (a hand-edited file) becomes `_`.
fn file_stem(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write_file(path: &Path, parts: &[&[u8]]) -> Result<(), OutletError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{}.tmp", name.unwrap_or_default()));
    let mut f = File::create(&tmp).map_err(|e| OutletError::io("creating", &tmp, e))?;
    for p in parts {
        f.write_all(p)
            .map_err(|e| OutletError::io("writing", &tmp, e))?;
    }
    f.sync_data()
        .map_err(|e| OutletError::io("syncing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| OutletError::io("renaming", &tmp, e))
}

fn sync_dir(dir: &Path) -> Result<(), OutletError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| OutletError::io("syncing directory", dir, e))
}

impl DeadLetters {
    /// The dead letters of `consumer`.
    pub fn of(consumer: &ConsumerDir) -> Self {
        Self {
            dir: consumer.dir().join(DEAD_DIR),
        }
    }

    /// Their directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Copies a refused parcel here. Not durable until [`DeadLetters::sync`].
    ///
    /// # Errors
    /// Creating, writing or renaming a file failed.
    pub fn store(
        &self,
        p: &Parcel<'_>,
        reason: &str,
        refused_rcpts: Option<&[String]>,
    ) -> Result<(), OutletError> {
        self.write(p.key, p.msg, Some(p.data), reason, refused_rcpts)
    }

    /// Records a message whose body cannot be read from the spool (damage):
    /// the JSON only, `damaged` set, so `--dead-letters` lists it instead of
    /// it vanishing. Not durable until [`DeadLetters::sync`].
    ///
    /// # Errors
    /// Creating, writing or renaming a file failed.
    pub fn store_damaged(
        &self,
        key: &str,
        msg: &StoredMessage,
        reason: &str,
    ) -> Result<(), OutletError> {
        self.write(key, msg, None, reason, None)
    }

    fn write(
        &self,
        key: &str,
        msg: &StoredMessage,
        data: Option<&[u8]>,
        reason: &str,
        refused_rcpts: Option<&[String]>,
    ) -> Result<(), OutletError> {
        if !self.dir.is_dir() {
            fs::create_dir_all(&self.dir).map_err(|e| OutletError::io("creating", &self.dir, e))?;
            if let Some(parent) = self.dir.parent() {
                sync_dir(parent)?;
            }
        }
        let env = &msg.envelope;
        let rec = DeadLetter {
            key: key.to_owned(),
            queue_id: msg.id.to_string(),
            node_id: msg.node_id.clone(),
            shard: msg.id.shard(),
            segment: msg.location.segment,
            offset: msg.location.offset,
            envelope: DeadEnvelope {
                arrival_unix: env.arrival_unix,
                client: env.client.map(|c| c.to_string()),
                helo: env.helo.clone(),
                mail_from: env.mail_from.clone(),
                mail_params: env.mail_params.clone(),
                rcpts: env.rcpts.clone(),
            },
            received_bytes: msg.received.len(),
            reason: reason.to_owned(),
            refused_rcpts: refused_rcpts.map(<[String]>::to_vec),
            time_unix: now_unix(),
            damaged: data.is_none(),
        };
        let stem = file_stem(key);
        if let Some(data) = data {
            write_file(&self.dir.join(format!("{stem}.eml")), &[data])?;
        }
        // serde_json never fails on this plain struct.
        let json = serde_json::to_vec_pretty(&rec).unwrap_or_default();
        write_file(&self.dir.join(format!("{stem}.json")), &[&json, b"\n"])
    }

    /// Makes what [`DeadLetters::store`] and [`DeadLetters::remove`] did
    /// durable (one directory fsync for a batch).
    ///
    /// # Errors
    /// The fsync failed.
    pub fn sync(&self) -> Result<(), OutletError> {
        if self.dir.is_dir() {
            sync_dir(&self.dir)
        } else {
            Ok(())
        }
    }

    /// The dead letters, oldest refusal first (then by key).
    ///
    /// # Errors
    /// The directory cannot be listed, or a JSON file cannot be read or parsed.
    pub fn list(&self) -> Result<Vec<DeadLetter>, OutletError> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(OutletError::io("listing", &self.dir, e)),
        };
        let mut v = Vec::new();
        for entry in rd {
            let path = entry
                .map_err(|e| OutletError::io("listing", &self.dir, e))?
                .path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let text = fs::read(&path).map_err(|e| OutletError::io("reading", &path, e))?;
            let rec: DeadLetter =
                serde_json::from_slice(&text).map_err(|e| OutletError::BadDeadLetter {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            v.push(rec);
        }
        v.sort_by(|a, b| (a.time_unix, &a.key).cmp(&(b.time_unix, &b.key)));
        Ok(v)
    }

    /// The message of a dead letter, ready to be handed to a sink again.
    /// Addressed to the refused recipients only when the sink refused some
    /// of them (`refused_rcpts`): the others already have it.
    ///
    /// # Errors
    /// Its message file cannot be read, the JSON does not describe a
    /// message, or it is a record of damage (nothing to send).
    pub fn load(&self, rec: &DeadLetter) -> Result<StoredMessage, OutletError> {
        let path = self.dir.join(format!("{}.eml", file_stem(&rec.key)));
        let bad = |reason: String| OutletError::BadDeadLetter {
            path: path.with_extension("json"),
            reason,
        };
        if rec.damaged {
            return Err(bad(
                "the message was damaged in the spool and could not be read; there is \
                 nothing to send (remove its .json once dealt with)"
                    .into(),
            ));
        }
        let data = fs::read(&path).map_err(|e| OutletError::io("reading", &path, e))?;
        let id: QueueId = rec
            .queue_id
            .parse()
            .map_err(|e: crate::spool::SpoolError| bad(e.to_string()))?;
        if rec.received_bytes > data.len() {
            return Err(bad(format!(
                "received_bytes {} is more than the {} bytes of its message file",
                rec.received_bytes,
                data.len()
            )));
        }
        let (received, body) = data.split_at(rec.received_bytes);
        let env = &rec.envelope;
        let client = match &env.client {
            Some(c) => Some(c.parse().map_err(|_| bad(format!("client {c:?}")))?),
            None => None,
        };
        Ok(StoredMessage::from_parts(
            id,
            Location {
                segment: rec.segment,
                offset: rec.offset,
            },
            rec.node_id.clone(),
            StoredEnvelope {
                arrival_unix: env.arrival_unix,
                client,
                helo: env.helo.clone(),
                mail_from: env.mail_from.clone(),
                mail_params: env.mail_params.clone(),
                rcpts: match &rec.refused_rcpts {
                    Some(r) if !r.is_empty() => r.clone(),
                    _ => env.rcpts.clone(),
                },
                // Not kept in dead-letter records (Received: still says it).
                tls_version: None,
                tls_cipher: None,
                auth_id: None,
            },
            received.to_vec(),
            body.to_vec(),
        ))
    }

    /// Removes a dead letter (its JSON first, so a crash leaves at most an
    /// unlisted message file). Not durable until [`DeadLetters::sync`].
    ///
    /// # Errors
    /// A file exists and cannot be removed.
    pub fn remove(&self, key: &str) -> Result<(), OutletError> {
        let stem = file_stem(key);
        for ext in ["json", "eml"] {
            let path = self.dir.join(format!("{stem}.{ext}"));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(OutletError::io("removing", path, e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outlet::headers::HeaderFields;
    use crate::spool::tests::{write_test_spool, TempDir};
    use crate::spool::SpoolReader;

    /// Review finding: a redrive sent a dead letter to every recipient of
    /// the message, even when the sink had refused only some (LMTP): the
    /// others got it twice.
    #[test]
    fn a_redrive_goes_to_the_refused_recipients_only() {
        let dir = TempDir::new("dead-rcpts");
        write_test_spool(dir.path(), 2, 1 << 20);
        let spool = SpoolReader::open(dir.path()).unwrap();
        let msgs: Vec<StoredMessage> = spool.shard_messages(0).map(Result::unwrap).collect();
        let all = msgs[0].envelope.rcpts.clone();
        assert!(
            all.len() >= 2,
            "the test message has several recipients: {all:?}"
        );
        let cd = ConsumerDir::new(dir.path(), "t").unwrap();
        cd.create().unwrap();
        let dead = DeadLetters::of(&cd);
        let bump = bumpalo::Bump::new();
        for (m, refused) in msgs.iter().zip([Some(vec![all[1].clone()]), None]) {
            let mut data = m.received.clone();
            data.extend_from_slice(&m.body_bytes().unwrap());
            let key = crate::outlet::consumer::key_of(m);
            let headers = HeaderFields::parse(&bump, &data);
            let p = Parcel {
                key: &key,
                msg: m,
                data: &data,
                headers: &headers,
            };
            dead.store(&p, "550 5.1.1 no", refused.as_deref()).unwrap();
        }
        dead.sync().unwrap();
        let list = dead.list().unwrap();
        let by_key = |m: &StoredMessage| {
            let k = crate::outlet::consumer::key_of(m);
            list.iter().find(|d| d.key == k).unwrap()
        };
        let some = dead.load(by_key(&msgs[0])).unwrap();
        assert_eq!(some.envelope.rcpts, [all[1].clone()]);
        assert_eq!(some.body_bytes().unwrap(), msgs[0].body_bytes().unwrap());
        let every = dead.load(by_key(&msgs[1])).unwrap();
        assert_eq!(every.envelope.rcpts, msgs[1].envelope.rcpts);
    }
}
