#!/usr/bin/env bash
# Haraka (Node.js SMTP server, from npm) as a benchmark anchor.
#
#   haraka.sh start PORT WORKDIR   install Haraka if missing, write a config
#                                  under WORKDIR/haraka, start one Haraka process
#                                  on 127.0.0.1:PORT, wait for its 220 greeting
#   haraka.sh stop WORKDIR         stop it and wait until its port is free
#   haraka.sh check WORKDIR        exit 0 if it answers 220 on its port
#   haraka.sh count WORKDIR        messages discarded so far, read from its log;
#                                  only when started with HARAKA_LOGLEVEL=info
#                                  (or more verbose), else exit 4
#   haraka.sh install              only install (into HARAKA_PREFIX)
#
# Exit status 3 means "unavailable": node/npm missing, the install failed or
# Haraka would not start. A comparison driver should skip this anchor then.
#
# NOT DURABLE: Haraka has no durable inbound queue of its own; every message
# goes through its full SMTP/message parsing and plugin hooks, and the
# queue/discard plugin then answers 250 and drops it. It is an anchor like
# smtp-sink (no disk), but with a real server's protocol handling.
#
# Environment:
#   HARAKA_PREFIX   where Haraka is installed (default: a per-lockfile folder
#                   under ${XDG_CACHE_HOME:-$HOME/.cache}/ringmx-anchors); the
#                   versions are pinned by haraka/package-lock.json beside this
#   HARAKA_DOMAINS  recipient domains accepted (default: example.com)
#   HARAKA_LOGLEVEL Haraka log level (default: warn)
# To pin it, run `start` under taskset: the node process inherits the affinity.
set -euo pipefail
ANCHOR=haraka
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
. "$HERE/lib.sh"

UNAVAILABLE=3
LOCK=$HERE/haraka/package-lock.json

usage() {
    echo "usage: $0 start PORT WORKDIR | stop WORKDIR | check WORKDIR | count WORKDIR | install" >&2
    exit 2
}

unavailable() { die "$UNAVAILABLE" "unavailable: $*"; }

prefix() {
    if [ -n "${HARAKA_PREFIX:-}" ]; then
        echo "$HARAKA_PREFIX"
    else
        local key
        key=$(cat "$HERE/haraka/package.json" "$LOCK" | sha256sum | cut -c1-12)
        echo "${XDG_CACHE_HOME:-$HOME/.cache}/ringmx-anchors/haraka-$key"
    fi
}

# Installs the pinned Haraka into $(prefix) unless it is there already. The
# install goes to a staging folder first and is renamed into place only when
# complete, so an interrupted install is never taken for a finished one.
do_install() {
    local p stage
    p=$(prefix)
    if [ -x "$p/node_modules/.bin/haraka" ]; then echo "$p"; return 0; fi
    command -v node >/dev/null 2>&1 || unavailable "node is not installed"
    command -v npm >/dev/null 2>&1 || unavailable "npm is not installed"
    local major
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
    [ "$major" -ge 20 ] || unavailable "Haraka 3 needs node >= 20, found $(node --version 2>/dev/null || echo none)"
    mkdir -p "$(dirname "$p")" || unavailable "cannot create $(dirname "$p")"
    stage=$(mktemp -d "$p.stage.XXXXXX") || unavailable "cannot create a staging folder beside $p"
    cp "$HERE/haraka/package.json" "$LOCK" "$stage/"
    note "installing Haraka (npm ci, pinned by $LOCK) into $p"
    # Haraka's optional dependencies are plugins we do not load (some native).
    if ! (cd "$stage" && npm ci --omit=optional --no-audit --no-fund --loglevel=error) >"$stage.log" 2>&1; then
        tail -n 20 "$stage.log" >&2
        rm -rf "$stage"
        unavailable "npm ci failed (log: $stage.log)"
    fi
    [ -x "$stage/node_modules/.bin/haraka" ] || { rm -rf "$stage"; unavailable "npm ci left no haraka binary"; }
    if ! mv -T "$stage" "$p" 2>/dev/null; then
        # Another install won the race; use it.
        rm -rf "$stage"
        [ -x "$p/node_modules/.bin/haraka" ] || unavailable "could not move the install into $p"
    fi
    rm -f "$stage.log"
    echo "$p"
}

haraka_pid() { # WORKDIR -> pid of a live Haraka started there, or nothing
    local pid
    pid=$(cat "$1/haraka.pid" 2>/dev/null || true)
    if pid_alive "$pid" && grep -q haraka "/proc/$pid/cmdline" 2>/dev/null; then echo "$pid"; fi
}

write_config() { # PORT WORKDIR/haraka PREFIX
    local port=$1 d=$2 p=$3 dom
    mkdir -p "$d"
    # Haraka's own templates first (connection.ini etc.; existing files are
    # kept), then ours on top.
    "$p/node_modules/.bin/haraka" -i "$d" >"$d.init.log" 2>&1 ||
        { cat "$d.init.log" >&2; unavailable "haraka -i $d failed"; }
    mkdir -p "$d/config" "$d/plugins" "$d/queue"
    echo "haraka-anchor.ringmx.test" >"$d/config/me"
    : >"$d/config/host_list"
    for dom in ${HARAKA_DOMAINS:-example.com}; do echo "$dom" >>"$d/config/host_list"; done
    cat >"$d/config/smtp.ini" <<EOF
; Written by tuning/anchors/haraka.sh; rewritten on every start.
listen=127.0.0.1:$port
; 0 = no cluster: one node process serves everything, so taskset pins it.
nodes=0
inactivity_timeout=300
force_shutdown_timeout=5
EOF
    cat >"$d/config/plugins" <<EOF
# Written by tuning/anchors/haraka.sh: answer the reverse-DNS hook locally,
# accept recipients in host_list only, then discard the message at the queue
# hook (answers 250).
anchor_no_rdns
rcpt_to.in_host_list
queue/discard
EOF
    # Haraka's core resolves every client's address with dns.reverse(), which
    # asks the nameserver in /etc/resolv.conf: one query per connection leaving
    # the machine. This plugin answers the lookup_rdns hook itself instead.
    cat >"$d/plugins/anchor_no_rdns.js" <<'EOF'
// Written by tuning/anchors/haraka.sh: no reverse DNS query per connection.
exports.register = function () {
    this.register_hook('lookup_rdns', 'no_rdns')
}
exports.no_rdns = (next, connection) => {
    next(OK, connection.remote.ip === '127.0.0.1' ? 'localhost' : 'unknown')
}
EOF
    cat >"$d/config/log.ini" <<EOF
[main]
level=${HARAKA_LOGLEVEL:-warn}
timestamps=true
format=default
EOF
}

cmd_start() { # PORT WORKDIR
    [ $# -eq 2 ] || usage
    need_port "$1"
    local port=$1 w p pid
    w=$(abs_workdir "$2")
    [ -z "$(haraka_pid "$w")" ] || die "already running in $w (pid $(haraka_pid "$w")); stop it first"
    port_listening "$port" && die "port $port is already in use"
    p=$(do_install)
    write_config "$port" "$w/haraka" "$p"
    echo "$port" >"$w/port"
    ulimit -n 65536 2>/dev/null || true
    YES_REALLY_DO_DISCARD=1 "$p/node_modules/.bin/haraka" -c "$w/haraka" \
        </dev/null >"$w/haraka.log" 2>&1 &
    pid=$!
    echo "$pid" >"$w/haraka.pid"
    if ! wait_banner "$port" 60; then
        tail -n 30 "$w/haraka.log" >&2 || true
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$w/haraka.pid"
        unavailable "no 220 greeting on 127.0.0.1:$port within 60s (log: $w/haraka.log)"
    fi
    note "running on 127.0.0.1:$port (pid $pid, config $w/haraka, log $w/haraka.log; messages are discarded)"
}

cmd_stop() { # WORKDIR
    [ $# -eq 1 ] || usage
    [ -d "$1" ] || die 2 "no such WORKDIR: $1"
    stop_single "$1" "$(haraka_pid "$1")" "$1/haraka.pid"
}

cmd_count() { # WORKDIR
    [ $# -eq 1 ] || usage
    local level
    level=$(sed -n 's/^level=//p' "$1/haraka/config/log.ini" 2>/dev/null) || true
    [ -n "$level" ] || die 2 "no haraka anchor in $1"
    case $level in
    data | protocol | debug | info) ;;
    *) die 4 "not countable: start it with HARAKA_LOGLEVEL=info (it runs at level=$level)" ;;
    esac
    # queue/discard logs one "discarding message" line per message at info.
    grep -c 'discarding message' "$1/haraka.log" || true
}

cmd_check() { # WORKDIR
    [ $# -eq 1 ] || usage
    check_running "$1" "$(haraka_pid "$1")" haraka
}

case ${1:-} in
start) shift; cmd_start "$@" ;;
stop) shift; cmd_stop "$@" ;;
check) shift; cmd_check "$@" ;;
count) shift; cmd_count "$@" ;;
install) shift; [ $# -eq 0 ] || usage; do_install >/dev/null ;;
*) usage ;;
esac
