//! Every limit and tunable of ringmx, grouped by phase, each declared once
//! in [`with_settings!`](crate::with_settings) with its default and the
//! reason for it.
//!
//! The same structs are read from TOML (`ringmx serve --config FILE`) with
//! unknown keys rejected; command-line flags override the file. Sizes and
//! durations take the forms of [`crate::units`]: `"300s"`, `"1.5s"`,
//! `"250ms"`; `"50MiB"`, `"10MB"`, `1000` (bytes).
//! [`Config::validate`] runs at start-up and names the numbers that conflict.
//!
//! # Adding a setting
//!
//! Add one entry to [`with_settings!`](crate::with_settings). From it come
//! the struct field (with its docs and TOML key), its `Default`, the
//! `ringmx serve` flag with its help and shown default, the override of the
//! file by the flag, and, for durations, the check against
//! [`units::MAX_DURATION`]. An entry reads:
//!
//! ```text
//! /// Docs of the field (the TOML key is the field name).
//! field: Type = default_expression,
//!     "kind" flag_name "VALUE_NAME" "Help for --flag-name";
//! ```
//!
//! `kind` says how the value is read and shown: `"plain"` (`FromStr` on the
//! command line, serde in TOML, `Display` in `--help`), `"path"`, `"size"`
//! and `"duration"` (the forms of [`crate::units`], strings or bare numbers
//! in TOML), `"list"` (a repeatable flag; given flags replace the whole list).
//! The kinds are the modules of [`kinds`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::outlet::supervise::ShipTarget;
use crate::protocol::command::{address_literal, valid_domain};
use crate::units::{self, UnitError};
use kinds::{duration, list, path, plain, size};

/// The log level, an enum (`error`, `warn`, `info`, `debug`) in TOML and
/// on the command line.
pub use crate::log::Level as LogLevel;

/// The log line format, `text` or `json` in TOML and on the command line.
pub use crate::log::Format as LogFormat;

/// The list of all settings: passes one declaration per setting, grouped by
/// TOML table, to `$callback`, a macro that generates code from it. The
/// library generates the structs below from it; the `ringmx` binary, its
/// flags. See the [module docs](crate::config) for the form of an entry.
///
/// Types are named as [`types`] exports them: a generator in another crate
/// brings that module into scope.
#[doc(hidden)]
#[macro_export]
macro_rules! with_settings {
    ($callback:ident) => {
        $callback! {
            /// Network-side knobs, per process unless stated per shard.
            ServerConfig server "Network" {
                /// Addresses to accept SMTP on; every shard binds each one (SO_REUSEPORT).
                // Loopback by default: an MX facing the internet is an explicit choice.
                listen: Vec<SocketAddr> = vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
                    "list" listen "ADDR"
                    "IP:PORT to accept SMTP on; repeat for several; port 0 picks a free port";
                /// CPUs that run a shard.
                cores: Cores = Cores::All,
                    "plain" cores "CORES"
                    "CPUs that run a shard: all, a count (4), or a list (0,2 or 0-3; one CPU: 3-3)";
                /// Open connections per shard; past it the kernel queue backs up and a
                /// connection that still gets through is answered `421 4.3.2`.
                // 10,000 per shard at a few KiB each stays well under 100 MiB.
                max_connections_per_shard: usize = 10_000,
                    "plain" max_connections "N"
                    "Open connections per shard; past it new connections get 421 4.3.2";
                /// listen(2) backlog per shard socket (capped by net.core.somaxconn).
                // Many short SMTP connections arrive in bursts; 4096 matches the
                // usual somaxconn on current kernels.
                backlog: u32 = 4096,
                    "plain" backlog "N"
                    "listen(2) backlog of each shard socket, capped by net.core.somaxconn";
                /// Read buffer per connection, bytes. Bounds the largest pipelined batch
                /// handled in one pass; must exceed the longest allowed line. Part of
                /// each connection's worst-case memory (README "Memory per connection",
                /// `ringmx::server::conn_memory_bound`).
                // 16 KiB holds a full pipelined envelope with hundreds of recipients
                // and ~200 lines of body per read; see tuning/ for the sweep.
                read_buffer_bytes: usize = 16 * 1024,
                    "size" read_buffer "SIZE"
                    "Read buffer per active connection; must exceed the longest line";
                /// Initial reply buffer per connection, bytes. It grows for a pipelined
                /// batch up to a fixed bound (backpressure: past 8 KiB unsent, input
                /// waits; README "Memory per connection") and is shrunk back when idle.
                write_buffer_bytes: usize = 1024,
                    "size" write_buffer "SIZE"
                    "Initial reply buffer per active connection";
                /// Disable Nagle: replies are already batched per read.
                tcp_nodelay: bool = true,
                    "plain" tcp_nodelay "BOOL"
                    "Disable Nagle's algorithm on client sockets";
                /// How long a shutdown waits for transactions in flight.
                shutdown_grace: Duration = Duration::from_secs(30),
                    "duration" shutdown_grace "DURATION"
                    "On SIGTERM/SIGINT, how long transactions in flight may take to finish";
                /// Upper bound on a connection's whole life.
                max_connection_lifetime: Duration = Duration::from_secs(3600),
                    "duration" max_connection_lifetime "DURATION"
                    "Upper bound on one connection's life; then 421 4.4.2";
                /// Listeners for a load balancer: like `listen`, but every connection
                /// starts with a PROXY header from a `trusted_proxy` (the rules of
                /// `proxy_protocol`), so one process can take direct clients on `listen`
                /// and balanced ones here.
                // None: PROXY listeners are an explicit choice.
                listen_proxy: Vec<SocketAddr> = Vec::new(),
                    "list" listen_proxy "ADDR"
                    "IP:PORT to accept SMTP behind a load balancer on (PROXY header first, from a --trusted-proxy); repeat for several";
                /// Every connection on the listen addresses starts with a PROXY protocol
                /// header (v1 or v2, auto-detected) from a load balancer in
                /// `trusted_proxy`, which gives the real client address (for logs,
                /// limits, `Received:` and the spool record). Anything else (another
                /// peer, no header within `proxy_header_timeout`, a malformed or second
                /// header) is closed without a greeting. Applies to all listeners: put
                /// direct clients on another ringmx, or behind the proxy too.
                // Off: a header is only safe from a peer we trust to write it.
                proxy_protocol: bool = false,
                    "plain" proxy_protocol "BOOL"
                    "Expect a PROXY protocol v1/v2 header from a --trusted-proxy before SMTP on every listener";
                /// Peers allowed to send the PROXY header (CIDRs such as `10.0.0.0/8`,
                /// or one address as `192.0.2.7/32`); needed with `proxy_protocol`.
                // Empty: nobody is trusted until named.
                trusted_proxy: Vec<IpNet> = Vec::new(),
                    "list" trusted_proxy "CIDR"
                    "Load balancer allowed to send the PROXY header; repeat for several";
                /// How long a connection on a `proxy_protocol` listener may take to send
                /// its whole PROXY header; then it is closed without a greeting.
                // As Postfix's smtpd_upstream_proxy_timeout: a proxy sends the header
                // with (or right after) the handshake, so seconds are plenty.
                proxy_header_timeout: Duration = Duration::from_secs(5),
                    "duration" proxy_header_timeout "DURATION"
                    "How long a proxied connection may take to send its PROXY header";
                /// Addresses to serve Prometheus metrics on: `GET /metrics`, text format
                /// 0.0.4, from a thread of its own (`server::metrics`). Empty: none.
                // Off by default: another listening port is the operator's choice.
                metrics: Vec<SocketAddr> = Vec::new(),
                    "list" metrics "ADDR"
                    "IP:PORT to serve Prometheus metrics on (GET /metrics); repeat for several; default: off";
                /// Lowest level of the lines logged.
                log_level: LogLevel = LogLevel::Info,
                    "plain" log_level "LEVEL"
                    "Log level: error, warn, info or debug";
                /// How log lines are written: `text`, or `json` (one object per line with
                /// the text line's fields `ts`, `level`, `msg`) for log shippers.
                log_format: LogFormat = LogFormat::Text,
                    "plain" log_format "FORMAT"
                    "Log line format: text, or json (one object per line) for log shippers";
                /// Consumers the server runs and restarts, each a child process
                /// `ringmx ship --to URL --name NAME --follow` on this spool
                /// (`crate::outlet::supervise`). TOML: `[[server.ship]]` tables with
                /// `to` and, optionally, `name` (default: the URL's scheme).
                // None: shipping is opt-in, and `ringmx ship` also runs on its own.
                ship: Vec<ShipTarget> = Vec::new(),
                    "list" ship "[NAME=]URL"
                    "Ship the spool to URL in a supervised child `ringmx ship --follow`; NAME= names the consumer (default: the URL's scheme); repeat for several";
                /// Open connections per client IP (IPv6: per /64) across all shards; past it
                /// a new connection gets `421 4.7.0` and is closed. 0: no limit. See
                /// `server::anvil` and README "Per-client limits".
                // Postfix's smtpd_client_connection_count_limit, with its default.
                max_connections_per_ip: u32 = 50,
                    "plain" max_connections_per_ip "N"
                    "Open connections per client IP (IPv6 /64) over all shards; past it 421 4.7.0 (0: off)";
                /// New connections per client IP per minute (a fixed window from the first
                /// one); past it `421 4.7.0` and close. 0: off.
                // Off, as Postfix's smtpd_client_connection_rate_limit: what is
                // abusive depends on who sends to this MX.
                max_connection_rate_per_ip: u32 = 0,
                    "plain" max_connection_rate_per_ip "N"
                    "New connections per client IP per minute; past it 421 4.7.0 (0: off)";
                /// MAIL commands per client IP per minute; past it MAIL gets `452 4.7.1`. 0: off.
                // Off, as Postfix's smtpd_client_message_rate_limit.
                max_message_rate_per_ip: u32 = 0,
                    "plain" max_message_rate_per_ip "N"
                    "Messages (MAIL) per client IP per minute; past it 452 4.7.1 (0: off)";
                /// Accepted RCPTs per client IP per minute; past it RCPT gets `452 4.7.1`. 0: off.
                // Off, as Postfix's smtpd_client_recipient_rate_limit.
                max_recipient_rate_per_ip: u32 = 0,
                    "plain" max_recipient_rate_per_ip "N"
                    "Recipients per client IP per minute; past it 452 4.7.1 (0: off)";
                /// Client networks exempt from the per-IP limits and the greeting wait
                /// (CIDR, e.g. `10.0.0.0/8`). Loopback is not exempt unless listed.
                // None: every client is limited until the operator says otherwise.
                trusted_network: Vec<IpNet> = Vec::new(),
                    "list" trusted_network "CIDR"
                    "Client network exempt from per-IP limits and the greeting wait; repeat for several";
                /// Clients tracked at once for the per-IP limits (and, separately, for the
                /// greeting-wait pass cache); rounded up to a power of two. Memory: 32
                /// bytes per entry for the limits, 8 for the pass cache, shared by all
                /// shards. A client that finds no free entry near its hash is let through
                /// unlimited and counted (`server::anvil::AnvilStats::table_full`).
                // 65,536 clients active within a minute is far beyond one MX's share of
                // a botnet; 2.5 MiB in all.
                client_table_entries: usize = 65_536,
                    "plain" client_table_entries "N"
                    "Clients tracked at once for per-IP limits and the greeting-wait pass cache";
                /// Early-talker test (Postfix postscreen's pregreet): send `220-` first, wait
                /// this long, and close with `521 5.5.1` on a client that talks before the
                /// final `220 ` line. 0: off (the greeting goes out at once).
                // Off: it delays every new client; postscreen's default is 6s.
                greet_wait: Duration = Duration::ZERO,
                    "duration" greet_wait "DURATION"
                    "Send 220- and wait this long; a client that talks first gets 521 (0: off); e.g. 6s";
                /// How long a client that waited for the greeting is remembered, so it
                /// pays greet_wait once per this long (per IP, all shards).
                // Postfix's postscreen_greet_ttl.
                greet_pass_ttl: Duration = Duration::from_secs(24 * 3600),
                    "duration" greet_pass_ttl "DURATION"
                    "How long a client that passed the greeting wait skips it";
            }

            /// SMTP policy and protocol limits: everything the sans-IO engine needs.
            SmtpConfig smtp "SMTP" {
                /// Our name in the greeting, EHLO reply and `Received:` header.
                hostname: String = "localhost".into(),
                    "plain" hostname "NAME"
                    "Our name in the greeting, EHLO reply and Received: header";
                /// Recipient domains we accept mail for (case-insensitive). Everything else
                /// gets `550 5.7.1`: no open relay.
                accepted_domains: Vec<String> = vec!["localhost".into()],
                    "list" domain "DOMAIN"
                    "Recipient domain to accept mail for; repeat for several; others get 550 5.7.1";
                /// Who exists at RCPT time: a file of `user@domain` lines (`user@domain:
                /// target` aliases, `@domain` catch-all domains, `#` comments). A domain it
                /// names with a user is `map` (others get `550 5.1.1`); accepted domains
                /// it does not name stay catch-all. Empty: every accepted domain is
                /// catch-all. Read at start (a bad line stops it, with file:line) and on
                /// SIGHUP (a bad file keeps the old map). See `protocol::recipients`.
                // Off by default: without a list of users, catch-all is all we can do.
                recipient_map: PathBuf = PathBuf::new(),
                    "path" recipient_map "FILE"
                    "File of recipients that exist (user@domain, @domain, alias: target); none: catch-all";
                /// Extension delimiters for recipient lookups: `user+tag@d` is looked up
                /// as itself, then as `user@d`. Each character is one; empty: none.
                // Postfix's recipient_delimiter, with the usual `+`.
                recipient_delimiter: String = "+".into(),
                    "plain" recipient_delimiter "CHARS"
                    "Recipient extension delimiters: user+tag@d also matches user@d";
                /// Compare local parts in recipient lookups without ASCII case (domains
                /// always are).
                // true, as Postfix's table lookups: a sender's mis-cased address
                // refused is a lost message; RFC 5321 §2.4 allows either.
                recipient_ignore_case: bool = true,
                    "plain" recipient_ignore_case "BOOL"
                    "Recipient lookups ignore the case of local parts";
                /// Directory for the `ldap` recipient policy: `ldap://host:port` (or
                /// `ldapi://`), bound anonymously. Empty: no LDAP. See
                /// `server::lookup` and README "Recipients".
                recipient_ldap: String = String::new(),
                    "plain" recipient_ldap "URL"
                    "LDAP directory of recipients (ldap://host:port) for recipient_ldap_domains";
                /// Search base of LDAP recipient lookups (Postfix's `search_base`).
                recipient_ldap_base: String = String::new(),
                    "plain" recipient_ldap_base "DN"
                    "Search base of LDAP recipient lookups, e.g. dc=example,dc=com";
                /// LDAP filter of a recipient lookup (Postfix's `query_filter`): `%s`
                /// the address, `%u` its local part, `%d` its domain (each escaped),
                /// `%%` a percent sign. Any entry found means the recipient exists.
                recipient_ldap_filter: String = "(mail=%s)".into(),
                    "plain" recipient_ldap_filter "FILTER"
                    "LDAP filter of a recipient lookup: %s address, %u local part, %d domain";
                /// Accepted domains whose recipients are looked up in recipient_ldap
                /// (policy `ldap`; overrides the map file for them).
                recipient_ldap_domains: Vec<String> = Vec::new(),
                    "list" recipient_ldap_domain "DOMAIN"
                    "Accepted domain whose recipients are looked up in LDAP; repeat for several";
                /// Next hop asked about recipients of recipient_verify_domains, `host:port`:
                /// `MAIL FROM:<>`, `RCPT TO`, `QUIT`, no mail sent (Postfix's
                /// `reject_unverified_recipient`).
                recipient_verify_host: String = String::new(),
                    "plain" recipient_verify_host "HOST:PORT"
                    "Next hop that verifies recipients (RCPT TO, no mail) for recipient_verify_domains";
                /// Accepted domains whose recipients are verified at
                /// recipient_verify_host (policy `verify`; overrides the map file).
                recipient_verify_domains: Vec<String> = Vec::new(),
                    "list" recipient_verify_domain "DOMAIN"
                    "Accepted domain whose recipients are verified at the next hop; repeat for several";
                /// How long a RCPT waits for an LDAP or verify answer before `451 4.3.0`.
                // Well under a client's 5-minute RCPT timeout (RFC 5321
                // §4.5.3.2.3); a directory slower than this is down for us.
                recipient_lookup_timeout: Duration = Duration::from_secs(5),
                    "duration" recipient_lookup_timeout "DURATION"
                    "Wait for an LDAP or verify answer before 451 4.3.0";
                /// How long a recipient found by LDAP or verify is cached (per shard;
                /// verify answers also in one cache shared by the lookup threads).
                recipient_cache_positive_ttl: Duration = Duration::from_secs(600),
                    "duration" recipient_cache_positive_ttl "DURATION"
                    "How long a found recipient is cached";
                /// How long an unknown recipient is cached; failures are never cached.
                // Shorter than the positive TTL: a new user must not wait long.
                recipient_cache_negative_ttl: Duration = Duration::from_secs(60),
                    "duration" recipient_cache_negative_ttl "DURATION"
                    "How long an unknown recipient is cached";
                /// Entries per recipient cache (each shard's, and the shared verify one);
                /// the oldest go first.
                recipient_cache_entries: usize = 100_000,
                    "plain" recipient_cache_entries "N"
                    "Entries per recipient lookup cache";
                /// Threads that run LDAP and verify lookups (never the shards).
                recipient_lookup_threads: usize = 4,
                    "plain" recipient_lookup_threads "N"
                    "Threads for LDAP and verify recipient lookups";
                /// Largest message body, bytes after dot-unstuffing; advertised as SIZE.
                max_message_bytes: u64 = 50 * 1024 * 1024,
                    "size" max_message_size "SIZE"
                    "Largest message body, e.g. 50MiB; advertised as SIZE";
                /// Recipients per transaction; RFC 5321 §4.5.3.1.8 demands at least 100.
                max_recipients: usize = 1000,
                    "plain" max_recipients "N"
                    "Recipients per transaction, at least 100";
                /// Longest command line including CRLF (RFC 5321 §4.5.3.1.4: 512).
                max_command_line_bytes: usize = 512,
                    "size" max_command_line "SIZE"
                    "Longest command line including CRLF, at least 512";
                /// Longest text line in DATA including CRLF (RFC 5321 §4.5.3.1.6: 1000).
                max_text_line_bytes: usize = 1000,
                    "size" max_text_line "SIZE"
                    "Longest text line in DATA including CRLF, at least 1000";
                /// Failed commands before `421` and close.
                max_errors: u32 = 10,
                    "plain" max_errors "N"
                    "Failed commands before 421 and close";
                /// Junk commands (NOOP, RSET, VRFY, HELP, unknown or unoffered verbs, RCPTs
                /// past max_recipients) since the last accepted message before `421 4.7.0`
                /// and close.
                // Postfix's smtpd_junk_command_limit, with its default.
                max_junk_commands: u32 = 100,
                    "plain" max_junk_commands "N"
                    "Junk commands (NOOP, RSET, VRFY, HELP, unknown verbs) before 421 and close";
                /// Close when a refused DATA has bytes behind it in the same read
                /// (RFC 2920 §3.1: DATA ends a pipelined group), rather than read the
                /// client's body as commands.
                // Postfix's smtpd_forbid_unauth_pipelining. Off only to test that
                // the engine gives the same result however its input is split.
                forbid_pipelined_data: bool = true,
                    "plain" forbid_pipelined_data "BOOL"
                    "true: close when a refused DATA has data behind it (RFC 2920 §3.1)";
                /// Bare LF / bare CR in message data.
                bare_newline: BareNewline = BareNewline::Reject,
                    "plain" bare_newline "POLICY"
                    "Messages with a bare LF or CR: reject or accept";
                /// Close with `554 5.5.0` when a client sends a command with more behind it
                /// before PIPELINING was offered (before the EHLO reply, or after HELO):
                /// spamware that does not wait for replies (postscreen's pipelining test).
                // Off: a legitimate client may also get this wrong; Postfix's
                // postscreen_pipelining_enable is off by default too.
                reject_unoffered_pipelining: bool = false,
                    "plain" reject_unoffered_pipelining "BOOL"
                    "true: close (554) a client that pipelines before PIPELINING was offered";
                /// Close with `554 5.5.1` on a command line ended by a bare LF instead of
                /// CRLF (RFC 5321 §2.3.8): not an RFC 5321 client (postscreen's bare
                /// newline test). Off: such a line is read as a command, as before.
                // Off: some old, legitimate scripts send bare LF; Postfix's
                // postscreen_bare_newline_enable is off by default too.
                reject_bare_lf_commands: bool = false,
                    "plain" reject_bare_lf_commands "BOOL"
                    "true: close (554) a client whose command line ends in a bare LF";
                /// Waiting for the next command (RFC 5321 §4.5.3.2.7: at least 5 minutes).
                command_timeout: Duration = Duration::from_secs(300),
                    "duration" command_timeout "DURATION"
                    "Wait for the next command before 421 4.4.2; RFC 5321 §4.5.3.2.7";
                /// Waiting for the next block of message data (§4.5.3.2.5's 3 minutes is
                /// the client's; the server's §4.5.3.2.7 5 minutes applies).
                data_timeout: Duration = Duration::from_secs(300),
                    "duration" data_timeout "DURATION"
                    "Wait for the next block of message data before 421 4.4.2";
            }

            /// The spool: per-shard append-only segment files.
            SpoolConfig spool "Spool" {
                /// Root directory; shard n writes `<dir>/shard-<n>/`.
                dir: PathBuf = PathBuf::from("spool"),
                    "path" spool "DIR"
                    "Spool root directory; shard n writes DIR/shard-<n>/";
                /// A segment is sealed and a new one opened past this size, bytes (it
                /// may exceed it by one record). Larger: fewer rotations (each costs a
                /// seal, two fdatasyncs and a directory fsync); smaller: a faster start,
                /// since recovery scans only the newest segment, and finer-grained
                /// deletion by consumers.
                // Recovery reads and checks at most this much at start (well under
                // a second from page cache or SSD); rotation cost is amortised
                // over 64 MiB of mail.
                segment_bytes: u64 = 64 * 1024 * 1024,
                    "size" segment_size "SIZE"
                    "Seal a spool segment past this size";
                /// When `250` may be sent.
                // `250` means durable: anything weaker is an explicit choice.
                durability: Durability = Durability::Fsync,
                    "plain" durability "MODE"
                    "fsync: 250 only after fdatasync; none: benchmarks only, a crash loses mail";
                /// Buffered body bytes per message before it is streamed to disk as
                /// fragments: bounds memory per connection for huge messages. A body up
                /// to this size is one record and one write; a larger one is written in
                /// fragments of this size. Worst case per shard: connections in DATA at
                /// once times this (plus their envelopes).
                // Most mail is far smaller, so it stays one record and one write;
                // 10,000 connections all mid-DATA stay under 2.5 GiB per shard.
                max_buffered_message_bytes: usize = 256 * 1024,
                    "size" max_buffered_message "SIZE"
                    "Body bytes buffered per message before streaming it to disk";
                /// With `durability = fsync`: after the first record of a batch arrives,
                /// wait this long for more before writing and syncing (PostgreSQL's
                /// `commit_delay`). Batching is already self-clocking — everything queued
                /// while a sync runs goes into the next — so this only helps when a sync
                /// is much faster than the gaps between commits; it adds up to this much
                /// to every acknowledgement. See tuning/results/sweep-*.md.
                // 0: in tuning/sweep.sh (16 connections, fsync) 200us doubled the
                // commits per fdatasync (8 -> 16) but moved msgs/s only +7%,
                // within noise; 1ms and 3ms cut msgs/s to 54% and 25%. An
                // fdatasync (1-5 ms here) already gathers what arrives meanwhile.
                group_commit_delay: Duration = Duration::ZERO,
                    "duration" group_commit_delay "DURATION"
                    "With fsync: wait this long for more commits before each fdatasync, e.g. 200us";
                /// CPUs for the io_uring worker threads that run each shard's
                /// fdatasyncs (and writes that would block): `all` leaves them where
                /// the kernel puts them, on the shard's own CPU when shards are pinned,
                /// so every group commit preempts its shard. A list (`2-3`, `3,`) moves
                /// them to housekeeping CPUs (Linux 5.14+). See tuning/README.md.
                // all: which CPUs are free for it is the host's business;
                // tuning/commit.sh measures both (issue 15).
                sync_cores: Cores = Cores::All,
                    "plain" sync_cores "CORES"
                    "CPUs for the io_uring workers that run spool fdatasyncs: all, or a list (2-3)";
                /// With `durability = fsync`: keep the current segment's file this many
                /// bytes longer than its records by writing zeros ahead of them, so a
                /// group commit's fdatasync overwrites blocks the file already has
                /// instead of growing it (which makes ext4 and XFS commit their journal
                /// on every sync). Zeros after the last record are the end of data
                /// (SPOOL-FORMAT.md); sealing and shutdown cut them away. 0 (the
                /// default): append. 1m is a good value on ext4/XFS; see tuning/README.md.
                // Off by default: tuning/commit.sh (issue 15) with 1m gave the
                // 16-connection batch fdatasync p50 258 -> 188 us and eod p50
                // 0.90 -> 0.67 ms, measured on one shared, noisy VM only. A
                // tailing reader scans the zeros once per poll: keep it near 1m.
                prewrite_bytes: u64 = 0,
                    "size" prewrite "SIZE"
                    "With fsync: write zeros this far ahead of the records (0: append)";
                /// With `durability = fsync`: write segments with O_DIRECT, whole
                /// blocks at a time, into zeros kept written ahead (`prewrite_bytes`,
                /// 1 MiB when 0), and each group commit's batch with O_DSYNC. The write
                /// then leaves from the shard's thread instead of an io_uring worker on
                /// its CPU, and the batch is on stable storage when it completes: no
                /// fdatasync follows. Filesystems that refuse O_DIRECT (checked when
                /// the shard opens) get buffered writes and a warning. Readers are
                /// unaffected. false: buffered writes and an fdatasync per batch.
                /// See tuning/README.md.
                // On: tuning/commit.sh (issue 15) on a 16-CPU machine gave, at 16
                // connections, 1.95x the durable msgs/s of buffered writes and eod
                // p50 0.33 vs 0.74 ms, at 0.7x the CPU per message; at 256, equal
                // within the rounds' spread.
                direct_io: bool = true,
                    "plain" direct_io "BOOL"
                    "With fsync: write segments with O_DIRECT into zeros written ahead";
                /// Reject new messages with `452 4.3.1` when the spool's filesystem has
                /// less than this free, bytes (checked at the start of each message,
                /// re-read at most every 250 ms or 1 MiB appended). 0 disables the check;
                /// a full disk then still gives `452 4.3.1`, from the failed write.
                // Room for the messages already in flight to finish and for a
                // segment rotation, so a filling disk refuses new mail cleanly
                // (452) before writes start failing mid-message.
                min_free_bytes: u64 = 64 * 1024 * 1024,
                    "size" min_free "SIZE"
                    "Refuse new messages with 452 4.3.1 below this much free disk";
                /// Once under `min_free_bytes`, keep refusing new transactions (`452 4.3.1`
                /// at MAIL) until this much is free again, bytes, so acceptance does not
                /// flap around the floor. 0: twice `min_free_bytes`.
                // A segment or two of room before accepting again.
                resume_free_bytes: u64 = 0,
                    "size" resume_free "SIZE"
                    "After running under min_free, accept again only above this (0: 2 x min_free)";
                /// How long a segment that every consumer has passed is kept before it
                /// is deleted: a window for replaying (`ringmx ship --reset`). 0: delete
                /// as soon as every consumer has passed it. With no consumer registered
                /// nothing is ever deleted.
                // Unshipped mail is never deleted; shipped mail is the consumers' now.
                retention: Duration = Duration::ZERO,
                    "duration" retention "DURATION"
                    "Keep spool segments every consumer has passed this long (0: delete at once)";
                /// How often the server's reclaimer deletes segments every consumer has
                /// passed and re-reads consumer lag and free space for backpressure.
                // Cheap: a directory listing, a few stats and the records appended
                // since the last round; once a second bounds how late backpressure acts.
                reclaim_interval: Duration = Duration::from_secs(1),
                    "duration" reclaim_interval "DURATION"
                    "How often to reclaim shipped segments and re-check backpressure";
                /// Backpressure: while the consumers are more than this many bytes
                /// behind (summed over shards, behind the slowest consumer), refuse new
                /// transactions with `452 4.3.1` at MAIL. 0: off.
                // Off by default: how much lag is too much depends on the disk.
                lag_high_bytes: u64 = 0,
                    "size" lag_high "SIZE"
                    "Refuse new mail (452 at MAIL) while consumers lag more than this (0: off)";
                /// Backpressure resumes accepting once the lag is under this, bytes.
                /// 0: half of `lag_high_bytes`.
                // Hysteresis wide enough that one burst does not flap it.
                lag_low_bytes: u64 = 0,
                    "size" lag_low "SIZE"
                    "Accept again once consumer lag is under this (0: half of lag_high)";
                /// This host's id in every segment header, so that node id plus queue id
                /// is unique across a fleet: 1 to 32 of `A-Z a-z 0-9 . _ -`. Empty: the
                /// host name, cut to those characters.
                // The host name is what operators already keep unique per machine.
                node_id: String = String::new(),
                    "plain" node_id "NAME"
                    "Node id in spool segment headers (default: the host name)";
            }

            /// TLS: STARTTLS on every `listen` address once a certificate is set, and
            /// implicit-TLS listeners (`server::tls`; README "TLS").
            TlsConfig tls "TLS" {
                /// Certificate chain, PEM (leaf first). Set: STARTTLS is offered on every
                /// `server.listen` address. Read at start (unreadable, expired or not
                /// matching the key: one line and exit 2) and on SIGHUP (a bad new one is
                /// logged and the old one kept).
                // Off by default: a certificate is the operator's to give.
                cert: PathBuf = PathBuf::new(),
                    "path" tls_cert "FILE"
                    "Certificate chain (PEM, leaf first); turns STARTTLS on for every --listen";
                /// Private key of `cert`, PEM (PKCS#8, PKCS#1 RSA or SEC1 EC).
                key: PathBuf = PathBuf::new(),
                    "path" tls_key "FILE"
                    "Private key of --tls-cert (PEM: PKCS#8, RSA or EC)";
                /// More certificates, chosen by the name the client asks for (SNI) when it
                /// is one the certificate is valid for; `cert` is the default. Each is
                /// `CERT_FILE:KEY_FILE`; TOML: a list of those strings.
                sni: Vec<SniCert> = Vec::new(),
                    "list" tls_sni "CERT:KEY"
                    "Another certificate and key, used for the SNI names it is valid for; repeat for several";
                /// Implicit-TLS listeners (port 465 style): TLS from the first byte.
                listen: Vec<SocketAddr> = Vec::new(),
                    "list" listen_tls "ADDR"
                    "IP:PORT to accept SMTP over implicit TLS on (needs --tls-cert); repeat for several";
                /// Refuse MAIL before STARTTLS (`530 5.7.0`) on the plain listeners. For
                /// private relays only: RFC 3207 §4 forbids it on a publicly referenced MX
                /// (a warning at start says so). Not REQUIRETLS (RFC 8689).
                only: bool = false,
                    "plain" tls_only "BOOL"
                    "Refuse MAIL before STARTTLS (530 5.7.0); private relays only (RFC 3207 §4)";
                /// How long a TLS handshake may take before the connection is dropped.
                // A handshake is a few KB in two round trips: seconds even on a
                // bad link; a client silent mid-handshake holds a slot for nothing.
                handshake_timeout: Duration = Duration::from_secs(30),
                    "duration" tls_handshake_timeout "DURATION"
                    "Drop a connection whose TLS handshake takes longer than this";
            }

            /// Submission (RFC 6409): listeners for senders that log in with SMTP AUTH
            /// after TLS and may then send to any domain (`server::auth`; README
            /// "Submission"). The `server.listen` addresses stay the MX role: mail for
            /// `smtp.accepted_domains` only, no AUTH.
            SubmissionConfig submission "Submission" {
                /// Submission listeners (port 587 style): STARTTLS, then AUTH, then mail
                /// to anywhere. Need a certificate (`tls.cert`) and `users`.
                // None: relaying for logged-in users is an explicit choice.
                listen: Vec<SocketAddr> = Vec::new(),
                    "list" submission "ADDR"
                    "IP:PORT to accept submission on (STARTTLS, then AUTH; needs --tls-cert and --users); repeat for several";
                /// Submission listeners over implicit TLS (RFC 8314, port 465 style).
                listen_tls: Vec<SocketAddr> = Vec::new(),
                    "list" submission_tls "ADDR"
                    "IP:PORT to accept submission over implicit TLS on (RFC 8314); repeat for several";
                /// Who may log in: `user:hash` lines (`#` comments, blank lines; fields
                /// after the hash, as in Dovecot's passwd-file, are ignored). Hashes are
                /// argon2 PHC strings (`$argon2id$...`) or bcrypt (`$2y$`, `$2b$`, `$2a$`:
                /// what `htpasswd -B` writes), optionally with Dovecot's `{ARGON2ID}` or
                /// `{BLF-CRYPT}` prefix (`doveadm pw`). Read at start (a bad line stops it,
                /// with file:line) and on SIGHUP (a bad file keeps the old users).
                users: PathBuf = PathBuf::new(),
                    "path" users "FILE"
                    "File of user:hash lines (argon2id or bcrypt, as htpasswd -B or doveadm pw write them)";
                /// Failed AUTH attempts a client address (IPv6: its /64) may make within
                /// `auth_failure_window`; past it that address gets `421 4.7.0` on AUTH
                /// and on new connections to a submission listener until the window ends.
                // 5, as fail2ban's default maxretry: a user who mistypes gets a few
                // tries, a password guesser gets 5 guesses per window per address.
                auth_max_failures: u32 = 5,
                    "plain" auth_max_failures "N"
                    "Failed AUTH attempts per client address within --auth-failure-window; then 421 4.7.0";
                /// The window `auth_max_failures` counts in, from the first failure.
                // 10 minutes, as fail2ban's default findtime.
                auth_failure_window: Duration = Duration::from_secs(600),
                    "duration" auth_failure_window "DURATION"
                    "How long failed AUTH attempts are remembered per client address";
                /// MAIL FROM must be the login (or, for a login without `@`, that name at
                /// one of `smtp.accepted_domains`); others get `553 5.7.1` (Postfix's
                /// `reject_sender_login_mismatch`).
                // Off: many setups let a user send as several addresses.
                sender_login_match: bool = false,
                    "plain" sender_login_match "BOOL"
                    "MAIL FROM must be the authenticated user's own address (553 5.7.1 otherwise)";
            }
        }
    };
}

/// The types that [`with_settings!`](crate::with_settings) names, for
/// generators outside this module (`use ringmx::config::types::*;`).
#[doc(hidden)]
pub mod types {
    pub use super::{BareNewline, Cores, Durability, LogFormat, LogLevel, SniCert};
    pub use crate::outlet::supervise::ShipTarget;
    pub use ipnet::IpNet;
    pub use std::net::SocketAddr;
    pub use std::path::PathBuf;
    pub use std::time::Duration;
}

/// Generates, per table: the struct with its docs and serde attributes, its
/// `Default`, and `check_limits` (the checks that follow from the kinds).
macro_rules! define_config {
    ($(
        $(#[doc = $sdoc:literal])*
        $Struct:ident $table:ident $heading:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $default:expr,
                    $kind:tt $flag:ident $value_name:literal $help:literal;
            )*
        }
    )*) => {
        $(
            $(#[doc = $sdoc])*
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            #[serde(default, deny_unknown_fields)]
            pub struct $Struct {
                $(
                    $(#[doc = $doc])*
                    #[serde(with = $kind)]
                    pub $field: $ty,
                )*
            }

            impl Default for $Struct {
                fn default() -> Self {
                    Self {
                        $($field: $default,)*
                    }
                }
            }

            impl $Struct {
                /// The checks every setting of its kind needs (durations
                /// within [`units::MAX_DURATION`]).
                fn check_limits(&self) -> Result<(), ConfigError> {
                    $(
                        check_kind!(
                            $kind,
                            concat!(stringify!($table), ".", stringify!($field)),
                            &self.$field
                        )?;
                    )*
                    Ok(())
                }
            }
        )*
    };
}

/// The check of one setting's kind (see `define_config!`).
macro_rules! check_kind {
    ("duration", $key:expr, $value:expr) => {
        units::check_duration(*$value).map_err(|e| ConfigError::Unit($key, e))
    };
    ($kind:tt, $key:expr, $value:expr) => {
        Ok::<(), ConfigError>(())
    };
}

with_settings!(define_config);

/// The whole configuration of one `ringmx serve` process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Sockets, cores, buffers, connection limits.
    pub server: ServerConfig,
    /// SMTP policy and protocol limits (the sans-IO engine reads only this).
    pub smtp: SmtpConfig,
    /// Where and how accepted messages are made durable.
    pub spool: SpoolConfig,
    /// Certificates and TLS listeners.
    pub tls: TlsConfig,
    /// Submission listeners, users, AUTH limits.
    pub submission: SubmissionConfig,
}

/// A certificate and its key chosen by SNI (`tls.sni`): `CERT_FILE:KEY_FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SniCert {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
}

impl FromStr for SniCert {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.rsplit_once(':') {
            Some((c, k)) if !c.is_empty() && !k.is_empty() => Ok(SniCert {
                cert: c.into(),
                key: k.into(),
            }),
            _ => Err(format!("{s:?}: give CERT_FILE:KEY_FILE")),
        }
    }
}

impl TryFrom<String> for SniCert {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<SniCert> for String {
    fn from(c: SniCert) -> String {
        c.to_string()
    }
}

impl fmt::Display for SniCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.cert.display(), self.key.display())
    }
}

/// Which CPU cores get a shard.
///
/// Written `"all"`, a count (`4`) or a list (`[0, 1]`, or the strings
/// `"0,2"` and `"0-3"`) in TOML; the same forms on the command line, where a
/// bare number is a count and a single CPU is written `3-3` or `3,`.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Cores {
    /// One shard per CPU this process may run on (its affinity mask).
    #[default]
    All,
    /// This many shards, on the first n CPUs of the affinity mask (CPUs
    /// 0..n when the process is not restricted by `taskset` or a cpuset).
    Count(usize),
    /// One shard on each listed CPU.
    List(Vec<usize>),
}

/// What happens to a message that contains a bare LF or a bare CR (one not
/// part of CRLF). Such a line ending never ends the message in any policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareNewline {
    /// Reject the message with `550 5.6.11` once its end is reached (as
    /// Postfix's `smtpd_forbid_bare_newline = normalize` era does with reject):
    /// protects downstream MTAs from SMTP smuggling.
    #[default]
    Reject,
    /// Keep the bytes as data, unchanged.
    Accept,
}

impl FromStr for BareNewline {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reject" => Ok(BareNewline::Reject),
            "accept" => Ok(BareNewline::Accept),
            _ => Err(format!("{s:?}: use reject or accept")),
        }
    }
}

impl fmt::Display for BareNewline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BareNewline::Reject => "reject",
            BareNewline::Accept => "accept",
        })
    }
}

/// When `250` is sent relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `250` only after the record is written and fdatasync'd (group commit).
    #[default]
    Fsync,
    /// `250` after the write reaches the page cache. Benchmarks only: a crash
    /// loses acknowledged mail. Logged loudly at start.
    None,
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "none" => Ok(Durability::None),
            _ => Err(format!("{s:?}: use fsync or none")),
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Fsync => "fsync",
            Durability::None => "none",
        })
    }
}

// The level is written as its lowercase name, read through its `FromStr`
// so that TOML and the flag give the same message for a bad one.
impl Serialize for LogLevel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for LogFormat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// How each kind of setting is read from TOML and the command line and
/// shown in `--help`: one module per kind named in
/// [`with_settings!`](crate::with_settings). `serialize`/`deserialize` are
/// the serde side (`#[serde(with = "kind")]`); `parse` and `show` the
/// command line's.
#[doc(hidden)]
pub mod kinds {
    /// Serde as the type has it; `FromStr` and `Display` on the command line.
    pub mod plain {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        /// As the type serializes.
        pub fn serialize<T: Serialize, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
            v.serialize(s)
        }

        /// As the type deserializes.
        pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
            d: D,
        ) -> Result<T, D::Error> {
            T::deserialize(d)
        }

        /// For `--help`.
        pub fn show<T: std::fmt::Display>(v: &T) -> String {
            v.to_string()
        }
    }

    /// A file or directory: as [`plain`], shown with `Path::display`.
    pub mod path {
        pub use super::plain::{deserialize, serialize};

        /// For `--help`.
        pub fn show(v: &std::path::Path) -> String {
            v.display().to_string()
        }
    }

    /// A list; on the command line, a flag given once per item.
    pub mod list {
        pub use super::plain::{deserialize, serialize};
        use std::str::FromStr;

        /// One flag's value, as a one-item list (clap appends them).
        ///
        /// # Errors
        /// The item type's own parse error.
        pub fn parse<T: FromStr>(s: &str) -> Result<Vec<T>, T::Err> {
            s.parse().map(|v| vec![v])
        }

        /// For `--help`: the items, space-separated.
        pub fn show<T: std::fmt::Display>(v: &[T]) -> String {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        }
    }

    /// A byte count: a number or a [`crate::units`] size string in TOML.
    pub mod size {
        use super::NumOrStr;
        use crate::units::{self, SizeMax};
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        /// As a number of bytes.
        pub fn serialize<T: Serialize, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
            v.serialize(s)
        }

        /// A number of bytes, or a string such as `"50MiB"`.
        pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
        where
            T: TryFrom<u64> + SizeMax,
            D: Deserializer<'de>,
        {
            match NumOrStr::deserialize(d)? {
                NumOrStr::Num(n) => T::try_from(n).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{n} is too large: at most {} bytes",
                        T::MAX_BYTES
                    ))
                }),
                NumOrStr::Str(s) => units::parse_size_as(&s).map_err(serde::de::Error::custom),
            }
        }

        /// One flag's value.
        ///
        /// # Errors
        /// As [`units::parse_size_as`].
        pub fn parse<T: TryFrom<u64> + SizeMax>(s: &str) -> Result<T, units::UnitError> {
            units::parse_size_as(s)
        }

        /// For `--help`, in the largest exact binary unit.
        pub fn show<T: Copy + TryInto<u64>>(v: &T) -> String {
            match (*v).try_into() {
                Ok(n) => units::format_size(n),
                // No setting is wider than u64.
                Err(_) => String::new(),
            }
        }
    }

    /// A duration: a number of seconds or a [`crate::units`] duration
    /// string in TOML; written back as a string.
    pub mod duration {
        use super::NumOrStr;
        use crate::units::{self, UnitError};
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        /// As a string such as `"300s"` or `"250ms"`.
        pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&units::format_duration(*d))
        }

        /// Whole seconds, or a string such as `"5m"` or `"1.5s"`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            match NumOrStr::deserialize(d)? {
                NumOrStr::Num(n) => units::duration_from_secs(n),
                NumOrStr::Str(s) => units::parse_duration(&s),
            }
            .map_err(serde::de::Error::custom)
        }

        /// One flag's value.
        ///
        /// # Errors
        /// As [`units::parse_duration`].
        pub fn parse(s: &str) -> Result<Duration, UnitError> {
            units::parse_duration(s)
        }

        /// For `--help`.
        pub fn show(d: &Duration) -> String {
            units::format_duration(*d)
        }
    }

    /// A TOML number or string.
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(u64),
        Str(String),
    }
}

/// The most clients `server.client_table_entries` may track: 40 bytes each,
/// so 1.3 GiB, far past any real need; it keeps the power-of-two rounding
/// and the table's index arithmetic in range.
pub const MAX_CLIENT_TABLE_ENTRIES: usize = 1 << 25;

/// A setting that cannot work, with the numbers that conflict.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// A `server.ship` target that cannot run.
    #[error("server.ship: {0}")]
    Ship(String),
    /// RFC 5321 §4.5.3.1.8.
    #[error("smtp.max_recipients = {0}: RFC 5321 §4.5.3.1.8 requires at least 100")]
    TooFewRecipients(usize),
    /// A line must fit the read buffer to be parsed in place.
    #[error(
        "server.read_buffer_bytes = {buffer} must exceed the longest line ({line} bytes): \
         raise read_buffer_bytes or lower the line limit"
    )]
    BufferSmallerThanLine {
        /// The read buffer size.
        buffer: usize,
        /// The longest line limit.
        line: usize,
    },
    /// Command line limit below the RFC minimum.
    #[error("smtp.max_command_line_bytes = {0}: RFC 5321 §4.5.3.1.4 requires at least 512")]
    CommandLineTooShort(usize),
    /// Text line limit below the RFC minimum.
    #[error("smtp.max_text_line_bytes = {0}: RFC 5321 §4.5.3.1.6 requires at least 1000")]
    TextLineTooShort(usize),
    /// A client table larger than [`MAX_CLIENT_TABLE_ENTRIES`].
    #[error(
        "server.client_table_entries is {0}; at most {MAX_CLIENT_TABLE_ENTRIES} (1.3 GiB) are allowed"
    )]
    ClientTable(usize),
    /// PROXY headers expected, but from nobody.
    #[error(
        "server.proxy_protocol is on or server.listen_proxy is set, but server.trusted_proxy \
         is empty: give --trusted-proxy CIDR for each load balancer"
    )]
    NoTrustedProxy,
    /// Nothing to listen on.
    #[error("server.listen is empty: give at least one --listen ADDR")]
    NoListen,
    /// Zero where at least one is needed.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// An empty hostname would make the greeting invalid.
    #[error("smtp.hostname is empty")]
    EmptyHostname,
    /// A duration past [`units::MAX_DURATION`], with the setting's key
    /// (a config built in code; the parsers refuse such text already).
    #[error("{0}: {1}")]
    Unit(&'static str, UnitError),
    /// A core selection that cannot be placed on this machine.
    #[error("server.cores: {0}")]
    Cores(String),
    /// The same listen address twice would make ringmx fight itself for it.
    #[error("server.listen lists {0} twice")]
    DuplicateListen(SocketAddr),
    /// smtp.hostname goes into the greeting, the EHLO reply and Received:,
    /// so it must be a domain or an address literal (RFC 5321 §4.1.2).
    #[error("smtp.hostname {0:?} is not a domain name or address literal (e.g. mx.example.com)")]
    BadHostname(String),
    /// An accepted domain no recipient could ever match.
    #[error("smtp.accepted_domains: {0:?} is not a domain name or address literal")]
    BadDomain(String),
    /// No accepted domain: every recipient would be refused.
    #[error("smtp.accepted_domains is empty: give at least one --domain")]
    NoDomains,
    /// A delimiter that would cut addresses in the wrong place.
    #[error(
        "smtp.recipient_delimiter {0:?}: use printable ASCII other than @, quotes and \
         spaces, e.g. +"
    )]
    BadDelimiter(String),
    /// A recipient lookup setting that cannot work (LDAP or verify).
    #[error("smtp.recipient_{0}")]
    RecipientLookup(String),
    /// TLS settings that do not fit together (a key without a certificate,
    /// a TLS listener without one, ...).
    #[error("tls.{0}")]
    Tls(String),
    /// Submission settings that do not fit together (a listener without a
    /// certificate or users, ...).
    #[error("submission.{0}")]
    Submission(String),
    /// The config file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file named by `--config`.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The config file is not valid TOML for [`Config`]: syntax, an unknown
    /// key or a bad value.
    #[error("config file {path}:{line}:{column}: {reason}")]
    Parse {
        /// The file named by `--config`.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column of the offending text.
        column: usize,
        /// What is wrong, as one line.
        reason: String,
    },
}

impl Config {
    /// Checks the settings against each other and the RFC minimums.
    ///
    /// # Errors
    /// The first conflicting setting, with the numbers involved.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.smtp.validate()?;
        let s = &self.server;
        if s.listen.is_empty() {
            return Err(ConfigError::NoListen);
        }
        let line = self
            .smtp
            .max_command_line_bytes
            .max(self.smtp.max_text_line_bytes);
        if s.read_buffer_bytes <= line {
            return Err(ConfigError::BufferSmallerThanLine {
                buffer: s.read_buffer_bytes,
                line,
            });
        }
        if s.max_connections_per_shard == 0 {
            return Err(ConfigError::Zero("server.max_connections_per_shard"));
        }
        if s.backlog == 0 {
            return Err(ConfigError::Zero("server.backlog"));
        }
        if s.client_table_entries == 0 {
            return Err(ConfigError::Zero("server.client_table_entries"));
        }
        if s.client_table_entries > MAX_CLIENT_TABLE_ENTRIES {
            return Err(ConfigError::ClientTable(s.client_table_entries));
        }
        if self.spool.segment_bytes == 0 {
            return Err(ConfigError::Zero("spool.segment_bytes"));
        }
        if self.spool.reclaim_interval.is_zero() {
            return Err(ConfigError::Zero("spool.reclaim_interval"));
        }
        for (i, a) in s.listen.iter().enumerate() {
            if s.listen[..i].contains(a) {
                return Err(ConfigError::DuplicateListen(*a));
            }
        }
        match &s.cores {
            Cores::Count(0) => return Err(ConfigError::Zero("server.cores")),
            Cores::List(l) if l.is_empty() => return Err(ConfigError::Zero("server.cores")),
            _ => {}
        }
        if (s.proxy_protocol || !s.listen_proxy.is_empty()) && s.trusted_proxy.is_empty() {
            return Err(ConfigError::NoTrustedProxy);
        }
        crate::outlet::supervise::check_all(&s.ship).map_err(ConfigError::Ship)?;
        self.server.check_limits()?;
        self.spool.check_limits()?;
        self.tls.validate(&s.listen)?;
        self.submission.validate(self.tls.enabled())?;
        // The session takes AUTH lines of SASL_LINE_BYTES (RFC 4954 §4).
        let sasl = crate::protocol::session::SASL_LINE_BYTES;
        if self.submission.enabled() && s.read_buffer_bytes <= sasl {
            return Err(ConfigError::Submission(format!(
                "listen needs server.read_buffer_bytes over {sasl} (RFC 4954 AUTH lines), \
                 not {}: raise it",
                s.read_buffer_bytes
            )));
        }
        Ok(())
    }
}

impl TlsConfig {
    /// Whether a certificate is configured (TLS is on).
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }

    /// The TLS part of [`Config::validate`]: settings only; the files are
    /// read by `server::tls` at start.
    fn validate(&self, plain: &[SocketAddr]) -> Result<(), ConfigError> {
        let err = |m: &str| Err(ConfigError::Tls(m.into()));
        match (self.enabled(), self.key.as_os_str().is_empty()) {
            (true, true) => return err("cert is set but tls.key is not: give --tls-key FILE"),
            (false, false) => return err("key is set but tls.cert is not: give --tls-cert FILE"),
            _ => {}
        }
        if !self.enabled() {
            if !self.listen.is_empty() {
                return err(
                    "listen (--listen-tls) needs a certificate: give --tls-cert and --tls-key",
                );
            }
            if !self.sni.is_empty() {
                return err(
                    "sni (--tls-sni) needs a default certificate: give --tls-cert and --tls-key",
                );
            }
            if self.only {
                return err("only (--tls-only) needs a certificate: give --tls-cert and --tls-key");
            }
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::Zero("tls.handshake_timeout"));
        }
        for (i, a) in self.listen.iter().enumerate() {
            // Port 0 picks a free port per listener: never a clash.
            if a.port() != 0 && (self.listen[..i].contains(a) || plain.contains(a)) {
                return Err(ConfigError::Tls(format!(
                    "listen: {a} is given twice (or also in server.listen)"
                )));
            }
        }
        self.check_limits()
    }
}

impl SubmissionConfig {
    /// Whether any submission listener is configured.
    pub fn enabled(&self) -> bool {
        !(self.listen.is_empty() && self.listen_tls.is_empty())
    }

    /// The submission part of [`Config::validate`]: settings only; the
    /// users file is read by `server::auth` at start.
    fn validate(&self, tls: bool) -> Result<(), ConfigError> {
        let err = |m: &str| Err(ConfigError::Submission(m.into()));
        if self.enabled() && !tls {
            // RFC 6409 §4.3 with RFC 4954 §4: credentials only over TLS.
            return err(
                "listen (--submission, --submission-tls) needs a certificate: give --tls-cert \
                 and --tls-key",
            );
        }
        if self.enabled() && self.users.as_os_str().is_empty() {
            return err("listen (--submission, --submission-tls) needs users: give --users FILE");
        }
        if self.auth_max_failures == 0 {
            return Err(ConfigError::Zero("submission.auth_max_failures"));
        }
        if self.auth_failure_window.is_zero() {
            return Err(ConfigError::Zero("submission.auth_failure_window"));
        }
        self.check_limits()
    }
}

impl SmtpConfig {
    /// The protocol-only part of [`Config::validate`].
    ///
    /// # Errors
    /// The first setting below an RFC minimum, empty, or (a timeout) past
    /// [`units::MAX_DURATION`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_recipients < 100 {
            return Err(ConfigError::TooFewRecipients(self.max_recipients));
        }
        if self.max_command_line_bytes < 512 {
            return Err(ConfigError::CommandLineTooShort(
                self.max_command_line_bytes,
            ));
        }
        if self.max_text_line_bytes < 1000 {
            return Err(ConfigError::TextLineTooShort(self.max_text_line_bytes));
        }
        if self.max_errors == 0 {
            return Err(ConfigError::Zero("smtp.max_errors"));
        }
        if self.hostname.is_empty() {
            return Err(ConfigError::EmptyHostname);
        }
        let name = |d: &str| valid_domain(d) || address_literal(d);
        // ASCII: it is sent before any client could have said SMTPUTF8.
        if !(self.hostname.is_ascii() && name(&self.hostname)) {
            return Err(ConfigError::BadHostname(self.hostname.clone()));
        }
        if !self
            .recipient_delimiter
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"@\"".contains(&b))
        {
            return Err(ConfigError::BadDelimiter(self.recipient_delimiter.clone()));
        }
        if self.accepted_domains.is_empty() {
            return Err(ConfigError::NoDomains);
        }
        if let Some(d) = self.accepted_domains.iter().find(|d| !name(d)) {
            return Err(ConfigError::BadDomain(d.clone()));
        }
        self.check_lookups()?;
        self.check_limits()
    }

    /// The LDAP and verify settings: each policy's domains need its server,
    /// and are accepted domains named by one policy only.
    fn check_lookups(&self) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError::RecipientLookup(s));
        for (what, domains, server, flag) in [
            (
                "ldap",
                &self.recipient_ldap_domains,
                &self.recipient_ldap,
                "--recipient-ldap URL",
            ),
            (
                "verify",
                &self.recipient_verify_domains,
                &self.recipient_verify_host,
                "--recipient-verify-host HOST:PORT",
            ),
        ] {
            if !domains.is_empty() && server.is_empty() {
                return bad(format!("{what}_domains needs a server: give {flag}"));
            }
            if let Some(d) = domains.iter().find(|d| {
                !self
                    .accepted_domains
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(d))
            }) {
                return bad(format!(
                    "{what}_domains: {d:?} is not in smtp.accepted_domains: add it with --domain"
                ));
            }
        }
        if let Some(d) = self.recipient_ldap_domains.iter().find(|d| {
            self.recipient_verify_domains
                .iter()
                .any(|v| v.eq_ignore_ascii_case(d))
        }) {
            return bad(format!(
                "ldap_domains and verify_domains both name {d:?}: a domain has one policy"
            ));
        }
        let url = &self.recipient_ldap;
        if !(url.is_empty() || url.starts_with("ldap://") || url.starts_with("ldapi://")) {
            return bad(format!(
                "ldap {url:?}: use ldap://host:port or ldapi:// (ldaps:// is not built in)"
            ));
        }
        if !url.is_empty() && !self.recipient_ldap_filter.contains('%') {
            return bad(format!(
                "ldap_filter {:?} names no %s, %u or %d: it would match every recipient",
                self.recipient_ldap_filter
            ));
        }
        if self.recipient_lookup_timeout.is_zero() {
            return bad("lookup_timeout must be above 0".into());
        }
        if self.recipient_lookup_threads == 0 || self.recipient_cache_entries == 0 {
            return bad("lookup_threads and cache_entries must be at least 1".into());
        }
        Ok(())
    }
}

impl FromStr for Cores {
    type Err = String;

    /// `all`, a count (`4`), or a list of CPUs and ranges (`0,2`, `0-3`,
    /// `3-3`, `3,`).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(Cores::All);
        }
        if let Ok(n) = s.parse::<usize>() {
            return Ok(Cores::Count(n));
        }
        let bad = || {
            format!("{s:?} is not a core selection: use all, a count (4) or a list (0,2 or 0-3)")
        };
        let cpu = |t: &str| t.trim().parse::<usize>().map_err(|_| bad());
        let mut cpus = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (cpu(a)?, cpu(b)?);
                    if a > b {
                        return Err(format!("{s:?}: range {a}-{b} is backwards"));
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(cpu(part)?),
            }
        }
        if cpus.is_empty() {
            return Err(bad());
        }
        Ok(Cores::List(cpus))
    }
}

impl fmt::Display for Cores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cores::All => f.write_str("all"),
            Cores::Count(n) => write!(f, "{n}"),
            Cores::List(l) => {
                for (i, c) in l.iter().enumerate() {
                    write!(f, "{}{c}", if i > 0 { "," } else { "" })?;
                }
                // A one-CPU list must not read back as a count.
                if l.len() == 1 {
                    f.write_str(",")?;
                }
                Ok(())
            }
        }
    }
}

impl Serialize for Cores {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cores::All => s.serialize_str("all"),
            Cores::Count(n) => s.serialize_u64(*n as u64),
            Cores::List(l) => l.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Str(String),
            List(Vec<usize>),
        }
        let raw = Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "cores must be \"all\", a count (4) or a list of CPUs ([0, 1])",
            )
        })?;
        match raw {
            Raw::Num(n) => usize::try_from(n)
                .map(Cores::Count)
                .map_err(|_| serde::de::Error::custom(format!("cores = {n} is too large"))),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::List(l) => Ok(Cores::List(l)),
        }
    }
}

impl Cores {
    /// The CPUs to run one shard each on, given the CPUs this process may
    /// run on (its affinity mask, ascending).
    ///
    /// # Errors
    /// [`ConfigError::Cores`] naming the CPU or count that does not fit.
    ///
    /// # Example
    /// ```
    /// use ringmx::config::Cores;
    /// let allowed = [0, 1, 2, 3];
    /// assert_eq!("2".parse::<Cores>().unwrap().resolve(&allowed).unwrap(), [0, 1]);
    /// assert_eq!("1-2".parse::<Cores>().unwrap().resolve(&allowed).unwrap(), [1, 2]);
    /// assert!("7,".parse::<Cores>().unwrap().resolve(&allowed).is_err());
    /// ```
    pub fn resolve(&self, allowed: &[usize]) -> Result<Vec<usize>, ConfigError> {
        let avail = || format_cpus(allowed);
        match self {
            Cores::All if allowed.is_empty() => Err(ConfigError::Cores(
                "no CPU is available to this process".into(),
            )),
            Cores::All => Ok(allowed.to_vec()),
            Cores::Count(0) => Err(ConfigError::Zero("server.cores")),
            Cores::Count(n) if *n > allowed.len() => Err(ConfigError::Cores(format!(
                "{n} shards asked for, but only {} CPUs are available ({})",
                allowed.len(),
                avail()
            ))),
            Cores::Count(n) => Ok(allowed[..*n].to_vec()),
            Cores::List(l) => {
                for (i, c) in l.iter().enumerate() {
                    if l[..i].contains(c) {
                        return Err(ConfigError::Cores(format!("CPU {c} is listed twice")));
                    }
                    if !allowed.contains(c) {
                        return Err(ConfigError::Cores(format!(
                            "CPU {c} is not available to this process (available: {})",
                            avail()
                        )));
                    }
                }
                if l.is_empty() {
                    return Err(ConfigError::Zero("server.cores"));
                }
                Ok(l.clone())
            }
        }
    }
}

/// `0-3,6` style, for messages.
fn format_cpus(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

// Loading `--config FILE`; the binary applies its flags on top.

impl Config {
    /// Parses TOML text; `path` only names the file in errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] with the line and column of the first problem
    /// (bad syntax, an unknown key, a bad value).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let at = e.span().map_or(0, |s| s.start).min(text.len());
            let before = &text[..at];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                reason: e.message().replace('\n', " "),
            }
        })
    }

    /// Reads a TOML config file (no flags applied, not validated).
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`].
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Config::from_toml(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn rfc5321_4_5_3_1_8_recipient_minimum_enforced() {
        let mut c = Config::default();
        c.smtp.max_recipients = 99;
        assert_eq!(c.validate(), Err(ConfigError::TooFewRecipients(99)));
    }

    #[test]
    fn read_buffer_must_hold_a_line() {
        let mut c = Config::default();
        c.server.read_buffer_bytes = 1000;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BufferSmallerThanLine { .. })
        ));
    }

    #[test]
    fn toml_reads_units_as_the_flags_do() {
        let c = Config::from_toml(
            "[smtp]\nmax_message_bytes = \"10MB\"\nmax_command_line_bytes = \"1KiB\"\n\
             data_timeout = \"1.5s\"\ncommand_timeout = 7\n\
             [spool]\nmax_buffered_message_bytes = 4096\ngroup_commit_delay = \"200us\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.smtp.max_message_bytes, 10_000_000);
        assert_eq!(c.smtp.max_command_line_bytes, 1024);
        assert_eq!(c.smtp.data_timeout, Duration::from_millis(1500));
        assert_eq!(c.smtp.command_timeout, Duration::from_secs(7));
        assert_eq!(c.spool.max_buffered_message_bytes, 4096);
        assert_eq!(c.spool.group_commit_delay, Duration::from_micros(200));
    }

    #[test]
    fn too_long_durations_are_refused_in_toml_and_by_validate() {
        for text in [
            "[server]\nshutdown_grace = \"9223372036854775807s\"\n",
            "[server]\nshutdown_grace = 9223372036854775807\n",
            "[smtp]\ncommand_timeout = \"876001h\"\n",
        ] {
            let e = Config::from_toml(text, Path::new("t.toml")).unwrap_err();
            assert!(e.to_string().contains("at most 876000h"), "{text}: {e}");
        }
        let mut c = Config::default();
        c.spool.group_commit_delay = Duration::MAX;
        assert_eq!(
            c.validate(),
            Err(ConfigError::Unit(
                "spool.group_commit_delay",
                UnitError::DurationTooLong(units::format_duration(Duration::MAX))
            ))
        );
        let mut c = Config::default();
        c.smtp.data_timeout = units::MAX_DURATION + Duration::from_nanos(1);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("smtp.data_timeout: "), "{e}");
        assert!(e.ends_with("at most 876000h (100 years)"), "{e}");
        let mut c = Config::default();
        c.server.max_connection_lifetime = units::MAX_DURATION;
        c.validate().unwrap();
    }

    #[test]
    fn sizes_too_large_for_their_setting_are_errors() {
        let e = Config::from_toml(
            "[smtp]\nmax_message_bytes = \"20000000000GiB\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("is too large"), "{e}");
    }

    #[test]
    fn log_level_is_typed() {
        let c =
            Config::from_toml("[server]\nlog_level = \"debug\"\n", Path::new("t.toml")).unwrap();
        assert_eq!(c.server.log_level, LogLevel::Debug);
        let e =
            Config::from_toml("[server]\nlog_level = \"loud\"\n", Path::new("t.toml")).unwrap_err();
        let ConfigError::Parse { line, reason, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(*line, 2, "{e}");
        assert!(
            reason.contains("\"loud\": use error, warn, info or debug"),
            "{e}"
        );
        for l in [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
        ] {
            assert_eq!(l.to_string().parse::<LogLevel>(), Ok(l));
        }
        let text = toml::to_string(&Config::default()).unwrap();
        assert!(text.contains("log_level = \"info\""), "{text}");
    }

    #[test]
    fn toml_round_trip_and_unknown_keys() {
        let c: Config = toml::from_str(
            "[smtp]\nhostname = \"mx.example\"\nmax_message_bytes = \"10MiB\"\n\
             command_timeout = \"10m\"\n[spool]\ndurability = \"none\"\n",
        )
        .unwrap();
        assert_eq!(c.smtp.hostname, "mx.example");
        assert_eq!(c.smtp.max_message_bytes, 10 << 20);
        assert_eq!(c.smtp.command_timeout, Duration::from_secs(600));
        assert_eq!(c.spool.durability, Durability::None);
        let err = toml::from_str::<Config>("[smtp]\nhostnme = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("hostnme"), "{err}");
        let back: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
    #[test]
    fn cores_in_toml_all_count_list_and_ranges() {
        let cores = |t: &str| {
            toml::from_str::<Config>(&format!("[server]\ncores = {t}\n")).map(|c| c.server.cores)
        };
        assert_eq!(cores("\"all\"").unwrap(), Cores::All);
        assert_eq!(cores("4").unwrap(), Cores::Count(4));
        assert_eq!(cores("[0, 1]").unwrap(), Cores::List(vec![0, 1]));
        assert_eq!(cores("\"0-2,5\"").unwrap(), Cores::List(vec![0, 1, 2, 5]));
        assert_eq!(cores("\"3,\"").unwrap(), Cores::List(vec![3]));
        assert!(cores("\"some\"")
            .unwrap_err()
            .to_string()
            .contains("not a core selection"));
        assert!(cores("true").is_err());
        // Round trip, including a one-CPU list (which must not become a count).
        for c in [
            Cores::All,
            Cores::Count(2),
            Cores::List(vec![1]),
            Cores::List(vec![0, 2]),
        ] {
            let mut cfg = Config::default();
            cfg.server.cores = c.clone();
            let back: Config = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
            assert_eq!(back.server.cores, c);
            assert_eq!(c.to_string().parse::<Cores>().unwrap(), c);
        }
    }

    #[test]
    fn cores_resolve_against_the_affinity_mask() {
        let allowed = [0, 1, 2, 3];
        assert_eq!(Cores::All.resolve(&allowed).unwrap(), allowed);
        assert_eq!(Cores::Count(2).resolve(&[2, 3]).unwrap(), [2, 3]);
        assert_eq!(Cores::List(vec![3, 1]).resolve(&allowed).unwrap(), [3, 1]);
        let e = Cores::List(vec![0, 9])
            .resolve(&allowed)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "server.cores: CPU 9 is not available to this process (available: 0-3)"
        );
        let e = Cores::Count(5).resolve(&[0, 1, 3]).unwrap_err().to_string();
        assert_eq!(
            e,
            "server.cores: 5 shards asked for, but only 3 CPUs are available (0-1,3)"
        );
        assert!(Cores::List(vec![1, 1]).resolve(&allowed).is_err());
        assert_eq!(
            Cores::Count(0).resolve(&allowed),
            Err(ConfigError::Zero("server.cores"))
        );
    }

    #[test]
    fn file_errors_name_line_and_column() {
        let e = Config::from_toml(
            "[smtp]\nhostname = \"x\"\nhostnme = 1\n",
            Path::new("f.toml"),
        )
        .unwrap_err();
        let ConfigError::Parse {
            line,
            column,
            reason,
            ..
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!((*line, *column), (3, 1), "{e}");
        assert!(reason.starts_with("unknown field `hostnme`"), "{reason}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn validation_catches_duplicates_and_empty_lists() {
        let mut c = Config::default();
        c.server.listen = vec!["127.0.0.1:25".parse().unwrap(); 2];
        assert!(matches!(c.validate(), Err(ConfigError::DuplicateListen(_))));
        let mut c = Config::default();
        c.smtp.accepted_domains.clear();
        assert_eq!(c.validate(), Err(ConfigError::NoDomains));
    }

    /// Issue 9 §6: the hostname goes into the greeting and Received:, and
    /// an accepted domain must be one a recipient can have.
    #[test]
    fn hostname_and_domains_must_be_domains_or_address_literals() {
        for ok in [
            "mx.example.com",
            "localhost",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
        ] {
            let mut c = Config::default();
            c.smtp.hostname = ok.into();
            c.smtp.accepted_domains = vec![ok.into()];
            assert_eq!(c.validate(), Ok(()), "{ok}");
        }
        for bad in [
            "mx example",
            "mx.example.",
            "a..b",
            "-mx",
            "mx\r\n250 x",
            "m\u{fc}x",
            "[1.2.3]",
        ] {
            let mut c = Config::default();
            c.smtp.hostname = bad.into();
            assert_eq!(
                c.validate(),
                Err(ConfigError::BadHostname(bad.into())),
                "{bad:?}"
            );
        }
        let mut c = Config::default();
        c.smtp.accepted_domains = vec!["example.com".into(), "bad domain".into()];
        assert_eq!(
            c.validate(),
            Err(ConfigError::BadDomain("bad domain".into()))
        );
    }

    /// A delimiter cuts local parts at RCPT time: it must be a character
    /// that can sit in one and cannot end the address.
    #[test]
    fn recipient_delimiters_are_printable_ascii_and_not_address_syntax() {
        for ok in ["+", "", "-+", "=_"] {
            let mut c = Config::default();
            c.smtp.recipient_delimiter = ok.into();
            assert_eq!(c.validate(), Ok(()), "{ok:?}");
        }
        for bad in ["@", " ", "+ ", "\"", "\u{e9}", "\t"] {
            let mut c = Config::default();
            c.smtp.recipient_delimiter = bad.into();
            assert_eq!(
                c.validate(),
                Err(ConfigError::BadDelimiter(bad.into())),
                "{bad:?}"
            );
        }
        let c = Config::from_toml(
            "[smtp]\nrecipient_map = \"/etc/ringmx/recipients\"\nrecipient_delimiter = \"-\"\n\
             recipient_ignore_case = false\n",
            Path::new("ringmx.toml"),
        )
        .unwrap();
        assert_eq!(c.smtp.recipient_map, Path::new("/etc/ringmx/recipients"));
        assert_eq!(
            (
                c.smtp.recipient_delimiter.as_str(),
                c.smtp.recipient_ignore_case
            ),
            ("-", false)
        );
    }

    /// The ldap and verify policies: read from TOML, and refused at start
    /// where they cannot work (a domain without a server, outside the
    /// accepted ones, or under both policies; a filter matching everyone).
    #[test]
    fn recipient_lookup_settings_are_read_and_checked() {
        let c = Config::from_toml(
            "[smtp]\naccepted_domains = [\"a.example\", \"b.example\"]\n\
             recipient_ldap = \"ldap://127.0.0.1:389\"\n\
             recipient_ldap_base = \"dc=example,dc=com\"\n\
             recipient_ldap_filter = \"(uid=%u)\"\n\
             recipient_ldap_domains = [\"a.example\"]\n\
             recipient_verify_host = \"10.0.0.1:25\"\n\
             recipient_verify_domains = [\"b.example\"]\n\
             recipient_lookup_timeout = \"2s\"\n\
             recipient_cache_positive_ttl = \"1h\"\n\
             recipient_cache_negative_ttl = \"30s\"\n\
             recipient_cache_entries = 10\n\
             recipient_lookup_threads = 2\n",
            Path::new("ringmx.toml"),
        )
        .unwrap();
        assert_eq!(c.validate(), Ok(()));
        let s = &c.smtp;
        assert_eq!(s.recipient_ldap_filter, "(uid=%u)");
        assert_eq!(s.recipient_verify_domains, ["b.example"]);
        assert_eq!(s.recipient_lookup_timeout, Duration::from_secs(2));
        assert_eq!(s.recipient_cache_positive_ttl, Duration::from_secs(3600));
        assert_eq!(
            (s.recipient_cache_entries, s.recipient_lookup_threads),
            (10, 2)
        );
        let refused = |f: &dyn Fn(&mut SmtpConfig), want: &str| {
            let mut c2 = c.clone();
            f(&mut c2.smtp);
            match c2.validate() {
                Err(ConfigError::RecipientLookup(e)) => assert!(e.contains(want), "{e}"),
                other => panic!("{want}: {other:?}"),
            }
        };
        refused(&|s| s.recipient_ldap.clear(), "needs a server");
        refused(&|s| s.recipient_verify_host.clear(), "needs a server");
        refused(
            &|s| s.recipient_ldap_domains.push("c.example".into()),
            "not in smtp.accepted_domains",
        );
        refused(
            &|s| s.recipient_verify_domains.push("A.example".into()),
            "a domain has one policy",
        );
        refused(
            &|s| s.recipient_ldap = "ldaps://x".into(),
            "ldaps:// is not built in",
        );
        refused(
            &|s| s.recipient_ldap_filter = "(mail=*)".into(),
            "names no %s",
        );
        refused(&|s| s.recipient_lookup_timeout = Duration::ZERO, "above 0");
        refused(&|s| s.recipient_lookup_threads = 0, "at least 1");
    }
}
