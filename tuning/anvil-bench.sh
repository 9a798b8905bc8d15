#!/usr/bin/env bash
# Per-client limits (issue 12): msgs/s with the per-IP limits off vs on,
# side by side, and the botnet scenario against the greeting wait.
#
#   cargo build --release && tuning/anvil-bench.sh
#   (RINGMX=... LOADGEN=... to bench other builds)
#
# 1. Cost: for each cell (persistent connections; a new connection per
#    message), runs alternate off/on, RUNS times; prints each run and the
#    medians. "off": every limit 0 (the table is never touched). "on": every
#    limit on but set high enough never to refuse (connections 50, and
#    connection, message and recipient rates of 10^6 per minute), with
#    --source-ips so the clients spread over the table as real ones do.
#    durability none: the disk would hide a CPU cost.
# 2. Botnet: BOT_CONNS connections from as many addresses, BOT_PREGREET of
#    them early talkers, against --greet-wait $BOT_WAIT: loadgen's summary
#    must show every early talker refused and every other message accepted.
#
# Server on CPU $SERVER_CPU, loadgen on CPU $CLIENT_CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-16}
SIZE=${SIZE:-1k}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BOT_CONNS=${BOT_CONNS:-2000}
BOT_PREGREET=${BOT_PREGREET:-0.1}
BOT_WAIT=${BOT_WAIT:-1s}
BOT_PARALLEL=${BOT_PARALLEL:-500}
RINGMX=${RINGMX:-target/release/ringmx}
LOADGEN=${LOADGEN:-target/release/loadgen}
[ -x "$RINGMX" ] && [ -x "$LOADGEN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

OFF="--max-connections-per-ip 0"
ON="--max-connections-per-ip 50 --max-connection-rate-per-ip 1000000 \
--max-message-rate-per-ip 1000000 --max-recipient-rate-per-ip 1000000"

start() { # log flags... -> sets $addr, $pid
    local log=$1; shift
    # shellcheck disable=SC2068
    taskset -c "$SERVER_CPU" "$RINGMX" serve --listen 127.0.0.1:0 --cores 1 \
        --domain example.com --durability none --spool "$work/spool-$RANDOM$RANDOM" \
        --log-level "${LOG_LEVEL:-warn}" $@ 2>"$log" &
    pid=$!
    addr=""
    for _ in $(seq 100); do
        addr=$(grep -o 'listening on [0-9.:]*' "$log" | awk '{print $3}') && [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "ringmx did not start: $(cat "$log")" >&2; exit 1; }
}

run_one() { # limits msgs_per_conn tag -> "msgs_per_s temp_fail perm_fail"
    local limits=$1 mpc=$2 tag=$3
    start "$work/server-$tag.log" "${!limits}"
    taskset -c "$CLIENT_CPU" "$LOADGEN" run --target "$addr" -q -c "$CONNS" --size "$SIZE" \
        --duration "$DURATION" --to-domain example.com --msgs-per-conn "$mpc" \
        --source-ips 127.3.0.0/16 --json "$work/run-$tag.json" >/dev/null
    kill -TERM "$pid"; wait "$pid"
    python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
m = s["messages"]
print("%.0f %d %d" % (s["msgs_per_s"], m["temp_fail"], m["perm_fail"]))' "$work/run-$tag.json"
}

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "== cost: $CONNS connections, $SIZE, $DURATION per run, durability none"
printf '%-22s %-4s %-4s %10s %6s %6s\n' cell limits run msgs/s 4xx 5xx
for mpc in $([ "$RUNS" -gt 0 ] && echo 0 1); do
    cell="msgs-per-conn=$mpc"
    [ "$mpc" = 0 ] && cell="persistent"
    declare -A rates=()
    for i in $(seq "$RUNS"); do
        for limits in OFF ON; do
            read -r r t p <<<"$(run_one "$limits" "$mpc" "$limits-$mpc-$i")"
            rates[$limits]+="$r "
            printf '%-22s %-4s %-4s %10s %6s %6s\n' "$cell" "$limits" "$i" "$r" "$t" "$p"
        done
    done
    off=$(echo "${rates[OFF]}" | median); on=$(echo "${rates[ON]}" | median)
    echo "median msgs/s $cell: off=$off on=$on on/off=$(awk -v a="$on" -v b="$off" 'BEGIN{printf "%.3f", a/b}')"
    unset rates
done

echo
echo "== botnet: $BOT_CONNS connections from as many addresses, $BOT_PREGREET early talkers, --greet-wait $BOT_WAIT"
# info: the exit line with the per-client counters.
LOG_LEVEL=info start "$work/server-bot.log" --greet-wait "$BOT_WAIT"
taskset -c "$CLIENT_CPU" "$LOADGEN" run --target "$addr" -q -c "$BOT_PARALLEL" \
    --messages "$BOT_CONNS" --msgs-per-conn 1 --to-domain example.com \
    --source-ips 127.4.0.0/16 --pregreet-fraction "$BOT_PREGREET" \
    --json "$work/bot.json" | grep -E '^(messages|connections|pregreet|errors)'
kill -TERM "$pid"; wait "$pid"
grep -o 'per-client limits: .*' "$work/server-bot.log"
