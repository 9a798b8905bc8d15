#!/usr/bin/env bash
# Shipping to NATS JetStream, measured with the release binaries (issue 14,
# "Benchmark"):
#
#  1. drain: a spool pre-filled with $MSGS messages of $SIZE is shipped by
#     `ringmx ship` (drain mode: ships what is committed and exits) to a
#     single nats-server (R1) and to a 3-node cluster on loopback (R3);
#     msgs/s from ship's own summary, MB/s from the data shipped.
#  2. lag: `ringmx serve --ship nats=...` takes loadgen's closed loop at the
#     key cell ($CONNS connections, $SIZE) for $DURATION while its child
#     ships to each of $LAG (default "R1 R3": the single node, then the
#     cluster); prints ingest msgs/s, shipped msgs/s over
#     the same time, the lag when loadgen stops and how long the child
#     takes to catch up. Shipping keeps up when shipped ~ ingest and the
#     lag stays small.
#
#   cargo build --release && tuning/ship-bench.sh
#
# Each figure is the median of $RUNS runs. Everything on one machine:
# server, shipper, loadgen and nats-servers share its CPUs. Spools and
# JetStream stores live under $WORK (default: /dev/shm when present, so
# fsync is not the disk's). Knobs from the env.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
MSGS=${MSGS:-100000}
SIZE=${SIZE:-1k}
CONNS=${CONNS:-16}
DURATION=${DURATION:-20s}
CORES=${CORES:-2}
LAG=${LAG:-R1 R3}
BIN=${BIN:-target/release}
RINGMX=$BIN/ringmx
LOADGEN=$BIN/loadgen
[ -x "$RINGMX" ] && [ -x "$LOADGEN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v nats-server >/dev/null || { echo "needs nats-server (Debian package nats-server)" >&2; exit 1; }
base=${WORK:-$([ -d /dev/shm ] && echo /dev/shm || echo /tmp)}
work=$(mktemp -d "$base/ship-bench.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "nothing on port $1" >&2; exit 1; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# ringmx serve in the background; sets $addr and $srv. Args: spool log flags...
serve() {
    local spool=$1 log=$2; shift 2
    "$RINGMX" serve --listen 127.0.0.1:0 --cores "$CORES" --domain example.com \
        --node-id bench --spool "$spool" --log-level info "$@" 2>"$log" >"$log.out" &
    srv=$! addr=""
    for _ in $(seq 300); do
        addr=$(grep -o 'listening on [0-9.:]*' "$log" 2>/dev/null | awk '{print $3}') && [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "ringmx did not start: $(cat "$log")" >&2; exit 1; }
}

# One nats-server node (R1); sets $solo.
start_solo() {
    local p; p=$(free_port)
    nats-server -a 127.0.0.1 -p "$p" -n solo -js -sd "$work/solo" >"$work/solo.log" 2>&1 &
    wait_port "$p"; solo="127.0.0.1:$p"
}

# Three clustered nodes (R3); sets $hosts (comma-separated).
start_cluster() {
    local ports=() cports=() routes="" i
    for i in 1 2 3; do ports+=("$(free_port)"); cports+=("$(free_port)"); done
    for i in 0 1 2; do routes+="${routes:+,}nats://127.0.0.1:${cports[$i]}"; done
    for i in 0 1 2; do
        nats-server -a 127.0.0.1 -p "${ports[$i]}" -n "n$i" -js -sd "$work/n$i" \
            --cluster_name bench --cluster "nats://127.0.0.1:${cports[$i]}" --routes "$routes" \
            >"$work/n$i.log" 2>&1 &
    done
    hosts=""
    for i in 0 1 2; do wait_port "${ports[$i]}"; hosts+="${hosts:+,}127.0.0.1:${ports[$i]}"; done
}

# --- 1. drain a pre-filled spool -------------------------------------------
fill="$work/filled"
serve "$fill" "$work/fill.log" --durability none
"$LOADGEN" run --target "$addr" -q -c "$CONNS" --size "$SIZE" --messages "$MSGS" >/dev/null
kill -TERM "$srv"; wait "$srv"
bytes=$("$RINGMX" spool stats --spool "$fill" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(s["total"]["bytes"])')
echo "spool: $MSGS messages of $SIZE, $bytes bytes in segments, $CORES shards"

drain() { # label hosts replicas -> prints per-run lines, then the median
    local label=$1 h=$2 r=$3 i rates=()
    for i in $(seq "$RUNS"); do
        local out
        out=$("$RINGMX" ship --spool "$fill" --name "$label$i" --progress 0 \
            --to "nats://$h/bench.$label$i?stream=$label$i&replicas=$r" 2>/dev/null | grep "shipped" | tail -1)
        local secs rate
        secs=$(grep -o 'in [0-9.]* s' <<<"$out" | awk '{print $2}')
        rate=$(grep -o '([0-9]* msgs/s)' <<<"$out" | tr -d '(' | awk '{print $1}')
        [ -n "$rate" ] || { echo "ship failed: $out" >&2; exit 1; }
        printf '%-3s run %d: %8s msgs/s  %6.1f MB/s  (%s s)\n' "$label" "$i" "$rate" \
            "$(python3 -c "print($rate * $bytes / $MSGS / 1e6)")" "$secs"
        rates+=("$rate")
        # Another consumer name per run; drop this one so it does not hold the spool.
        "$RINGMX" ship --spool "$fill" --name "$label$i" --forget >/dev/null 2>&1 || true
    done
    local m; m=$(printf '%s\n' "${rates[@]}" | median)
    printf '%-3s median: %s msgs/s, %.1f MB/s\n' "$label" "$m" "$(python3 -c "print($m * $bytes / $MSGS / 1e6)")"
}

start_solo
drain R1 "$solo" 1
start_cluster
# Once untimed: the cluster elects its leaders and warms up.
"$RINGMX" ship --spool "$fill" --name warm --progress 0 \
    --to "nats://$hosts/bench.warm?stream=WARM&replicas=3" >/dev/null 2>&1
"$RINGMX" ship --spool "$fill" --name warm --forget >/dev/null 2>&1
drain R3 "$hosts" 3

# --- 2. lag under sustained ingest (the key cell) --------------------------
consumer_lag() { # spool -> messages the consumer "nats" has not shipped
    "$RINGMX" spool stats --spool "$1" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(sum(c["messages"] for c in s.get("consumers", []) if c["consumer"] == "nats"))'
}

lag_run() { # run target -> "ingest_msgs_s shipped_msgs_s max_lag lag_at_end catch_up_s"
    local i=$1$2 spool="$work/lag$1$2" log="$work/lag$1$2.log" h=$hosts r=3
    [ "$2" = R1 ] && h=$solo r=1
    serve "$spool" "$log" --ship "nats=nats://$h/lag.$i?stream=LAG$i&replicas=$r"
    # Let the child connect and create its stream before the load.
    for _ in $(seq 300); do grep -q 'ship nats: shipping' "$log" && break; sleep 0.1; done
    "$LOADGEN" run --target "$addr" -q -c "$CONNS" --size "$SIZE" --duration "$DURATION" \
        --json "$work/lag$i.json" >/dev/null &
    local load=$! max=0 lag=0
    # The consumer's lag (messages committed, not yet shipped) from `spool
    # stats`, sampled while loadgen runs; the last sample is at its end.
    while kill -0 "$load" 2>/dev/null; do
        lag=$(consumer_lag "$spool")
        [ "$lag" -gt "$max" ] && max=$lag
        sleep 0.5
    done
    wait "$load"
    local acked t_end
    t_end=$(date +%s.%N)
    lag=$(consumer_lag "$spool")
    [ "$lag" -gt "$max" ] && max=$lag
    acked=$(python3 -c "import json; print(json.load(open('$work/lag$i.json'))['messages']['ok'])")
    # Until the child has shipped everything (lag 0), checked every 0.2 s.
    local left=$lag n=0
    while [ "$left" != 0 ]; do
        n=$((n + 1))
        [ "$n" -lt 3000 ] || { echo "run $i: still $left messages behind after 10 min" >&2; exit 1; }
        sleep 0.2
        left=$(consumer_lag "$spool")
    done
    local catch; catch=$(python3 -c "import time; print('%.1f' % (time.time() - $t_end))")
    kill -TERM "$srv"; wait "$srv" || true
    local secs=${DURATION%s}
    python3 -c "print('%.0f %.0f %d %d %s' % ($acked / $secs, ($acked - $lag) / $secs, $max, $lag, '$catch'))"
}

med() { printf '%s\n' "$@" | median; }
for target in $LAG; do
    echo "lag: loadgen closed loop, $CONNS connections of $SIZE, $DURATION; shipping to $target"
    printf '%-6s %10s %10s %12s %12s %11s\n' run ingest/s shipped/s max_lag lag_at_end catch_up_s
    ing=() shp=() mx=() lags=() cat=()
    for i in $(seq "$RUNS"); do
        read -r a b c d e < <(lag_run "$i" "$target")
        printf '%-6s %10s %10s %12s %12s %11s\n' "$i" "$a" "$b" "$c" "$d" "$e"
        ing+=("$a"); shp+=("$b"); mx+=("$c"); lags+=("$d"); cat+=("$e")
    done
    printf '%-6s %10s %10s %12s %12s %11s\n' median "$(med "${ing[@]}")" "$(med "${shp[@]}")" \
        "$(med "${mx[@]}")" "$(med "${lags[@]}")" "$(med "${cat[@]}")"
done
echo "(lags in messages; shipped/s = what was shipped by the time loadgen stopped, per second)"
