//! One spool directory, one writer process: a second process is refused with
//! the holder's pid. The holder is this test binary re-executed to run the
//! ignored helper test below, so two real processes contend for the flock.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ringmx::config::{Durability, SpoolConfig};
use ringmx::spool::{lock_holder, ShardSpool, SpoolError, SpoolReader};

const CHILD_ENV: &str = "RINGMX_SPOOL_LOCK_CHILD_DIR";

fn cfg() -> SpoolConfig {
    SpoolConfig {
        dir: PathBuf::new(),
        segment_bytes: 1 << 20,
        durability: Durability::None,
        max_buffered_message_bytes: 1024,
        min_free_bytes: 0,
        ..SpoolConfig::default()
    }
}

fn executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 << 10)
        .make()
        .expect("glommio executor")
}

/// The lock holder: opens shard 0, says so, holds it until stdin closes.
#[test]
#[ignore = "helper process for spool_second_process_is_refused_with_the_holders_pid"]
fn spool_lock_holder_child() {
    let dir = PathBuf::from(std::env::var(CHILD_ENV).expect("run by the parent test"));
    executor().run(async {
        let spool = ShardSpool::open(&dir, 0, &cfg()).await.unwrap();
        // Own line: libtest has already printed "test spool_lock_holder_child ... ".
        println!("\nLOCKED {}", std::process::id());
        // Blocks the executor, which has nothing else to do.
        let mut line = String::new();
        while std::io::stdin()
            .read_line(&mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
        spool.close().await.unwrap();
    });
}

/// Removes the spool and stops the helper process even if the test fails.
struct Cleanup(PathBuf, Option<std::process::Child>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = self.1.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn spool_second_process_is_refused_with_the_holders_pid() {
    let dir = std::env::temp_dir().join(format!("ringmx-spool-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut guard = Cleanup(dir.clone(), None);
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "spool_lock_holder_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let child = guard.1.insert(child);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(pid) = line.trim().strip_prefix("LOCKED ") {
                let _ = tx.send(pid.trim().parse::<u32>().unwrap());
            }
        }
    });
    let pid = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("child took the lock");
    assert_eq!(pid, child.id());

    let canonical = dir.canonicalize().unwrap();
    executor().run(async {
        for shard in [0, 1] {
            let err = ShardSpool::open(&dir, shard, &cfg())
                .await
                .err()
                .expect("refused");
            assert!(
                matches!(err, SpoolError::Locked { pid: Some(p), .. } if p == pid),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!(
                    "spool {} is in use by another ringmx (pid {pid})",
                    canonical.display()
                )
            );
        }
    });
    // Readers need no lock, and can tell the spool is in use.
    assert_eq!(SpoolReader::open(&dir).unwrap().shards().unwrap(), [0]);
    assert_eq!(lock_holder(&dir).unwrap(), Some(Some(pid)));

    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert_eq!(lock_holder(&dir).unwrap(), None);
    executor().run(async {
        let spool = ShardSpool::open(&dir, 0, &cfg()).await.unwrap();
        spool.close().await.unwrap();
    });
}
