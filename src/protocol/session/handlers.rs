//! One handler per command. Each checks the command against the session's
//! state, updates that state and returns its reply plus an [`Effect`];
//! none writes a reply itself ([`Session::respond`] does). Handlers that
//! switch to reading a body set the mode; the body itself is [`super::body`]'s.

use super::super::command::{self, BodyType, Command, MailParams};
use super::super::recipients::{Lookup, Remote};
use super::super::reply;
use super::{Answer, Reply};
use super::{Auth, BdatText, CloseReason, Effect, Greeted, Handled, Mode, Session, Tls, Tx};

impl Session {
    /// Parses one command line (terminator removed) and runs its handler.
    pub(super) fn command(&mut self, line: &[u8]) -> Handled<'static> {
        let cmd = match command::parse(line) {
            Ok(c) => c,
            // Without a valid size we cannot tell where the chunk that
            // follows ends; reading it as commands would let its bytes
            // smuggle commands in. Close, with one reply that says why.
            Err(command::ParseError::BdatSyntax) => {
                return Handled::close(CloseReason::BdatUnknownSize)
            }
            Err(e @ command::ParseError::Unrecognized) => {
                return self.junk(Handled::error(e.reply()))
            }
            Err(e) => return Handled::error(e.reply()),
        };
        match cmd {
            Command::Helo(name) => self.helo(name, Greeted::Helo),
            Command::Ehlo(name) => self.helo(name, Greeted::Ehlo),
            Command::Mail {
                from,
                params,
                raw_params,
            } => self.mail(from, params, raw_params),
            Command::Rcpt { to, domain } => self.rcpt(to, domain),
            Command::Data => self.data_command(),
            Command::Bdat { size, last } => self.bdat_command(size, last),
            Command::Rset => self.rset(),
            Command::Noop => self.junk(Handled::reply(reply::OK)),
            Command::Quit => Handled::close(CloseReason::Quit),
            Command::Vrfy => self.junk(Handled::reply(reply::VRFY)),
            Command::Help => self.junk(Handled::reply(reply::HELP)),
            Command::Starttls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
            Command::NotImplemented => self.junk(Handled::error(reply::NOT_IMPLEMENTED)),
            Command::Http => Handled::close(CloseReason::Http),
        }
    }

    /// Counts a junk command (Postfix's `smtpd_junk_command_limit`): past
    /// smtp.max_junk_commands since the last accepted message, its one
    /// reply is the `421` that closes, instead of `h`.
    pub(super) fn junk(&mut self, h: Handled<'static>) -> Handled<'static> {
        if self.junk_over() {
            return Handled::close(CloseReason::TooManyJunk);
        }
        h
    }

    /// Counts a junk command; true if it is past the limit.
    fn junk_over(&mut self) -> bool {
        self.junk = self.junk.saturating_add(1);
        self.junk > self.cfg.max_junk_commands
    }

    /// RSET (RFC 5321 §4.1.1.5), a junk command.
    fn rset(&mut self) -> Handled<'static> {
        if self.junk_over() {
            return Handled::close(CloseReason::TooManyJunk);
        }
        Handled::with(Answer::Line(reply::OK), self.reset_transaction())
    }

    /// HELO and EHLO (RFC 5321 §4.1.1.1).
    fn helo(&mut self, name: &str, how: Greeted) -> Handled<'static> {
        self.helo.clear();
        self.helo.push_str(name);
        self.greeted = how;
        let answer = if how == Greeted::Ehlo {
            Answer::Ehlo
        } else {
            Answer::Helo
        };
        // RFC 5321 §4.1.4: HELO/EHLO resets any transaction.
        Handled::with(answer, self.reset_transaction())
    }

    /// STARTTLS (RFC 3207 §4): `502` when not offered (no certificate, as
    /// any verb we do not offer), `503` when TLS is already on or inside a
    /// transaction; else no reply yet: the runtime answers through
    /// `handle_starttls`.
    fn starttls(&mut self) -> Handled<'static> {
        match self.tls {
            Tls::Active => return Handled::error(reply::TLS_ALREADY_ACTIVE),
            Tls::Unavailable => return self.junk(Handled::error(reply::NOT_IMPLEMENTED)),
            Tls::Offered => {}
        }
        if self.tx != Tx::Idle {
            return Handled::error(reply::TLS_IN_TRANSACTION);
        }
        Handled::effect(Effect::Starttls)
    }

    /// MAIL FROM (RFC 5321 §4.1.1.2).
    fn mail(&mut self, from: &str, params: MailParams, raw_params: &str) -> Handled<'static> {
        // Shutting down: no new transaction (one pipelined right after the
        // last message would otherwise hold the session open until the
        // grace period cuts it off).
        if self.shutdown_requested {
            return Handled::close(CloseReason::Shutdown);
        }
        if let Some(r) = self.mail_refusal(from, &params, raw_params) {
            return Handled::error(r);
        }
        // Backpressure: temporary and not the client's error, so it does
        // not count towards max_errors.
        if self.spool_full {
            return Handled::reply(reply::SPOOL_FULL);
        }
        // The client's own rate: temporary too, not an error.
        if self
            .rates
            .as_ref()
            .is_some_and(|r| !r.admit_message(self.last_input))
        {
            return Handled::reply(reply::MESSAGE_RATE);
        }
        self.arena.set_mail(from, params, raw_params);
        self.tx = Tx::Envelope;
        Handled::reply(reply::SENDER_OK)
    }

    /// Why MAIL cannot start a transaction now, if it cannot.
    fn mail_refusal(&self, from: &str, params: &MailParams, raw_params: &str) -> Option<Reply> {
        if self.greeted == Greeted::No {
            return Some(reply::NEED_HELO);
        }
        if self.tx != Tx::Idle {
            return Some(reply::NESTED_MAIL);
        }
        if self.tls_required && self.tls != Tls::Active {
            return Some(reply::TLS_REQUIRED);
        }
        match self.auth {
            // RFC 6409 §4.3 / RFC 4954 §6: submission needs a login.
            Auth::Offered => return Some(reply::AUTH_REQUIRED),
            // RFC 4954 §5: AUTH= belongs to the extension, not offered here.
            Auth::Off if params.auth => return Some(reply::BAD_PARAM),
            Auth::Done if self.sender_login_match && !self.owns_sender(from) => {
                return Some(reply::SENDER_LOGIN_MISMATCH)
            }
            _ => {}
        }
        // Parameters belong to extensions, which HELO did not negotiate.
        if self.greeted == Greeted::Helo && !raw_params.is_empty() {
            return Some(reply::BAD_PARAM);
        }
        if !from.is_ascii() && !params.smtputf8 {
            return Some(reply::UTF8_NOT_ALLOWED);
        }
        // RFC 1870 §6.1: refuse a declared size over the limit up front.
        if params.size.is_some_and(|s| s > self.cfg.max_message_bytes) {
            return Some(reply::MESSAGE_TOO_BIG);
        }
        None
    }

    /// RCPT TO (RFC 5321 §4.1.1.3).
    fn rcpt(&mut self, to: &str, domain: &str) -> Handled<'static> {
        if self.tx != Tx::Envelope {
            return Handled::error(reply::NEED_MAIL);
        }
        if !to.is_ascii() && !self.arena.params.smtputf8 {
            return Handled::error(reply::UTF8_NOT_ALLOWED);
        }
        // RFC 6409 §4.3: a logged-in user may send anywhere; no relay
        // check, no recipient lookups (those are the MX role's).
        if self.auth == Auth::Done {
            return self.rcpt_verdict(Lookup::Exists, to);
        }
        if !self.accepts_domain(domain) {
            self.rcpt_counts.relay_denied += 1;
            return Handled::error(reply::RELAY_DENIED);
        }
        if let Some(remote) = self.remote_policy(domain) {
            // RFC 5321 §4.5.1: postmaster exists without asking anyone.
            let local = to.len().saturating_sub(domain.len() + 1);
            if !to
                .get(..local)
                .is_some_and(|l| l.eq_ignore_ascii_case("postmaster"))
            {
                // Past the limit the answer is 452 anyway: spare the directory.
                if self.arena.rcpt_count() >= self.cfg.max_recipients {
                    return self.rcpt_verdict(Lookup::Exists, to);
                }
                self.pending_to.clear();
                self.pending_to.push_str(to);
                self.mode = Mode::AwaitLookup {
                    remote,
                    deadline: self
                        .last_input
                        .checked_add(self.cfg.recipient_lookup_timeout),
                };
                return Handled::effect(Effect::Lookup);
            }
        }
        let known = self
            .recipients
            .as_ref()
            .map_or(Lookup::Exists, |m| m.lookup(to, domain));
        self.rcpt_verdict(known, to)
    }

    /// The reply to a RCPT whose existence is known (at once from the map,
    /// or from a remote lookup's answer).
    pub(super) fn rcpt_verdict(&mut self, known: Lookup, to: &str) -> Handled<'static> {
        if known == Lookup::Unknown {
            self.rcpt_counts.unknown += 1;
            self.unknown_in_tx = true;
            // Junk, not an error: a list with a few dead addresses must not
            // cost the sender its session (smtp.max_errors is 10), yet an
            // address harvester gets smtp.max_junk_commands guesses per
            // message it actually delivers.
            return self.junk(Handled::reply(reply::UNKNOWN_RECIPIENT));
        }
        if self.arena.rcpt_count() >= self.cfg.max_recipients {
            self.rcpt_counts.over_limit += 1;
            // RFC 5321 §4.5.3.1.10: 452, and not a protocol error; but
            // junk, as a client that keeps sending them is not delivering.
            return self.junk(Handled::reply(reply::TOO_MANY_RECIPIENTS));
        }
        if self
            .rates
            .as_ref()
            .is_some_and(|r| !r.admit_recipient(self.last_input))
        {
            return Handled::reply(reply::RECIPIENT_RATE);
        }
        self.rcpt_counts.accepted += 1;
        self.arena.add_rcpt(to);
        Handled::reply(reply::RECIPIENT_OK)
    }

    /// The domain's remote policy, if settings give it one (they win over
    /// the map file).
    fn remote_policy(&self, domain: &str) -> Option<Remote> {
        let named = |l: &[String]| l.iter().any(|d| d.eq_ignore_ascii_case(domain));
        if named(&self.cfg.recipient_ldap_domains) {
            Some(Remote::Ldap)
        } else if named(&self.cfg.recipient_verify_domains) {
            Some(Remote::Verify)
        } else {
            None
        }
    }

    /// Recipient domain policy: no open relay (RFC 5321 §3.6.2). `domain`
    /// is the parser's, so a quoted `@` in the local part cannot fool it;
    /// an address literal is accepted only if configured as one.
    fn accepts_domain(&self, domain: &str) -> bool {
        // Only `postmaster` parses without a domain (§4.5.1).
        domain.is_empty()
            || self
                .cfg
                .accepted_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// DATA or BDAT without an accepted recipient: `554 5.5.1`. A failed
    /// command, unless a recipient was refused as unknown in this
    /// transaction: a pipelining client sends DATA before it can see that
    /// (RFC 2920 §3.1), so it is junk then, not a protocol error (else a
    /// list sender with ten dead addresses in a row would be cut off).
    pub(super) fn no_recipients(&mut self) -> Handled<'static> {
        if self.unknown_in_tx {
            return self.junk(Handled::reply(reply::NEED_RCPT));
        }
        Handled::error(reply::NEED_RCPT)
    }

    /// DATA (RFC 5321 §4.1.1.4): `354`, then the body in [`Mode::Data`].
    fn data_command(&mut self) -> Handled<'static> {
        match self.tx {
            Tx::Idle => return Handled::error(reply::NEED_MAIL),
            Tx::Chunking => return Handled::error(reply::DATA_AFTER_BDAT),
            Tx::Envelope => {}
        }
        if self.arena.rcpt_count() == 0 {
            return self.no_recipients();
        }
        if self.arena.params.body == BodyType::BinaryMime {
            return Handled::error(reply::BINARYMIME_NEEDS_BDAT);
        }
        self.msg_verb = "DATA";
        self.body_bytes = 0;
        self.data_searched = 0;
        self.mode = Mode::Data {
            at_line_start: true,
            fault: None,
        };
        Handled::with(Answer::Line(reply::START_DATA), Effect::MessageStart)
    }

    /// BDAT (RFC 3030 §2): the chunk's octets follow whatever the reply, so
    /// they are always consumed, never read as commands; a refusal is the
    /// reply after them. The first accepted chunk starts the message.
    fn bdat_command(&mut self, size: u64, last: bool) -> Handled<'static> {
        self.msg_verb = "BDAT";
        let reject = match self.tx {
            // CHUNKING is advertised only in the EHLO reply.
            _ if self.greeted != Greeted::Ehlo => Some(reply::BDAT_NEEDS_EHLO),
            Tx::Idle => Some(reply::NEED_MAIL),
            Tx::Envelope if self.arena.rcpt_count() == 0 => Some(reply::NEED_RCPT),
            _ => None,
        };
        self.mode = Mode::BdatChunk {
            remaining: size,
            last,
            reject,
        };
        if reject.is_none() && self.tx == Tx::Envelope {
            self.tx = Tx::Chunking;
            self.body_bytes = 0;
            self.bdat_text = BdatText::default();
            return Handled::effect(Effect::MessageStart);
        }
        Handled::effect(Effect::Continue)
    }
}
