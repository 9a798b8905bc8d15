# Shared helpers for the anchor scripts; sourced, never run.
# Every function that fails prints one line starting with "$ANCHOR:" on stderr.

ANCHOR=${ANCHOR:-anchor}

die() { # [status] message...
    local status=1
    case ${1:-} in '' | *[!0-9]*) ;; *) status=$1; shift ;; esac
    echo "$ANCHOR: error: $*" >&2
    exit "$status"
}

note() { echo "$ANCHOR: $*" >&2; }

need_port() { # PORT
    case ${1:-} in
    '' | *[!0-9]*) die 2 "PORT must be a number, got '${1:-}'" ;;
    esac
    if [ "$1" -lt 1 ] || [ "$1" -gt 65535 ]; then die 2 "PORT out of range: $1"; fi
}

# Absolute path of WORKDIR, created if missing.
abs_workdir() { # WORKDIR
    [ -n "${1:-}" ] || die 2 "WORKDIR missing"
    mkdir -p "$1" || die "cannot create WORKDIR $1"
    (cd "$1" && pwd -P)
}

# True while something accepts TCP connections on 127.0.0.1:PORT.
port_open() { # PORT
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True while any socket (listening or not yet reaped) is bound to 127.0.0.1:PORT
# or *:PORT as a listener.
port_listening() { # PORT
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

# Waits until 127.0.0.1:PORT answers with an SMTP "220" greeting.
wait_banner() { # PORT SECONDS
    local port=$1 deadline=$((SECONDS + $2)) line
    while [ "$SECONDS" -lt "$deadline" ]; do
        if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
            line=
            IFS= read -r -t 5 line <&3 || true
            printf 'QUIT\r\n' >&3 2>/dev/null || true
            exec 3<&- 3>&-
            case $line in 220*) return 0 ;; esac
        fi
        sleep 0.1
    done
    return 1
}

# Waits until nothing listens on PORT any more.
wait_port_free() { # PORT SECONDS
    local port=$1 deadline=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$deadline" ]; do
        port_listening "$port" || return 0
        sleep 0.1
    done
    return 1
}

pid_alive() { # PID
    [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null
}

# Waits for PID to exit.
wait_pid_gone() { # PID SECONDS
    local pid=$1 deadline=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$deadline" ]; do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    return 1
}

# Stops a single-process anchor: TERM, then KILL if it lingers; removes its
# pid file and waits until its port (WORKDIR/port) is free.
stop_single() { # WORKDIR PID PIDFILE
    local w=$1 pid=$2 pidfile=$3 port
    port=$(cat "$w/port" 2>/dev/null || true)
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait_pid_gone "$pid" 10 || kill -9 "$pid" 2>/dev/null || true
        wait_pid_gone "$pid" 5 || die "pid $pid would not die"
    fi
    rm -f "$pidfile"
    if [ -n "$port" ] && ! wait_port_free "$port" 10; then
        die "port $port still in use after stop"
    fi
    note "stopped ($w)"
}

# `check`: the anchor's process (PID, empty if none) runs and greets on its port.
check_running() { # WORKDIR PID WHAT
    local port
    port=$(cat "$1/port" 2>/dev/null) || die 2 "no port file under $1"
    [ -n "$2" ] || die "$3 not running"
    wait_banner "$port" 5 || die "no 220 greeting on 127.0.0.1:$port"
}

# Installs Debian packages if COMMAND is missing; runs `apt-get update` once.
ensure_apt() { # COMMAND PACKAGE...
    local cmd=$1
    shift
    if command -v "$cmd" >/dev/null 2>&1 || [ -x "$cmd" ]; then return 0; fi
    note "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
        apt-get update -qq >&2 || die "apt-get update failed"
    fi
    apt-get install -y -qq --no-install-recommends "$@" >&2 ||
        { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "$@" >&2; } ||
        die "apt-get install $* failed"
    command -v "$cmd" >/dev/null 2>&1 || [ -x "$cmd" ] || die "$cmd still missing after installing $*"
}

# Installs the postfix package without letting its postinst configure or start
# the system instance (debconf "No configuration"), unless it is already there.
ensure_postfix() {
    if [ -x /usr/sbin/postfix ] && [ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/smtp-source ]; then
        return 0
    fi
    if command -v debconf-set-selections >/dev/null 2>&1; then
        echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
    fi
    ensure_apt /usr/sbin/postfix postfix
}
