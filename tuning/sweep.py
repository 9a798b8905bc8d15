#!/usr/bin/env python3
"""One ringmx knob at a time: which setting wins, and by how much.

    cargo build --release && tuning/sweep.sh                 # every knob
    KNOBS=cores,read-buffer ROUNDS=3 tuning/sweep.sh         # some of them

Baseline (every knob not being swept): one shard on CPU 0 (`--cores 1`),
`--durability fsync`, defaults for everything else; loadgen on CPU 1, closed
loop, 1 KiB messages, 100 messages per connection, 64 connections,
`--duration $DURATION --warmup $WARMUP`. A knob may change the workload
(read buffer is swept with 64 KiB messages, where bulk DATA fills it).

Within a round every value of the knob runs once (order rotated each round);
figures are medians over ROUNDS rounds; `spread` is (max-min)/median of the
rounds' msgs/s, the noise to read each difference against. A winner is named
only when its median beats the default's by more than the larger of the two
spreads; otherwise the verdict is "within noise".

Knobs: cores (1 vs 2 shards; with 2 the server gets CPUs 0-1 and loadgen
shares CPU 1, which is what a 2-core box can do), read-buffer, segment-size,
max-buffered-message (64 KiB messages), group-commit-delay (spool.group_commit_delay:
how long the writer waits for more commits before each fdatasync; without it a
batch is whatever commits are pending when the previous fdatasync returns),
connections (concurrency sets the natural batch size).
Env: KNOBS, ROUNDS (3), DURATION (4s), WARMUP (1s), OUT
(tuning/results/sweep-<date>).
"""

import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as C  # noqa: E402  (helpers only)

E = os.environ
ROUNDS = int(E.get("ROUNDS", "3"))
DURATION = E.get("DURATION", "4s")
WARMUP = E.get("WARMUP", "1s")
OUT = E.get("OUT", os.path.join(C.ROOT, "tuning/results", "sweep-%s" % datetime.date.today().isoformat()))
BASE = {"cpus": "0", "client_cpu": "1", "args": ["--cores", "1"], "size": "1k", "conns": 64, "per": 100}

# knob -> (default label, [(label, overrides)])
KNOBS = {
    "cores": ("1", [("1", {}), ("2", {"cpus": "0,1", "args": ["--cores", "2"]})]),
    "read-buffer": ("16KiB", [(v, {"size": "64k", "args": ["--cores", "1", "--read-buffer", v]})
                              for v in ("4KiB", "16KiB", "64KiB")]),
    "segment-size": ("64MiB", [(v, {"args": ["--cores", "1", "--segment-size", v]})
                               for v in ("4MiB", "16MiB", "64MiB")]),
    "max-buffered-message": ("256KiB", [(v, {"size": "64k", "args": ["--cores", "1", "--max-buffered-message", v]})
                                        for v in ("16KiB", "256KiB")]),
    "group-commit-delay": ("0s", [(v, {"conns": 16, "args": ["--cores", "1", "--group-commit-delay", v]})
                                  for v in ("0s", "200us", "1ms", "3ms")]),
    "connections": ("64", [(str(c), {"conns": c}) for c in (16, 64, 256, 1024)]),
}
SELECTED = [k for k in E.get("KNOBS", ",".join(KNOBS)).split(",") if k]


def run_one(cfg, work):
    os.makedirs(work)
    port = C.free_port()
    logf = os.path.join(work, "ringmx.log")
    p = subprocess.Popen(["taskset", "-c", cfg["cpus"], C.RINGMX, "serve", "--listen", "127.0.0.1:%d" % port,
                          "--log-level", "warn", "--durability", "fsync", "--domain", "example.com",
                          "--max-connections-per-ip", "0",
                          "--spool", os.path.join(work, "spool")] + cfg["args"],
                         stdout=subprocess.DEVNULL, stderr=open(logf, "w"))
    try:
        if not C.wait_banner(port, 15):
            raise RuntimeError("ringmx did not start: " + open(logf).read()[-400:])
        cpu0 = C.tree_cpu(p.pid)
        j = os.path.join(work, "run.json")
        r = subprocess.run(["taskset", "-c", cfg["client_cpu"], C.LOADGEN, "run", "--target",
                            "127.0.0.1:%d" % port, "-q", "-c", str(cfg["conns"]), "--size", cfg["size"],
                            "--msgs-per-conn", str(cfg["per"]), "--duration", DURATION, "--warmup", WARMUP,
                            "--to-domain", "example.com", "--json", j],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        cpu1 = C.tree_cpu(p.pid)
        if r.returncode:
            raise RuntimeError("loadgen: " + r.stderr[-400:])
    finally:
        p.terminate()
        try:
            p.wait(40)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    s = json.load(open(j))
    m = s["messages"]
    acc = m["ok"] + m["ok_after_end"] + m["warmup_ok"]
    cpf = re.findall(r"commits_per_fdatasync=([0-9.]+)", open(logf).read())
    shutil.rmtree(os.path.join(work, "spool"), ignore_errors=True)
    return {"msgs_per_s": s["msgs_per_s"], "p99": s["latency_ms"]["eod"]["p99"],
            "p50": s["latency_ms"]["eod"]["p50"],
            "cpu_per_1k": (cpu1 - cpu0) * 1000.0 / acc if acc else float("nan"),
            "cpf": statistics.mean(float(x) for x in cpf) if cpf else None,
            "fail": m["temp_fail"] + m["perm_fail"] + m["error"]}


def main():
    scratch = tempfile.mkdtemp(prefix="ringmx-sweep-")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    facts = C.machine_facts()
    cmd = " ".join("%s=%s" % (k, E[k]) for k in ("KNOBS", "ROUNDS", "DURATION", "WARMUP") if k in E)
    L = ["# ringmx knob sweep (%s)" % datetime.date.today().isoformat(), "",
         "Reproduce: `cargo build --release && %stuning/sweep.sh`" % (cmd + " " if cmd else ""), "",
         "Baseline: 1 shard on CPU 0, durability fsync, 1 KiB, 100 msgs/conn, 64 connections, loadgen on CPU 1; "
         "%d rounds of %s (+%s warm-up), values alternating; medians. Latency = end of data -> 250, ms. "
         "commits/fdatasync = the spool's group-commit batch (mean over shards, from the shard stop line)."
         % (ROUNDS, DURATION, WARMUP), "", "Machine:", ""] + ["- " + f for f in facts] + [""]
    try:
        for knob in SELECTED:
            default, values = KNOBS[knob]
            res = {}
            for rnd in range(ROUNDS):
                k = rnd % len(values)
                for label, ov in values[k:] + values[:k]:
                    cfg = dict(BASE, **ov)
                    r = run_one(cfg, os.path.join(scratch, "%s-%s-%d" % (knob, label, rnd)))
                    res.setdefault(label, []).append(r)
                    C.log("%-20s %-7s r%d %9.0f msgs/s p50 %.3f p99 %.3f cpu/1k %.3f cpf %s fail %d" % (
                        knob, label, rnd, r["msgs_per_s"], r["p50"], r["p99"], r["cpu_per_1k"], r["cpf"], r["fail"]))
            size = dict(BASE, **values[0][1])["size"]
            L += ["## %s (default %s%s)" % (knob, default, ", 64 KiB messages" if size == "64k" else ""), "",
                  "| %s | msgs/s | spread | p50 ms | p99 ms | CPU s / 1k msgs | commits/fdatasync | fail |" % knob,
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
            stats = {}
            for label, _ in values:
                rs = res[label]
                v = [r["msgs_per_s"] for r in rs]
                md = statistics.median(v)
                stats[label] = (md, (max(v) - min(v)) / md if md else 0)
                cpfs = [r["cpf"] for r in rs if r["cpf"] is not None]
                L.append("| %s | %s | %.0f%% | %.3f | %.3f | %.3f | %s | %d |" % (
                    label, "{:,.0f}".format(md), 100 * stats[label][1],
                    statistics.median(r["p50"] for r in rs), statistics.median(r["p99"] for r in rs),
                    statistics.median(r["cpu_per_1k"] for r in rs),
                    "%.1f" % statistics.median(cpfs) if cpfs else "-", sum(r["fail"] for r in rs)))
            best = max(stats, key=lambda l: stats[l][0])
            gain = stats[best][0] / stats[default][0] - 1
            noise = max(stats[best][1], stats[default][1])
            if best == default:
                second = max((l for l in stats if l != default), key=lambda l: stats[l][0])
                margin = stats[default][0] / stats[second][0] - 1
                noise2 = max(stats[second][1], stats[default][1])
                verdict = "the default (%s) wins, %+.0f%% over %s%s" % (
                    default, 100 * margin, second,
                    "" if margin > noise2 else ", within noise (spread %.0f%%)" % (100 * noise2))
            elif gain > noise:
                verdict = "**%s wins: %+.0f%% msgs/s over the default %s** (spread %.0f%%)" % (best, 100 * gain, default, 100 * noise)
            else:
                verdict = "%s is %+.0f%% over the default %s, within noise (spread %.0f%%): keep the default" % (
                    best, 100 * gain, default, 100 * noise)
            L += ["", "Verdict: " + verdict, ""]
            print("\n".join(L[-(len(values) + 6):]), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        with open(OUT + ".md", "w") as f:
            f.write("\n".join(L) + "\n")
        C.log("wrote %s.md" % OUT)


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
