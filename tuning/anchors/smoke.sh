#!/usr/bin/env bash
# Smoke test of the anchors: starts each on a free loopback port, sends it
# MSGS messages with Postfix's smtp-source, checks that every one was counted
# (Postfix: held in its queue; smtp-sink: its -c counter; Haraka: discarded,
# from its info log), stops it and checks the port is free again.
# Haraka that cannot be installed or started (status 3) is reported as SKIP.
#
#   tuning/anchors/smoke.sh                    (root; installs what is missing)
#   RATE_MSGS=4000 RATE_SESSIONS=16 tuning/anchors/smoke.sh
#       also sends RATE_MSGS more messages per anchor, one connection each,
#       and prints msgs/s: indicative only (one run, no median)
#   RATE_REUSE=1   ... with smtp-source -d: sessions keep their connection
#   SERVER_CPU=0 CLIENT_CPU=1   taskset pinning of the anchors and smtp-source
#   ANCHORS="postfix smtp-sink haraka"   which anchors to run
# Ends with "N passed, N failed, N skipped"; exits 1 if any failed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ANCHOR=smoke
. "$HERE/lib.sh"

MSGS=${MSGS:-20}
RATE_MSGS=${RATE_MSGS:-0}
RATE_SESSIONS=${RATE_SESSIONS:-16}
RATE_REUSE=${RATE_REUSE:-0}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
ANCHORS=${ANCHORS:-postfix smtp-sink haraka}

ensure_postfix
SMTP_SOURCE=/usr/sbin/smtp-source
ulimit -n 65536 2>/dev/null || true

root=$(mktemp -d "${TMPDIR:-/tmp}/ringmx-anchors-smoke.XXXXXX")
chmod 711 "$root" # the postfix user must reach $root/postfix
running=() # "anchor workdir" pairs still to stop
cleanup() {
    local entry
    for entry in ${running[@]+"${running[@]}"}; do
        [ -n "$entry" ] || continue
        "$HERE/${entry%% *}.sh" stop "${entry#* }" >/dev/null 2>&1 || true
    done
    rm -rf "$root"
}
trap cleanup EXIT

# A port nothing listens on: ask the kernel for an ephemeral one, else probe.
free_port() {
    local port
    if port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null) &&
        ! port_listening "$port"; then
        echo "$port"
        return
    fi
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 30000))
        port_listening "$port" || { echo "$port"; return; }
    done
    die "no free port found"
}

# smtp-source with MSGS messages, SESSIONS parallel sessions; prints msgs/s.
send() { # PORT MSGS SESSIONS [-d]
    local t0 t1
    t0=$(date +%s%N)
    taskset -c "$CLIENT_CPU" "$SMTP_SOURCE" ${4:+"$4"} -s "$3" -m "$2" -l 1024 \
        -f a@client.example -t user@example.com "127.0.0.1:$1" || return 1
    t1=$(date +%s%N)
    awk -v n="$2" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.0f\n", n / ((t1 - t0) / 1e9) }'
}

pass=0 fail=0 skip=0
results=()
report() { # STATUS ANCHOR DETAIL
    results+=("$(printf '%-5s %-10s %s' "$1" "$2" "$3")")
    case $1 in PASS) pass=$((pass + 1)) ;; FAIL) fail=$((fail + 1)) ;; SKIP) skip=$((skip + 1)) ;; esac
    echo "smoke: $1 $2: $3" >&2
}

# Runs one anchor through start, send, count, stop. Fails fast inside a
# subshell-free function by returning a message on stdout and status 1.
smoke_one() { # ANCHOR
    local a=$1 w port rc=0 got rate='' env=()
    w="$root/$a"
    mkdir -p "$w"
    port=$(free_port)
    case $a in
    smtp-sink) env=(SINK_COUNT=1) ;;
    haraka) env=(HARAKA_LOGLEVEL=info) ;;
    esac
    env "${env[@]+"${env[@]}"}" taskset -c "$SERVER_CPU" "$HERE/$a.sh" start "$port" "$w" || rc=$?
    if [ "$rc" = 3 ]; then
        report SKIP "$a" "unavailable (start exited 3)"
        return 0
    elif [ "$rc" != 0 ]; then
        report FAIL "$a" "start exited $rc"
        return 0
    fi
    running+=("$a $w")
    if ! "$HERE/$a.sh" check "$w"; then
        report FAIL "$a" "check failed after start"
        return 0
    fi
    if ! send "$port" "$MSGS" 4 >/dev/null; then
        report FAIL "$a" "smtp-source failed"
        return 0
    fi
    got=$("$HERE/$a.sh" count "$w") || { report FAIL "$a" "count failed"; return 0; }
    if [ "$got" != "$MSGS" ]; then
        report FAIL "$a" "sent $MSGS, counted $got"
        return 0
    fi
    if [ "$RATE_MSGS" -gt 0 ]; then
        local reuse='' per='1 msg/connection'
        if [ "$RATE_REUSE" = 1 ]; then reuse=-d per='connections kept'; fi
        rate=$(send "$port" "$RATE_MSGS" "$RATE_SESSIONS" "$reuse") || { report FAIL "$a" "smtp-source ($RATE_MSGS msgs) failed"; return 0; }
        got=$("$HERE/$a.sh" count "$w")
        [ "$got" = $((MSGS + RATE_MSGS)) ] ||
            { report FAIL "$a" "sent $((MSGS + RATE_MSGS)), counted $got"; return 0; }
        rate=", $rate msgs/s over $RATE_MSGS msgs x $RATE_SESSIONS sessions ($per, server CPU $SERVER_CPU, client CPU $CLIENT_CPU)"
    fi
    if ! "$HERE/$a.sh" stop "$w"; then
        report FAIL "$a" "stop failed"
        return 0
    fi
    running=("${running[@]/"$a $w"/}")
    if port_listening "$port"; then
        report FAIL "$a" "port $port still listening after stop"
        return 0
    fi
    report PASS "$a" "$MSGS sent, $got counted$rate"
}

for a in $ANCHORS; do
    [ -x "$HERE/$a.sh" ] || die 2 "no anchor script $HERE/$a.sh"
    smoke_one "$a"
done

printf '%s\n' "${results[@]}"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
