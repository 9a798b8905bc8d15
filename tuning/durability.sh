#!/usr/bin/env bash
# ringmx throughput with spool.durability fsync vs none, side by side, and
# the group-commit batching (commits per fdatasync) the server reports.
#
#   cargo build --release && tuning/durability.sh
#
# Server on CPU $SERVER_CPU, loadgen on CPU $CLIENT_CPU; runs alternate
# fsync/none; prints each run and the medians. Knobs below, from the env.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
SIZE=${SIZE:-1k}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
RINGMX=target/release/ringmx
LOADGEN=target/release/loadgen
[ -x "$RINGMX" ] && [ -x "$LOADGEN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

run_one() { # mode run -> "msgs_per_s p50 p99 commits_per_fdatasync"
    local mode=$1 i=$2 spool="$work/spool-$1-$2" log="$work/server-$1-$2.log"
    taskset -c "$SERVER_CPU" "$RINGMX" serve --listen 127.0.0.1:0 --cores 1 \
        --domain example.com --durability "$mode" --spool "$spool" --log-level warn \
        --max-connections-per-ip 0 2>"$log" &
    local pid=$! addr=""
    for _ in $(seq 100); do
        addr=$(grep -o 'listening on [0-9.:]*' "$log" | awk '{print $3}') && [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "ringmx did not start: $(cat "$log")" >&2; exit 1; }
    taskset -c "$CLIENT_CPU" "$LOADGEN" run --target "$addr" -q -c "$CONNS" --size "$SIZE" \
        --duration "$DURATION" --to-domain example.com --json "$work/run-$mode-$i.json" >/dev/null
    kill -TERM "$pid"; wait "$pid"
    # The shard's stop line (written at any log level) carries the spool's
    # group-commit batching.
    local cpf lat
    cpf=$(grep -o 'commits_per_fdatasync=[0-9.]*' "$log" | cut -d= -f2)
    lat=$(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
e = s["latency_ms"]["eod"]
print("%.0f %.2f %.2f" % (s["msgs_per_s"], e["p50"], e["p99"]))' "$work/run-$mode-$i.json")
    echo "$lat $cpf"
}

declare -A rates
printf '%-6s %-4s %10s %9s %9s %14s\n' mode run msgs/s p50_ms p99_ms commits/fsync
for i in $(seq "$RUNS"); do
    for mode in fsync none; do
        read -r r p50 p99 cpf <<<"$(run_one "$mode" "$i")"
        rates[$mode]+="$r "
        printf '%-6s %-4s %10s %9s %9s %14s\n' "$mode" "$i" "$r" "$p50" "$p99" "$cpf"
    done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
f=$(echo "${rates[fsync]}" | median); n=$(echo "${rates[none]}" | median)
echo "median msgs/s: fsync=$f none=$n ratio fsync/none=$(awk -v a="$f" -v b="$n" 'BEGIN{printf "%.2f", a/b}')"
