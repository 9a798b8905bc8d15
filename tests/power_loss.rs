//! Power-loss test (issue 9 §2). A SIGKILL proves only that data left the
//! process: the page cache still reaches the disk afterwards. Here the disk
//! is cut off instead. The spool lives on a fresh ext4 on a loop device,
//! with the kernel's background writeback off and the journal's commit timer
//! far away, so nothing reaches the loop device's backing file unless an
//! fdatasync (or an fsync of a directory) sends it there. Under load the
//! server is frozen with SIGSTOP and the backing file is copied: the copy is
//! the disk at the moment of a power cut (a read of the backing file sees
//! exactly what the loop device was given; what the inner filesystem still
//! holds in its own page cache is lost). The copy is mounted, ringmx starts
//! on it (recovery runs), and every acknowledged queue id must be there,
//! byte-identical.
//!
//! The same setup must lose mail with `--durability none`, where `250` is
//! sent before any fdatasync: a second phase asserts that at least one
//! acknowledged message is missing from its copy (while the live filesystem
//! held all of them), which shows the copy is a real power cut and that the
//! first phase can fail.
//!
//! Why the setup loses unsynced data:
//! * `vm.dirty_writeback_centisecs = 0` stops the flusher threads' periodic
//!   wake-ups, and a long `vm.dirty_expire_centisecs` keeps any wake-up for
//!   other reasons from writing our young dirty pages as "old". Both are
//!   machine-wide: they are restored by a guard even when the test fails,
//!   and the test is the only one in its binary (cargo runs test binaries
//!   one after another), so nothing runs beside it.
//! * The inner ext4 is mounted `data=ordered,commit=3600`: jbd2's periodic
//!   commit would, in ordered mode, write every dirty data block of the
//!   files in the transaction before committing their metadata, i.e. flush
//!   appended mail. With the timer an hour away, only an fsync commits.
//! * `lazy_itable_init=0,lazy_journal_init=0`: no background thread writes
//!   to the device after mkfs.
//!
//! A `sync(2)` by another process on the machine while the test runs would
//! flush the inner filesystem and could make the second phase find nothing
//! missing; CI runs nothing beside it.
//!
//! Needs root and loop devices: skipped with a message where they are
//! missing (a failure in CI, `RINGMX_CI`).

mod common;
// Not every helper of the crash tests is used here.
#[allow(dead_code)]
#[path = "common/crash.rs"]
mod crash;

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{TempDir, STEP};
use crash::{Fate, Ledger, Load, Mix};
use ringmx::spool::SpoolReader;

/// The loop device's backing file (sparse).
const IMAGE_BYTES: u64 = 256 << 20;

/// Load clients per phase.
const CLIENTS: usize = 16;

/// Mostly small messages, some streamed as fragments
/// (`--max-buffered-message 16KiB`), a few large; BDAT, dot-stuffed lines,
/// and clients that hang up mid-body.
const MIX: Mix = Mix {
    medium_pct: 10,
    large_pct: 2,
    bdat_pct: 25,
    dots_pct: 40,
    abandon_pct: 3,
};

/// Machine-wide sysctls set for the test; the saved values are written back
/// on drop, in reverse order, whatever happened meanwhile.
struct Sysctls {
    saved: Vec<(PathBuf, String)>,
}

impl Sysctls {
    /// Sets each `(path, value)`; `Err` says which one could not be read or
    /// written (the ones already set are restored by the drop).
    fn set(pairs: &[(&str, &str)]) -> Result<Sysctls, String> {
        let mut s = Sysctls { saved: Vec::new() };
        for (path, value) in pairs {
            let path = PathBuf::from(path);
            let old = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            std::fs::write(&path, value)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            s.saved.push((path, old.trim().to_owned()));
        }
        Ok(s)
    }
}

impl Drop for Sysctls {
    fn drop(&mut self) {
        for (path, old) in self.saved.iter().rev() {
            if let Err(e) = std::fs::write(path, old) {
                // Not a panic: this may run while a failed test unwinds.
                eprintln!(
                    "power_loss: could not restore {} to {old}: {e}",
                    path.display()
                );
            }
        }
    }
}

/// Runs a command; `Err` has its output.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?}: {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// An image file mounted through a loop device on a fresh directory.
/// `mount -o loop` sets the loop device to detach itself when the
/// filesystem is unmounted, so unmounting frees both.
struct Mount {
    dir: TempDir,
    mounted: bool,
}

impl Mount {
    fn image(image: &Path, opts: &str, tag: &str) -> Result<Mount, String> {
        let dir = TempDir::new(tag);
        run(Command::new("mount")
            .arg("-t")
            .arg("ext4")
            .arg("-o")
            .arg(format!("loop,{opts}"))
            .arg(image)
            .arg(dir.path()))?;
        Ok(Mount { dir, mounted: true })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Unmounts, retrying while the filesystem is busy for up to `limit`:
    /// a killed server's io_uring instances are torn down asynchronously
    /// and may hold its files a moment after the process is reaped.
    fn try_unmount(&mut self, limit: Duration) -> Result<(), String> {
        let until = Instant::now() + limit;
        loop {
            match run(Command::new("umount").arg(self.dir.path())) {
                Ok(()) => {
                    self.mounted = false;
                    return Ok(());
                }
                Err(e) if Instant::now() >= until => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn unmount(&mut self) {
        if let Err(e) = self.try_unmount(STEP) {
            panic!("unmounting {}: {e}", self.dir.path().display());
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted && self.try_unmount(Duration::from_secs(5)).is_err() {
            // Still busy: detach it now; the kernel finishes (and frees the
            // loop device) when the last user is gone.
            let _ = run(Command::new("umount").arg("-l").arg(self.dir.path()));
        }
    }
}

/// A fresh sparse image with an empty ext4 on it.
fn make_image(path: &Path) -> Result<(), String> {
    let f = File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.set_len(IMAGE_BYTES)
        .map_err(|e| format!("sizing {}: {e}", path.display()))?;
    drop(f);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096"])
        .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(path))
}

/// Copies the backing file with plain reads: what the loop device wrote is
/// in the host's page cache and is what a read returns; what the inner
/// filesystem never wrote to its device is not there. Zero runs stay holes.
fn copy_disk(from: &Path, to: &Path) -> std::io::Result<u64> {
    let src = File::open(from)?;
    let dst = File::create(to)?;
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut copied) = (0u64, 0u64);
    while at < len {
        let n = src.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], at)?;
            copied += n as u64;
        }
        at += n as u64;
    }
    Ok(copied)
}

/// Waits until every thread of `pid` is stopped (state `T` in /proc).
fn wait_stopped(pid: i32) {
    let until = Instant::now() + STEP;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // "pid (comm) S ...": the state follows the last ')'.
        let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
        if state == Some('T') {
            return;
        }
        assert!(
            Instant::now() < until,
            "server {pid} not stopped after SIGSTOP: {stat}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One run: a disk, a loaded server frozen at the power cut, the disk copy.
struct Phase {
    tag: &'static str,
    flags: &'static [&'static str],
    mix: Mix,
    /// Acknowledged messages before the cut.
    min_acked: u64,
    /// Load time before the cut, at least, unless `max_acked` came first.
    min_load: Duration,
    /// Acknowledged messages after which the cut comes at once: keeps a
    /// fast machine from filling the disk (256 MiB; about 25 KiB a message
    /// on average in [`MIX`]).
    max_acked: u64,
}

/// What a phase left: the ledger, and the copy mounted, recovered by a
/// server that started and stopped on it.
struct AfterCut {
    ledger: Ledger,
    acked: usize,
    _copy: Mount,
    spool: PathBuf,
}

/// Loads a server on `disk` (the image and its mount, from [`make_disk`]),
/// cuts the power, and recovers the copy.
fn run_phase(work: &Path, p: &Phase, disk: (PathBuf, Mount), seed: u64) -> AfterCut {
    let (image, mut live) = disk;
    let spool = live.path().join("spool");
    let mut s = crash::start_on(&spool, p.flags);
    let load = Load::start(s.addr, CLIENTS, p.tag, seed, p.mix);
    let t0 = Instant::now();
    loop {
        let acked = load.acked.load(Ordering::Relaxed);
        if acked >= p.max_acked || (acked >= p.min_acked && t0.elapsed() >= p.min_load) {
            break;
        }
        assert!(
            t0.elapsed() < STEP,
            "{}: only {acked} messages acknowledged in {STEP:?}\n{}",
            p.tag,
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // The power cut: freeze the server (a reply already written is on its
    // way; no new one can be), then take the disk as it is.
    load.killing.store(true, Ordering::SeqCst);
    s.signal(libc::SIGSTOP);
    wait_stopped(s.pid());
    let copy_image = work.join(format!("{}-copy.img", p.tag));
    let copied = copy_disk(&image, &copy_image).expect("copy the backing file");
    crash::kill(&mut s, &load.killing);
    let log = load.join();
    assert!(
        log.early_errors.is_empty(),
        "{}: clients failed before the cut:\n{}\n--- server log ---\n{}",
        p.tag,
        log.early_errors.join("\n"),
        s.logs()
    );
    drop(s);
    let mut ledger = Ledger::default();
    for a in log.attempts {
        ledger.add(a);
    }
    let acked = ledger.count(|f| matches!(f, Fate::Acked(_)));
    assert_eq!(
        ledger.count(|f| matches!(f, Fate::Refused(_))),
        0,
        "{}: the server refused messages",
        p.tag
    );
    // Through the live filesystem (its page cache) every acknowledged
    // message is there, as after any SIGKILL: whatever the copy lacks, the
    // power cut took.
    crash::check(
        &spool,
        &ledger,
        &format!("{}: live disk after SIGKILL", p.tag),
    );
    live.unmount();

    // Mounting the copy replays ext4's journal; starting ringmx on it runs
    // the spool's recovery.
    let copy = Mount::image(&copy_image, "data=ordered", &format!("{}-copy", p.tag))
        .unwrap_or_else(|e| panic!("{}: mounting the copy: {e}", p.tag));
    let spool = copy.path().join("spool");
    let mut s = crash::start_on(&spool, p.flags);
    let status = s.stop();
    assert!(
        status.success(),
        "{}: server on the copy: {status:?}\n{}",
        p.tag,
        s.logs()
    );
    println!(
        "{}: {} attempts, {acked} acknowledged; {} MiB of the backing file not zero at the cut",
        p.tag,
        ledger.attempts.len(),
        copied >> 20
    );
    AfterCut {
        ledger,
        acked,
        _copy: copy,
        spool,
    }
}

/// A fresh image in `work` and its ext4 mounted with no commit timer to
/// speak of.
fn make_disk(work: &Path, tag: &str) -> Result<(PathBuf, Mount), String> {
    let image = work.join(format!("{tag}.img"));
    make_image(&image)?;
    let m = Mount::image(&image, "data=ordered,commit=3600", tag)?;
    Ok((image, m))
}

/// Why this machine cannot run the test, if it cannot.
fn missing_privilege() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (loop devices, mount, vm sysctls)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control: loop devices unavailable".into());
    }
    None
}

#[test]
fn acknowledged_mail_survives_a_power_cut() {
    if let Some(why) = missing_privilege() {
        return common::skip(&why);
    }
    for (tool, package) in [
        ("mkfs.ext4", "e2fsprogs"),
        ("mount", "mount"),
        ("umount", "mount"),
    ] {
        if common::require_tool(tool, package).is_none() {
            return;
        }
    }
    common::raise_nofile(4096);
    let seed = crash::seed(0x0050_4F57_4552_4355);
    println!("seed {seed:#x} (set RINGMX_CRASH_SEED to repeat its choices)");
    let work = TempDir::new("power-loss");

    // Declared before the mounts, so dropped after them.
    let _sysctls = match Sysctls::set(&[
        ("/proc/sys/vm/dirty_expire_centisecs", "360000"),
        ("/proc/sys/vm/dirty_writeback_centisecs", "0"),
    ]) {
        Ok(s) => s,
        Err(why) => return common::skip(&why),
    };
    let disk = match make_disk(work.path(), "fsync") {
        Ok(d) => d,
        Err(why) => {
            return common::skip(&format!(
                "cannot mount an ext4 image on a loop device: {why}"
            ))
        }
    };

    // Phase 1, the promise: small segments (rotation under load, commits
    // whose fragments lie in older segments) and small fragments.
    let fsync = run_phase(
        work.path(),
        &Phase {
            tag: "fsync",
            flags: &[
                "--durability",
                "fsync",
                "--segment-size",
                "2MiB",
                "--max-buffered-message",
                "16KiB",
                "--min-free",
                "16MiB",
            ],
            mix: MIX,
            min_acked: 100,
            min_load: Duration::from_secs(1),
            max_acked: 3000,
        },
        disk,
        seed,
    );
    let found = crash::check(&fsync.spool, &fsync.ledger, "fsync: after the power cut");
    crash::verify_cli(&fsync.spool);
    let segments = std::fs::read_dir(&fsync.spool)
        .expect("list the copy's spool")
        .filter_map(|d| std::fs::read_dir(d.ok()?.path()).ok())
        .flatten()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg"))
        })
        .count();
    println!(
        "fsync: all {} acknowledged messages survived, {} in-doubt ones too; \
         {segments} segments",
        fsync.acked, found.in_doubt
    );
    drop(fsync);

    // Phase 2, the control: the same disk setup with `--durability none`
    // must lose acknowledged mail. Default segments (64 MiB) and a few
    // hundred small messages: no rotation, so no fdatasync after the
    // segment's creation.
    let none = run_phase(
        work.path(),
        &Phase {
            tag: "none",
            flags: &["--durability", "none", "--min-free", "16MiB"],
            mix: Mix::SMALL,
            min_acked: 200,
            min_load: Duration::ZERO,
            max_acked: 200,
        },
        make_disk(work.path(), "none").expect("none: a second disk"),
        seed ^ 1,
    );
    let reader = SpoolReader::open(&none.spool).expect("open the copy's spool");
    let mut present = HashSet::new();
    for m in reader.messages().expect("list the copy's spool") {
        present.insert(m.expect("read the copy's spool").id.to_string());
    }
    let missing = none
        .ledger
        .attempts
        .iter()
        .filter(|a| matches!(&a.fate, Fate::Acked(id) if !present.contains(id)))
        .count();
    println!(
        "none: {missing} of {} acknowledged messages lost by the power cut",
        none.acked
    );
    assert!(
        missing > 0,
        "--durability none: all {} acknowledged messages survived the power cut, so the \
         copy of the disk did not lose unsynced writes and the fsync phase proves nothing",
        none.acked
    );
    crash::verify_cli(&none.spool);
}
