#!/usr/bin/env bash
# ringmx vs Postfix's smtp-sink, side by side in one run, driven by Postfix's
# smtp-source. Both servers get one CPU (SERVER_CPU), the client another
# (CLIENT_CPU). Runs are interleaved (ringmx, sink, ringmx, sink, ...) so
# drift hits both alike; each server is restarted for every run; the table
# shows the median msgs/s of RUNS runs and the ratio ringmx / smtp-sink.
#
# Scenarios (1 KiB bodies, 16 parallel sessions):
#   per-conn-100: `smtp-source -d` (keep the connection): each smtp-source
#                 invocation is 16 connections x 100 messages; REPS_100
#                 invocations back to back make one run.
#   per-conn-1:   no -d: every message on its own connection; MSGS_1 messages.
#
# Usage: tuning/smtp-source-vs-sink.sh            (needs: postfix, a release build)
#   RINGMX=path RUNS=5 REPS_100=10 MSGS_1=4000 SERVER_CPU=0 CLIENT_CPU=1 LOG_LEVEL=warn
#   RINGMX_WRAP="prlimit --memlock=8388608 setpriv --reuid=65534 --regid=65534 --clear-groups"
#     (a command prefix for ringmx, e.g. to run it unprivileged with a given memlock limit)
set -euo pipefail
cd "$(dirname "$0")/.."

RINGMX=${RINGMX:-target/release/ringmx}
RUNS=${RUNS:-5}
REPS_100=${REPS_100:-10}
MSGS_1=${MSGS_1:-4000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
LOG_LEVEL=${LOG_LEVEL:-warn}
# smtp-sink writes nothing, so the like-for-like default is none; fsync
# shows what durable acknowledgement costs on this disk.
DURABILITY=${DURABILITY:-none}
SESSIONS=16
SIZE=1024
PORT_RINGMX=${PORT_RINGMX:-2626}
PORT_SINK=${PORT_SINK:-2627}
SMTP_SOURCE=$(command -v smtp-source || echo /usr/sbin/smtp-source)
SMTP_SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)

[ -x "$RINGMX" ] || { echo "build first: cargo build --release ($RINGMX missing)" >&2; exit 1; }
[ -x "$SMTP_SOURCE" ] || { echo "install postfix (smtp-source, smtp-sink)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

work=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill -9 "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 never opened" >&2
    return 1
}

start_server() { # name
    case $1 in
    ringmx)
        rm -rf "$work/spool"
        mkdir -p "$work/spool" && chmod 777 "$work" "$work/spool"
        # shellcheck disable=SC2086 # RINGMX_WRAP is a command prefix
        taskset -c "$SERVER_CPU" ${RINGMX_WRAP:-} "$RINGMX" serve --listen "127.0.0.1:$PORT_RINGMX" --cores 1 \
            --spool "$work/spool" --durability "$DURABILITY" --log-level "$LOG_LEVEL" --backlog 1024 2>"$work/ringmx.log" &
        server_pid=$!
        wait_port "$PORT_RINGMX"
        ;;
    sink)
        taskset -c "$SERVER_CPU" "$SMTP_SINK" -u nobody "127.0.0.1:$PORT_SINK" 1024 \
            2>"$work/sink.log" &
        server_pid=$!
        wait_port "$PORT_SINK"
        ;;
    esac
}

stop_server() {
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

# Prints msgs/s for one run of scenario $2 against server $1.
run_once() {
    local name=$1 scenario=$2 port msgs
    port=$([ "$name" = ringmx ] && echo "$PORT_RINGMX" || echo "$PORT_SINK")
    start_server "$name"
    local src=(taskset -c "$CLIENT_CPU" "$SMTP_SOURCE" -s "$SESSIONS" -l "$SIZE"
        -f sender@example.org -t user@localhost -M client.example)
    local t0 t1
    t0=$(date +%s%N)
    case $scenario in
    per-conn-100)
        for _ in $(seq "$REPS_100"); do
            "${src[@]}" -d -m $((SESSIONS * 100)) "127.0.0.1:$port"
        done
        msgs=$((REPS_100 * SESSIONS * 100))
        ;;
    per-conn-1)
        "${src[@]}" -m "$MSGS_1" "127.0.0.1:$port"
        msgs=$MSGS_1
        ;;
    esac
    t1=$(date +%s%N)
    stop_server
    if [ "$name" = ringmx ]; then
        # Every message must have been accepted, not just sent.
        local got
        got=$("$RINGMX" spool --spool "$work/spool" ls | wc -l)
        [ "$got" = "$msgs" ] || { echo "ringmx stored $got of $msgs" >&2; cat "$work/ringmx.log" >&2; exit 1; }
    fi
    echo "$msgs $t0 $t1" | awk '{ printf "%.0f\n", $1 / (($3 - $2) / 1e9) }'
}

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }

echo "# $(date -u +%FT%TZ) $(uname -r), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# ringmx: ${RINGMX_WRAP:+$RINGMX_WRAP }$RINGMX --cores 1 --log-level $LOG_LEVEL (spool.durability=$DURABILITY) on CPU $SERVER_CPU;"
echo "# smtp-sink on CPU $SERVER_CPU; smtp-source on CPU $CLIENT_CPU; $SESSIONS sessions, ${SIZE}-byte bodies; median of $RUNS runs"
printf '%-14s %12s %12s %8s   %s\n' scenario ringmx smtp-sink ratio "runs ringmx | runs smtp-sink (msgs/s)"
for scenario in per-conn-100 per-conn-1; do
    r=() s=()
    for _ in $(seq "$RUNS"); do
        r+=("$(run_once ringmx "$scenario")")
        s+=("$(run_once sink "$scenario")")
    done
    mr=$(printf '%s\n' "${r[@]}" | median)
    ms=$(printf '%s\n' "${s[@]}" | median)
    printf '%-14s %12s %12s %8s   %s | %s\n' "$scenario" "$mr" "$ms" \
        "$(awk -v a="$mr" -v b="$ms" 'BEGIN { printf "%.2f", a / b }')" "${r[*]}" "${s[*]}"
done
