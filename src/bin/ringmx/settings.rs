//! The `ringmx serve` flags, generated from the settings list of
//! [`ringmx::with_settings!`]: one flag per setting, each overriding the
//! same key of the `--config` file (the key is named in its help). Lives
//! beside the binary so that the library carries no command-line types.

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use ringmx::config::{kinds, Config, ConfigError};
use std::path::PathBuf;

/// Generates [`ConfigOverrides`] from the settings list: its fields, its
/// clap arguments, reading them back, applying them over a [`Config`], and
/// the defaults shown in `--help`.
macro_rules! define_overrides {
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
        /// The `ringmx serve` flags. `None` / empty means "not given".
        /// Defaults are shown in `--help` from [`Config::default`] via
        /// [`ConfigOverrides::help_defaults`], so they are written down only
        /// once.
        #[derive(Debug, Clone, Default)]
        pub struct ConfigOverrides {
            /// TOML file with the settings; the flags override it.
            pub config: Option<PathBuf>,
            $($(
                #[doc = concat!("`--", stringify!($flag), "`: ", $help)]
                pub $flag: kind!(ty $kind, $ty),
            )*)*
        }

        impl ConfigOverrides {
            /// `--config` and one argument per setting, in the order of the
            /// settings list, grouped under each table's heading.
            pub(super) fn args() -> Vec<Arg> {
                vec![
                    Arg::new("config")
                        .long("config")
                        .value_name("FILE")
                        .value_parser(clap::value_parser!(PathBuf))
                        .action(ArgAction::Set)
                        .help(
                            "TOML file with the same settings as [server], [smtp], [spool] and [tls] \
                             tables (keys as named below); flags override it",
                        ),
                    $($(
                        Arg::new(stringify!($flag))
                            .long(kebab(stringify!($flag)))
                            .value_name($value_name)
                            .value_parser(kind!(parser $kind, $ty))
                            .action(kind!(action $kind))
                            .help_heading($heading)
                            .help(concat!(
                                $help, " (", stringify!($table), ".", stringify!($field), ")"
                            )),
                    )*)*
                ]
            }

            /// Reads the flags back from clap's matches.
            pub(super) fn from_matches(m: &ArgMatches) -> Self {
                Self {
                    config: m.get_one::<PathBuf>("config").cloned(),
                    $($(
                        $flag: kind!(get $kind, $ty, m, stringify!($flag)),
                    )*)*
                }
            }

            /// Takes every flag that `newer` gives (clap's "update").
            pub(super) fn update(&mut self, newer: Self) {
                if newer.config.is_some() {
                    self.config = newer.config;
                }
                $($(
                    kind!(update $kind, self.$flag, newer.$flag);
                )*)*
            }

            /// Overwrites every setting of `cfg` that a flag gives.
            pub fn apply(&self, cfg: &mut Config) {
                $($(
                    kind!(apply $kind, cfg.$table.$field, self.$flag);
                )*)*
            }

            /// `(flag id, default)` for every flag but `--config`, taken from
            /// [`Config::default`]; `ringmx serve --help` appends them to the
            /// help.
            pub fn help_defaults() -> Vec<(&'static str, String)> {
                let d = Config::default();
                vec![$($(
                    (stringify!($flag), kind!(show $kind, &d.$table.$field)),
                )*)*]
            }
        }
    };
}

/// What each kind of setting (see `ringmx::config::kinds`) means for a flag.
macro_rules! kind {
    (ty "list", $ty:ty) => { $ty };
    (ty $kind:tt, $ty:ty) => { Option<$ty> };

    (parser "list", $ty:ty) => { |s: &str| kinds::list::parse(s).map(|v| -> $ty { v }) };
    (parser "size", $ty:ty) => { |s: &str| kinds::size::parse::<$ty>(s) };
    (parser "duration", $ty:ty) => { kinds::duration::parse };
    // "plain" and "path": clap's own parser for the type (FromStr for ours).
    (parser $kind:tt, $ty:ty) => { clap::value_parser!($ty) };

    (action "list") => { ArgAction::Append };
    (action $kind:tt) => { ArgAction::Set };

    (get "list", $ty:ty, $m:ident, $id:expr) => {
        $m.get_many::<$ty>($id)
            .map(|vs| vs.flatten().cloned().collect())
            .unwrap_or_default()
    };
    (get $kind:tt, $ty:ty, $m:ident, $id:expr) => { $m.get_one::<$ty>($id).cloned() };

    // Given flags replace the whole list, as a list in the file does.
    (apply "list", $dst:expr, $src:expr) => {
        if !$src.is_empty() {
            $dst = $src.clone();
        }
    };
    (apply $kind:tt, $dst:expr, $src:expr) => {
        if let Some(v) = &$src {
            $dst = v.clone();
        }
    };

    (update "list", $dst:expr, $src:expr) => {
        if !$src.is_empty() {
            $dst = $src;
        }
    };
    (update $kind:tt, $dst:expr, $src:expr) => {
        if $src.is_some() {
            $dst = $src;
        }
    };

    (show "plain", $v:expr) => { kinds::plain::show($v) };
    (show "path", $v:expr) => { kinds::path::show($v) };
    (show "list", $v:expr) => { kinds::list::show($v) };
    (show "size", $v:expr) => { kinds::size::show($v) };
    (show "duration", $v:expr) => { kinds::duration::show($v) };
}

mod generated {
    use super::*;
    use ringmx::config::types::*;

    ringmx::with_settings!(define_overrides);
}

pub use generated::ConfigOverrides;

/// `max_connections` -> `max-connections`, as clap's derive names flags.
fn kebab(id: &'static str) -> String {
    id.replace('_', "-")
}

impl ConfigOverrides {
    /// The configuration of one `ringmx serve`: the defaults, then the file
    /// named by `--config` (if any), then every flag given; validated.
    ///
    /// # Errors
    /// The first problem in the file or in the combined settings.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        self.apply(&mut c);
        c.validate()?;
        Ok(c)
    }
}

impl FromArgMatches for ConfigOverrides {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self::from_matches(m))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        self.update(Self::from_matches(m));
        Ok(())
    }
}

impl Args for ConfigOverrides {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(Self::args())
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmx::config::{Cores, Durability, LogLevel, SmtpConfig};
    use std::path::Path;
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<ConfigOverrides, clap::Error> {
        let cmd = ConfigOverrides::augment_args(Command::new("serve").no_binary_name(true));
        let m = cmd.try_get_matches_from(args)?;
        ConfigOverrides::from_arg_matches(&m)
    }

    #[test]
    fn flags_override_the_file_and_the_file_the_defaults() {
        let mut c = Config::from_toml(
            "[smtp]\nhostname = \"file.example\"\nmax_errors = 3\n[server]\nbacklog = 7\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let flags = ConfigOverrides {
            hostname: Some("flag.example".into()),
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            domain: vec!["a.example".into(), "b.example".into()],
            command_timeout: Some(Duration::from_secs(9)),
            ..ConfigOverrides::default()
        };
        flags.apply(&mut c);
        assert_eq!(c.smtp.hostname, "flag.example");
        assert_eq!(c.smtp.max_errors, 3);
        assert_eq!(c.server.backlog, 7);
        assert_eq!(c.server.listen, ["127.0.0.1:0".parse().unwrap()]);
        assert_eq!(c.smtp.accepted_domains, ["a.example", "b.example"]);
        assert_eq!(c.smtp.command_timeout, Duration::from_secs(9));
        assert_eq!(c.smtp.data_timeout, SmtpConfig::default().data_timeout);
    }

    #[test]
    fn every_flag_shows_a_default_from_config_default() {
        let cmd = ConfigOverrides::augment_args(Command::new("serve"));
        let defaults = ConfigOverrides::help_defaults();
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "config" {
                continue;
            }
            assert!(
                defaults.iter().any(|(d, _)| *d == id),
                "--{id} has no default for --help"
            );
        }
        assert_eq!(defaults.len(), cmd.get_arguments().count() - 1);
        let get = |id: &str| defaults.iter().find(|(d, _)| *d == id).unwrap().1.clone();
        assert_eq!(get("max_message_size"), "50MiB");
        assert_eq!(get("listen"), "127.0.0.1:2525");
        assert_eq!(get("bare_newline"), "reject");
        assert_eq!(get("command_timeout"), "300s");
        assert_eq!(get("log_level"), "info");
        assert_eq!(get("spool"), "spool");
        assert_eq!(get("domain"), "localhost");
        assert_eq!(get("max_text_line"), "1000");
    }

    #[test]
    fn every_kind_of_flag_parses_into_its_setting() {
        let f = parse(&[
            "--listen",
            "127.0.0.1:1",
            "--listen",
            "[::1]:2",
            "--cores",
            "0-1",
            "--max-message-size",
            "10MB",
            "--read-buffer",
            "64KiB",
            "--tcp-nodelay",
            "false",
            "--data-timeout",
            "1.5s",
            "--log-level",
            "debug",
            "--durability",
            "none",
            "--spool",
            "/tmp/s",
            "--config",
            "c.toml",
        ])
        .unwrap();
        let mut c = Config::default();
        f.apply(&mut c);
        assert_eq!(
            c.server.listen,
            ["127.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()]
        );
        assert_eq!(c.server.cores, Cores::List(vec![0, 1]));
        assert_eq!(c.smtp.max_message_bytes, 10_000_000);
        assert_eq!(c.server.read_buffer_bytes, 64 << 10);
        assert!(!c.server.tcp_nodelay);
        assert_eq!(c.smtp.data_timeout, Duration::from_millis(1500));
        assert_eq!(c.server.log_level, LogLevel::Debug);
        assert_eq!(c.spool.durability, Durability::None);
        assert_eq!(c.spool.dir, Path::new("/tmp/s"));
        assert_eq!(f.config.as_deref(), Some(Path::new("c.toml")));
        // Flags not given leave the rest alone.
        assert_eq!(
            c.smtp,
            SmtpConfig {
                max_message_bytes: 10_000_000,
                data_timeout: Duration::from_millis(1500),
                ..SmtpConfig::default()
            }
        );
    }

    #[test]
    fn an_update_keeps_what_the_new_matches_leave_out() {
        let mut f = parse(&["--hostname", "a.example", "--domain", "a.example"]).unwrap();
        let cmd = ConfigOverrides::augment_args(Command::new("serve").no_binary_name(true));
        let m = cmd.try_get_matches_from(["--backlog", "5"]).unwrap();
        f.update_from_arg_matches(&m).unwrap();
        assert_eq!(f.hostname.as_deref(), Some("a.example"));
        assert_eq!(f.domain, ["a.example"]);
        assert_eq!(f.backlog, Some(5));
    }

    #[test]
    fn bad_values_name_the_accepted_forms() {
        for (args, want) in [
            (
                &["--max-message-size", "lots"][..],
                "\"lots\" is not a size",
            ),
            (&["--command-timeout", "5 parsecs"], "unknown unit"),
            (
                &["--shutdown-grace", "9223372036854775807s"],
                "at most 876000h",
            ),
            (&["--read-buffer", "20000000000GiB"], "is too large"),
            (&["--log-level", "loud"], "use error, warn, info or debug"),
            (&["--bare-newline", "maybe"], "use reject or accept"),
            (&["--durability", "maybe"], "use fsync or none"),
            (&["--cores", "some"], "is not a core selection"),
            (&["--listen", "localhost:25"], "invalid socket address"),
            (
                &["--max-errors", "many"],
                "invalid value 'many' for '--max-errors <N>'",
            ),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }
}
