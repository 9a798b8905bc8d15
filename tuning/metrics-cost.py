#!/usr/bin/env python3
"""What `--metrics` costs: ringmx msgs/s with metrics off, on, and on while
scraped every second, side by side.

    cargo build --release -p ringmx -p loadgen && tuning/metrics-cost.py

Each run starts `target/release/ringmx serve --cores 1` (pinned with
taskset to SERVER_CPU, a fresh spool) and `loadgen run` (pinned to
CLIENT_CPU) for DURATION after WARMUP, 1 KiB messages, CONNS connections,
PER_CONN messages per connection. Variants:

  off      no --metrics
  on       --metrics 127.0.0.1:PORT, never scraped
  scraped  the same, and this script GETs /metrics every second

For each durability (DURABILITY, default "none,fsync": `none` shows the CPU
cost, which `fsync` hides behind the disk), ROUNDS rounds; within a round
every variant runs once, in an order rotated by one each round. The table
holds medians over rounds. Knobs (environment): ROUNDS (3), DURATION (5s),
WARMUP (1s), CONNS (16), PER_CONN (100), SERVER_CPU (0), CLIENT_CPU (1),
OUT (tuning/results/metrics-cost-<date>.md).
"""

import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RINGMX = os.path.join(ROOT, "target/release/ringmx")
LOADGEN = os.path.join(ROOT, "target/release/loadgen")
E = os.environ
ROUNDS = int(E.get("ROUNDS", "3"))
DURATION = E.get("DURATION", "5s")
WARMUP = E.get("WARMUP", "1s")
CONNS = E.get("CONNS", "16")
PER_CONN = E.get("PER_CONN", "100")
SERVER_CPU = E.get("SERVER_CPU", "0")
CLIENT_CPU = E.get("CLIENT_CPU", "1")
DURABILITY = E.get("DURABILITY", "none,fsync").split(",")
VARIANTS = ["off", "on", "scraped"]
DATE = datetime.date.today().isoformat()
OUT = E.get("OUT", os.path.join(ROOT, "tuning/results", "metrics-cost-%s.md" % DATE))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_banner(port, limit):
    end = time.time() + limit
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as c:
                if c.recv(64).startswith(b"220"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def run_one(variant, durability, scratch, tag):
    work = os.path.join(scratch, tag)
    os.makedirs(work)
    port, mport = free_port(), free_port()
    cmd = ["taskset", "-c", SERVER_CPU, RINGMX, "serve", "--listen", "127.0.0.1:%d" % port,
           "--cores", "1", "--log-level", "warn", "--durability", durability,
           "--domain", "example.com", "--spool", os.path.join(work, "spool")]
    if variant != "off":
        cmd += ["--metrics", "127.0.0.1:%d" % mport]
    log = open(os.path.join(work, "ringmx.log"), "w")
    srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    scrapes = [0]
    stop = threading.Event()
    try:
        if not wait_banner(port, 15):
            raise RuntimeError("ringmx did not start: " + open(log.name).read()[-500:])

        def scraper():
            while not stop.wait(1.0):
                with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5) as r:
                    assert r.status == 200 and b"ringmx_messages_accepted_total" in r.read()
                scrapes[0] += 1

        t = threading.Thread(target=scraper, daemon=True)
        if variant == "scraped":
            t.start()
        prefix = os.path.join(work, "run")
        lg = subprocess.run(
            ["taskset", "-c", CLIENT_CPU, LOADGEN, "run", "--target", "127.0.0.1:%d" % port, "-q",
             "-c", CONNS, "--size", "1k", "--msgs-per-conn", PER_CONN, "--duration", DURATION,
             "--warmup", WARMUP, "--to-domain", "example.com", "--label", variant,
             "--json", prefix + ".json"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stop.set()
        if variant == "scraped":
            t.join()
        if lg.returncode != 0:
            raise RuntimeError("loadgen exit %d: %s" % (lg.returncode, lg.stderr[-500:]))
    finally:
        stop.set()
        srv.terminate()
        srv.wait(40)
    s = json.load(open(prefix + ".json"))
    m = s["messages"]
    return {"msgs_per_s": s["msgs_per_s"], "p99": s["latency_ms"]["eod"]["p99"],
            "fail": m["temp_fail"] + m["perm_fail"] + m["error"], "scrapes": scrapes[0]}


def main():
    for b in (RINGMX, LOADGEN):
        if not os.access(b, os.X_OK):
            sys.exit("%s missing: cargo build --release -p ringmx -p loadgen" % b)
    scratch = tempfile.mkdtemp(prefix="ringmx-metrics-cost-")
    results = {}
    for rnd in range(ROUNDS):
        for d in DURABILITY:
            order = VARIANTS[rnd % 3:] + VARIANTS[:rnd % 3]
            for v in order:
                r = run_one(v, d, scratch, "%s-%s-r%d" % (d, v, rnd))
                print("round %d %s %-8s %8.0f msgs/s  p99 %.2f ms  fail %d  scrapes %d"
                      % (rnd, d, v, r["msgs_per_s"], r["p99"], r["fail"], r["scrapes"]),
                      file=sys.stderr, flush=True)
                results.setdefault((d, v), []).append(r)
    subprocess.run(["rm", "-rf", scratch])
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    lines = ["# --metrics cost, %s" % DATE, "",
             "`tuning/metrics-cost.py` (ROUNDS=%d DURATION=%s WARMUP=%s CONNS=%s PER_CONN=%s, "
             "1 KiB, server on CPU %s, loadgen on CPU %s); ringmx %s; %d x %s; load average "
             "at the end %s." % (ROUNDS, DURATION, WARMUP, CONNS, PER_CONN, SERVER_CPU,
                                 CLIENT_CPU, rev, os.cpu_count(), cpu_model(),
                                 open("/proc/loadavg").read().split()[:3]),
             "", "Medians over rounds; `vs off` is the ratio of median msgs/s.", "",
             "| durability | metrics | msgs/s | vs off | eod p99 ms | failed | runs (msgs/s) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for d in DURABILITY:
        base = statistics.median(r["msgs_per_s"] for r in results[(d, "off")])
        for v in VARIANTS:
            rs = results[(d, v)]
            mps = statistics.median(r["msgs_per_s"] for r in rs)
            lines.append("| %s | %s | %s | %.3f | %.2f | %d | %s |" % (
                d, v, "{:,.0f}".format(mps), mps / base,
                statistics.median(r["p99"] for r in rs), sum(r["fail"] for r in rs),
                ", ".join("{:,.0f}".format(r["msgs_per_s"]) for r in rs)))
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    open(OUT, "w").write(text)
    print(text)


def cpu_model():
    return next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                 if l.startswith("model name")), "?")


if __name__ == "__main__":
    main()
