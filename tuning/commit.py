"""Durable commit latency and CPU (issue 15), side by side in one run.

    cargo build --release && tuning/commit.sh

Each round: a device probe (fdatasync p50/p99 after a 4 KiB append, and
after a 4 KiB overwrite inside a pre-written file, and a whole 4 KiB
O_DIRECT|O_DSYNC overwrite, write and flush, in the scratch directory
the spools live in), then ringmx `--durability fsync` and `none` at each
connection count, the order of the two alternating from round to round.
One shard pinned to SERVER_CPU, loadgen to CLIENT_CPU, SIZE messages,
PER_CONN messages per connection. Prints every run, then medians over the
rounds: end-of-data->250 p50/p99, msgs/s, server CPU-s per 1,000 messages
(utime+stime of every thread, io_uring workers included), commits per
fdatasync, the per-stage breakdown of a commit (the server's "commit stages"
line: queue, write, gap, fdatasync, wake; mean and p50 in us), and the
issue's targets as ratios.

Knobs (environment): ROUNDS (3), DURATION (5s), WARMUP (1s), CONNS (16,256),
PER_CONN (100), SIZE (1k), SERVER_CPU (0), CLIENT_CPU (1), PROBE_SYNCS (600),
EXTRA (extra `ringmx serve` flags for every run), ALT (flags for a third
mode, "alt": fsync with these flags, run beside the other two, e.g.
ALT="--sync-cores 1-1"),
TMPDIR (where the scratch directory goes: put it on the disk under test),
RINGMX and LOADGEN (the binaries; default target/release/).
"""

import json
import mmap
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E = os.environ
RINGMX = E.get("RINGMX", os.path.join(ROOT, "target/release/ringmx"))
LOADGEN = E.get("LOADGEN", os.path.join(ROOT, "target/release/loadgen"))
ROUNDS = int(E.get("ROUNDS", "3"))
DURATION = E.get("DURATION", "5s")
WARMUP = E.get("WARMUP", "1s")
CONNS = [int(c) for c in E.get("CONNS", "16,256").split(",")]
PER_CONN = E.get("PER_CONN", "100")
SIZE = E.get("SIZE", "1k")
SERVER_CPU = E.get("SERVER_CPU", "0")
CLIENT_CPU = E.get("CLIENT_CPU", "1")
PROBE_SYNCS = int(E.get("PROBE_SYNCS", "600"))
EXTRA = E.get("EXTRA", "").split()
ALT = E.get("ALT", "").split()
CLK_TCK = os.sysconf("SC_CLK_TCK")
STAGES = ["queue", "write", "gap", "fdatasync", "wake"]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def probe(work):
    """fdatasync ms (p50, p99) after a 4 KiB append and after a 4 KiB
    overwrite of pre-written (zeroed, synced) blocks."""
    block = b"x" * 4096
    out = {}
    path = os.path.join(work, "probe-append")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    ts = []
    for _ in range(PROBE_SYNCS):
        os.write(fd, block)
        t = time.perf_counter()
        os.fdatasync(fd)
        ts.append((time.perf_counter() - t) * 1e3)
    os.close(fd)
    out["append"] = (pct(ts, 0.5), pct(ts, 0.99))
    path2 = os.path.join(work, "probe-overwrite")
    fd = os.open(path2, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    os.write(fd, bytes(4096 * PROBE_SYNCS))
    os.fsync(fd)
    ts = []
    for i in range(PROBE_SYNCS):
        os.pwrite(fd, block, i * 4096)
        t = time.perf_counter()
        os.fdatasync(fd)
        ts.append((time.perf_counter() - t) * 1e3)
    os.close(fd)
    out["overwrite"] = (pct(ts, 0.5), pct(ts, 0.99))
    # A whole durable write, as ringmx's O_DIRECT commits do it: one 4 KiB
    # O_DIRECT|O_DSYNC overwrite of those blocks (write + device flush).
    ts = []
    try:
        fd = os.open(path2, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC)
        buf = mmap.mmap(-1, 4096)
        buf.write(block)
        for i in range(PROBE_SYNCS):
            t = time.perf_counter()
            os.pwrite(fd, buf, i * 4096)
            ts.append((time.perf_counter() - t) * 1e3)
        os.close(fd)
        out["dsync"] = (pct(ts, 0.5), pct(ts, 0.99))
    except OSError:
        out["dsync"] = (float("nan"), float("nan"))
    os.unlink(path)
    os.unlink(path2)
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_banner(port, secs):
    end = time.time() + secs
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                if c.recv(3) == b"220":
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def proc_cpu(pid):
    """utime+stime of every thread of pid, seconds."""
    s = open("/proc/%d/stat" % pid).read()
    f = s[s.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK


def run(work, mode, conns, tag):
    d = os.path.join(work, tag)
    os.makedirs(d)
    log, port = os.path.join(d, "ringmx.log"), free_port()
    srv = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, RINGMX, "serve", "--listen", "127.0.0.1:%d" % port,
         "--cores", "1", "--log-level", "warn", "--durability", "fsync" if mode == "alt" else mode,
         "--domain", "example.com",
         "--max-connections-per-ip", "0", "--spool", os.path.join(d, "spool")] + EXTRA
        + (ALT if mode == "alt" else []),
        stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        if not wait_banner(port, 15):
            raise RuntimeError("ringmx did not answer 220: " + open(log).read()[-500:])
        cpu0 = proc_cpu(srv.pid)
        lg = subprocess.run(
            ["taskset", "-c", CLIENT_CPU, LOADGEN, "run", "--target", "127.0.0.1:%d" % port, "-q",
             "-c", str(conns), "--size", SIZE, "--msgs-per-conn", PER_CONN, "--duration", DURATION,
             "--warmup", WARMUP, "--to-domain", "example.com", "--json", os.path.join(d, "run.json")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        cpu1 = proc_cpu(srv.pid)
        if lg.returncode != 0:
            raise RuntimeError("loadgen exit %d: %s" % (lg.returncode, lg.stderr[-500:]))
    finally:
        srv.terminate()
        srv.wait(60)
    s = json.load(open(os.path.join(d, "run.json")))
    m = s["messages"]
    accepted = m["ok"] + m["ok_after_end"] + m["warmup_ok"]
    eod = s["latency_ms"]["eod"]
    text = open(log).read()
    r = {"msgs_per_s": s["msgs_per_s"], "p50": eod["p50"], "p99": eod["p99"],
         "cpu_per_1k": (cpu1 - cpu0) * 1000.0 / accepted if accepted else float("nan"),
         "fail": m["temp_fail"] + m["perm_fail"] + m["error"]}
    cpf = re.findall(r"commits_per_fdatasync=([0-9.]+)", text)
    if cpf and mode != "none":
        r["cpf"] = float(cpf[-1])
    for st in STAGES:
        g = re.search(r" %s=n:(\d+),mean:([0-9.]+),p50:([0-9.]+),p99:([0-9.]+)" % st, text)
        if g and int(g.group(1)) > 0:
            r[st + "_mean"], r[st + "_p50"] = float(g.group(2)), float(g.group(3))
    shutil.rmtree(os.path.join(d, "spool"), ignore_errors=True)
    return r


def med(rs, k):
    v = [r[k] for r in rs if k in r]
    return statistics.median(v) if v else float("nan")


def main():
    for b in (RINGMX, LOADGEN):
        if not os.access(b, os.X_OK):
            sys.exit("build first: cargo build --release (missing %s)" % b)
    work = tempfile.mkdtemp(prefix="ringmx-commit-")
    print("load average before: %s" % open("/proc/loadavg").read().split(" ", 3)[:3])
    print("scratch: %s (%s)" % (work, subprocess.run(["df", "-T", work], capture_output=True,
                                                     text=True).stdout.splitlines()[-1].split()[1]))
    print("extra flags: %s; alt (fsync with): %s" % (" ".join(EXTRA) or "-", " ".join(ALT) or "-"))
    probes, res = [], {}
    hdr = "%-6s %5s %5s %9s %8s %8s %9s %6s  %s" % (
        "mode", "conns", "round", "msgs/s", "p50_ms", "p99_ms", "cpu/1k_s", "c/fs",
        " ".join("%-9s" % s for s in STAGES) + " (stage mean us)")
    print(hdr)
    try:
        for i in range(ROUNDS):
            p = probe(work)
            probes.append(p)
            print("probe %d: fdatasync after 4 KiB append p50 %.3f p99 %.3f ms; after 4 KiB overwrite "
                  "p50 %.3f p99 %.3f ms; O_DIRECT|O_DSYNC 4 KiB write p50 %.3f p99 %.3f ms"
                  % (i + 1, *p["append"], *p["overwrite"], *p["dsync"]))
            for conns in CONNS:
                order = ["fsync", "none"] + (["alt"] if ALT else [])
                if i % 2:
                    order.reverse()
                for mode in order:
                    r = run(work, mode, conns, "%s-%d-%d" % (mode, conns, i))
                    res.setdefault((mode, conns), []).append(r)
                    print("%-6s %5d %5d %9.0f %8.2f %8.2f %9.3f %6s  %s%s" % (
                        mode, conns, i + 1, r["msgs_per_s"], r["p50"], r["p99"], r["cpu_per_1k"],
                        "%.1f" % r["cpf"] if "cpf" in r else "-",
                        " ".join("%-9s" % ("%.1f" % r[s + "_mean"] if s + "_mean" in r else "-")
                                 for s in STAGES),
                        "  FAIL %d" % r["fail"] if r["fail"] else ""), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ap50 = statistics.median(p["append"][0] for p in probes)
    ap99 = statistics.median(p["append"][1] for p in probes)
    op50 = statistics.median(p["overwrite"][0] for p in probes)
    op99 = statistics.median(p["overwrite"][1] for p in probes)
    dp50 = statistics.median(p["dsync"][0] for p in probes)
    dp99 = statistics.median(p["dsync"][1] for p in probes)
    print("\nmedians of %d rounds (%s, %s msgs/conn, %s, warm-up %s)" % (ROUNDS, SIZE, PER_CONN, DURATION, WARMUP))
    print("device fdatasync: after append p50 %.3f p99 %.3f ms; after overwrite p50 %.3f p99 %.3f ms"
          % (ap50, ap99, op50, op99))
    print("device durable write (4 KiB O_DIRECT|O_DSYNC): p50 %.3f p99 %.3f ms" % (dp50, dp99))
    print("%-6s %5s %9s %8s %8s %9s %6s  %s" % ("mode", "conns", "msgs/s", "p50_ms", "p99_ms", "cpu/1k_s", "c/fs",
                                               " ".join("%-14s" % s for s in STAGES) + " (stage mean/p50 us)"))
    for (mode, conns), rs in sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print("%-6s %5d %9.0f %8.2f %8.2f %9.3f %6s  %s" % (
            mode, conns, med(rs, "msgs_per_s"), med(rs, "p50"), med(rs, "p99"), med(rs, "cpu_per_1k"),
            "%.1f" % med(rs, "cpf") if mode != "none" else "-",
            " ".join("%-14s" % ("%.0f/%.0f" % (med(rs, s + "_mean"), med(rs, s + "_p50"))) for s in STAGES)))
    print("\ntargets (issue 15):")
    for dm in ["fsync", "alt"]:
        if ((dm, 16) in res) and (("none", 16) in res):
            f, n = res[(dm, 16)], res[("none", 16)]
            print("  %s, 16 conns: eod p50 %.2f ms = %.2fx device append fdatasync p50 (target <= 2), "
                  "%.2fx overwrite p50, %.2fx durable write p50"
                  % (dm, med(f, "p50"), med(f, "p50") / ap50, med(f, "p50") / op50, med(f, "p50") / dp50))
            print("  %s, 16 conns: durable/none msgs/s %.2f (target >= 0.5)"
                  % (dm, med(f, "msgs_per_s") / med(n, "msgs_per_s")))
            print("  %s, 16 conns: durable/none CPU per message %.2f (target <= 1.3)"
                  % (dm, med(f, "cpu_per_1k") / med(n, "cpu_per_1k")))
        if ((dm, 256) in res) and (("none", 256) in res):
            f, n = res[(dm, 256)], res[("none", 256)]
            print("  %s, 256 conns: durable/none msgs/s %.2f (target >= 0.95), CPU per message %.2f"
                  % (dm, med(f, "msgs_per_s") / med(n, "msgs_per_s"), med(f, "cpu_per_1k") / med(n, "cpu_per_1k")))
    print("load average after: %s" % open("/proc/loadavg").read().split(" ", 3)[:3])


if __name__ == "__main__":
    main()
