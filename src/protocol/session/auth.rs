//! SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, on
//! submission listeners only: the AUTH handler, the SASL exchange (334
//! challenges, the client's base64 lines, `*` to cancel) and the verdict.
//!
//! The engine never checks a password: once it has a user name and a
//! password it returns [`Event::Auth`](super::Event::Auth); the runtime
//! verifies them off the shard (the hash is slow on purpose) and answers
//! with [`Session::handle_auth`]. The password is kept only until then, and
//! AUTH lines are never recorded as refusals with their argument.

use super::super::reply;
use super::{Answer, Auth, CloseReason, Effect, Greeted, Handled, Mode, Session, Tls, Tx};

/// The longest AUTH command line or SASL response line taken, CRLF
/// included, whatever smtp.max_command_line_bytes says: RFC 4954 §4, a
/// server takes the longest response its mechanisms make (PLAIN's is over
/// 1000 octets of base64), and 12288 is the figure RFC 4954 gives. The
/// read buffer must be larger (checked with the settings).
pub const SASL_LINE_BYTES: usize = 12288;

/// Where a SASL exchange stands: which client line comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sasl {
    /// PLAIN's response: `authzid NUL authcid NUL password`.
    Plain,
    /// LOGIN's user name.
    LoginUser,
    /// LOGIN's password.
    LoginPassword,
}

/// The runtime's answer to [`Event::Auth`](super::Event::Auth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    /// The password is right: `235 2.7.0`.
    Accepted,
    /// Unknown user or wrong password: `535 5.7.8`.
    Rejected,
    /// Wrong, and the client's address is now over
    /// submission.auth_max_failures: `421 4.7.0` and close.
    Blocked,
    /// The check could not run (no users loaded): `454 4.7.0`.
    Unavailable,
}

impl Session {
    /// AUTH (RFC 4954 §4): refused unless this is a submission listener
    /// (`502`, as any verb not offered), after TLS (`538`), after EHLO,
    /// outside a transaction and not yet authenticated (`503`).
    pub(super) fn auth(&mut self, mechanism: &str, initial: Option<&str>) -> Handled<'static> {
        match self.auth {
            Auth::Off => return self.junk(Handled::error(reply::NOT_IMPLEMENTED)),
            Auth::Done => return Handled::error(reply::AUTH_ALREADY),
            Auth::Offered => {}
        }
        if self.tls != Tls::Active {
            return Handled::error(reply::AUTH_NEEDS_TLS);
        }
        if self.greeted != Greeted::Ehlo {
            return Handled::error(reply::AUTH_NEEDS_EHLO);
        }
        if self.tx != Tx::Idle {
            return Handled::error(reply::AUTH_IN_TRANSACTION);
        }
        let step = if mechanism.eq_ignore_ascii_case("PLAIN") {
            Sasl::Plain
        } else if mechanism.eq_ignore_ascii_case("LOGIN") {
            Sasl::LoginUser
        } else {
            return Handled::error(reply::AUTH_MECHANISM);
        };
        match initial {
            Some(r) => self.sasl_response(step, r.as_bytes()),
            None => self.challenge(step),
        }
    }

    /// The line limit in command mode for a line starting with `input`:
    /// [`SASL_LINE_BYTES`] for AUTH where it is offered, else
    /// smtp.max_command_line_bytes.
    pub(super) fn command_line_cap(&self, input: &[u8]) -> usize {
        let limit = self.cfg.max_command_line_bytes;
        let is_auth = input
            .get(..5)
            .is_some_and(|v| v.eq_ignore_ascii_case(b"AUTH "));
        match is_auth && self.auth == Auth::Offered && self.tls == Tls::Active {
            true => limit.max(SASL_LINE_BYTES),
            false => limit,
        }
    }

    /// Sends the challenge for `step` and waits for the client's line.
    fn challenge(&mut self, step: Sasl) -> Handled<'static> {
        self.mode = Mode::Sasl(step);
        Handled::reply(match step {
            Sasl::Plain => reply::AUTH_CONTINUE,
            Sasl::LoginUser => reply::AUTH_USERNAME,
            Sasl::LoginPassword => reply::AUTH_PASSWORD,
        })
    }

    /// One client response (the initial one, or a line after a 334):
    /// `*` cancels, `=` is empty, anything else must be base64.
    fn sasl_response(&mut self, step: Sasl, line: &[u8]) -> Handled<'static> {
        self.mode = Mode::Commands;
        if line == b"*" {
            self.forget_credentials();
            return Handled::error(reply::AUTH_CANCELLED);
        }
        // A scratch buffer: AUTH is once per connection, not per message.
        let mut decoded = Vec::new();
        let ok = line == b"=" || decode_base64(line, &mut decoded);
        let h = match (ok, step) {
            (false, _) => Handled::error(reply::AUTH_BAD_RESPONSE),
            (true, Sasl::Plain) => self.plain(&decoded),
            (true, Sasl::LoginUser) => match std::str::from_utf8(&decoded) {
                Ok(u) if !u.is_empty() => {
                    self.auth_user.clear();
                    self.auth_user.push_str(u);
                    self.challenge(Sasl::LoginPassword)
                }
                _ => Handled::error(reply::AUTH_BAD_RESPONSE),
            },
            (true, Sasl::LoginPassword) => {
                self.auth_secret.clear();
                self.auth_secret.extend_from_slice(&decoded);
                self.mode = Mode::AwaitAuth;
                Handled::effect(Effect::Auth)
            }
        };
        wipe(&mut decoded);
        if h.is_refusal() {
            self.forget_credentials();
        }
        h
    }

    /// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`. Acting for another
    /// user (an authzid other than the authcid) is not offered: `535`.
    fn plain(&mut self, msg: &[u8]) -> Handled<'static> {
        let mut parts = msg.splitn(3, |&b| b == 0);
        let (Some(authz), Some(authc), Some(pass)) = (parts.next(), parts.next(), parts.next())
        else {
            return Handled::error(reply::AUTH_BAD_RESPONSE);
        };
        let Ok(user) = std::str::from_utf8(authc) else {
            return Handled::error(reply::AUTH_BAD_RESPONSE);
        };
        if user.is_empty() {
            return Handled::error(reply::AUTH_BAD_RESPONSE);
        }
        if !authz.is_empty() && authz != authc {
            return Handled::error(reply::AUTH_FAILED);
        }
        self.auth_user.clear();
        self.auth_user.push_str(user);
        self.auth_secret.clear();
        self.auth_secret.extend_from_slice(pass);
        self.mode = Mode::AwaitAuth;
        Handled::effect(Effect::Auth)
    }

    /// A line in [`Mode::Sasl`]: the client's answer to a 334. Over
    /// [`SASL_LINE_BYTES`] it is dropped to its end and answered `500`
    /// (the exchange is over); only CRLF-terminated lines are read.
    pub(super) fn sasl_line<'a>(
        &mut self,
        input: &'a [u8],
        out: &mut Vec<u8>,
    ) -> (usize, Option<super::Event<'a>>) {
        let Mode::Sasl(step) = self.mode else {
            return (0, Some(super::Event::NeedInput));
        };
        let cap = self.cfg.max_command_line_bytes.max(SASL_LINE_BYTES);
        let Some(line) = self.scanner.next_line(input) else {
            if input.len() >= cap {
                self.forget_credentials();
                self.scanner.reset();
                self.mode = Mode::DiscardLine;
                return (input.len(), None);
            }
            return (0, Some(super::Event::NeedInput));
        };
        let h = if line.content_len() + 2 > cap {
            self.mode = Mode::Commands;
            self.forget_credentials();
            Handled::error(reply::LINE_TOO_LONG)
        } else {
            self.sasl_response(step, &input[..line.content_len()])
        };
        let first = self.refusals.len();
        let ev = self.respond(out, h);
        // Never the line itself: it is a credential.
        self.refusals.name_since(first, b"AUTH");
        (line.end, ev)
    }

    /// The runtime's verdict on the credentials of [`Event::Auth`]
    /// (see [`AuthVerdict`]); writes the AUTH reply and forgets the
    /// password. Ignored unless a verdict is awaited. Then hand in input
    /// again.
    ///
    /// [`Event::Auth`]: super::Event::Auth
    pub fn handle_auth(&mut self, verdict: AuthVerdict, out: &mut Vec<u8>) {
        if self.mode != Mode::AwaitAuth {
            return;
        }
        self.mode = Mode::Commands;
        wipe(&mut self.auth_secret);
        let h = match verdict {
            AuthVerdict::Accepted => {
                self.auth = Auth::Done;
                Handled::with(Answer::Line(reply::AUTH_OK), Effect::Continue)
            }
            AuthVerdict::Rejected => Handled::error(reply::AUTH_FAILED),
            AuthVerdict::Blocked => Handled::close(CloseReason::AuthFailures),
            AuthVerdict::Unavailable => Handled::reply(reply::AUTH_TEMPFAIL),
        };
        if verdict != AuthVerdict::Accepted {
            self.auth_user.clear();
        }
        let first = self.refusals.len();
        let before = out.len();
        // A close shows as Event::Close on the next handle_input.
        let _ = self.respond(out, h);
        self.count_command(|| super::tally::verb_index(b"AUTH"), out, before);
        self.refusals.name_since(first, b"AUTH");
    }

    /// The user name and password awaiting a verdict
    /// ([`Event::Auth`](super::Event::Auth)); `None` otherwise.
    pub fn pending_auth(&self) -> Option<(&str, &[u8])> {
        (self.mode == Mode::AwaitAuth).then_some((self.auth_user.as_str(), &self.auth_secret[..]))
    }

    /// The user this session authenticated as, once AUTH succeeded.
    pub fn auth_identity(&self) -> Option<&str> {
        (self.auth == Auth::Done).then_some(self.auth_user.as_str())
    }

    /// Whether `from` belongs to the logged-in user
    /// (submission.sender_login_match): the login itself, or for a login
    /// without `@`, that local part at one of smtp.accepted_domains.
    pub(super) fn owns_sender(&self, from: &str) -> bool {
        let user = self.auth_user.as_str();
        if from.eq_ignore_ascii_case(user) {
            return true;
        }
        if user.contains('@') {
            return false;
        }
        match from.rsplit_once('@') {
            Some((local, domain)) => {
                local == user
                    && self
                        .cfg
                        .accepted_domains
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(domain))
            }
            None => false,
        }
    }

    /// Drops the user name and password of an exchange that ended.
    fn forget_credentials(&mut self) {
        wipe(&mut self.auth_secret);
        if self.auth != Auth::Done {
            self.auth_user.clear();
        }
    }
}

/// The reply a refusal of AUTH is named with: the verb and mechanism,
/// never the initial response (a credential).
pub(super) fn redact(line: &[u8]) -> &[u8] {
    let is_auth = line
        .get(..4)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"AUTH"))
        && line.get(4).is_none_or(|&b| b == b' ');
    if !is_auth {
        return line;
    }
    let after_mech = line
        .iter()
        .enumerate()
        .skip(5)
        .find(|&(_, &b)| b == b' ')
        .map_or(line.len(), |(i, _)| i);
    &line[..after_mech]
}

/// Overwrites a buffer that held a credential, then empties it.
fn wipe(b: &mut Vec<u8>) {
    b.iter_mut().for_each(|x| *x = 0);
    // Keeps the overwrite from being optimised away before the clear.
    std::hint::black_box(&b);
    b.clear();
}

/// Standard base64 (RFC 4648 §4) with padding, as RFC 4954 §4 requires;
/// appends to `out`. False on any other byte, bad padding or length.
pub(super) fn decode_base64(input: &[u8], out: &mut Vec<u8>) -> bool {
    if input.is_empty() || input.len() % 4 != 0 {
        return false;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let chunks = input.len() / 4;
    for (i, q) in input.chunks_exact(4).enumerate() {
        let pad = match (q[2], q[3]) {
            (b'=', b'=') => 2,
            (_, b'=') => 1,
            _ => 0,
        };
        if pad > 0 && i + 1 != chunks {
            return false;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            let Some(v) = val(c) else { return false };
            n = (n << 6) | v;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_strictly() {
        let mut v = Vec::new();
        assert!(decode_base64(b"AHVzZXIAcGFzcw==", &mut v));
        assert_eq!(v, b"\0user\0pass");
        v.clear();
        assert!(decode_base64(b"YWJj", &mut v));
        assert_eq!(v, b"abc");
        v.clear();
        assert!(decode_base64(b"YWI=", &mut v));
        assert_eq!(v, b"ab");
        for bad in [
            &b"YWJ"[..],
            b"YW=j",
            b"YWI=YWJj",
            b"Y WJ",
            b"",
            b"====",
            b"YWJj\r",
        ] {
            assert!(!decode_base64(bad, &mut Vec::new()), "{bad:?}");
        }
    }

    #[test]
    fn auth_lines_are_named_without_their_response() {
        assert_eq!(redact(b"AUTH PLAIN AHVzZXIAcGFzcw=="), b"AUTH PLAIN");
        assert_eq!(redact(b"auth login"), b"auth login");
        assert_eq!(redact(b"MAIL FROM:<a@b>"), b"MAIL FROM:<a@b>");
        assert_eq!(redact(b"AUTHX y z"), b"AUTHX y z");
    }
}
