#!/usr/bin/env bash
# ringmx throughput with a 1,000,000-address recipient map against the
# catch-all default, side by side (issue 17: the map must not cost a
# visible percent of msgs/s). Both servers get the same loadgen run:
# recipients drawn in turn from user{0..999999}@example.com (every one in
# the map, so each RCPT is a real lookup over the whole table), 1 KiB,
# closed loop, durability none (the disk out of the way).
#
#   cargo build --release && tuning/recipients.sh
#
# Server on CPU $SERVER_CPU, loadgen on CPU $CLIENT_CPU; runs alternate
# catch-all/map; prints each run, the medians and their ratio, and the
# map's load time and memory from the server's log. Knobs from the env.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-16}
SIZE=${SIZE:-1k}
RCPTS=${RCPTS:-1}
ENTRIES=${ENTRIES:-1000000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
RINGMX=target/release/ringmx
LOADGEN=target/release/loadgen
[ -x "$RINGMX" ] && [ -x "$LOADGEN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

map="$work/recipients"
awk -v n="$ENTRIES" 'BEGIN { for (i = 0; i < n; i++) printf "user%d@example.com\n", i }' >"$map"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_one() { # policy run -> "msgs_per_s p50 p99 rcpt_250 rcpt_550 cpu_s_per_1k"
    local policy=$1 i=$2 spool="$work/spool-$1-$2" log="$work/server-$1-$2.log"
    local extra=()
    [ "$policy" = map ] && extra=(--recipient-map "$map")
    taskset -c "$SERVER_CPU" "$RINGMX" serve --listen 127.0.0.1:0 --cores 1 \
        --domain example.com --durability none --spool "$spool" --log-level warn \
        "${extra[@]}" 2>"$log" &
    local pid=$! addr=""
    for _ in $(seq 300); do
        addr=$(grep -o 'listening on [0-9.:]*' "$log" 2>/dev/null | awk '{print $3}') && [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "ringmx did not start: $(cat "$log")" >&2; exit 1; }
    # Server CPU over the run only (not the map's load at start); on a
    # shared machine CPU per message is steadier than msgs/s.
    local t0 t1
    t0=$(cpu_ticks "$pid")
    taskset -c "$CLIENT_CPU" "$LOADGEN" run --target "$addr" -q -c "$CONNS" --size "$SIZE" \
        --rcpts "$RCPTS" --rcpt-pattern "user{0..$((ENTRIES - 1))}@example.com" \
        --warmup "$WARMUP" --duration "$DURATION" --json "$work/run-$policy-$i.json" >/dev/null
    t1=$(cpu_ticks "$pid")
    kill -TERM "$pid"; wait "$pid"
    python3 -c '
import json, os, sys
s = json.load(open(sys.argv[1]))
e = s["latency_ms"]["eod"]
r = s.get("rcpt_replies", {})
# Warm-up included: the ticks cover the whole loadgen run.
n = s["messages"]["ok"] * (1 + float(sys.argv[3]) / float(sys.argv[4]))
cpu = float(sys.argv[2]) / os.sysconf("SC_CLK_TCK")
print("%.0f %.2f %.2f %d %d %.4f" % (s["msgs_per_s"], e["p50"], e["p99"], r.get("250", 0),
      r.get("550", 0), cpu / n * 1000))' \
        "$work/run-$policy-$i.json" "$((t1 - t0))" "${WARMUP%s}" "${DURATION%s}"
}

# The load line is logged at info; start once at that level to show it.
"$RINGMX" serve --listen 127.0.0.1:0 --cores 1 --domain example.com --spool "$work/probe" \
    --recipient-map "$map" 2>"$work/probe.log" &
probe=$!
for _ in $(seq 300); do grep -q 'listening on' "$work/probe.log" && break; sleep 0.1; done
kill -TERM "$probe"; wait "$probe" || true
grep -o 'recipient map .* loaded in .*' "$work/probe.log" | sed "s|$map|(generated)|"

declare -A rates cpus
printf '%-9s %-4s %10s %9s %9s %10s %10s %12s\n' policy run msgs/s p50_ms p99_ms rcpt_250 rcpt_550 cpu_s/1k
for i in $(seq "$RUNS"); do
    for policy in catch-all map; do
        read -r r p50 p99 ok bad cpu <<<"$(run_one "$policy" "$i")"
        rates[$policy]+="$r "
        cpus[$policy]+="$cpu "
        printf '%-9s %-4s %10s %9s %9s %10s %10s %12s\n' "$policy" "$i" "$r" "$p50" "$p99" "$ok" "$bad" "$cpu"
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
c=$(echo "${rates[catch-all]}" | median); m=$(echo "${rates[map]}" | median)
echo "median msgs/s: catch-all=$c map=$m ratio map/catch-all=$(awk -v a="$m" -v b="$c" 'BEGIN{printf "%.3f", a/b}')"
c=$(echo "${cpus[catch-all]}" | median); m=$(echo "${cpus[map]}" | median)
echo "median server CPU s per 1k msgs: catch-all=$c map=$m ratio map/catch-all=$(awk -v a="$m" -v b="$c" 'BEGIN{printf "%.3f", a/b}')"
