#!/usr/bin/env bash
# Spool space while shipping (issue 14): `ringmx serve` with small
# segments ($SEGMENT) takes loadgen's closed loop at full speed for
# $DURATION ($CONNS connections, $SIZE) while its supervised child ships
# everything to an LMTP next hop (Postfix's smtp-sink -L, which takes and
# discards, so nothing downstream fills a disk). Every $EVERY seconds it
# prints the spool's segment bytes and count, and the consumer's lag from
# `ringmx spool stats`; at the end the maximum, and the spool once the
# child has caught up. Bounded means the maximum stays within a few
# segments per shard instead of growing with the run.
#
# SINK=nats ships to one JetStream node instead (nats-server -js, R1, its
# store under $WORK): the issue's key cell.
#
#   cargo build --release && tuning/ship-soak.sh        # 10 minutes
#   DURATION=60s tuning/ship-soak.sh                      # a short run
#   RATE=8000 tuning/ship-soak.sh                         # open loop, msgs/s
#   SINK=nats tuning/ship-soak.sh                         # to JetStream R1
#
# The spool lives under $WORK (default /dev/shm when present). A spool
# past $MAX_BYTES (default 2 GiB) stops the run: shipping fell behind.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-600s}
SEGMENT=${SEGMENT:-1MiB}
CONNS=${CONNS:-16}
SIZE=${SIZE:-1k}
CORES=${CORES:-2}
EVERY=${EVERY:-10}
MAX_BYTES=${MAX_BYTES:-$((2 << 30))}
BIN=${BIN:-target/release}
RINGMX=$BIN/ringmx
LOADGEN=$BIN/loadgen
[ -x "$RINGMX" ] && [ -x "$LOADGEN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
SINK=${SINK:-lmtp}
case $SINK in
lmtp) SMTP_SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
      [ -x "$SMTP_SINK" ] || { echo "needs smtp-sink (Debian package postfix)" >&2; exit 1; } ;;
nats) command -v nats-server >/dev/null || { echo "needs nats-server (Debian package nats-server)" >&2; exit 1; } ;;
*) echo "SINK is lmtp or nats, not $SINK" >&2; exit 1 ;;
esac
base=${WORK:-$([ -d /dev/shm ] && echo /dev/shm || echo /tmp)}
work=$(mktemp -d "$base/ship-soak.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
if [ "$SINK" = lmtp ]; then
    user=(); [ "$(id -u)" = 0 ] && user=(-u nobody)
    "$SMTP_SINK" "${user[@]}" -L "127.0.0.1:$port" 256 &
    to="lmtp://127.0.0.1:$port"
else
    nats-server -a 127.0.0.1 -p "$port" -n soak -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
    to="nats://127.0.0.1:$port/soak.in?stream=SOAK"
fi
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

spool="$work/spool" log="$work/server.log"
"$RINGMX" serve --listen 127.0.0.1:0 --cores "$CORES" --domain example.com --spool "$spool" \
    --segment-size "$SEGMENT" --ship "$SINK=$to" --log-level info 2>"$log" &
srv=$! addr=""
for _ in $(seq 300); do
    addr=$(grep -o 'listening on [0-9.:]*' "$log" 2>/dev/null | awk '{print $3}') && [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "ringmx did not start: $(cat "$log")" >&2; exit 1; }

seg_bytes() { find "$spool" -name '*.seg' -printf '%s\n' 2>/dev/null | awk '{b+=$1; n++} END {printf "%d %d\n", b, n}'; }
lag() {
    "$RINGMX" spool stats --spool "$spool" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
c = [c for c in s.get("consumers", []) if c["consumer"] == sys.argv[1]]
print(sum(x["messages"] for x in c), sum(x["body_bytes"] for x in c))' "$SINK"
}

echo "segments of $SEGMENT, $CORES shards, loadgen $CONNS connections of $SIZE for $DURATION${RATE:+ at $RATE msgs/s}"
rate=(); [ -n "${RATE:-}" ] && rate=(--rate "$RATE")
"$LOADGEN" run --target "$addr" -q -c "$CONNS" --size "$SIZE" --duration "$DURATION" \
    "${rate[@]}" --json "$work/load.json" >"$work/load.txt" &
load=$!
start=$(date +%s) max=0
printf '%6s %14s %9s %14s\n' t_s spool_bytes segments lag_msgs
while kill -0 "$load" 2>/dev/null; do
    read -r b n < <(seg_bytes)
    [ "$b" -gt "$max" ] && max=$b
    read -r lm _ < <(lag)
    printf '%6d %14d %9d %14d\n' "$(($(date +%s) - start))" "$b" "$n" "$lm"
    [ "$b" -lt "$MAX_BYTES" ] || { echo "spool past $MAX_BYTES bytes: shipping fell behind" >&2; exit 1; }
    # Sample the maximum more often than we print.
    for _ in $(seq $((EVERY * 5))); do
        kill -0 "$load" 2>/dev/null || break
        read -r b _ < <(seg_bytes); [ "$b" -gt "$max" ] && max=$b
        sleep 0.2
    done
done
wait "$load"
python3 -c "
import json; s = json.load(open('$work/load.json'))
print('ingest: %d messages, %.0f msgs/s' % (s['messages']['ok'], s['msgs_per_s']))"
t_end=$(date +%s)
while :; do
    read -r lm _ < <(lag); [ "$lm" = 0 ] && break
    [ $(($(date +%s) - t_end)) -lt 600 ] || { echo "still $lm messages behind after 10 min" >&2; exit 1; }
    sleep 0.2
done
echo "caught up $(($(date +%s) - t_end)) s after the load ended"
sleep 3 # a reclaim pass or more (spool.reclaim_interval, 1 s)
read -r b n < <(seg_bytes)
echo "spool at most $max bytes during the run; after: $b bytes in $n segments"
grep -o "ship $SINK: shipped .*" "$log" | tail -1
kill -TERM "$srv"; wait "$srv" || true
