#!/usr/bin/env bash
# Postfix's smtp-sink as a benchmark anchor: it speaks just enough SMTP,
# answers 250 to everything and throws every message away. No disk at all:
# the upper bound for any server that keeps what it accepts.
#
#   smtp-sink.sh start PORT WORKDIR   install postfix (which ships smtp-sink) if
#                                     missing, start smtp-sink on 127.0.0.1:PORT,
#                                     wait for its 220 greeting
#   smtp-sink.sh stop WORKDIR         stop it and wait until its port is free
#   smtp-sink.sh count WORKDIR        messages received ("." seen); only when
#                                     started with SINK_COUNT=1, else exit 4
#   smtp-sink.sh check WORKDIR        exit 0 if it answers 220 on its port
#
# Environment for start:
#   SINK_MAXCONN  simultaneous connections it serves (-m; default 1024: its own
#                 default, 256, would queue the 257th session in the kernel)
#   SINK_BACKLOG  listen backlog (default 1024; the kernel caps it at somaxconn)
#   SINK_COUNT=1  run with -c: one counter line written per message, so
#                 `count` works (costs one write(2) per message; off by default)
# To pin it, run `start` under taskset; the sink inherits the affinity.
set -euo pipefail
ANCHOR=smtp-sink
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SINK=/usr/sbin/smtp-sink

usage() {
    echo "usage: $0 start PORT WORKDIR | stop WORKDIR | count WORKDIR | check WORKDIR" >&2
    exit 2
}

sink_pid() { # WORKDIR -> pid of a live sink started there, or nothing
    local pid
    pid=$(cat "$1/smtp-sink.pid" 2>/dev/null || true)
    if pid_alive "$pid" && grep -q smtp-sink "/proc/$pid/cmdline" 2>/dev/null; then echo "$pid"; fi
}

cmd_start() { # PORT WORKDIR
    [ $# -eq 2 ] || usage
    need_port "$1"
    local port=$1 w pid args
    w=$(abs_workdir "$2")
    [ -z "$(sink_pid "$w")" ] || die "already running in $w (pid $(sink_pid "$w")); stop it first"
    port_listening "$port" && die "port $port is already in use"
    ensure_postfix
    args=(-m "${SINK_MAXCONN:-1024}")
    if [ "${SINK_COUNT:-0}" = 1 ]; then args+=(-c); echo 1; else echo 0; fi >"$w/smtp-sink.counting"
    # As root it must drop privileges (-u) after binding.
    if [ "$(id -u)" = 0 ]; then args+=(-u nobody); fi
    echo "$port" >"$w/port"
    rm -f "$w/smtp-sink.count"
    ulimit -n 65536 2>/dev/null || true
    "$SINK" "${args[@]}" "127.0.0.1:$port" "${SINK_BACKLOG:-1024}" \
        </dev/null >"$w/smtp-sink.count" 2>"$w/smtp-sink.log" &
    pid=$!
    echo "$pid" >"$w/smtp-sink.pid"
    if ! wait_banner "$port" 10; then
        cat "$w/smtp-sink.log" >&2 || true
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$w/smtp-sink.pid"
        die "no 220 greeting on 127.0.0.1:$port within 10s"
    fi
    note "running on 127.0.0.1:$port (pid $pid: $SINK ${args[*]} 127.0.0.1:$port ${SINK_BACKLOG:-1024})"
}

cmd_stop() { # WORKDIR
    [ $# -eq 1 ] || usage
    [ -d "$1" ] || die 2 "no such WORKDIR: $1"
    stop_single "$1" "$(sink_pid "$1")" "$1/smtp-sink.pid"
}

cmd_count() { # WORKDIR
    [ $# -eq 1 ] || usage
    [ -f "$1/smtp-sink.counting" ] || die 2 "no smtp-sink anchor in $1"
    [ "$(cat "$1/smtp-sink.counting")" = 1 ] || die 4 "not countable: start it with SINK_COUNT=1"
    # -c writes "sess=N quit=N mesg=N" plus a carriage return after every event.
    local n
    n=$(tr '\r' '\n' <"$1/smtp-sink.count" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -n 1)
    echo "${n:-0}"
}

cmd_check() { # WORKDIR
    [ $# -eq 1 ] || usage
    check_running "$1" "$(sink_pid "$1")" smtp-sink
}

case ${1:-} in
start) shift; cmd_start "$@" ;;
stop) shift; cmd_stop "$@" ;;
count) shift; cmd_count "$@" ;;
check) shift; cmd_check "$@" ;;
*) usage ;;
esac
