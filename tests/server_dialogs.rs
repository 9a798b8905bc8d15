//! Black-box SMTP dialogs: each `tests/dialogs/<name>.txt` is a send/expect
//! script run by `common::dialog` against a fresh `ringmx serve`.

mod common;

macro_rules! dialogs {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                common::dialog::run(stringify!($name));
            }
        )*

        /// A new script without a test here would silently never run.
        #[test]
        fn every_dialog_file_has_a_test() {
            let listed = [$(stringify!($name)),*];
            for name in common::dialog::all() {
                assert!(listed.contains(&name.as_str()), "add {name} to dialogs! in {}", file!());
            }
        }
    };
}

dialogs!(
    address_syntax,
    bare_newline,
    bdat_unknown_size,
    chunking,
    errors_close,
    full_transaction,
    http_request,
    improper_pipelining,
    junk_commands,
    pipelined_transactions,
    quit,
    relay_denial,
    rset,
    size_rejections,
);

/// Every refused command is logged at info, Postfix-style, with the client,
/// the verb, the reply and its argument sanitised.
#[test]
fn refusals_are_logged_with_client_command_and_reply() {
    let s = common::Server::start(&["--log-level", "info"]);
    let mut c = s.client();
    c.ehlo();
    c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<victim@example.com>\r\nFOO \x1b[2J\r\nQUIT\r\n");
    c.expect("250 2.1.0");
    c.expect("550 5.7.1");
    c.expect("500 5.5.2");
    c.expect("221");
    let line = s
        .wait_log("NOQUEUE: reject: RCPT from 127.0.0.1:", common::STEP)
        .unwrap_or_else(|| panic!("no reject line: {}", s.logs()));
    assert!(
        line.contains(": 550 5.7.1 Relay access denied;")
            && line.contains("arg=\"TO:<victim@example.com>\""),
        "{line}"
    );
    let line = s
        .wait_log("NOQUEUE: reject: UNKNOWN from", common::STEP)
        .unwrap_or_else(|| panic!("no reject line: {}", s.logs()));
    // The escape byte never reaches the log.
    assert!(
        line.contains("500 5.5.2") && line.contains("arg=\"?[2J\""),
        "{line}"
    );
}

/// A HELO name that is not a domain or address literal (here: non-ASCII
/// without SMTPUTF8) is accepted but
/// cannot break the stored `Received:` header; the spool keeps it as given.
#[test]
fn a_bad_helo_name_is_recorded_safely_in_received() {
    let mut s = common::Server::start(&[]);
    let mut c = s.client();
    c.send("EHLO h\u{e9}st.example\r\n");
    c.expect("250 ");
    c.transaction("a@example.org", "u@localhost", "Subject: x\r\n\r\nbody\r\n");
    c.send("HELO [127.0.0.1]\r\n");
    c.expect("250 ");
    c.transaction("a@example.org", "u@localhost", "Subject: y\r\n\r\nbody\r\n");
    c.send("QUIT\r\n");
    c.expect("221");
    s.stop();
    let stored = s.stored();
    assert_eq!(stored.len(), 2);
    let first = stored[0].text();
    assert!(
        first.starts_with("Received: from invalid-helo ([127.0.0.1])\r\n"),
        "{first}"
    );
    assert_eq!(stored[0].helo, "h\u{e9}st.example");
    let second = stored[1].text();
    assert!(
        second.starts_with("Received: from [127.0.0.1] ([127.0.0.1])\r\n"),
        "{second}"
    );
}

/// `--hostname` goes into the greeting, EHLO and Received:; `--domain` is
/// matched against recipients: a name that is neither a domain nor an
/// address literal is a clear start-up error, not a broken greeting.
#[test]
fn a_bad_hostname_or_domain_is_refused_at_start() {
    for (flag, value) in [
        ("--hostname", "mx example.com"),
        ("--hostname", "mx.example.com."),
        ("--domain", "example..com"),
    ] {
        match common::Server::try_start(&[], &[flag, value]) {
            Ok(mut s) => {
                s.stop();
                panic!("started with {flag} {value:?}");
            }
            Err((status, logs)) => {
                assert_ne!(status.code(), Some(0), "{logs}");
                assert!(!logs.contains("panicked"), "{logs}");
                assert!(
                    logs.contains(&format!(
                        "{value:?} is not a domain name or address literal"
                    )),
                    "{logs}"
                );
            }
        }
    }
}
