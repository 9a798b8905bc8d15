#!/usr/bin/env bash
# Submission throughput with a new connection, STARTTLS and AUTH PLAIN per
# message (issue 11): ringmx --submission against Postfix submission with
# Dovecot SASL (smtpd_sasl_type = dovecot, passwd-file), the same users
# file and hashes for both. The hash check dominates: its cost is the knob
# (HASH=bcrypt with BCRYPT_COST, or HASH=argon2id with doveadm's default
# m=65536 t=3 p=1), and the script prints the CPU one check takes here.
#
#   cargo build --release && sudo tuning/auth.sh
#
# Needs root (Postfix's master, Dovecot), postfix, dovecot-core (doveadm,
# dovecot) and openssl. Server on CPU $SERVER_CPU (ringmx: one shard;
# Postfix and Dovecot: every process pinned there too), loadgen on CPU
# $CLIENT_CPU. 1 KiB messages to a foreign domain (relayed for the user),
# closed loop, $CONNS connections, one message each; durability none for
# ringmx and Postfix's hold queue as tuning/anchors/postfix.sh keeps it
# (so ringmx is spared its fsync and Postfix is not: the fsync is small
# next to a hash check; see the per-check CPU line). Runs alternate
# ringmx/postfix; prints each run and the medians. Knobs from the env.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-16}
HASH=${HASH:-bcrypt}
BCRYPT_COST=${BCRYPT_COST:-5}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
RINGMX=${RINGMX:-target/release/ringmx}
LOADGEN=target/release/loadgen
PASSWORD=bench-password-1
[ -x "$RINGMX" ] && [ -x "$LOADGEN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
for t in doveadm dovecot postfix openssl; do
    command -v "$t" >/dev/null || { echo "needs $t (apt-get install dovecot-core postfix openssl)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "must run as root (Postfix's master, Dovecot)" >&2; exit 1; }

work=$(mktemp -d)
chmod 711 "$work"
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    tuning/anchors/postfix.sh stop "$work/pf" >/dev/null 2>&1 || true
    [ -f "$work/dovecot/run/master.pid" ] && kill "$(cat "$work/dovecot/run/master.pid")" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One users file for both: Dovecot's passwd-file format, which ringmx reads too.
case $HASH in
bcrypt) hash=$(doveadm pw -s BLF-CRYPT -r "$BCRYPT_COST" -p "$PASSWORD") ;;
argon2id) hash=$(doveadm pw -s ARGON2ID -p "$PASSWORD") ;;
*) echo "HASH must be bcrypt or argon2id" >&2; exit 2 ;;
esac
echo "bench:$hash" >"$work/users"
export HASHDESC
HASHDESC=$(echo "$hash" | sed -E 's/^\{[A-Z0-9-]+\}//; s/^(\$argon2id\$v=19\$[^$]*)\$.*/\1/; s/^(\$2y\$[0-9]+)\$.*/bcrypt \1/')
chmod 644 "$work/users"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
chmod 644 "$work/key.pem"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU ticks of a master process and its children: its own, those of the
# children it reaped (cutime, cstime), and those of its live children.
tree_ticks() { # pidfile...
    local sum=0 f root c
    for f in "$@"; do
        root=$(tr -dc 0-9 2>/dev/null <"$f") || continue
        [ -n "$root" ] || continue
        sum=$((sum + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$root/stat" 2>/dev/null || echo 0)))
        for c in $(pgrep -P "$root" || true); do
            sum=$((sum + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$c/stat" 2>/dev/null || echo 0)))
        done
    done
    echo "$sum"
}

summary() { # json ticks -> "msgs_per_s p50_ms p99_ms errors cpu_ms_per_msg"
    python3 -c '
import json, os, sys
s = json.load(open(sys.argv[1]))
e = s["latency_ms"]["eod"]
n = s["messages"]["ok"] * (1 + float(sys.argv[3]) / float(sys.argv[4]))
cpu = float(sys.argv[2]) / os.sysconf("SC_CLK_TCK")
print("%.0f %.2f %.2f %d %.2f" % (s["msgs_per_s"], e["p50"], e["p99"],
      sum(s.get("errors", {}).values()) + s["messages"]["perm_fail"] + s["messages"]["temp_fail"],
      cpu / max(n, 1) * 1000))' "$1" "$2" "${WARMUP%s}" "${DURATION%s}"
}

load() { # addr json [loadgen flags...]
    local addr=$1 json=$2
    shift 2
    taskset -c "$CLIENT_CPU" "$LOADGEN" run --target "$addr" -q -c "$CONNS" --size 1k \
        --to-domain far.example --msgs-per-conn 1 --starttls --tls-insecure \
        --warmup "$WARMUP" --duration "$DURATION" --json "$json" "$@" >/dev/null
}

# ringmx: `auth` on its submission listener; `noauth` the same STARTTLS
# and message on its MX listener (far.example accepted there), so the
# difference in CPU per message is what AUTH costs.
run_ringmx() { # run auth|noauth
    local log="$work/ringmx-$1-$2.log" want='listening for submission on ' flags=(--auth "bench:$PASSWORD")
    if [ "$2" = noauth ]; then want='listening on '; flags=(); fi
    taskset -c "$SERVER_CPU" "$RINGMX" serve --listen 127.0.0.1:0 --submission 127.0.0.1:0 \
        --domain far.example --cores 1 --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" \
        --users "$work/users" --durability none --spool "$work/spool-$1-$2" --log-level warn \
        2>"$log" &
    local pid=$! addr=""
    for _ in $(seq 300); do
        addr=$(grep -o "$want[0-9.:]*" "$log" 2>/dev/null | awk '{print $NF}') && [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "ringmx did not start: $(cat "$log")" >&2; exit 1; }
    local t0 t1
    t0=$(cpu_ticks "$pid")
    load "$addr" "$work/ringmx-$1-$2.json" "${flags[@]}"
    t1=$(cpu_ticks "$pid")
    kill -TERM "$pid"; wait "$pid"
    summary "$work/ringmx-$1-$2.json" "$((t1 - t0))"
}

start_dovecot() {
    mkdir -p "$work/dovecot/run" "$work/dovecot/state"
    cat >"$work/dovecot/dovecot.conf" <<CONF
# Private Dovecot for tuning/auth.sh: the auth service only.
base_dir = $work/dovecot/run
state_dir = $work/dovecot/state
log_path = $work/dovecot/dovecot.log
protocols =
ssl = no
auth_mechanisms = plain login
passdb {
  driver = passwd-file
  args = $work/users
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}
service auth {
  unix_listener auth-client {
    mode = 0666
  }
}
CONF
    taskset -c "$SERVER_CPU" dovecot -c "$work/dovecot/dovecot.conf" </dev/null >/dev/null 2>&1
    for _ in $(seq 100); do [ -S "$work/dovecot/run/auth-client" ] && return 0; sleep 0.1; done
    echo "dovecot did not start: $(cat "$work/dovecot/dovecot.log" 2>/dev/null)" >&2; exit 1
}

start_postfix() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    # Submission on top of the anchor: TLS before AUTH, AUTH before relaying
    # (later lines win in main.cf; loopback is no longer mynetworks).
    POSTFIX_TLS_CERT="$work/cert.pem" POSTFIX_TLS_KEY="$work/key.pem" \
        POSTFIX_EXTRA_MAIN_CF="smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = $work/dovecot/run/auth-client
mynetworks = 192.0.2.1/32
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject" \
        taskset -c "$SERVER_CPU" tuning/anchors/postfix.sh start "$port" "$work/pf" \
        >"$work/pf-start.log" 2>&1 </dev/null || { cat "$work/pf-start.log" >&2; exit 1; }
    echo "127.0.0.1:$port"
}

run_postfix() { # run addr
    local t0 t1
    local pids=("$work/pf/data/master.pid" "$work/pf/queue/pid/master.pid" "$work/dovecot/run/master.pid")
    t0=$(tree_ticks "${pids[@]}")
    load "$2" "$work/postfix-$1.json" --auth "bench:$PASSWORD"
    t1=$(tree_ticks "${pids[@]}")
    summary "$work/postfix-$1.json" "$((t1 - t0))"
}

pf_addr=
if [ -z "${NO_POSTFIX:-}" ]; then
    start_dovecot
    pf_addr=$(start_postfix)
fi
echo "hash: $HASHDESC  conns=$CONNS duration=$DURATION runs=$RUNS"
declare -A rates cpus
whos=(ringmx-noauth ringmx postfix)
[ -n "${NO_POSTFIX:-}" ] && whos=(ringmx-noauth ringmx)
printf '%-14s %-4s %10s %9s %9s %7s %12s\n' server run msgs/s p50_ms p99_ms errors cpu_ms/msg
for i in $(seq "$RUNS"); do
    for who in "${whos[@]}"; do
        case $who in
        ringmx-noauth) out=$(run_ringmx "$i" noauth) ;;
        ringmx) out=$(run_ringmx "$i" auth) ;;
        postfix) out=$(run_postfix "$i" "$pf_addr") ;;
        esac
        read -r r p50 p99 err cpu <<<"$out"
        rates[$who]+="$r "
        cpus[$who]+="$cpu "
        printf '%-14s %-4s %10s %9s %9s %7s %12s\n' "$who" "$i" "$r" "$p50" "$p99" "$err" "$cpu"
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for who in "${whos[@]}"; do
    printf 'median %-14s msgs/s %s  cpu_ms/msg %s\n' "$who" \
        "$(echo "${rates[$who]}" | median)" "$(echo "${cpus[$who]}" | median)"
done
# ringmx's CPU per message with AUTH minus without: one hash check (and
# the AUTH round trip) at this cost.
awk -v a="$(echo "${cpus[ringmx]}" | median)" -v b="$(echo "${cpus[ringmx-noauth]}" | median)" \
    'BEGIN { printf "AUTH costs ringmx %.2f ms CPU per message (%s)\n", a - b, ENVIRON["HASHDESC"] }' 
