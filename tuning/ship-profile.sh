#!/usr/bin/env bash
# Instructions and syscalls per shipped message (issue 14): spools of $N1
# and $N2 messages of $SIZE are filled through the real server (loadgen,
# durability none), then each is drained by `ringmx ship` to a maildir
# under valgrind --tool=callgrind and again under strace -c -f. Per
# message: (figure at $N2 - figure at $N1) / ($N2 - $N1), which cancels
# start-up and the exit. callgrind files stay in $OUT for callgrind_annotate.
#
#   cargo build --release -p ringmx -p loadgen && tuning/ship-profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-5000}
N2=${N2:-10000}
SIZE=${SIZE:-1k}
BIN=${BIN:-target/release}
OUT=${OUT:-$(mktemp -d /tmp/ship-profile.XXXXXX)}
RINGMX=$BIN/ringmx
[ -x "$RINGMX" ] && [ -x "$BIN/loadgen" ] || { echo "build first: cargo build --release -p ringmx -p loadgen" >&2; exit 1; }
for t in valgrind strace; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 1; }; done
base=${WORK:-$([ -d /dev/shm ] && echo /dev/shm || echo /tmp)}
work=$(mktemp -d "$base/ship-profile.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$OUT"

fill() { # spool messages
    local log="$work/fill.log" addr=""
    "$RINGMX" serve --listen 127.0.0.1:0 --cores 2 --domain example.com --node-id bench \
        --spool "$1" --durability none --log-level info 2>"$log" >/dev/null &
    local srv=$!
    for _ in $(seq 300); do
        addr=$(grep -o 'listening on [0-9.:]*' "$log" 2>/dev/null | awk '{print $3}') && [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "ringmx did not start: $(cat "$log")" >&2; exit 1; }
    "$BIN/loadgen" run --target "$addr" -q -c 16 --size "$SIZE" --messages "$2" >/dev/null
    kill -TERM "$srv"; wait "$srv" || true
}

ship() { # n wrapper... : drains a fresh copy of spool n to a fresh maildir
    local n=$1; shift
    rm -rf "$work/w" "$work/md"; cp -a "$work/s$n" "$work/w"
    "$@" "$RINGMX" ship --spool "$work/w" --name x --progress 0 --to "maildir:$work/md" >/dev/null 2>&1
    local got; got=$(find "$work/md/new" -type f | wc -l)
    [ "$got" = "$n" ] || { echo "shipped $got of $n" >&2; exit 1; }
}

declare -A ir sc
for n in "$N1" "$N2"; do
    fill "$work/s$n" "$n"
    ship "$n" valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$n.out"
    ir[$n]=$(awk '/^summary:/ {print $2}' "$OUT/callgrind.$n.out")
    ship "$n" strace -c -f -o "$OUT/strace.$n.txt"
    sc[$n]=$(awk 'NR > 2 && $1 != "------" && $NF != "total" {s += $4} END {print s}' "$OUT/strace.$n.txt")
    echo "$n messages: $(printf "%'d" "${ir[$n]}") instructions, ${sc[$n]} syscalls"
done
d=$((N2 - N1))
python3 -c "print('per message: %.0f instructions, %.2f syscalls' % ((${ir[$N2]} - ${ir[$N1]}) / $d, (${sc[$N2]} - ${sc[$N1]}) / $d))"
echo "callgrind_annotate $OUT/callgrind.$N2.out   # where they go"
