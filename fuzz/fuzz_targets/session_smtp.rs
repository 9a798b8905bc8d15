//! Bytes mapped onto an SMTP alphabet; the body is
//! `ringmx::protocol::replay::fuzz::smtp_alphabet`, which `cargo test` also replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringmx::protocol::replay::fuzz::smtp_alphabet(data));
