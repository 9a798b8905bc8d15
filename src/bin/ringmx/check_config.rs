//! `ringmx check-config --config FILE`: read and validate a config as
//! `ringmx serve` would (its recipient map and TLS certificates too), then
//! print the effective settings as TOML: only those that differ from the
//! defaults (like `postconf -n`), or all of them with `--all`. The output is
//! itself a valid config file.

use clap::Args;
use ringmx::config::Config;
use std::path::PathBuf;

/// The arguments of `ringmx check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The TOML file to check (as `ringmx serve --config FILE` reads it).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Print every setting, not only those that differ from the defaults.
    #[arg(short, long)]
    all: bool,
}

impl CheckConfigArgs {
    /// Checks the file and prints its settings: exit status 0, or 2 with
    /// one line saying what to fix.
    pub fn run(&self) -> i32 {
        match self.check() {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!("ringmx check-config: {e}");
                2
            }
        }
    }

    fn check(&self) -> Result<String, String> {
        let cfg = Config::from_file(&self.config).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        // The recipient map is read at start as well: a bad line stops
        // `serve`, so it fails the check too.
        let map = &cfg.smtp.recipient_map;
        if !map.as_os_str().is_empty() {
            ringmx::server::recipients::load(map, ringmx::server::recipients::options(&cfg.smtp))
                .map_err(|e| e.to_string())?;
        }
        // So are the certificates: unreadable, expired or not matching the
        // key, serve exits 2 (and a SIGHUP keeps the old ones).
        ringmx::server::tls::Acceptor::from_config(&cfg.tls).map_err(|e| e.to_string())?;
        // And the users file of the submission listeners.
        ringmx::server::auth::AuthService::from_config(&cfg.submission)
            .map_err(|e| e.to_string())?;
        effective(&cfg, self.all)
    }
}

/// `cfg` as TOML, without the settings equal to their defaults unless `all`.
fn effective(cfg: &Config, all: bool) -> Result<String, String> {
    let to_table = |c: &Config| match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => Ok(t),
        Ok(_) => Err("the settings are not a table".to_owned()),
        Err(e) => Err(format!("cannot show the settings: {e}")),
    };
    let mut ours = to_table(cfg)?;
    if !all {
        let defaults = to_table(&Config::default())?;
        for (name, table) in ours.iter_mut() {
            let (Some(toml::Value::Table(t)), Some(toml::Value::Table(d))) =
                (Some(table), defaults.get(name))
            else {
                continue;
            };
            t.retain(|k, v| d.get(k) != Some(v));
        }
        ours.retain(|_, v| !matches!(v, toml::Value::Table(t) if t.is_empty()));
    }
    toml::to_string(&ours).map_err(|e| format!("cannot show the settings: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn only_changed_settings_unless_all_and_the_output_reads_back() {
        let cfg = Config::from_toml(
            "[smtp]\nhostname = \"mx.example\"\nmax_message_bytes = \"10MiB\"\n\
             [server]\nbacklog = 4096\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let out = effective(&cfg, false).unwrap();
        assert_eq!(
            out,
            "[smtp]\nhostname = \"mx.example\"\nmax_message_bytes = 10485760\n"
        );
        assert_eq!(effective(&Config::default(), false).unwrap(), "");
        let all = effective(&cfg, true).unwrap();
        assert!(all.contains("backlog = 4096"), "{all}");
        assert!(all.contains("[spool]"), "{all}");
        assert_eq!(Config::from_toml(&all, Path::new("all")).unwrap(), cfg);
        assert_eq!(Config::from_toml(&out, Path::new("out")).unwrap(), cfg);
    }
}
