//! The users file (`submission.users`): who may log in, and the password
//! check. `user:hash` per line, `#` comments and blank lines; fields after
//! the hash (Dovecot's passwd-file has uid, gid, home, ...) are ignored.
//! Hashes are argon2 PHC strings or bcrypt, bare or with Dovecot's scheme
//! prefix, so `htpasswd -B` and `doveadm pw` output can be pasted in.
//!
//! Checking a password is slow on purpose (that is the hash's job) and
//! blocking: [`Users::verify`] runs on a blocking thread, never on a shard
//! (see `server::auth`). Errors name the file and line, never the hash or
//! anything after the user name.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;

/// One user's stored hash, checked for form when the file is read.
#[derive(Clone)]
enum Hash {
    /// An argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    Argon2(String),
    /// A bcrypt hash (`$2y$10$...`, 60 characters).
    Bcrypt(String),
}

impl Hash {
    /// Reads a hash as written in the file; `Err` says what form it lacks.
    fn parse(field: &str) -> Result<Hash, String> {
        // Dovecot's `{SCHEME}` prefix (doveadm pw -s ARGON2ID / BLF-CRYPT).
        let (scheme, h) = match field.strip_prefix('{').and_then(|r| r.split_once('}')) {
            Some((s, h)) => (Some(s.to_ascii_uppercase()), h),
            None => (None, field),
        };
        match scheme.as_deref() {
            None | Some("ARGON2ID" | "ARGON2I") if h.starts_with("$argon2") => {
                let p = PasswordHash::new(h).map_err(|e| format!("bad argon2 hash: {e}"))?;
                if !matches!(p.algorithm.as_str(), "argon2id" | "argon2i") {
                    return Err(format!("{} is not argon2id or argon2i", p.algorithm));
                }
                if p.hash.is_none() {
                    return Err("argon2 hash has no hash part".into());
                }
                Ok(Hash::Argon2(h.to_owned()))
            }
            None | Some("BLF-CRYPT") if h.starts_with("$2") => {
                bcrypt_form(h)?;
                Ok(Hash::Bcrypt(h.to_owned()))
            }
            Some(s) => Err(format!(
                "scheme {{{s}}} is not supported: use {{ARGON2ID}} or {{BLF-CRYPT}}"
            )),
            None => Err(
                "the hash is not argon2 ($argon2id$...) or bcrypt ($2y$..., \
                         htpasswd -B)"
                    .into(),
            ),
        }
    }

    /// Checks `password` against the hash; constant-time in the compare
    /// (both crates compare the derived hash with `subtle`).
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Argon2(h) => PasswordHash::new(h)
                .is_ok_and(|p| Argon2::default().verify_password(password, &p).is_ok()),
            Hash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        }
    }

    /// The cost parameters, for the start-up line (`bcrypt cost 10`,
    /// `argon2id m=19456 t=2 p=1`).
    fn cost(&self) -> String {
        match self {
            Hash::Argon2(h) => match PasswordHash::new(h) {
                Ok(p) => format!("{} {}", p.algorithm, p.params),
                Err(_) => "argon2".into(),
            },
            Hash::Bcrypt(h) => format!("bcrypt cost {}", h.get(4..6).unwrap_or("?")),
        }
    }
}

/// `$2a$`, `$2b$` or `$2y$`, a two-digit cost 04..=31, `$`, then 53
/// characters of bcrypt's base64 (22 of salt, 31 of hash).
fn bcrypt_form(h: &str) -> Result<(), String> {
    let b = h.as_bytes();
    let variant_ok = matches!(b.get(..4), Some(b"$2a$" | b"$2b$" | b"$2y$"));
    let cost = h
        .get(4..6)
        .filter(|c| c.bytes().all(|d| d.is_ascii_digit()))
        .and_then(|c| c.parse::<u32>().ok());
    let alphabet = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'/';
    let ok = variant_ok
        && cost.is_some_and(|c| (4..=31).contains(&c))
        && b.get(6) == Some(&b'$')
        && b.len() == 60
        && b[7..].iter().all(|&c| alphabet(c));
    match ok {
        true => Ok(()),
        false => Err("bad bcrypt hash: want $2y$NN$ and 53 characters (htpasswd -B)".into()),
    }
}

/// A users file that cannot be used: which line, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read.
    #[error("users file {path}: cannot read it: {reason}")]
    Read {
        /// `submission.users`.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A line that is not `user:hash`.
    #[error("users file {path}:{line}: {reason}")]
    Line {
        /// `submission.users`.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// What is wrong (never the hash itself).
        reason: String,
    },
    /// No user at all: nobody could log in.
    #[error("users file {path}: no users in it: add user:hash lines")]
    Empty {
        /// `submission.users`.
        path: PathBuf,
    },
}

/// Who may log in, by login name (compared exactly, as Dovecot does).
#[derive(Clone)]
pub struct Users {
    by_name: HashMap<String, Hash>,
    /// Checked for a login name that is not in the file, with the result
    /// thrown away, so an unknown user costs what a known one does (no
    /// timing oracle for user names). The first user's hash: the same
    /// kind and cost as the others in a file made with one tool.
    dummy: Hash,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the hashes.
        f.debug_struct("Users")
            .field("count", &self.by_name.len())
            .finish_non_exhaustive()
    }
}

impl Users {
    /// Parses the text of a users file; `path` only names it in errors.
    ///
    /// # Errors
    /// The first bad line (no `:`, an empty or blank-containing name, a
    /// hash of no supported form, a user named twice), or no user at all.
    pub fn parse(text: &str, path: &Path) -> Result<Users, UsersError> {
        let mut by_name = HashMap::new();
        let mut dummy = None;
        for (i, raw) in text.lines().enumerate() {
            let bad = |reason: String| UsersError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let line = raw.trim_end_matches('\r').trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, rest)) = line.split_once(':') else {
                return Err(bad("want user:hash".into()));
            };
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
                return Err(bad("the user name is empty or has blanks".into()));
            }
            let field = rest.split(':').next().unwrap_or("");
            let hash = Hash::parse(field).map_err(|r| bad(format!("user {name}: {r}")))?;
            dummy.get_or_insert_with(|| hash.clone());
            if by_name.insert(name.to_owned(), hash).is_some() {
                return Err(bad(format!("user {name} is listed twice")));
            }
        }
        let dummy = dummy.ok_or_else(|| UsersError::Empty {
            path: path.to_path_buf(),
        })?;
        Ok(Users { by_name, dummy })
    }

    /// Reads and parses `path`.
    ///
    /// # Errors
    /// As [`Users::parse`], or the file cannot be read.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|e| UsersError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Users::parse(&text, path)
    }

    /// Whether `user` logs in with `password`. Blocking and slow (the
    /// hash's cost): call it off the shard threads. An unknown user pays
    /// for one hash check too.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.by_name.get(user) {
            Some(h) => h.verify(password),
            None => {
                let _ = self.dummy.verify(password);
                false
            }
        }
    }

    /// Users in the file.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Always false: a file without users is refused.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// How many users, and the hash costs in use (for the start-up line).
    pub fn describe(&self) -> String {
        let mut costs: Vec<String> = self.by_name.values().map(Hash::cost).collect();
        costs.sort();
        costs.dedup();
        format!("{} users ({})", self.by_name.len(), costs.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Low costs (bcrypt 4, argon2 m=256 t=1 p=1) keep the tests quick.
    fn bcrypt_of(pw: &str) -> String {
        // `$2y$`, as htpasswd -B writes it.
        bcrypt::hash_with_salt(pw, 4, [7u8; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY)
    }

    fn argon2_of(pw: &str) -> String {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"fixed-test-salt!").unwrap();
        let params = argon2::Params::new(256, 1, 1, None).unwrap();
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(pw.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn p() -> &'static Path {
        Path::new("users")
    }

    #[test]
    fn both_kinds_and_dovecot_prefixes_verify() {
        let alice = bcrypt_of("secret");
        let text = format!(
            "# comment\n\nalice:{alice}\nbob:{}::1000:1000::/home/bob\r\n\
             carol:{{ARGON2ID}}{}\ndave:{{BLF-CRYPT}}{alice}\n",
            argon2_of("hunter2"),
            argon2_of("carol-pw")
        );
        let u = Users::parse(&text, p()).unwrap();
        assert_eq!(u.len(), 4);
        assert!(u.verify("alice", b"secret"));
        assert!(!u.verify("alice", b"Secret"));
        assert!(u.verify("bob", b"hunter2"));
        assert!(!u.verify("bob", b"hunter"));
        assert!(u.verify("carol", b"carol-pw"));
        assert!(u.verify("dave", b"secret"));
        // Unknown: false, even with a password some user has.
        assert!(!u.verify("mallory", b"secret"));
        assert!(!u.verify("ALICE", b"secret"));
        assert!(u.describe().starts_with("4 users ("), "{}", u.describe());
    }

    /// What `doveadm pw -s BLF-CRYPT -r 5 -p secret` and `doveadm pw -s
    /// ARGON2ID -p secret` (Dovecot 2.3.19) printed, pasted as they come.
    #[test]
    fn doveadm_output_verifies() {
        let text = "a:{BLF-CRYPT}$2y$05$PRADJS.qsDKCoLKnAOHgHuQzQkEOIN6loObpVAO8R1GUamnGo5BxS\n\
             b:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$5hQxB+jYltCKut8yuyFobA$\
             FaIwWF/EGzpJ0yKeHCsHmFMOPAutW/q0ZptIF+tE1bM\n";
        let u = Users::parse(text, p()).unwrap();
        assert!(u.verify("a", b"secret") && u.verify("b", b"secret"));
        assert!(!u.verify("a", b"secreT") && !u.verify("b", b"secreT"));
        let d = u.describe();
        assert!(
            d.contains("bcrypt cost 05") && d.contains("argon2id m=65536,t=3,p=1"),
            "{d}"
        );
    }

    #[test]
    fn bad_lines_name_file_and_line_and_never_the_hash() {
        let alice = bcrypt_of("secret");
        let cost99 = alice.replacen("$04$", "$99$", 1);
        let bad_cost = format!("alice:{cost99}\n");
        for (text, line, want) in [
            ("alice\n", 1, "want user:hash"),
            ("# x\n:$2y$04$abc\n", 2, "user name is empty"),
            ("a b:x\n", 1, "blanks"),
            ("alice:plaintext\n", 1, "is not argon2"),
            ("alice:$2y$04$short\n", 1, "bad bcrypt hash"),
            (bad_cost.as_str(), 1, "bad bcrypt"),
            ("alice:$argon2id$nonsense\n", 1, "argon2 hash"),
            ("alice:{SHA512-CRYPT}$6$x\n", 1, "scheme {SHA512-CRYPT}"),
        ] {
            let e = Users::parse(text, p()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("users file users:{line}: ")), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains(&alice[7..]), "{e}");
        }
        let twice = format!("alice:{alice}\nalice:{alice}\n");
        let e = Users::parse(&twice, p()).unwrap_err().to_string();
        assert!(e.contains("users:2: user alice is listed twice"), "{e}");
        let e = Users::parse("# nobody\n", p()).unwrap_err().to_string();
        assert!(e.contains("no users"), "{e}");
    }
}
