//! One command line -> [`Command`], borrowing the read buffer.
//!
//! Verbs are case-insensitive (RFC 5321 §2.4). Lines arrive here without
//! their terminator. Command lines may end in a bare LF: SMTP smuggling is a
//! matter of where *message data* ends, and a lenient command reader is what
//! Postfix and Exim ship; DATA is strict (see `session`).

use super::reply::{self, Reply};

/// Body type declared with MAIL FROM's BODY= (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    /// No BODY= or BODY=7BIT.
    #[default]
    SevenBit,
    /// BODY=8BITMIME.
    EightBitMime,
    /// BODY=BINARYMIME (BDAT only).
    BinaryMime,
}

impl BodyType {
    /// The parameter value as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyType::SevenBit => "7BIT",
            BodyType::EightBitMime => "8BITMIME",
            BodyType::BinaryMime => "BINARYMIME",
        }
    }
}

/// MAIL FROM parameters we understand (RFC 1870, 6152, 6531).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailParams {
    /// SIZE= declared by the client.
    pub size: Option<u64>,
    /// BODY=.
    pub body: BodyType,
    /// SMTPUTF8 was given.
    pub smtputf8: bool,
    /// AUTH= was given (RFC 4954 §5); its value is kept in the raw
    /// parameters only.
    pub auth: bool,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `HELO domain`.
    Helo(&'a str),
    /// `EHLO domain`.
    Ehlo(&'a str),
    /// `MAIL FROM:<path> params`; the path without brackets ("" for `<>`).
    Mail {
        /// The reverse path, source route stripped.
        from: &'a str,
        /// Parameters as parsed.
        params: MailParams,
        /// The raw parameter text, kept for the spool.
        raw_params: &'a str,
    },
    /// `RCPT TO:<path>`.
    Rcpt {
        /// The forward path, source route stripped.
        to: &'a str,
        /// Its domain or address literal as parsed; "" for `<postmaster>`.
        domain: &'a str,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Chunk size in octets.
        size: u64,
        /// LAST was given.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy,
    /// `HELP [string]`.
    Help,
    /// `STARTTLS` (RFC 3207).
    Starttls,
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4).
    Auth {
        /// The SASL mechanism name as sent (compare without case).
        mechanism: &'a str,
        /// The initial response, base64 (`=`: empty), if given.
        initial: Option<&'a str>,
    },
    /// A verb we know of but do not offer (EXPN, TURN, ...).
    NotImplemented,
    /// An HTTP request line (GET, POST, ...): someone pointed a browser or
    /// a cross-protocol attack at us.
    Http,
}

/// Why a line is not a valid command; each maps to one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Unknown verb.
    Unrecognized,
    /// HELO/EHLO without a domain.
    HeloSyntax,
    /// MAIL FROM syntax.
    MailSyntax,
    /// RCPT TO syntax.
    RcptSyntax,
    /// BDAT syntax.
    BdatSyntax,
    /// Arguments on a verb that takes none.
    NoParams,
    /// A mailbox that does not parse.
    BadAddress,
    /// An unknown or malformed MAIL/RCPT parameter.
    BadParam,
    /// AUTH without a mechanism, or with more than an initial response.
    AuthSyntax,
}

impl ParseError {
    /// The reply this error earns.
    pub fn reply(self) -> Reply {
        match self {
            ParseError::Unrecognized => reply::UNRECOGNIZED,
            ParseError::HeloSyntax => reply::HELO_SYNTAX,
            ParseError::MailSyntax => reply::MAIL_SYNTAX,
            ParseError::RcptSyntax => reply::RCPT_SYNTAX,
            ParseError::BdatSyntax => reply::BDAT_SYNTAX,
            ParseError::NoParams => reply::NO_PARAMS,
            ParseError::BadAddress => reply::BAD_ADDRESS,
            ParseError::BadParam => reply::BAD_PARAM,
            ParseError::AuthSyntax => reply::AUTH_SYNTAX,
        }
    }
}

/// Parses one command line (terminator already removed).
///
/// # Errors
/// A [`ParseError`] naming the reply to send.
pub fn parse(line: &[u8]) -> Result<Command<'_>, ParseError> {
    // Commands are ASCII except addresses under SMTPUTF8, which must be UTF-8.
    // A BDAT whose size cannot be read is its own error: see `is_bdat`.
    let line = std::str::from_utf8(line).map_err(|_| match is_bdat(line) {
        true => ParseError::BdatSyntax,
        false => ParseError::Unrecognized,
    })?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    // `BDAT<TAB>5` and the like: a BDAT to anyone who splits on any blank,
    // so its chunk must never be read as commands here either.
    if verb.len() != 4 && is_bdat(verb.as_bytes()) {
        return Err(ParseError::BdatSyntax);
    }
    if verb.len() > 8 {
        return Err(ParseError::Unrecognized);
    }
    let mut upper = [0u8; 8];
    upper[..verb.len()].copy_from_slice(verb.as_bytes());
    upper.make_ascii_uppercase();
    let arg = rest.trim_matches(' ');
    match &upper[..verb.len()] {
        b"HELO" => domain_arg(arg).map(Command::Helo),
        b"EHLO" => domain_arg(arg).map(Command::Ehlo),
        b"MAIL" => parse_mail(rest),
        b"RCPT" => parse_rcpt(rest),
        b"DATA" => no_arg(arg, Command::Data),
        b"BDAT" => parse_bdat(arg),
        b"RSET" => no_arg(arg, Command::Rset),
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => no_arg(arg, Command::Quit),
        b"VRFY" => Ok(Command::Vrfy),
        b"HELP" => Ok(Command::Help),
        b"STARTTLS" => no_arg(arg, Command::Starttls),
        b"AUTH" => parse_auth(arg),
        b"EXPN" | b"TURN" | b"ETRN" | b"ATRN" | b"SEND" | b"SOML" | b"SAML" => {
            Ok(Command::NotImplemented)
        }
        b"GET" | b"POST" | b"HEAD" | b"PUT" | b"DELETE" | b"OPTIONS" | b"CONNECT" | b"PATCH"
        | b"TRACE" => Ok(Command::Http),
        _ => Err(ParseError::Unrecognized),
    }
}

/// Whether a command line (or the start of one) is a BDAT: after one whose
/// size cannot be read, the server cannot tell where its chunk ends.
pub fn is_bdat(line: &[u8]) -> bool {
    line.get(..4)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"BDAT"))
        && line.get(4).is_none_or(|b| !b.is_ascii_alphanumeric())
}

fn no_arg(arg: &str, c: Command<'static>) -> Result<Command<'static>, ParseError> {
    if arg.is_empty() {
        Ok(c)
    } else {
        Err(ParseError::NoParams)
    }
}

fn domain_arg(arg: &str) -> Result<&str, ParseError> {
    // RFC 5321 §4.1.1.1: a domain or an address literal. Be liberal in what
    // the name looks like (it is only recorded), strict that one is there.
    let name = arg.split(' ').next().unwrap_or("");
    if name.is_empty() || name.bytes().any(|b| b.is_ascii_control()) {
        return Err(ParseError::HeloSyntax);
    }
    Ok(name)
}

/// Splits `FROM:` / `TO:` (case-insensitive, optional spaces after the colon
/// as many clients send them) from the path.
fn after_keyword<'a>(rest: &'a str, kw: &str) -> Option<&'a str> {
    let rest = rest.trim_start_matches(' ');
    // Compare bytes: `rest` may hold UTF-8, and kw.len() need not be a
    // char boundary of it (found by fuzzing). Once matched, it is one.
    let head = rest.as_bytes().get(..kw.len())?;
    if !head.eq_ignore_ascii_case(kw.as_bytes()) {
        return None;
    }
    Some(rest[kw.len()..].trim_start_matches(' '))
}

/// Parses `<path> params...` into the mailbox and the parameter text.
fn path_and_params(s: &str) -> Result<(&str, &str), ParseError> {
    let s = s.strip_prefix('<').ok_or(ParseError::BadAddress)?;
    let close = path_end(s.as_bytes()).ok_or(ParseError::BadAddress)?;
    let path = &s[..close];
    let params = &s[close + 1..];
    if !(params.is_empty() || params.starts_with(' ')) {
        return Err(ParseError::BadAddress);
    }
    // RFC 5321 §4.1.1.3 / Appendix C: source routes are accepted and ignored,
    // but must still be `@domain` lists.
    let mailbox = match path.strip_prefix('@') {
        Some(route) => {
            let (adl, mailbox) = route.split_once(':').ok_or(ParseError::BadAddress)?;
            let mut hops = adl.split(',');
            let first_ok = hops.next().is_some_and(valid_domain);
            if !(first_ok && hops.all(|h| h.strip_prefix('@').is_some_and(valid_domain))) {
                return Err(ParseError::BadAddress);
            }
            mailbox
        }
        None => path,
    };
    Ok((mailbox, params.trim_matches(' ')))
}

/// Where the `>` that closes a path is: the first one outside a quoted
/// local part (qtext may hold `>`).
fn path_end(s: &[u8]) -> Option<usize> {
    let close = memchr::memchr(b'>', s)?;
    if memchr::memchr(b'"', &s[..close]).is_none() {
        return Some(close);
    }
    let mut quoted = false;
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'"' => quoted = !quoted,
            b'\\' if quoted => i += 1,
            b'>' if !quoted => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Longest mailbox accepted: a 64-octet local part, `@` and a 254-octet
/// domain (RFC 5321 §4.5.3.1), with room for longer local parts that real
/// senders use.
const MAX_MAILBOX: usize = 254 + 64;

/// Checks `local@domain` (RFC 5321 §4.1.2) and returns the domain (or
/// address literal) as parsed, or `None` if it is not a mailbox.
///
/// `Mailbox = Local-part "@" ( Domain / address-literal )`, the local part a
/// Dot-string or a Quoted-string. Non-ASCII is accepted where RFC 6531 puts
/// it (atext, qtext, labels); whether SMTPUTF8 allows it is the session's
/// call.
pub fn mailbox_domain(m: &str) -> Option<&str> {
    if m.len() > MAX_MAILBOX {
        return None;
    }
    let at = local_part_end(m.as_bytes())?;
    let domain = &m[at + 1..];
    let ok = if domain.starts_with('[') {
        address_literal(domain)
    } else {
        valid_domain(domain)
    };
    ok.then_some(domain)
}

/// Whether `m` is a mailbox (see [`mailbox_domain`]).
pub fn valid_mailbox(m: &str) -> bool {
    mailbox_domain(m).is_some()
}

/// Byte classes for the address scanners: a table lookup per byte keeps
/// the strict parser about as cheap as the loose one it replaced.
const ATEXT: u8 = 1;
const LDH: u8 = 2;
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        // RFC 5321 atext, plus RFC 6531's non-ASCII (UTF-8 is checked already).
        if c.is_ascii_alphanumeric() || c >= 0x80 {
            t[b] = ATEXT | LDH;
        }
        b += 1;
    }
    let specials = b"!#$%&'*+-/=?^_`{|}~";
    let mut i = 0;
    while i < specials.len() {
        t[specials[i] as usize] |= ATEXT;
        i += 1;
    }
    t[b'-' as usize] |= LDH;
    t
};

/// The index of the `@` that ends the local part at the start of `m`.
fn local_part_end(m: &[u8]) -> Option<usize> {
    if m.first() == Some(&b'"') {
        // Quoted-string: qtextSMTP (space included) and quoted-pairSMTP.
        let mut i = 1;
        loop {
            match *m.get(i)? {
                b'"' => break,
                b'\\' => {
                    let q = *m.get(i + 1)?;
                    if !(32..=126).contains(&q) {
                        return None;
                    }
                    i += 2;
                }
                b if b >= 0x80 || (32..=126).contains(&b) => i += 1,
                _ => return None,
            }
        }
        // An empty quoted string is not a usable mailbox.
        return (i > 1 && m.get(i + 1) == Some(&b'@')).then_some(i + 1);
    }
    // Dot-string: atoms of atext joined by single dots.
    let mut after_dot = true; // at the start, as after a dot: no dot may come
    for (i, &b) in m.iter().enumerate() {
        if b == b'@' {
            return (!after_dot).then_some(i);
        } else if b == b'.' && !after_dot {
            after_dot = true;
        } else if CLASS[usize::from(b)] & ATEXT != 0 {
            after_dot = false;
        } else {
            return None;
        }
    }
    None
}

/// RFC 5321 Domain: sub-domains of letters, digits and inner hyphens
/// (non-ASCII allowed for RFC 6531 U-labels), none empty, at most 63
/// octets each; no trailing dot.
pub fn valid_domain(d: &str) -> bool {
    if d.is_empty() || d.len() > 255 {
        return false;
    }
    let (mut label, mut prev) = (0usize, b'.');
    for &c in d.as_bytes() {
        if c == b'.' {
            if label == 0 || prev == b'-' {
                return false;
            }
            label = 0;
        } else {
            if CLASS[usize::from(c)] & LDH == 0 || (label == 0 && c == b'-') {
                return false;
            }
            label += 1;
            if label > 63 {
                return false;
            }
        }
        prev = c;
    }
    label > 0 && prev != b'-'
}

/// RFC 5321 §4.1.3 address literal, brackets included: IPv4, `IPv6:`, or a
/// general literal `tag:content`.
pub fn address_literal(d: &str) -> bool {
    let Some(inner) = d.strip_prefix('[').and_then(|d| d.strip_suffix(']')) else {
        return false;
    };
    if inner.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let Some((tag, content)) = inner.split_once(':') else {
        return false;
    };
    if tag.eq_ignore_ascii_case("IPv6") {
        return content.parse::<std::net::Ipv6Addr>().is_ok();
    }
    // General-address-literal: Standardized-tag ":" 1*dcontent.
    let tag_ok = !tag.is_empty()
        && !tag.ends_with('-')
        && tag.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
    tag_ok
        && !content.is_empty()
        && content
            .bytes()
            .all(|c| (33..=90).contains(&c) || (94..=126).contains(&c))
}

fn parse_mail(rest: &str) -> Result<Command<'_>, ParseError> {
    let s = after_keyword(rest, "FROM:").ok_or(ParseError::MailSyntax)?;
    let (from, raw_params) = path_and_params(s)?;
    if !from.is_empty() && !valid_mailbox(from) {
        return Err(ParseError::BadAddress);
    }
    let mut params = MailParams::default();
    for p in raw_params.split(' ').filter(|p| !p.is_empty()) {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        if k.eq_ignore_ascii_case("SIZE") {
            let v = v.ok_or(ParseError::BadParam)?;
            if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseError::BadParam);
            }
            // 20 digits may overflow u64: that is certainly too big.
            params.size = Some(v.parse().unwrap_or(u64::MAX));
        } else if k.eq_ignore_ascii_case("BODY") {
            let v = v.ok_or(ParseError::BadParam)?;
            params.body = if v.eq_ignore_ascii_case("7BIT") {
                BodyType::SevenBit
            } else if v.eq_ignore_ascii_case("8BITMIME") {
                BodyType::EightBitMime
            } else if v.eq_ignore_ascii_case("BINARYMIME") {
                BodyType::BinaryMime
            } else {
                return Err(ParseError::BadParam);
            };
        } else if k.eq_ignore_ascii_case("SMTPUTF8") && v.is_none() {
            params.smtputf8 = true;
        } else if k.eq_ignore_ascii_case("AUTH") {
            // RFC 4954 §5: `AUTH=<>` or an xtext mailbox; recorded as given
            // (in the raw parameters), trusted for nothing.
            let v = v.ok_or(ParseError::BadParam)?;
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ParseError::BadParam);
            }
            params.auth = true;
        } else {
            return Err(ParseError::BadParam);
        }
    }
    Ok(Command::Mail {
        from,
        params,
        raw_params,
    })
}

/// `AUTH mechanism [initial-response]` (RFC 4954 §4).
fn parse_auth(arg: &str) -> Result<Command<'_>, ParseError> {
    let mut it = arg.split(' ').filter(|s| !s.is_empty());
    let mechanism = it.next().ok_or(ParseError::AuthSyntax)?;
    let initial = it.next();
    if it.next().is_some() {
        return Err(ParseError::AuthSyntax);
    }
    Ok(Command::Auth { mechanism, initial })
}

fn parse_rcpt(rest: &str) -> Result<Command<'_>, ParseError> {
    let s = after_keyword(rest, "TO:").ok_or(ParseError::RcptSyntax)?;
    let (to, params) = path_and_params(s)?;
    // RFC 5321 §4.5.1: <postmaster> without a domain must be accepted.
    let domain = match mailbox_domain(to) {
        Some(d) => d,
        None if to.eq_ignore_ascii_case("postmaster") => "",
        None => return Err(ParseError::BadAddress),
    };
    // We advertise no RCPT parameters (no DSN).
    if !params.is_empty() {
        return Err(ParseError::BadParam);
    }
    Ok(Command::Rcpt { to, domain })
}

fn parse_bdat(arg: &str) -> Result<Command<'static>, ParseError> {
    let mut it = arg.split(' ').filter(|s| !s.is_empty());
    let size = it.next().ok_or(ParseError::BdatSyntax)?;
    // Leading zeros are legal digits; only the value must fit.
    let digits = size.trim_start_matches('0');
    let size = if digits.is_empty() && !size.is_empty() {
        "0"
    } else {
        digits
    };
    if size.is_empty() || size.len() > 19 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::BdatSyntax);
    }
    let size: u64 = size.parse().map_err(|_| ParseError::BdatSyntax)?;
    let last = match it.next() {
        None => false,
        Some(l) if l.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(ParseError::BdatSyntax),
    };
    if it.next().is_some() {
        return Err(ParseError::BdatSyntax);
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5321_2_4_verbs_are_case_insensitive() {
        for l in ["helo x", "HELO x", "HeLo x"] {
            assert_eq!(parse(l.as_bytes()), Ok(Command::Helo("x")));
        }
        assert_eq!(
            parse(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example"))
        );
        assert_eq!(parse(b"quit"), Ok(Command::Quit));
        assert_eq!(parse(b"Data"), Ok(Command::Data));
    }

    #[test]
    fn rfc5321_4_1_1_2_mail_from() {
        let c = parse(b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME").unwrap();
        assert_eq!(
            c,
            Command::Mail {
                from: "a@b.example",
                params: MailParams {
                    size: Some(1000),
                    body: BodyType::EightBitMime,
                    smtputf8: false,
                    auth: false,
                },
                raw_params: "SIZE=1000 BODY=8BITMIME",
            }
        );
        // Null reverse path, lower case keyword, a space after the colon.
        assert!(matches!(
            parse(b"mail from: <>"),
            Ok(Command::Mail { from: "", .. })
        ));
        assert_eq!(parse(b"MAIL FROM:a@b"), Err(ParseError::BadAddress));
        assert_eq!(parse(b"MAIL TO:<a@b>"), Err(ParseError::MailSyntax));
        assert_eq!(parse(b"MAIL FROM:<a@b> FOO=1"), Err(ParseError::BadParam));
        assert_eq!(parse(b"MAIL FROM:<a@b> SIZE=x"), Err(ParseError::BadParam));
        assert_eq!(
            parse(b"MAIL FROM:<a@b> BODY=9BIT"),
            Err(ParseError::BadParam)
        );
        assert_eq!(parse(b"MAIL FROM:<a@b>SIZE=1"), Err(ParseError::BadAddress));
        assert_eq!(
            parse(b"MAIL FROM:<no-at-sign>"),
            Err(ParseError::BadAddress)
        );
    }

    #[test]
    fn rfc1870_size_overflow_is_too_big_not_an_error() {
        let c = parse(b"MAIL FROM:<a@b> SIZE=99999999999999999999").unwrap();
        assert!(matches!(
            c,
            Command::Mail {
                params: MailParams {
                    size: Some(u64::MAX),
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn rfc5321_4_1_1_3_source_routes_ignored() {
        assert!(matches!(
            parse(b"RCPT TO:<@relay.example,@r2.example:user@dest.example>"),
            Ok(Command::Rcpt {
                to: "user@dest.example",
                domain: "dest.example",
            })
        ));
        assert!(matches!(
            parse(b"MAIL FROM:<@relay.example:user@src.example>"),
            Ok(Command::Mail {
                from: "user@src.example",
                ..
            })
        ));
    }

    #[test]
    fn rfc5321_4_5_1_postmaster_without_domain() {
        assert_eq!(
            parse(b"RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt {
                to: "Postmaster",
                domain: ""
            })
        );
        assert_eq!(parse(b"RCPT TO:<user>"), Err(ParseError::BadAddress));
    }

    #[test]
    fn rfc6531_smtputf8_param_and_utf8_addresses_parse() {
        let c = parse("MAIL FROM:<j\u{f6}rg@b\u{fc}cher.example> SMTPUTF8".as_bytes()).unwrap();
        assert!(matches!(
            c,
            Command::Mail {
                params: MailParams { smtputf8: true, .. },
                ..
            }
        ));
        // Not UTF-8 at all.
        assert_eq!(parse(b"MAIL FROM:<\xff@b>"), Err(ParseError::Unrecognized));
        // Multi-byte UTF-8 where the keyword is expected (found by fuzzing).
        assert_eq!(
            parse("MAIL FROM\u{1ba}a@b>".as_bytes()),
            Err(ParseError::MailSyntax)
        );
        assert_eq!(parse("RCPT \u{e9}".as_bytes()), Err(ParseError::RcptSyntax));
    }

    #[test]
    fn rfc3030_bdat() {
        assert_eq!(
            parse(b"BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            parse(b"bdat 0 last"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert_eq!(parse(b"BDAT"), Err(ParseError::BdatSyntax));
        assert_eq!(
            parse(b"BDAT 000000000000000000000100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            parse(b"BDAT 000 LAST"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert_eq!(
            parse(b"BDAT 99999999999999999999"),
            Err(ParseError::BdatSyntax)
        );
        assert_eq!(parse(b"BDAT -1"), Err(ParseError::BdatSyntax));
        assert_eq!(parse(b"BDAT 1 FIRST"), Err(ParseError::BdatSyntax));
        assert_eq!(parse(b"BDAT 1 LAST x"), Err(ParseError::BdatSyntax));
        assert_eq!(parse(b"BDAT \xff LAST"), Err(ParseError::BdatSyntax));
        assert_eq!(parse(b"BDATX \xff"), Err(ParseError::Unrecognized));
    }

    #[test]
    fn others() {
        assert_eq!(parse(b"RSET"), Ok(Command::Rset));
        assert_eq!(parse(b"RSET x"), Err(ParseError::NoParams));
        assert_eq!(parse(b"NOOP anything"), Ok(Command::Noop));
        assert_eq!(parse(b"VRFY root"), Ok(Command::Vrfy));
        assert_eq!(parse(b"HELP"), Ok(Command::Help));
        assert_eq!(parse(b"EXPN list"), Ok(Command::NotImplemented));
        assert_eq!(parse(b"STARTTLS"), Ok(Command::Starttls));
        assert_eq!(parse(b"starttls x"), Err(ParseError::NoParams));
        assert_eq!(parse(b"GET / HTTP/1.1"), Ok(Command::Http));
        assert_eq!(parse(b"HELO"), Err(ParseError::HeloSyntax));
        assert_eq!(parse(b"XYZZY"), Err(ParseError::Unrecognized));
        assert_eq!(parse(b""), Err(ParseError::Unrecognized));
        assert_eq!(
            parse(b"RCPT TO:<a@b> NOTIFY=NEVER"),
            Err(ParseError::BadParam)
        );
    }

    /// RFC 5321 §4.1.2 mailboxes: (path, domain if valid). Table-driven so
    /// a new case is one line.
    #[test]
    fn rfc5321_4_1_2_mailbox_syntax() {
        let table: &[(&str, Option<&str>)] = &[
            ("user@example.com", Some("example.com")),
            ("first.last+tag@sub.example.com", Some("sub.example.com")),
            ("!#$%&'*+-/=?^_`{|}~@example.com", Some("example.com")),
            ("\"john doe\"@example.com", Some("example.com")),
            ("\"a@b\"@example.com", Some("example.com")),
            ("\"a\\\"b\"@example.com", Some("example.com")),
            ("\"a>b\"@example.com", Some("example.com")),
            ("u@x", Some("x")),
            ("u@xn--bcher-kva.example", Some("xn--bcher-kva.example")),
            ("u@a-b.example", Some("a-b.example")),
            ("u@[192.0.2.1]", Some("[192.0.2.1]")),
            ("u@[IPv6:2001:db8::1]", Some("[IPv6:2001:db8::1]")),
            ("u@[x-tag:abc]", Some("[x-tag:abc]")),
            ("j\u{f6}rg@b\u{fc}cher.example", Some("b\u{fc}cher.example")),
            // Unquoted @ in the local part.
            ("a@b@example.com", None),
            ("@example.com", None),
            ("user@", None),
            ("user", None),
            ("user@example.com.", None),
            ("user@.example.com", None),
            ("user@example..com", None),
            (".user@example.com", None),
            ("user.@example.com", None),
            ("us..er@example.com", None),
            ("user@-example.com", None),
            ("user@example-.com", None),
            ("user@exa_mple.com", None),
            ("user name@example.com", None),
            ("user(c)@example.com", None),
            ("user@exa mple.com", None),
            ("\"\"@example.com", None),
            ("\"unterminated@example.com", None),
            ("\"a\"b@example.com", None),
            ("\"tab\there\"@example.com", None),
            ("user@[192.0.2.1", None),
            ("user@[]", None),
            ("user@[300.0.0.1]", None),
            ("user@[IPv6:zz::1]", None),
            ("user@[1.2.3]", None),
            ("user@[tag:]", None),
            ("user@[tag:a b]", None),
            ("user@[tag:a[b]", None),
        ];
        for (m, want) in table {
            assert_eq!(mailbox_domain(m), *want, "{m:?}");
            let line = format!("RCPT TO:<{m}>");
            match want {
                Some(domain) => assert_eq!(
                    parse(line.as_bytes()),
                    Ok(Command::Rcpt { to: m, domain }),
                    "{line}"
                ),
                None => assert_eq!(
                    parse(line.as_bytes()),
                    Err(ParseError::BadAddress),
                    "{line}"
                ),
            }
        }
        let long_label = format!("u@{}.example", "a".repeat(64));
        assert_eq!(mailbox_domain(&long_label), None);
        let long = format!("{}@example.com", "a".repeat(400));
        assert_eq!(mailbox_domain(&long), None);
        // Source routes must be @domain lists.
        assert!(parse(b"RCPT TO:<@a.example,@b.example:u@c.example>").is_ok());
        for bad in [
            "RCPT TO:<@:u@c.example>",
            "RCPT TO:<@a..example:u@c.example>",
            "RCPT TO:<@a.example,b.example:u@c.example>",
            "MAIL FROM:<a@b@c.example>",
            "MAIL FROM:<a.@c.example>",
            // <> is MAIL's only; <postmaster> without a domain RCPT's only.
            "RCPT TO:<>",
            "MAIL FROM:<postmaster>",
        ] {
            assert_eq!(parse(bad.as_bytes()), Err(ParseError::BadAddress), "{bad}");
        }
    }
}
