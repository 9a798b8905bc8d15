//! A private Postfix, as a real sending MTA: its own main.cf, master.cf
//! and queue under a temp directory, an smtpd on a free loopback port that
//! takes a message in, and a relayhost (ringmx) it delivers to. Used by the
//! TLS test (STARTTLS with `smtp_tls_security_level = encrypt`) and the
//! submission test (SASL AUTH with `smtp_sasl_auth_enable`). Stopped when
//! dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::TempDir;

/// A running Postfix; see the module docs.
pub struct Postfix {
    /// The postfix command found on PATH or in /usr/sbin.
    bin: PathBuf,
    dir: TempDir,
    conf: PathBuf,
    /// The port its smtpd listens on (127.0.0.1).
    pub port: u16,
}

impl Postfix {
    /// Starts Postfix relaying everything to `127.0.0.1:relay_port`, with
    /// `extra` appended to its main.cf. `None`: skipped (no postfix, or
    /// not root: its master must run as root).
    pub fn start(tag: &str, relay_port: u16, extra: &str) -> Option<Postfix> {
        let postfix = super::require_tool("postfix", "postfix")?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            super::skip("Postfix's master must run as root");
            return None;
        }
        let dir = TempDir::new(tag);
        let wp = dir.path();
        // The postfix user must reach its queue under our temp directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(wp, std::fs::Permissions::from_mode(0o711)).unwrap();
        for d in ["conf", "queue", "data"] {
            std::fs::create_dir_all(wp.join(d)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let w = wp.display();
        std::fs::write(
            wp.join("conf/main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {w}/queue\ndata_directory = {w}/data\n\
                 meta_directory = /etc/postfix\nmail_owner = postfix\nsetgid_group = postdrop\n\
                 maillog_file = {w}/postfix.log\nmaillog_file_prefixes = {w}\nmyhostname = postfix-sender.test\n\
                 inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n\
                 mydestination =\nalias_maps =\nlocal_recipient_maps =\n\
                 smtpd_relay_restrictions = permit_mynetworks, reject\n\
                 relayhost = [127.0.0.1]:{relay_port}\n\
                 smtp_tls_loglevel = 1\ndisable_dns_lookups = yes\nsmtp_dns_support_level = disabled\n\
                 smtp_host_lookup = native\nbiff = no\nin_flow_delay = 0\nqueue_minfree = 0\n{extra}"
            ),
        )
        .unwrap();
        std::fs::write(
            wp.join("conf/master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - 4 smtpd\n\
                 cleanup unix n - n - 0 cleanup\nqmgr unix n - n 300 1 qmgr\n\
                 tlsmgr unix - - n 1000? 1 tlsmgr\nrewrite unix - - n - - trivial-rewrite\n\
                 bounce unix - - n - 0 bounce\ndefer unix - - n - 0 bounce\n\
                 trace unix - - n - 0 bounce\nverify unix - - n - 1 verify\n\
                 flush unix n - n 1000? 0 flush\nproxymap unix - - n - - proxymap\n\
                 smtp unix - - n - - smtp\nrelay unix - - n - - smtp\n\
                 error unix - - n - - error\nretry unix - - n - - error\n\
                 discard unix - - n - - discard\nanvil unix - - n - 1 anvil\n\
                 scache unix - - n - 1 scache\npostlog unix-dgram n - n - 1 postlogd\n"
            ),
        )
        .unwrap();
        let conf = wp.join("conf");
        let p = Postfix {
            bin: postfix,
            dir,
            conf,
            port,
        };
        p.run(&["set-permissions"]);
        p.run(&["start"]);
        Some(p)
    }

    /// The work directory (for files main.cf names, e.g. a password map).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `postfix -c CONF args`; panics with its output on failure.
    pub fn run(&self, args: &[&str]) {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postfix {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Hands Postfix one message over SMTP (plain text, on its own port);
    /// it relays it on its own schedule.
    pub fn submit(&self, from: &str, to: &str, subject: &str) {
        let mut c = None;
        for _ in 0..200 {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)) {
                c = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let tcp = c.expect("postfix smtpd listening");
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = BufReader::new(tcp.try_clone().unwrap());
        let mut w = tcp;
        assert!(read_reply(&mut r).starts_with("220 "));
        for (cmd, want) in [
            ("EHLO client.test\r\n".to_owned(), "250"),
            (format!("MAIL FROM:<{from}>\r\n"), "250"),
            (format!("RCPT TO:<{to}>\r\n"), "250"),
            ("DATA\r\n".to_owned(), "354"),
            (format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n"), "250"),
            ("QUIT\r\n".to_owned(), "221"),
        ] {
            w.write_all(cmd.as_bytes()).unwrap();
            let got = read_reply(&mut r);
            assert!(got.starts_with(want), "{cmd:?}: {got}");
        }
    }

    /// Postfix's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postfix.log")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .output();
    }
}

/// One SMTP reply, all its lines.
pub fn read_reply(r: &mut impl BufRead) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "connection closed after {all:?}");
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}
