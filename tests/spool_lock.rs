//! One spool directory, one writer process: a second process is refused with
//! the holder's pid. The holder is a real `ringmx serve`, so two processes
//! contend for the flock.

mod common;

use std::path::PathBuf;

use ringmx::config::{Durability, SpoolConfig};
use ringmx::spool::{lock_holder, ShardSpool, SpoolError, SpoolReader};

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

#[test]
fn spool_second_process_is_refused_with_the_holders_pid() {
    // The holder is a real `ringmx serve` on the spool.
    let mut server = common::Server::start(&[]);
    let dir = server.spool.path().to_owned();
    let pid = server.pid() as u32;

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

    assert!(server.stop().success(), "{}", server.logs());
    assert_eq!(lock_holder(&dir).unwrap(), None);
    executor().run(async {
        let spool = ShardSpool::open(&dir, 0, &cfg()).await.unwrap();
        spool.close().await.unwrap();
    });
}
