#!/usr/bin/env python3
"""Memory per idle connection of ringmx.

Starts `ringmx serve` on one core, measures its RSS (VmRSS) with no client,
then opens N connections that each read the greeting, send EHLO and read
its reply, and stay open. Measures RSS right after the last EHLO reply and
again after SETTLE seconds (idle connections give their buffers back after
1 s, see IDLE_RELEASE in src/server/conn.rs), and prints
(RSS with N idle connections - RSS with none) / N.

RSS counts user-space memory only; kernel socket buffers are not in it.

Usage: tuning/mem-per-conn.py [--ringmx target/release/ringmx] [-n 10000] [--settle 3]
       extra server flags after `--`, e.g. -- --read-buffer 64KiB
"""

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_idle(port, n, conns):
    sem = asyncio.Semaphore(500)  # connect in waves, not one SYN flood

    async def one(i):
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            line = await r.readline()
            assert line.startswith(b"220 "), line
            w.write(b"EHLO idle%d.example\r\n" % i)
            while True:
                line = await r.readline()
                assert line.startswith(b"250"), line
                if line[3:4] == b" ":
                    break
            conns.append((r, w))

    await asyncio.gather(*(one(i) for i in range(n)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ringmx", default="target/release/ringmx")
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()

    want = a.n * 2 + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    spool = tempfile.mkdtemp(prefix="ringmx-mem-")
    cmd = [a.ringmx, "serve", "--listen", "127.0.0.1:0", "--cores", "1",
           "--max-connections", str(a.n + 100), "--max-connections-per-ip", "0",
           "--log-level", "warn",
           "--spool", spool] + a.extra
    # stderr goes to a file: a pipe nobody drains would fill and stall the
    # server's log writes.
    log_path = os.path.join(spool, "ringmx.log")
    log = open(log_path, "w")
    srv = subprocess.Popen(cmd, stderr=log)
    port = None
    for _ in range(200):
        with open(log_path) as f:
            for line in f:
                if "listening on " in line:
                    port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        if port or srv.poll() is not None:
            break
        time.sleep(0.05)
    if port is None:
        sys.exit("server did not start:\n" + open(log_path).read())

    async def run():
        # Warm up: one full session, so lazily set-up state is not counted
        # as per-connection cost.
        warm = []
        await open_idle(port, 1, warm)
        for r, w in warm:
            w.write(b"QUIT\r\n")
            await r.readline()
            w.close()
        await asyncio.sleep(1.5)
        base = rss_kib(srv.pid)
        conns = []
        t = time.time()
        await open_idle(port, a.n, conns)
        opened = time.time() - t
        busy = rss_kib(srv.pid)
        await asyncio.sleep(a.settle)
        idle = rss_kib(srv.pid)
        print(f"# {' '.join(cmd)}")
        print(f"connections            {a.n} (opened in {opened:.1f} s)")
        print(f"RSS, no connections    {base} KiB")
        print(f"RSS, just after EHLO   {busy} KiB  -> {(busy - base) * 1024 / a.n:.0f} bytes/conn")
        print(f"RSS, idle {a.settle:.0f} s later    {idle} KiB  -> {(idle - base) * 1024 / a.n:.0f} bytes/conn")
        for r, w in conns:
            w.close()

    try:
        asyncio.run(run())
    finally:
        srv.terminate()
        srv.wait(timeout=30)
        warnings = [l for l in open(log_path) if " WARN " in l or " ERROR " in l]
        if len(warnings) > 1:  # the in-memory store's notice is expected
            print("server warnings:", *warnings[:5], sep="\n  ")
        subprocess.run(["rm", "-rf", spool])


if __name__ == "__main__":
    main()
