#!/usr/bin/env bash
# A private, durable Postfix instance as a benchmark anchor.
#
#   postfix.sh start PORT WORKDIR   install postfix if missing, write a private
#                                   config under WORKDIR, start it on 127.0.0.1:PORT
#                                   and wait for its 220 greeting
#   postfix.sh stop WORKDIR         stop it and wait until its port is free
#   postfix.sh count WORKDIR        print the number of messages in its hold queue
#   postfix.sh check WORKDIR        exit 0 if it answers 220 on its port
#
# TLS (environment, read by `start`): POSTFIX_TLS_CERT=PEM POSTFIX_TLS_KEY=PEM
# offer STARTTLS (smtpd_tls_security_level = may); add POSTFIX_TLS_WRAPPER=1
# for implicit TLS on the port instead (smtpd_tls_wrappermode, port 465 style).
# POSTFIX_EXTRA_MAIN_CF="lines" is appended to main.cf last (later lines win).
#
# Every accepted message is fsync'ed into WORKDIR/queue by cleanup(8) before
# smtpd answers "250 2.0.0 Ok: queued as ...", and is put on HOLD, so nothing
# is ever delivered. The system instance (/etc/postfix, /var/spool/postfix,
# port 25) is neither used nor touched. To pin it, run `start` under taskset:
# master and every daemon it spawns inherit the affinity.
# See README.md beside this file.
set -euo pipefail
ANCHOR=postfix
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# smtpd processes (= concurrent SMTP sessions) this instance may run.
PROCESS_LIMIT=${POSTFIX_PROCESS_LIMIT:-300}
TLS_CERT=${POSTFIX_TLS_CERT:-}
TLS_KEY=${POSTFIX_TLS_KEY:-}
TLS_WRAPPER=${POSTFIX_TLS_WRAPPER:-}
# Lines appended to main.cf after everything above (later lines win), e.g.
# SASL for a submission benchmark (tuning/auth.sh).
EXTRA_MAIN_CF=${POSTFIX_EXTRA_MAIN_CF:-}

usage() {
    echo "usage: $0 start PORT WORKDIR | stop WORKDIR | count WORKDIR | check WORKDIR" >&2
    exit 2
}

master_pid() { # WORKDIR -> pid of a live master, or nothing
    local f=$1/data/master.pid pid
    [ -f "$f" ] || f=$1/queue/pid/master.pid
    [ -f "$f" ] || return 0
    pid=$(tr -dc 0-9 <"$f")
    if pid_alive "$pid"; then echo "$pid"; fi
}

# Processes of this instance: every Postfix daemon is started by master with
# MAIL_CONFIG=<our config directory> in its environment.
instance_pids() { # WORKDIR
    local conf=$1/conf p
    for p in /proc/[0-9]*; do
        { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "MAIL_CONFIG=$conf" && echo "${p#/proc/}"
    done
    true
}

write_config() { # PORT WORKDIR
    local port=$1 w=$2
    mkdir -p "$w/conf" "$w/queue" "$w/data"
    cat >"$w/conf/main.cf" <<EOF
# Private Postfix instance written by tuning/anchors/postfix.sh; rewritten on
# every start. See tuning/anchors/README.md for why each line is here.
compatibility_level = 3.6
queue_directory = $w/queue
data_directory = $w/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = $w/postfix.log
maillog_file_prefixes = $w
readme_directory = no

myhostname = postfix-anchor.ringmx.test
mydomain = ringmx.test
myorigin = \$myhostname
smtpd_banner = \$myhostname ESMTP Postfix (ringmx anchor)
inet_interfaces = 127.0.0.1
inet_protocols = ipv4

# Accept every recipient from loopback (example.com explicitly, anything else
# as a relay for mynetworks); deliver nothing locally.
mynetworks_style = host
mynetworks = 127.0.0.0/8
mydestination =
relay_domains = example.com
relay_recipient_maps =
local_recipient_maps =
alias_maps =
alias_database =
fast_flush_domains =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
# Every message goes to the hold queue: one static lookup per message, at DATA.
smtpd_data_restrictions = check_client_access static:HOLD
# Should a held message ever be released, it is discarded, never delivered.
default_transport = discard:ringmx anchor
relay_transport = discard:ringmx anchor
local_transport = discard:ringmx anchor

# No DNS, no reverse lookups of the client.
smtpd_peername_lookup = no
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native

# Concurrency: one smtpd process per session.
default_process_limit = $PROCESS_LIMIT
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
# Nothing is ever delivered, so the arrival/delivery flow control would only
# stall cleanup for 1s per message once its tokens run out.
in_flow_delay = 0
queue_minfree = 0
biff = no
append_dot_mydomain = no
EOF
    if [ -n "$EXTRA_MAIN_CF" ]; then
        printf '\n# POSTFIX_EXTRA_MAIN_CF\n%s\n' "$EXTRA_MAIN_CF" >>"$w/conf/main.cf.extra"
    fi
    local smtpd_opts=
    if [ -n "$TLS_CERT" ]; then
        # Read by smtpd as root before it drops privileges. No session cache
        # (loadgen does full handshakes unless --tls-resume); TLS 1.3 tickets
        # stay Postfix's default.
        cat >>"$w/conf/main.cf" <<EOF

# TLS: POSTFIX_TLS_CERT / POSTFIX_TLS_KEY given.
smtpd_tls_chain_files = $TLS_KEY, $TLS_CERT
smtpd_tls_security_level = may
smtpd_tls_loglevel = 0
smtpd_tls_received_header = yes
EOF
        if [ -n "$TLS_WRAPPER" ]; then
            smtpd_opts=" -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt"
        fi
    fi
    cat >"$w/conf/master.cf" <<EOF
# Private Postfix instance written by tuning/anchors/postfix.sh. No chroot,
# no postscreen, no pickup/local delivery; smtpd on 127.0.0.1:$port only.
# service               type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:$port         inet  n       -       n       -       $PROCESS_LIMIT     smtpd$smtpd_opts
cleanup                 unix  n       -       n       -       0       cleanup
qmgr                    unix  n       -       n       300     1       qmgr
rewrite                 unix  -       -       n       -       -       trivial-rewrite
bounce                  unix  -       -       n       -       0       bounce
defer                   unix  -       -       n       -       0       bounce
trace                   unix  -       -       n       -       0       bounce
verify                  unix  -       -       n       -       1       verify
flush                   unix  n       -       n       1000?   0       flush
proxymap                unix  -       -       n       -       -       proxymap
showq                   unix  n       -       n       -       -       showq
error                   unix  -       -       n       -       -       error
retry                   unix  -       -       n       -       -       error
discard                 unix  -       -       n       -       -       discard
anvil                   unix  -       -       n       -       1       anvil
scache                  unix  -       -       n       -       1       scache
postlog                 unix-dgram n  -       n       -       1       postlogd
EOF
    if [ -n "$TLS_CERT" ]; then
        # smtpd disables TLS without tlsmgr ("no entropy for TLS key generation").
        echo "tlsmgr                  unix  -       -       n       1000?   1       tlsmgr" >>"$w/conf/master.cf"
    fi
    if [ -f "$w/conf/main.cf.extra" ]; then
        cat "$w/conf/main.cf.extra" >>"$w/conf/main.cf"
        rm -f "$w/conf/main.cf.extra"
    fi
    echo "$port" >"$w/port"
}

# Ready when it greets; in wrapper mode the greeting is inside TLS, so then
# when it listens (master has bound the port; smtpd starts on the first connect).
wait_ready() { # PORT SECONDS
    if [ -n "$TLS_CERT" ] && [ -n "$TLS_WRAPPER" ]; then
        local deadline=$((SECONDS + $2))
        while [ "$SECONDS" -lt "$deadline" ]; do
            port_listening "$1" && return 0
            sleep 0.1
        done
        return 1
    fi
    wait_banner "$@"
}

cmd_start() { # PORT WORKDIR
    [ $# -eq 2 ] || usage
    need_port "$1"
    local port=$1 w
    w=$(abs_workdir "$2")
    [ "$(id -u)" = 0 ] || die "must run as root (postfix master runs as root)"
    [ -z "$(master_pid "$w")" ] || die "already running in $w (pid $(master_pid "$w")); stop it first"
    port_listening "$port" && die "port $port is already in use"
    ensure_postfix
    id postfix >/dev/null 2>&1 || die "user 'postfix' missing (broken postfix package install?)"

    # master and the daemons open files under WORKDIR as the postfix user, so
    # every directory on the way there must be searchable (o+x) by it.
    chmod go+x "$w"
    if ! runuser -u postfix -- test -x "$w" 2>/dev/null; then
        local d=$w bad=
        while [ "$d" != / ]; do
            d=$(dirname "$d")
            runuser -u postfix -- test -x "$d" 2>/dev/null || bad=$d
        done
        die "the postfix user cannot reach $w: $bad is not searchable by others (chmod o+x $bad, e.g. chmod 711 on a mktemp -d folder)"
    fi
    write_config "$port" "$w"
    local pf=(postfix -c "$w/conf")
    # Create the queue and data directories with the ownership Postfix wants.
    "${pf[@]}" set-permissions >"$w/start.log" 2>&1 ||
        { cat "$w/start.log" >&2; tail -n 5 "$w/postfix.log" >&2 2>/dev/null || true; die "postfix set-permissions failed"; }
    "${pf[@]}" check >>"$w/start.log" 2>&1 ||
        { cat "$w/start.log" >&2; tail -n 5 "$w/postfix.log" >&2 2>/dev/null || true; die "postfix check failed"; }
    (ulimit -n 65536 2>/dev/null || true; exec "${pf[@]}" start) >>"$w/start.log" 2>&1 ||
        { cat "$w/start.log" >&2; tail -n 20 "$w/postfix.log" >&2 2>/dev/null || true; do_stop "$w" || true; die "postfix start failed"; }
    if ! wait_ready "$port" 30; then
        tail -n 20 "$w/postfix.log" >&2 2>/dev/null || true
        do_stop "$w" || true
        die "no 220 greeting on 127.0.0.1:$port within 30s"
    fi
    note "running on 127.0.0.1:$port (master pid $(master_pid "$w"), queue $w/queue, log $w/postfix.log)"
}

do_stop() { # WORKDIR
    local w=$1 port pid left
    port=$(cat "$w/port" 2>/dev/null || true)
    pid=$(master_pid "$w")
    if [ -n "$pid" ]; then
        postfix -c "$w/conf" stop >>"$w/stop.log" 2>&1 || true
        if ! wait_pid_gone "$pid" 20; then
            note "master $pid still there after 'postfix stop': aborting"
            postfix -c "$w/conf" abort >>"$w/stop.log" 2>&1 || kill -9 "$pid" 2>/dev/null || true
            wait_pid_gone "$pid" 5 || kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    # Daemons finishing a session outlive master for a moment; make sure none stays.
    local deadline=$((SECONDS + 10))
    while left=$(instance_pids "$w") && [ -n "$left" ] && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.2
    done
    if [ -n "$left" ]; then
        # shellcheck disable=SC2086
        kill -9 $left 2>/dev/null || true
    fi
    if [ -n "$port" ] && ! wait_port_free "$port" 10; then
        die "port $port still in use after stop"
    fi
}

cmd_stop() { # WORKDIR
    [ $# -eq 1 ] || usage
    [ -d "$1" ] || die 2 "no such WORKDIR: $1"
    local w
    w=$(abs_workdir "$1")
    [ -f "$w/conf/main.cf" ] || die 2 "$w holds no postfix anchor (no conf/main.cf)"
    do_stop "$w"
    note "stopped ($w)"
}

cmd_count() { # WORKDIR
    [ $# -eq 1 ] || usage
    [ -d "$1/queue" ] || die 2 "no queue under $1"
    # hold/ is not hashed (hash_queue_names = deferred, defer): one file per message.
    find "$1/queue/hold" -type f 2>/dev/null | wc -l
}

cmd_check() { # WORKDIR
    [ $# -eq 1 ] || usage
    check_running "$1" "$(master_pid "$1")" master
}

case ${1:-} in
start) shift; cmd_start "$@" ;;
stop) shift; cmd_stop "$@" ;;
count) shift; cmd_count "$@" ;;
check) shift; cmd_check "$@" ;;
*) usage ;;
esac
