#!/usr/bin/env bash
# One call on a lent many-CPU machine (the `device` tool; nothing depends on
# it): the commit-latency comparison (tuning/commit.sh, issue 15) with the
# shard, the load generator and the kernel's workers on CPUs of their own,
# then throughput against shard count (1, 2, 4, 8 shards on CPUs 0-7,
# loadgen on 8-15). Prepare here, carrying stripped binaries:
#   cargo build --release && mkdir -p target/dev-bin &&
#   strip -o target/dev-bin/ringmx target/release/ringmx &&
#   strip -o target/dev-bin/loadgen target/release/loadgen
# then run `OUT=... tuning/device-run.sh` there (carry target/dev-bin).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
BIN=${BIN:-target/dev-bin}
export RINGMX=$BIN/ringmx LOADGEN=$BIN/loadgen
{
    uname -r; nproc; echo "memlock $(ulimit -l)"
    df -T /tmp /var/tmp /dev/shm 2>&1; python3 --version
    grep -m1 "model name" /proc/cpuinfo
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
ulimit -l unlimited 2>/dev/null
# The spool must be on a disk, not tmpfs: the first of these that is.
for d in /var/tmp /tmp /root; do
    if [ "$(df --output=fstype "$d" | tail -1)" != tmpfs ]; then SCRATCH=$d; break; fi
done
echo "scratch on ${SCRATCH:-none}"
$RINGMX --version || { echo "ringmx does not run here"; exit 1; }

# 1. Commit latency: fsync (default: O_DIRECT), none, and buffered fsync.
TMPDIR=$SCRATCH SERVER_CPU=2 CLIENT_CPU=4 ROUNDS=${ROUNDS:-3} DURATION=3s WARMUP=1s \
    ALT="--direct-io false" timeout 300 python3 tuning/commit.py > "$OUT/commit.txt" 2>&1
echo "commit.py rc=$?"
tail -25 "$OUT/commit.txt"

# 2. Shards: msgs/s at 1, 2, 4, 8 shards, none and fsync, 256 connections.
port=2700
printf '%-6s %-7s %10s %8s %8s\n' mode shards msgs/s p50_ms p99_ms | tee "$OUT/shards.txt"
for mode in none fsync; do
    for n in 1 2 4 8; do
        port=$((port + 1))
        spool=$(mktemp -d "$SCRATCH/ringmx-shards-XXXX")
        $RINGMX serve --listen 127.0.0.1:$port --cores 0-$((n - 1)) --durability $mode \
            --domain example.com --max-connections-per-ip 0 --log-level warn \
            --spool "$spool/spool" > "$spool/server.log" 2>&1 &
        srv=$!
        sleep 1
        taskset -c 8-15 $LOADGEN run --target 127.0.0.1:$port -q --cores 8 -c 256 \
            --size 1k --duration 3s --warmup 1s --to-domain example.com \
            --json "$spool/run.json" > "$spool/loadgen.txt" 2>&1
        kill $srv; wait $srv 2>/dev/null
        python3 - "$mode" "$n" "$spool/run.json" <<'PY' | tee -a "$OUT/shards.txt"
import json, sys
mode, n, path = sys.argv[1:]
try:
    j = json.load(open(path))
except Exception as e:
    print(f"{mode:<6} {n:<7} failed: {e}"); sys.exit()
lat = j["latency_ms"]["e2e"]
print(f"{mode:<6} {n:<7} {j['msgs_per_s']:>10.0f} {lat['p50']:>8.2f} {lat['p99']:>8.2f}")
PY
        cp "$spool/run.json" "$OUT/shards-$mode-$n.json" 2>/dev/null
        rm -rf "$spool"
    done
done
