//! Test certificates, made by the openssl command line at test time (no
//! key is ever committed).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the openssl command line in `dir`; panics with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed EC certificate `NAME.pem` / `NAME.key` in `dir`, valid for
/// the DNS names given and 127.0.0.1.
pub fn make_cert(dir: &Path, name: &str, dns: &[&str]) -> (PathBuf, PathBuf) {
    let mut san: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
    san.push("IP:127.0.0.1".into());
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={}", dns.first().copied().unwrap_or(name)),
            "-addext",
            &format!("subjectAltName={}", san.join(",")),
            "-keyout",
            &key,
            "-out",
            &pem,
        ],
    );
    (dir.join(pem), dir.join(key))
}
