//! Many transactions on one connection, and what the store holds afterwards.

mod common;

use common::Server;

#[test]
fn two_hundred_messages_on_one_connection() {
    let mut s = Server::start(&[]);
    let mut c = s.client();
    c.ehlo();
    let mut ids = Vec::new();
    for i in 0..200 {
        let body = format!("Subject: message {i}\r\n\r\nbody of message {i}\r\n");
        ids.push(c.transaction(&format!("s{i}@example.org"), "u@localhost", &body));
    }
    c.send("QUIT\r\n");
    c.expect("221 ");
    c.expect_eof();
    assert!(s.stop().success());

    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 200, "queue ids must be unique");
    let stored = s.stored();
    assert_eq!(stored.len(), 200);
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m.id, ids[i]);
        assert_eq!(m.mail_from, format!("s{i}@example.org"));
        assert_eq!(m.rcpts, ["u@localhost"]);
        assert!(m.client.starts_with("127.0.0.1:"), "{}", m.client);
        assert_eq!(m.helo, "client.example");
        let t = m.text();
        // RFC 5321 §4.4: our trace header first, then the body as sent.
        assert!(
            t.starts_with("Received: from client.example ([127.0.0.1])\r\n"),
            "{t}"
        );
        assert!(t.contains(&format!("id {}\r\n", ids[i])), "{t}");
        assert_eq!(
            m.body,
            format!("Subject: message {i}\r\n\r\nbody of message {i}\r\n").as_bytes(),
            "{t}"
        );
        assert_eq!(m.data.len(), t.find("Subject: ").unwrap() + m.body.len());
    }
    // One log line for the connection, one per message.
    let logs = s.logs();
    assert_eq!(logs.matches(" INFO msg id=").count(), 200, "{logs}");
    let conn: Vec<_> = logs
        .lines()
        .filter(|l| l.contains(" INFO conn peer="))
        .collect();
    assert_eq!(conn.len(), 1, "{logs}");
    assert!(
        conn[0].contains("messages=200") && conn[0].ends_with("outcome=quit"),
        "{}",
        conn[0]
    );
}

#[test]
fn a_whole_pipelined_batch_of_transactions_in_one_write() {
    let mut s = Server::start(&[]);
    let mut c = s.client();
    c.send("EHLO client.example\r\n");
    c.expect("250 ");
    // 50 complete transactions and QUIT in a single write: PIPELINING lets
    // a client send everything after DATA's 354 only, but the server must
    // cope with any split, including one buffer holding everything.
    let mut batch = String::new();
    for i in 0..50 {
        batch.push_str(&format!(
            "MAIL FROM:<p{i}@example.org>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n\
             Subject: {i}\r\n\r\n.leading dot\r\n.\r\n"
        ));
    }
    batch.push_str("QUIT\r\n");
    c.send(&batch);
    for _ in 0..50 {
        c.expect("250 2.1.0");
        c.expect("250 2.1.5");
        c.expect("354 ");
        c.expect("250 2.0.0 Ok: queued as");
    }
    c.expect("221 ");
    c.expect_eof();
    assert!(s.stop().success());
    let stored = s.stored();
    assert_eq!(stored.len(), 50);
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m.mail_from, format!("p{i}@example.org"));
        // RFC 5321 §4.5.2: the stuffed dot is removed.
        let wire = format!("Subject: {i}\r\n\r\n.leading dot\r\n");
        assert_eq!(m.body, common::unstuff(wire.as_bytes()), "{}", m.text());
        assert_eq!(
            m.body,
            format!("Subject: {i}\r\n\r\nleading dot\r\n").as_bytes()
        );
    }
}

#[test]
fn a_large_message_streams_through() {
    let mut s = Server::start(&[]);
    let mut c = s.client();
    c.ehlo();
    // 4 MiB in 998-byte lines: far larger than the read buffer.
    let line = format!("{}\r\n", "y".repeat(998));
    let body = line.repeat(4 * 1024 * 1024 / line.len());
    c.transaction("big@example.org", "u@localhost", &body);
    c.send("QUIT\r\n");
    c.expect("221 ");
    assert!(s.stop().success());
    let stored = s.stored();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].body == body.as_bytes(), "body differs");
}
