#!/usr/bin/env python3
"""ringmx against Postfix (durable, HOLD), smtp-sink and Haraka, side by side.

    cargo build --release && tuning/compare.sh            # full matrix
    QUICK=1 tuning/compare.sh                             # 1 KiB, 100/conn, 16 and 256 conns
    TLS=1 tuning/compare.sh                               # the TLS cell (issue 10)

Servers (each on its own free loopback port, restarted with a fresh spool or
WORKDIR for every run):

  ringmx-fsync   target/release/ringmx serve --cores 1 --durability fsync
  ringmx-none    the same with --durability none (benchmarks only)
  smtp-sink      tuning/anchors/smtp-sink.sh   (no disk: the upper bound)
  postfix        tuning/anchors/postfix.sh     (every message fsync'ed to hold/)
  haraka         tuning/anchors/haraka.sh      (skipped when it exits 3)
  ringmx-tls     ringmx-fsync with --tls-cert/--tls-key (STARTTLS offered);
                 skipped, "ringmx TLS not available in this build", when
                 `ringmx serve --help` does not list --tls-cert
  postfix-tls    the postfix anchor with POSTFIX_TLS_CERT/KEY
                 (smtpd_tls_security_level = may), the same certificate

TLS=1: the TLS cell instead of the matrix: 1 KiB, 16 and 256 connections,
100 and 1 messages per connection, servers ringmx-fsync, ringmx-tls,
postfix, postfix-tls (the plaintext two as baselines). loadgen says
--starttls (full handshakes: no resumption) to the -tls servers, trusting a
CA made for the run with openssl (ECDSA P-256 leaf for localhost and
127.0.0.1). Added columns: handshakes/s (loadgen, measured window),
handshakes per server CPU-second (all handshakes of the run over the
server's CPU seconds: the rate one busy core would sustain) and server CPU
ms per handshake (the connection's messages included: at 1 msg/conn it is
the cost of one whole TLS session).

Every server runs under `taskset -c $SERVER_CPU`, loadgen under
`taskset -c $CLIENT_CPU`. For each matrix cell, ROUNDS rounds; within a round
every server runs once, in an order rotated by one each round (so no server
always runs first or last). The table holds per-metric medians over rounds.

Server CPU: utime+stime (+ cutime+cstime, i.e. reaped children) of the
server's process tree, rooted at ringmx's pid, smtp-sink's pid, Haraka's node
pid, or Postfix's master pid (master forks every smtpd, cleanup, qmgr,
trivial-rewrite, ... and reaps them, so an exited smtpd's time lands in the
master's cutime/cstime). Sampled right before and right after loadgen, so it
covers connection setup, the measured window and the drain; divided by all
messages the server accepted in that time (ok + ok_after_end).

Knobs (environment): ROUNDS (3), DURATION (5s), WARMUP (1s), QUICK (0),
TLS (0), SIZES (1k,64k), CONNS (16,256), PER_CONN (1,100), SERVERS (the
first five; with TLS=1 the four above),
SERVER_CPU (0), CLIENT_CPU (1), OUT (tuning/results/compare-<date>[-quick]),
KEEP (keep the scratch dir).
"""

import datetime
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RINGMX = os.path.join(ROOT, "target/release/ringmx")
LOADGEN = os.path.join(ROOT, "target/release/loadgen")
ANCHORS = os.path.join(ROOT, "tuning/anchors")
CLK_TCK = os.sysconf("SC_CLK_TCK")

E = os.environ
QUICK = E.get("QUICK", "0") not in ("", "0")
ROUNDS = int(E.get("ROUNDS", "3"))
DURATION = E.get("DURATION", "5s")
WARMUP = E.get("WARMUP", "1s")
SERVER_CPU = E.get("SERVER_CPU", "0")
CLIENT_CPU = E.get("CLIENT_CPU", "1")
TLS = E.get("TLS", "0") not in ("", "0")
ALL_SERVERS = ["ringmx-fsync", "ringmx-none", "smtp-sink", "postfix", "haraka"]
TLS_SERVERS = ["ringmx-fsync", "ringmx-tls", "postfix", "postfix-tls"]
SERVERS = [s for s in E.get("SERVERS", ",".join(TLS_SERVERS if TLS else ALL_SERVERS)).split(",") if s]
SIZES = E.get("SIZES", "1k" if QUICK or TLS else "1k,64k").split(",")
CONNS = [int(c) for c in E.get("CONNS", "16,256").split(",")]
PER_CONN = [int(c) for c in E.get("PER_CONN", "100" if QUICK else "1,100").split(",")]
DATE = datetime.date.today().isoformat()
OUT = E.get("OUT", os.path.join(ROOT, "tuning/results", "compare-%s%s" % (
    DATE, "-tls" if TLS else "-quick" if QUICK else "")))
# Set by main() when a -tls server runs: (ca, cert, key) PEM paths.
CERTS = None


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_banner(port, secs):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                if c.recv(512).startswith(b"220"):
                    c.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def proc_table():
    """pid -> (ppid, utime+stime, cutime+cstime) in ticks, for every process."""
    t = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
        except OSError:
            continue
        f = s[s.rindex(")") + 2:].split()
        # fields after comm: state ppid ... utime(14) stime(15) cutime(16) cstime(17), 1-based overall
        t[int(d)] = (int(f[1]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14]))
    return t


def tree_cpu(root):
    """CPU seconds of root and its live descendants, plus reaped children's."""
    t = proc_table()
    kids = {}
    for pid, (ppid, _, _) in t.items():
        kids.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        p = stack.pop()
        if p in t:
            total += t[p][1] + t[p][2]
            stack.extend(kids.get(p, []))
    return total / CLK_TCK


class Ringmx:
    def __init__(self, name, durability, tls=False):
        self.name, self.durability, self.tls = name, durability, tls

    def start(self, port, work):
        tls = []
        if self.tls:
            # The server's TLS flags come with issue 10's server half.
            help_text = subprocess.run([RINGMX, "serve", "--help"], capture_output=True, text=True).stdout
            if "--tls-cert" not in help_text:
                raise Unavailable("ringmx TLS not available in this build (no --tls-cert in ringmx serve --help)")
            tls = ["--tls-cert", CERTS[1], "--tls-key", CERTS[2]]
        self.log = os.path.join(work, "ringmx.log")
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, RINGMX, "serve", "--listen", "127.0.0.1:%d" % port,
             "--cores", "1", "--log-level", "warn", "--durability", self.durability,
             "--domain", "example.com", "--max-connections-per-ip", "0",
             "--spool", os.path.join(work, "spool")] + tls,
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        if not wait_banner(port, 15):
            self.stop()
            raise RuntimeError("ringmx did not answer 220: " + open(self.log).read()[-500:])
        return self.proc.pid

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def extra(self):
        m = re.findall(r"commits_per_fdatasync=([0-9.]+)", open(self.log).read())
        return {"commits_per_fdatasync": float(m[-1])} if m and self.durability == "fsync" else {}


class Unavailable(Exception):
    pass


class Anchor:
    def __init__(self, name, script, pidfiles, tls=False):
        self.name, self.script, self.pidfiles = name, os.path.join(ANCHORS, script), pidfiles
        self.tls = tls

    def start(self, port, work):
        self.work = os.path.join(work, self.name)
        env = dict(os.environ)
        if self.tls:  # postfix.sh reads these (STARTTLS, security level may)
            env.update(POSTFIX_TLS_CERT=CERTS[1], POSTFIX_TLS_KEY=CERTS[2])
        r = subprocess.run(["taskset", "-c", SERVER_CPU, self.script, "start", str(port), self.work],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        if r.returncode == 3:
            raise Unavailable(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "exit 3")
        if r.returncode != 0:
            raise RuntimeError("%s start: exit %d: %s" % (self.name, r.returncode, r.stderr[-500:]))
        for pf in self.pidfiles:
            try:
                return int(open(os.path.join(self.work, pf)).read().strip())
            except (OSError, ValueError):
                pass
        self.stop()
        raise RuntimeError("%s: no pid file among %s" % (self.name, self.pidfiles))

    def stop(self):
        subprocess.run([self.script, "stop", self.work], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def extra(self):
        return {}


def make(name):
    return {
        "ringmx-fsync": lambda: Ringmx(name, "fsync"),
        "ringmx-none": lambda: Ringmx(name, "none"),
        "smtp-sink": lambda: Anchor(name, "smtp-sink.sh", ["smtp-sink.pid"]),
        "postfix": lambda: Anchor(name, "postfix.sh", ["data/master.pid", "queue/pid/master.pid"]),
        "haraka": lambda: Anchor(name, "haraka.sh", ["haraka.pid"]),
        "ringmx-tls": lambda: Ringmx(name, "fsync", tls=True),
        "postfix-tls": lambda: Anchor(name, "postfix.sh", ["data/master.pid", "queue/pid/master.pid"], tls=True),
    }[name]()


def make_certs(d):
    """A CA and a localhost/127.0.0.1 leaf it signed (ECDSA P-256), for the -tls servers."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    def ssl(*args):
        subprocess.run(["openssl"] + list(args), cwd=d, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ssl("req", "-x509", "-days", "2", "-subj", "/CN=compare CA", "-keyout", "ca.key", "-out", "ca.pem", *ec)
    ssl("req", "-subj", "/CN=localhost", "-keyout", "leaf.key", "-out", "leaf.csr", *ec)
    with open(os.path.join(d, "leaf.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    ssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "leaf.ext", "-out", "leaf.pem")
    os.chmod(os.path.join(d, "leaf.key"), 0o600)
    return tuple(os.path.join(d, f) for f in ("ca.pem", "leaf.pem", "leaf.key"))


def run_one(name, cell, rnd, scratch):
    size, conns, per = cell
    work = os.path.join(scratch, "%s-%s-c%d-m%d-r%d" % (name, size, conns, per, rnd))
    os.makedirs(work)
    os.chmod(work, 0o711)
    srv, port = make(name), free_port()
    root = srv.start(port, work)
    try:
        prefix = os.path.join(work, "run")
        cpu0 = tree_cpu(root)
        lg = subprocess.run(
            ["taskset", "-c", CLIENT_CPU, LOADGEN, "run", "--target", "127.0.0.1:%d" % port, "-q",
             "-c", str(conns), "--size", size, "--msgs-per-conn", str(per), "--duration", DURATION,
             "--warmup", WARMUP, "--to-domain", "example.com", "--label", name,
             "--json", prefix + ".json", "--hist-out", prefix]
            + (["--starttls", "--tls-ca", CERTS[0]] if name.endswith("-tls") else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        cpu1 = tree_cpu(root)
        if lg.returncode != 0:
            raise RuntimeError("loadgen exit %d: %s" % (lg.returncode, lg.stderr[-500:]))
    finally:
        srv.stop()
    s = json.load(open(prefix + ".json"))
    m = s["messages"]
    accepted = m["ok"] + m["ok_after_end"] + m["warmup_ok"]
    eod = s["latency_ms"]["eod"]
    r = {"msgs_per_s": s["msgs_per_s"], "p50": eod["p50"], "p99": eod["p99"], "p999": eod["p999"],
         "cpu_per_1k": (cpu1 - cpu0) * 1000.0 / accepted if accepted else float("nan"),
         "fail": m["temp_fail"] + m["perm_fail"] + m["error"], "json": prefix + ".json"}
    c = s["connections"]
    handshakes = c.get("tls_handshakes", 0) + c.get("warmup_tls_handshakes", 0)
    if handshakes:
        cpu = cpu1 - cpu0
        r.update(hs_per_s=s["handshakes_per_s"], hs_per_cpu_s=handshakes / cpu if cpu else float("nan"),
                 cpu_ms_per_hs=cpu * 1000.0 / handshakes)
    r.update(srv.extra())
    if name.startswith("postfix"):  # keep the scratch small: the held queue is thrown away
        shutil.rmtree(os.path.join(work, name, "queue"), ignore_errors=True)
    shutil.rmtree(os.path.join(work, "spool"), ignore_errors=True)
    return r


def med(rs, k):
    v = [r[k] for r in rs if k in r]
    return statistics.median(v) if v else None


def fmt(x, nd=2):
    if x is None:
        return "-"
    if isinstance(x, float) and x >= 100:
        return "{:,.0f}".format(x)
    return ("{:.%df}" % nd).format(x)


def machine_facts():
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    except OSError:
        rev, dirty = "?", ""
    fs = subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True).stdout.splitlines()[-1].split()
    pf = subprocess.run(["postconf", "-d", "mail_version"], capture_output=True, text=True).stdout.strip()
    return [
        "CPU: %d x %s; kernel %s; %s" % (os.cpu_count(), model, platform.release(), platform.node()),
        "load average at start: %s" % open("/proc/loadavg").read().split()[:3],
        "scratch (spools, Postfix queue): %s on %s (%s)" % (tempfile.gettempdir(), fs[0], fs[1]),
        "ringmx commit %s%s; %s" % (rev, " (+ uncommitted changes)" if dirty else "", pf),
        "server on CPU %s, loadgen on CPU %s (taskset)" % (SERVER_CPU, CLIENT_CPU),
    ]


def main():
    global CERTS
    for b in (RINGMX, LOADGEN):
        if not os.access(b, os.X_OK):
            sys.exit("build first: cargo build --release (missing %s)" % b)
    if os.geteuid() != 0:
        log("warning: not root; the Postfix anchor needs root")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="ringmx-compare-")
    os.chmod(scratch, 0o711)
    if any(s.endswith("-tls") for s in SERVERS):
        CERTS = make_certs(scratch)
    facts = machine_facts()
    cells = [(sz, c, p) for sz in SIZES for p in sorted(PER_CONN, reverse=True) for c in CONNS]
    skipped, results = {}, {}
    t0 = time.time()
    try:
        for cell in cells:
            for rnd in range(ROUNDS):
                order = [s for s in SERVERS if s not in skipped]
                k = rnd % len(order) if order else 0
                for name in order[k:] + order[:k]:
                    if name in skipped:
                        continue
                    try:
                        r = run_one(name, cell, rnd, scratch)
                    except Unavailable as e:
                        skipped[name] = str(e)
                        log("%s unavailable, skipped: %s" % (name, e))
                        continue
                    results.setdefault(cell, {}).setdefault(name, []).append(r)
                    log("%-4s c=%-3d m=%-3d r%d %-12s %9.0f msgs/s  eod p50 %8.3f p99 %8.3f p99.9 %8.3f ms  cpu/1k %.3f s  fail %d  %s%s"
                        % (cell[0], cell[1], cell[2], rnd, name, r["msgs_per_s"], r["p50"], r["p99"], r["p999"],
                           r["cpu_per_1k"], r["fail"],
                           "commits/fdatasync %.1f" % r["commits_per_fdatasync"] if "commits_per_fdatasync" in r else "",
                           "handshakes/s %.0f, %.0f per CPU-s, %.3f CPU ms each" % (
                               r["hs_per_s"], r["hs_per_cpu_s"], r["cpu_ms_per_hs"]) if "hs_per_s" in r else ""))
        write_report(cells, results, skipped, facts, time.time() - t0)
    finally:
        if E.get("KEEP"):
            log("scratch kept in", scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def plot(cell, runs, path):
    """loadgen compare of the median-throughput run of each server, eod phase."""
    args = []
    for name, rs in runs.items():
        r = sorted(rs, key=lambda r: r["msgs_per_s"])[(len(rs) - 1) // 2]
        args.append("%s=%s" % (name, r["json"]))
    out = subprocess.run([LOADGEN, "compare", "--phase", "eod", "--plot", path] + args,
                         capture_output=True, text=True)
    if out.returncode != 0:
        log("loadgen compare failed:", out.stderr)
    return out.stdout


def tls_tables(cells, results):
    """The TLS cell's own figures and issue 10's targets."""
    L = ["", "## TLS (STARTTLS, full handshakes)", "",
         "| size | conns | msgs/conn | server | msgs/s | handshakes/s | handshakes per server CPU-s | "
         "server CPU ms / handshake | fail |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for cell in cells:
        for name, rs in results.get(cell, {}).items():
            if not name.endswith("-tls"):
                continue
            L.append("| %s | %d | %d | %s | %s | %s | %s | %s | %d |" % (
                cell[0], cell[1], cell[2], name, fmt(med(rs, "msgs_per_s")), fmt(med(rs, "hs_per_s")),
                fmt(med(rs, "hs_per_cpu_s")), fmt(med(rs, "cpu_ms_per_hs"), 3), sum(r["fail"] for r in rs)))
    L += ["", "Handshakes/s: loadgen's, over the measured window. The CPU columns divide the server's CPU "
          "over the whole run (warm-up and drain included) by every handshake of it, so they include the "
          "connection's messages: at 1 msg/conn they are the cost of one TLS session with one mail "
          "(handshakes per CPU-s = what one busy core sustains); at 100 msgs/conn the messages dominate.",
          "", "| size | conns | msgs/conn | ringmx-tls / ringmx-fsync msgs/s | ringmx-tls / postfix-tls msgs/s | "
          "handshakes per CPU-s, ringmx-tls vs postfix-tls | postfix-tls / postfix msgs/s |",
          "|---|---|---|---:|---:|---|---:|"]
    for cell in cells:
        c = results.get(cell, {})
        get = lambda n, k: med(c[n], k) if n in c else None
        rt, rp, pt, pp = (get("ringmx-tls", "msgs_per_s"), get("ringmx-fsync", "msgs_per_s"),
                          get("postfix-tls", "msgs_per_s"), get("postfix", "msgs_per_s"))
        rh, ph = get("ringmx-tls", "hs_per_cpu_s"), get("postfix-tls", "hs_per_cpu_s")
        ratio = lambda a, b: "%.2fx" % (a / b) if a and b else "-"
        L.append("| %s | %d | %d | %s | %s | %s | %s |" % (
            cell[0], cell[1], cell[2], ratio(rt, rp), ratio(rt, pt),
            "%s vs %s" % (fmt(rh), fmt(ph)) if rh or ph else "-", ratio(pt, pp)))
    L += ["", "Targets (issue 10): at 100 msgs/conn, ringmx-tls >= 0.75x ringmx-fsync msgs/s (TLS costs "
          "at most 25 %) and >= 10x postfix-tls msgs/s; at 1 msg/conn, handshakes per core against Postfix."]
    return L


def write_report(cells, results, skipped, facts, elapsed):
    cmd = " ".join("%s=%s" % (k, E[k]) for k in
                   ("QUICK", "TLS", "ROUNDS", "DURATION", "WARMUP", "SIZES", "CONNS", "PER_CONN", "SERVERS") if k in E)
    cmd = (cmd + " " if cmd else "") + "tuning/compare.sh"
    title = "ringmx vs Postfix, with and without STARTTLS" if TLS else "ringmx vs Postfix, smtp-sink, Haraka"
    L = ["# %s (%s)" % (title, DATE), "",
         "Reproduce: `cargo build --release && %s`" % cmd, "",
         "loadgen closed loop, `--duration %s --warmup %s --to-domain example.com`, pipelining auto; "
         "%d rounds, servers alternating (order rotated each round); every figure is the median over rounds "
         "(per metric). Latency: end of data -> final reply (`eod`), ms. CPU: server process tree's "
         "utime+stime per 1,000 accepted messages (tuning/compare.py explains). `fail`: refused or lost "
         "messages, summed over rounds. Run time %.0f s." % (DURATION, WARMUP, ROUNDS, elapsed)
         + (" The -tls servers get `--starttls --tls-ca` (a CA made for the run; ECDSA P-256 "
            "certificate; full handshakes, no resumption)." if TLS else ""), ""]
    facts = facts + ["load average at end: %s (other work on this VM competes for both CPUs; "
                     "read ratios within a round, not absolute numbers)" % open("/proc/loadavg").read().split()[:3]]
    L += ["Machine:", ""] + ["- " + f for f in facts] + [""]
    for name, why in skipped.items():
        L += ["**%s skipped**: %s" % (name, why), ""]
    L += ["| size | conns | msgs/conn | server | msgs/s | p50 ms | p99 ms | p99.9 ms | CPU s / 1k msgs | fail | commits/fdatasync |",
          "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for cell in cells:
        for name, rs in results.get(cell, {}).items():
            L.append("| %s | %d | %d | %s | %s | %s | %s | %s | %s | %d | %s |" % (
                cell[0], cell[1], cell[2], name, fmt(med(rs, "msgs_per_s")), fmt(med(rs, "p50"), 3),
                fmt(med(rs, "p99"), 3), fmt(med(rs, "p999"), 3), fmt(med(rs, "cpu_per_1k"), 3),
                sum(r["fail"] for r in rs), fmt(med(rs, "commits_per_fdatasync"), 1)))
    if TLS:
        L += tls_tables(cells, results)
    L += ["", "## Targets", "",
          "| size | conns | msgs/conn | ringmx-fsync / postfix msgs/s | ringmx-fsync p99 vs postfix p50 (ms) | ringmx-none / smtp-sink msgs/s |",
          "|---|---|---|---:|---|---:|"]
    for cell in cells:
        c = results.get(cell, {})
        get = lambda n, k: med(c[n], k) if n in c else None
        f, p, n, s = (get("ringmx-fsync", "msgs_per_s"), get("postfix", "msgs_per_s"),
                      get("ringmx-none", "msgs_per_s"), get("smtp-sink", "msgs_per_s"))
        fp99, pp50 = get("ringmx-fsync", "p99"), get("postfix", "p50")
        L.append("| %s | %d | %d | %s | %s | %s |" % (
            cell[0], cell[1], cell[2], "%.1fx" % (f / p) if f and p else "-",
            "%s vs %s (%s)" % (fmt(fp99, 3), fmt(pp50, 3), "met" if fp99 < pp50 else "missed")
            if fp99 is not None and pp50 is not None else "-",
            "%.2fx" % (n / s) if n and s else "-"))
    L += ["", "Targets (issue 6): ringmx-fsync >= 10x postfix msgs/s at 1 KiB, 100 msgs/conn; "
          "its p99 below postfix's p50; ringmx-none >= 1.0x smtp-sink.", ""]
    base = os.path.basename(OUT)
    L += ["## Latency plots (eod, median-throughput round of each server)", ""]
    for i, cell in enumerate(cells):
        if cell not in results:
            continue
        suffix = "" if i == 0 else "-%s-c%d-m%d" % cell
        svg = OUT + suffix + ".svg"
        text = plot(cell, results[cell], svg)
        if shutil.which("rsvg-convert"):
            subprocess.run(["rsvg-convert", "-o", OUT + suffix + ".png", svg])
        L += ["### %s, %d connections, %d msgs/conn" % cell, "",
              "![eod latency](%s)" % os.path.basename(svg), "", "```", text.rstrip(), "```", ""]
    with open(OUT + ".md", "w") as f:
        f.write("\n".join(L))
    log("wrote %s.md (+ %s*.svg)" % (OUT, base))
    print("\n".join(L))


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups in finally blocks
    main()
