#!/usr/bin/env bash
# ringmx throughput with PROXY protocol v2 on against off, side by side
# (issue 12: the header must cost no more than noise). "off": a plain
# listener, loadgen connects directly. "v2": --proxy-protocol with
# 127.0.0.1 trusted, loadgen sends a v2 header per connection from the
# next address of $SOURCES (--proxy-source), so the server sees many
# clients. One message per connection by default (MSGS_PER_CONN=1): the
# header is paid per connection, so this is its worst case. 1 KiB,
# closed loop, durability none (the disk out of the way).
#
#   cargo build --release && tuning/proxy.sh
#
# Server on CPU $SERVER_CPU, loadgen on CPU $CLIENT_CPU; runs alternate
# off/v2; prints each run (with the server's CPU seconds per 1,000
# messages: on a shared machine steadier than msgs/s), the medians and
# their ratios. Knobs from the env.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-16}
SIZE=${SIZE:-1k}
MSGS_PER_CONN=${MSGS_PER_CONN:-1}
SOURCES=${SOURCES:-10.0.0.0/16}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
RINGMX=${RINGMX:-target/release/ringmx}
LOADGEN=target/release/loadgen
[ -x "$RINGMX" ] && [ -x "$LOADGEN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_one() { # mode run -> "msgs_per_s p50_ms p99_ms errors cpu_s_per_1k"
    local mode=$1 i=$2 spool="$work/spool-$1-$2" log="$work/server-$1-$2.log"
    local serve=() load=()
    if [ "$mode" = v2 ]; then
        serve=(--proxy-protocol true --trusted-proxy 127.0.0.1/32)
        load=(--proxy-source "$SOURCES")
    fi
    taskset -c "$SERVER_CPU" "$RINGMX" serve --listen 127.0.0.1:0 --cores 1 \
        --domain example.com --durability none --spool "$spool" --log-level warn \
        "${serve[@]}" 2>"$log" &
    local pid=$! addr=""
    for _ in $(seq 300); do
        addr=$(grep -o 'listening on [0-9.:]*' "$log" 2>/dev/null | awk '{print $3}') && [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "ringmx did not start: $(cat "$log")" >&2; exit 1; }
    local t0 t1
    t0=$(cpu_ticks "$pid")
    taskset -c "$CLIENT_CPU" "$LOADGEN" run --target "$addr" -q -c "$CONNS" --size "$SIZE" \
        --to-domain example.com --msgs-per-conn "$MSGS_PER_CONN" "${load[@]}" \
        --warmup "$WARMUP" --duration "$DURATION" --json "$work/run-$mode-$i.json" >/dev/null
    t1=$(cpu_ticks "$pid")
    kill -TERM "$pid"; wait "$pid"
    python3 -c '
import json, os, sys
s = json.load(open(sys.argv[1]))
e = s["latency_ms"]["eod"]
# Warm-up included: the ticks cover the whole loadgen run.
n = s["messages"]["ok"] * (1 + float(sys.argv[3]) / float(sys.argv[4]))
cpu = float(sys.argv[2]) / os.sysconf("SC_CLK_TCK")
print("%.0f %.2f %.2f %d %.4f" % (s["msgs_per_s"], e["p50"], e["p99"],
      sum(s.get("errors", {}).values()), cpu / n * 1000))' \
        "$work/run-$mode-$i.json" "$((t1 - t0))" "${WARMUP%s}" "${DURATION%s}"
}

declare -A rates cpus
printf '%-4s %-4s %10s %9s %9s %7s %12s\n' mode run msgs/s p50_ms p99_ms errors cpu_s/1k
for i in $(seq "$RUNS"); do
    for mode in off v2; do
        read -r r p50 p99 err cpu <<<"$(run_one "$mode" "$i")"
        rates[$mode]+="$r "
        cpus[$mode]+="$cpu "
        printf '%-4s %-4s %10s %9s %9s %7s %12s\n' "$mode" "$i" "$r" "$p50" "$p99" "$err" "$cpu"
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
o=$(echo "${rates[off]}" | median); v=$(echo "${rates[v2]}" | median)
echo "median msgs/s: off=$o v2=$v ratio v2/off=$(awk -v a="$v" -v b="$o" 'BEGIN{printf "%.3f", a/b}')"
o=$(echo "${cpus[off]}" | median); v=$(echo "${cpus[v2]}" | median)
echo "median server CPU s per 1k msgs: off=$o v2=$v ratio v2/off=$(awk -v a="$v" -v b="$o" 'BEGIN{printf "%.3f", a/b}')"
