//! loadgen: an SMTP load generator that drives any SMTP server (ringmx,
//! Postfix, Haraka, ...) and reports throughput and tail latency truthfully:
//! HdrHistograms per phase, coordinated omission corrected in open loop, every
//! reply class and error counted.
//!
//! It is itself thread-per-core (one glommio executor per `--cores`) so that
//! the generator is not the bottleneck.
//!
//! | concern | where |
//! |---|---|
//! | flag values, validated run configuration | [`config`] |
//! | bytes sent: envelopes, bodies per size, pipelined batches | [`message`] |
//! | SMTP reply parsing, EHLO keywords, queue ids (sans-IO) | [`reply`] |
//! | one client connection | [`client`] |
//! | open-loop arrival schedules, PRNG | [`schedule`] |
//! | what is counted and recorded; histogram merging | [`stats`] |
//! | merging per-core intervals into run intervals and totals | [`aggregate`] |
//! | cores, workers, supervisor, Ctrl-C, output files | [`engine`] |
//! | live line, text and JSON summaries | [`report`] |
//! | `.hlog` / `.hgrm` formats, histogram encoding | [`hlog`] |
//! | `--starttls` / `--tls`: rustls over the client's socket | [`tls`] |
//! | `loadgen compare` | [`compare`] |
//! | SVG latency-by-percentile plot | [`plot`] |
//!
//! The binary (`main.rs`) only parses flags and calls [`engine::run`] or
//! [`compare`].

pub mod aggregate;
pub mod client;
pub mod compare;
pub mod config;
pub mod engine;
pub mod hlog;
pub mod message;
pub mod plot;
pub mod proxy;
pub mod reply;
pub mod report;
pub mod schedule;
pub mod stats;
pub mod tls;
