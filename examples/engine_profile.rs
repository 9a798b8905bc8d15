//! Drives N pipelined 1 KiB transactions through the engine once, for
//! instruction counting: run it under callgrind at two N and divide the
//! difference, which cancels start-up:
//!
//! ```text
//! cargo build --release --example engine_profile
//! valgrind --tool=callgrind target/release/examples/engine_profile 2000
//! valgrind --tool=callgrind target/release/examples/engine_profile 4000
//! ```
//! (instructions(4000) - instructions(2000)) / 2000 = instructions per transaction.
//! A second argument `counted` makes the session count its commands into a
//! metrics table, as the server's do (`--metrics`).

use std::rc::Rc;

use ringmx::config::SmtpConfig;
use ringmx::protocol::replay::{replay, replay_counted};
use ringmx::protocol::session::CommandTally;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let cfg = Rc::new(SmtpConfig {
        accepted_domains: vec!["example.com".into()],
        ..Default::default()
    });
    let mut line = [b'a'; 76];
    line[74] = b'\r';
    line[75] = b'\n';
    let mut body = Vec::new();
    while body.len() + 76 <= 1024 {
        body.extend_from_slice(&line);
    }
    body.extend_from_slice(&line[76 - (1024 - body.len())..]);
    assert_eq!(body.len(), 1024);
    let mut input = b"EHLO client.example\r\n".to_vec();
    for _ in 0..n {
        input.extend_from_slice(
            b"MAIL FROM:<sender@client.example> SIZE=1024\r\nRCPT TO:<user@example.com>\r\nDATA\r\n",
        );
        input.extend_from_slice(&body);
        input.extend_from_slice(b".\r\n");
    }
    let mut out = Vec::with_capacity(64 * 1024);
    let counted = std::env::args().nth(2).is_some_and(|a| a == "counted");
    let r = if counted {
        let tally = std::sync::Arc::new(CommandTally::default());
        let r = replay_counted(
            &cfg,
            &input,
            16 * 1024,
            &mut out,
            std::sync::Arc::clone(&tally),
        );
        // EHLO, then MAIL, RCPT, DATA per transaction: all 2xx/3xx.
        let total: u64 = (0..14)
            .flat_map(|v| (0..2).map(move |c| (v, c)))
            .map(|(v, c)| tally.get(v, c))
            .sum();
        assert_eq!(total, 1 + 3 * n as u64);
        r
    } else {
        replay(&cfg, &input, 16 * 1024, &mut out)
    };
    assert_eq!(r.messages, n as u64);
    println!("{} transactions, {} body bytes", r.messages, r.body_bytes);
}
