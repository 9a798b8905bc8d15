#!/usr/bin/env bash
# loadgen vs Postfix's smtp-source, side by side against one smtp-sink.
#
# smtp-sink is pinned to CPU 0, each generator to CPU 1 (taskset), and the
# runs alternate (smtp-source, loadgen auto, loadgen off, smtp-source, ...) so
# that drift on a shared machine hits every tool alike. msgs/s is messages
# divided by the whole process's wall-clock time, measured the same way for
# every tool (start-up included); the median of ROUNDS runs is reported, with
# loadgen's ratio to smtp-source.
#
# smtp-source does not pipeline (see its man page, BUGS), so "loadgen off"
# (--pipelining off) is the like-for-like row; "loadgen auto" is loadgen's
# default, which pipelines because smtp-sink advertises PIPELINING.
#
# Two scenarios: "kept" (one connection per session for all its messages:
# smtp-source -d, loadgen --msgs-per-conn 0) and "churn" (a new connection per
# message: smtp-source without -d, loadgen --msgs-per-conn 1).
#
# Usage: loadgen/scripts/vs-smtp-source.sh            (from the workspace root)
# Knobs (environment): CONNS=16 MSGS=32000 CHURN_MSGS=8000 LEN=1024 ROUNDS=3
#                      PORT=<free port> LOADGEN=target/release/loadgen
# Needs: postfix (smtp-sink, smtp-source), util-linux (taskset), cargo.
set -euo pipefail
cd "$(dirname "$0")/../.."

CONNS=${CONNS:-16}
MSGS=${MSGS:-32000}
CHURN_MSGS=${CHURN_MSGS:-8000}
LEN=${LEN:-1024}
ROUNDS=${ROUNDS:-3}
LOADGEN=${LOADGEN:-target/release/loadgen}
SINK=/usr/sbin/smtp-sink
SOURCE=/usr/sbin/smtp-source
# smtp-source -l LEN sends LEN payload bytes plus From/To/Date/Message-Id
# headers and CRLFs: 114 bytes more on the wire with a short host name
# (measured with smtp-sink -d). loadgen's --size counts the whole message.
SIZE=$((LEN + 114))

for tool in "$SINK" "$SOURCE" taskset; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install postfix util-linux)" >&2; exit 1; }
done
if [ "$(nproc)" -lt 2 ]; then
    echo "needs 2 CPUs: smtp-sink on CPU 0, the generator on CPU 1" >&2
    exit 1
fi
[ -n "${LOADGEN_SKIP_BUILD:-}" ] || cargo build --release -p loadgen >&2

PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 25250)}
user=()
[ "$(id -u)" -eq 0 ] && user=(-u nobody)
taskset -c 0 "$SINK" "${user[@]}" "127.0.0.1:$PORT" 1000 &
sink_pid=$!
trap 'kill $sink_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

now() { date +%s.%N; }
rate() { echo "$1 / ($3 - $2)" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; printf "%.0f", m}'; }

run_source() { # messages, extra flags
    local s e
    s=$(now)
    taskset -c 1 "$SOURCE" -s "$CONNS" -m "$1" -l "$LEN" $2 "127.0.0.1:$PORT"
    e=$(now)
    rate "$1" "$s" "$e"
}

run_loadgen() { # messages, pipelining, msgs-per-conn
    local s e
    s=$(now)
    taskset -c 1 "$LOADGEN" run --target "127.0.0.1:$PORT" --connections "$CONNS" \
        --messages "$1" --size "$SIZE" --pipelining "$2" --msgs-per-conn "$3" -q \
        | grep -q '^messages .*ok '"$1"' ' || echo "loadgen: not all $1 messages were accepted" >&2
    e=$(now)
    rate "$1" "$s" "$e"
}

echo "smtp-sink on CPU 0 (port $PORT); generators on CPU 1; $CONNS connections;"
echo "smtp-source -l $LEN vs loadgen --size $SIZE; $ROUNDS alternating rounds."
echo "msgs/s: median over rounds; ratio: median of the per-round ratios to smtp-source"
echo "(each round's runs are seconds apart, so a noisy neighbour hits both)."
printf '%-7s %-26s %9s %7s   %s\n' scenario tool "msgs/s" ratio "runs (msgs/s)"
ratios() { # per-round ratio of $1[] to $2[], both passed as strings
    local -a a=($1) b=($2)
    for i in "${!a[@]}"; do echo "${a[$i]} / ${b[$i]}" | bc -l; done
}
median_f() { sort -g | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}'; }
for scenario in kept churn; do
    if [ "$scenario" = kept ]; then n=$MSGS; sflag=-d; per=0; else n=$CHURN_MSGS; sflag=""; per=1; fi
    src=(); auto=(); off=()
    for _ in $(seq "$ROUNDS"); do
        src+=("$(run_source "$n" "$sflag")")
        auto+=("$(run_loadgen "$n" auto "$per")")
        off+=("$(run_loadgen "$n" off "$per")")
    done
    list() { printf '%.0f ' "$@"; }
    printf '%-7s %-26s %9s %7s   %s\n' "$scenario" "smtp-source" \
        "$(printf '%s\n' "${src[@]}" | median)" "1.00" "$(list "${src[@]}")"
    printf '%-7s %-26s %9s %7s   %s\n' "$scenario" "loadgen --pipelining off" \
        "$(printf '%s\n' "${off[@]}" | median)" \
        "$(ratios "${off[*]}" "${src[*]}" | median_f)" "$(list "${off[@]}")"
    printf '%-7s %-26s %9s %7s   %s\n' "$scenario" "loadgen (auto: pipelined)" \
        "$(printf '%s\n' "${auto[@]}" | median)" \
        "$(ratios "${auto[*]}" "${src[*]}" | median_f)" "$(list "${auto[@]}")"
done
