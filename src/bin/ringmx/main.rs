//! The `ringmx` binary: flags, then the library. No logic lives here.
//!
//! * `ringmx serve [FLAGS]`: run the SMTP server ([`ringmx::server::serve`]).
//! * `ringmx spool ...`: read the spool ([`spool`](mod@spool)).
//! * `ringmx ship ...`: ship the spool onward, as a named consumer ([`ship`]).
//! * `ringmx check-config --config FILE`: validate a config, print its settings
//!   ([`check_config`]).

mod check_config;
mod settings;
mod ship;
mod spool;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ringmx::server::ServerError;
use settings::ConfigOverrides;

// mimalloc: per-thread free lists suit one executor per core, and it returns
// memory of idle connections' buffers promptly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// ringmx: a thread-per-core SMTP server for bulk inbound mail.
#[derive(Debug, Parser)]
#[command(name = "ringmx", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept mail: one shard per core, each with its own SO_REUSEPORT listener.
    ///
    /// Settings come from the defaults, then --config FILE, then the flags.
    /// SIGTERM/SIGINT: graceful shutdown (a second one exits at once).
    /// SIGHUP: reread the config file and apply what can change without a
    /// restart (smtp settings but recipient_*, log level and format,
    /// connection lifetime), then the recipient map; a bad file keeps the
    /// running settings.
    #[command(after_help = ringmx::units::FORMS_HELP)]
    Serve(Box<ConfigOverrides>),
    /// Read the spool (ls, cat, export, verify, stats) and reclaim it by hand (gc).
    Spool(spool::SpoolArgs),
    /// Ship the spool onward as a named consumer, with durable checkpoints.
    ///
    /// Ships what is committed and exits (or keeps tailing with --follow);
    /// delivery is at-least-once, keyed <node_id>.<queue_id>. Messages the
    /// sink refuses for good become dead letters under
    /// DIR/consumers/NAME/dead/. Exit status: 0 done, 1 failed, 2 usage.
    #[command(after_help = SHIP_EXAMPLES)]
    Ship(ship::ShipArgs),
    /// Check a config file and print its effective settings as TOML.
    ///
    /// Prints only the settings that differ from the defaults (like
    /// `postconf -n`), or every one with --all. Exit status: 0 valid,
    /// 2 invalid (one line on stderr saying what to fix).
    CheckConfig(check_config::CheckConfigArgs),
}

const SHIP_EXAMPLES: &str = "Examples:
  ringmx ship --spool /var/spool/ringmx --name mbox --to maildir:/srv/mail/in
  ringmx ship --spool /var/spool/ringmx --name mbox --to maildir:/srv/mail/in --follow
  ringmx ship --spool /var/spool/ringmx --name mbox --dead-letters
  ringmx ship --spool /var/spool/ringmx --name mbox --redrive --to maildir:/srv/mail/in
  ringmx ship --spool /var/spool/ringmx --name mbox --reset --since 2026-11-29T00:00:00Z
  ringmx ship --spool /var/spool/ringmx --name mbox --forget";

fn main() {
    let cli = parse();
    let code = match cli.command {
        Command::Serve(flags) => serve(&flags),
        Command::Spool(args) => spool(args),
        Command::CheckConfig(args) => args.run(),
        Command::Ship(args) => match args.run() {
            Ok(()) => 0,
            Err(f) => {
                eprintln!("ringmx ship: {}", f.message);
                f.code
            }
        },
    };
    std::process::exit(code);
}

/// Parses the command line, with every `serve` default shown in `--help`.
fn parse() -> Cli {
    let defaults = ConfigOverrides::help_defaults();
    let cmd = Cli::command().mut_subcommand("serve", |mut sc| {
        for (id, default) in defaults {
            // An empty list shows as "none", not as nothing.
            let default = if default.is_empty() {
                "none".to_owned()
            } else {
                default
            };
            sc = sc.mut_arg(id, |a| {
                let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                a.help(format!("{help} [default: {default}]"))
            });
        }
        sc
    });
    let matches = cmd.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn serve(flags: &ConfigOverrides) -> i32 {
    let cfg = match flags.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringmx: {e}");
            return 2;
        }
    };
    // SIGHUP reads the file and applies the flags again, as here; without
    // a file the flags cannot change, and there is nothing to re-read.
    let reread = flags.config.is_some().then(|| {
        let again = flags.clone();
        Box::new(move || again.load()) as ringmx::server::reload::Reread
    });
    let json = cfg.server.log_format == ringmx::config::LogFormat::Json;
    match ringmx::server::serve_reloading(cfg, reread) {
        Ok(_) => 0,
        Err(e) => {
            // A log shipper reading JSON gets the reason as JSON too.
            if json {
                ringmx::log::write(ringmx::log::Level::Error, format_args!("ringmx: {e}"));
            } else {
                eprintln!("ringmx: {e}");
            }
            // 2 for settings (like a usage error), 1 for the environment.
            match e {
                ServerError::Config(_)
                | ServerError::RecipientMap(_)
                | ServerError::Tls(_)
                | ServerError::Users(_) => 2,
                _ => 1,
            }
        }
    }
}

fn spool(args: spool::SpoolArgs) -> i32 {
    match args.run() {
        // `verify` reports damage through its exit code.
        Ok(code) => {
            if code == std::process::ExitCode::SUCCESS {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("ringmx: {e}");
            1
        }
    }
}
