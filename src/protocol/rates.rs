//! Per-client rates that outlive one session: the runtime keeps them (across
//! connections and shards, `server::anvil`) and the session asks before it
//! accepts a MAIL or a RCPT. The engine only asks; the time is its `now`.

use std::fmt::Debug;
use std::time::Instant;

/// The runtime's per-client counters, as the session sees them
/// ([`crate::protocol::Session::set_client_rates`]). Each call that answers
/// `true` counts one event; `false` counts nothing and the session answers
/// `452 4.7.1`.
pub trait ClientRates: Debug {
    /// One more MAIL from this client at `now`, if under its rate.
    fn admit_message(&self, now: Instant) -> bool;
    /// One more accepted RCPT from this client at `now`, if under its rate.
    fn admit_recipient(&self, now: Instant) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SmtpConfig;
    use crate::protocol::{ClientInfo, Event, Session};
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    /// Admits this many of each, then refuses.
    #[derive(Debug)]
    struct Budget {
        messages: Cell<u32>,
        recipients: Cell<u32>,
    }

    impl ClientRates for Budget {
        fn admit_message(&self, _: Instant) -> bool {
            let n = self.messages.get();
            self.messages.set(n.saturating_sub(1));
            n > 0
        }
        fn admit_recipient(&self, _: Instant) -> bool {
            let n = self.recipients.get();
            self.recipients.set(n.saturating_sub(1));
            n > 0
        }
    }

    fn feed(s: &mut Session, input: &[u8]) -> String {
        let mut out = Vec::new();
        let (used, ev) = s.handle_input(Instant::now(), input, &mut out);
        assert_eq!((used, ev), (input.len(), Event::NeedInput));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn mail_and_rcpt_past_the_clients_rates_get_452_and_the_session_goes_on() {
        let mut out = Vec::new();
        let now = Instant::now();
        let cfg = Rc::new(SmtpConfig::default());
        let mut s = Session::new(cfg, ClientInfo::default(), now, Duration::MAX, &mut out);
        s.set_client_rates(Some(Rc::new(Budget {
            messages: Cell::new(1),
            recipients: Cell::new(1),
        })));
        feed(&mut s, b"EHLO c.example\r\n");
        let r = feed(
            &mut s,
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@localhost>\r\nRCPT TO:<y@localhost>\r\n",
        );
        assert_eq!(
            r,
            "250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n\
             452 4.7.1 Too many recipients from your address, try again later\r\n"
        );
        let r = feed(&mut s, b"RSET\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\n");
        assert_eq!(
            r,
            "250 2.0.0 Ok\r\n\
             452 4.7.1 Too many messages from your address, try again later\r\n\
             250 2.0.0 Ok\r\n"
        );
        assert!(!s.is_closed());
    }

    #[test]
    fn without_rates_nothing_is_asked() {
        let mut out = Vec::new();
        let cfg = Rc::new(SmtpConfig::default());
        let mut s = Session::new(
            cfg,
            ClientInfo::default(),
            Instant::now(),
            Duration::MAX,
            &mut out,
        );
        feed(&mut s, b"EHLO c.example\r\n");
        let r = feed(
            &mut s,
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@localhost>\r\n",
        );
        assert_eq!(r, "250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n");
    }
}
