//! Raw bytes into a session, whole and split into reads; the body is
//! `ringmx::protocol::replay::fuzz::raw`, which `cargo test` also replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringmx::protocol::replay::fuzz::raw(data));
