#!/usr/bin/env bash
# loadgen vs Postfix's smtp-source, side by side against one smtp-sink.
#
# smtp-sink is pinned to CPU 0, each generator to CPU 1 (taskset), and the
# runs alternate within each round (smtp-source, then every loadgen binary
# with --pipelining auto and off; the loadgen order flips every round) so
# that drift on a shared machine hits every tool alike. msgs/s is messages
# divided by the whole process's wall-clock time, measured the same way for
# every tool (start-up included). Reported: the median msgs/s over ROUNDS
# rounds, and the median (and min..max spread) of the per-round ratios to
# smtp-source — and, with several LOADGENS, of each to the first. Beside it,
# the generator's own CPU time (user + sys, from /usr/bin/time) per message:
# on a shared machine it is far less noisy than wall-clock rates, and it says
# how much of its CPU each generator needs, whoever is the bottleneck.
#
# smtp-source does not pipeline (see its man page, BUGS), so "off"
# (--pipelining off) is the like-for-like row; "auto" is loadgen's default,
# which pipelines because smtp-sink advertises PIPELINING; "chain" is auto
# with --chain (each body shares its write with the next envelope). The modes'
# order also flips every round.
#
# Two scenarios: "kept" (one connection per session for all its messages:
# smtp-source -d, loadgen --msgs-per-conn 0) and "churn" (a new connection per
# message: smtp-source without -d, loadgen --msgs-per-conn 1).
#
# Usage: loadgen/scripts/vs-smtp-source.sh            (from the workspace root)
# Knobs (environment): CONNS=16 MSGS=32000 CHURN_MSGS=8000 LEN=1024 ROUNDS=5
#                      SCENARIOS="kept churn" MODES="chain auto off"
#                      PORT=<free port> LOADGEN=target/release/loadgen
#                      LOADGENS="name=path name2=path2" (A/B builds; default
#                      loadgen=$LOADGEN, built first unless LOADGEN_SKIP_BUILD)
# Needs: postfix (smtp-sink, smtp-source), util-linux (taskset), GNU time, bc, cargo.
set -euo pipefail
cd "$(dirname "$0")/../.."

CONNS=${CONNS:-16}
MSGS=${MSGS:-32000}
CHURN_MSGS=${CHURN_MSGS:-8000}
LEN=${LEN:-1024}
ROUNDS=${ROUNDS:-5}
SCENARIOS=${SCENARIOS:-kept churn}
MODES=${MODES:-chain auto off}
LOADGEN=${LOADGEN:-target/release/loadgen}
LOADGENS=${LOADGENS:-loadgen=$LOADGEN}
SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
SOURCE=$(command -v smtp-source || echo /usr/sbin/smtp-source)
# smtp-source -l LEN sends LEN payload bytes plus From/To/Date/Message-Id
# headers and CRLFs: 114 bytes more on the wire with a short host name
# (measured with smtp-sink -d). loadgen's --size counts the whole message.
SIZE=$((LEN + 114))

for tool in "$SINK" "$SOURCE" taskset bc /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install postfix util-linux bc time)" >&2; exit 1; }
done
if [ "$(nproc)" -lt 2 ]; then
    echo "needs 2 CPUs: smtp-sink on CPU 0, the generator on CPU 1" >&2
    exit 1
fi
if [ -z "${LOADGEN_SKIP_BUILD:-}" ] && [ "$LOADGENS" = "loadgen=$LOADGEN" ]; then
    cargo build --release -p loadgen >&2
fi
names=() paths=()
for spec in $LOADGENS; do
    names+=("${spec%%=*}")
    paths+=("${spec#*=}")
    [ -x "${spec#*=}" ] || { echo "${spec#*=} is not executable" >&2; exit 1; }
done

PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 25250)}
user=()
[ "$(id -u)" -eq 0 ] && user=(-u nobody)
taskset -c 0 "$SINK" "${user[@]}" "127.0.0.1:$PORT" 1000 &
sink_pid=$!
tmp=$(mktemp -d)
trap 'kill $sink_pid 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

now() { date +%s.%N; }
cpu=(/usr/bin/time -f '%U %S' -o "$tmp/cpu")
# "msgs/s cpu-us-per-msg" of a run of $1 messages from $2 to $3.
measured() {
    local user sys
    read -r user sys <"$tmp/cpu"
    echo "$(echo "$1 / ($3 - $2)" | bc -l) $(echo "($user + $sys) * 1000000 / $1" | bc -l)"
}

run_source() { # messages, extra flags
    local s e
    s=$(now)
    # shellcheck disable=SC2086 # $2 is an optional flag
    taskset -c 1 "${cpu[@]}" "$SOURCE" -s "$CONNS" -m "$1" -l "$LEN" $2 "127.0.0.1:$PORT"
    e=$(now)
    measured "$1" "$s" "$e"
}

run_loadgen() { # binary, messages, mode, msgs-per-conn
    local s e mode=(--pipelining "$3")
    [ "$3" = chain ] && mode=(--pipelining auto --chain)
    s=$(now)
    taskset -c 1 "${cpu[@]}" "$1" run --target "127.0.0.1:$PORT" --connections "$CONNS" \
        --messages "$2" --size "$SIZE" "${mode[@]}" --msgs-per-conn "$4" -q \
        | grep -q '^messages .*ok '"$2"' ' || echo "$1: not all $2 messages were accepted" >&2
    e=$(now)
    measured "$2" "$s" "$e"
}

# Per-round ratios a[i]/b[i] of two space-separated lists.
ratios() {
    local -a a=($1) b=($2)
    for i in "${!a[@]}"; do echo "${a[$i]} / ${b[$i]}" | bc -l; done
}
median() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.'"${1:-0}"'f", m}'; }
spread() { sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%.2f..%.2f", lo, hi}'; }
list() { printf '%.0f ' "$@"; }
list1() { printf '%.1f ' "$@"; }

echo "# $(date -u +%FT%TZ) $(uname -r), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# smtp-sink on CPU 0 (port $PORT); generators on CPU 1; $CONNS connections;"
echo "# smtp-source -l $LEN vs loadgen --size $SIZE; $ROUNDS rounds, runs alternating within each."
echo "# msgs/s: median over rounds; ratio: median of the per-round ratios (min..max);"
echo "# cpu: the generator's user+sys microseconds per message, median (and its ratio)."
printf '%-7s %-22s %9s %6s %11s %7s %6s %11s   %s\n' scenario tool "msgs/s" ratio spread \
    "cpu us" ratio spread "runs (msgs/s | cpu us)"
for scenario in $SCENARIOS; do
    if [ "$scenario" = kept ]; then n=$MSGS; sflag=-d; per=0; else n=$CHURN_MSGS; sflag=""; per=1; fi
    declare -A runs=() cpus=()
    src=() srccpu=()
    for round in $(seq "$ROUNDS"); do
        out=$(run_source "$n" "$sflag")
        src+=("${out% *}")
        srccpu+=("${out#* }")
        order=("${!names[@]}")
        if [ $((round % 2)) -eq 0 ]; then
            order=()
            for ((i = ${#names[@]} - 1; i >= 0; i--)); do order+=("$i"); done
        fi
        modes=($MODES)
        if [ $((round % 2)) -eq 0 ]; then
            modes=()
            for m in $MODES; do modes=("$m" "${modes[@]}"); done
        fi
        for mode in "${modes[@]}"; do
            for i in "${order[@]}"; do
                out=$(run_loadgen "${paths[$i]}" "$n" "$mode" "$per")
                runs[$i.$mode]+="${out% *} "
                cpus[$i.$mode]+="${out#* } "
            done
        done
    done
    printf '%-7s %-22s %9s %6s %11s %7s %6s %11s   %s\n' "$scenario" "smtp-source" \
        "$(printf '%s\n' "${src[@]}" | median)" "1.00" "" \
        "$(printf '%s\n' "${srccpu[@]}" | median 1)" "1.00" "" \
        "$(list "${src[@]}")| $(list1 "${srccpu[@]}")"
    for mode in $MODES; do
        for i in "${!names[@]}"; do
            r=(${runs[$i.$mode]})
            c=(${cpus[$i.$mode]})
            printf '%-7s %-22s %9s %6s %11s %7s %6s %11s   %s\n' "$scenario" "${names[$i]} $mode" \
                "$(printf '%s\n' "${r[@]}" | median)" \
                "$(ratios "${r[*]}" "${src[*]}" | median 2)" \
                "$(ratios "${r[*]}" "${src[*]}" | spread)" \
                "$(printf '%s\n' "${c[@]}" | median 1)" \
                "$(ratios "${c[*]}" "${srccpu[*]}" | median 2)" \
                "$(ratios "${c[*]}" "${srccpu[*]}" | spread)" "$(list "${r[@]}")| $(list1 "${c[@]}")"
        done
        for ((i = 1; i < ${#names[@]}; i++)); do
            printf '%-7s %-22s %9s %6s %11s %7s %6s %11s\n' "$scenario" "${names[$i]}/${names[0]} $mode" "" \
                "$(ratios "${runs[$i.$mode]}" "${runs[0.$mode]}" | median 2)" \
                "$(ratios "${runs[$i.$mode]}" "${runs[0.$mode]}" | spread)" "" \
                "$(ratios "${cpus[$i.$mode]}" "${cpus[0.$mode]}" | median 2)" \
                "$(ratios "${cpus[$i.$mode]}" "${cpus[0.$mode]}" | spread)"
        done
    done
    unset runs cpus
done
