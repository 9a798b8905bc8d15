#!/usr/bin/env bash
# Builds the Debian package and checks it: the release binary, the man page
# generated from --help, cargo-deb (no second build), then lintian (no
# errors), the layout unpacked with dpkg -x into a scratch root, and
# `systemd-analyze verify` of the unit against that root.
#
#   packaging/check-deb.sh            # build target/debian/ringmx_*.deb and check it
#   RINGMX_DEB_NO_BUILD=1 packaging/check-deb.sh   # reuse target/release/ringmx
#
# Needs cargo-deb (cargo install cargo-deb), lintian, dpkg-deb and
# systemd-analyze (Debian: lintian, dpkg, systemd). .ci/run calls it after
# the tests; a full release build (fat LTO) is most of its time.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check-deb: $*" >&2; exit 1; }
for t in cargo-deb lintian dpkg-deb systemd-analyze; do
    command -v "$t" >/dev/null || fail "$t is missing (cargo install cargo-deb; apt-get install lintian dpkg systemd)"
done

if [ -z "${RINGMX_DEB_NO_BUILD:-}" ]; then
    cargo build --release --locked --bin ringmx
fi
bin=target/release/ringmx
[ -x "$bin" ] || fail "$bin is missing: run cargo build --release --bin ringmx"

mkdir -p target/man
packaging/man.sh "$bin" > target/man/ringmx.8
gzip -9nf target/man/ringmx.8

# --no-build: the binary above; --strip: lintian refuses unstripped binaries
# (the release profile keeps line tables for perf).
rm -rf target/debian
cargo deb --no-build --strip --no-dbgsym -p ringmx
deb=$(ls target/debian/ringmx_*.deb)
echo "check-deb: built $deb"

# lintian: errors fail the check; warnings are printed.
lintian --fail-on error --suppress-tags-from-file /dev/null "$deb" || fail "lintian found errors in $deb"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg-deb -x "$deb" "$root"
ctl=$(mktemp -d)
dpkg-deb -e "$deb" "$ctl/DEBIAN"
for f in usr/bin/ringmx etc/ringmx/ringmx.toml usr/share/man/man8/ringmx.8.gz \
         usr/lib/systemd/system/ringmx.service usr/share/doc/ringmx/copyright \
         usr/share/doc/ringmx/changelog.Debian.gz usr/share/doc/ringmx/grafana.json; do
    [ -e "$root/$f" ] || fail "$f is not in $deb"
done
grep -qx /etc/ringmx/ringmx.toml "$ctl/DEBIAN/conffiles" || fail "/etc/ringmx/ringmx.toml is not a conffile"
grep -q 'adduser .*ringmx' "$ctl/DEBIAN/postinst" || fail "postinst does not create the ringmx user"
grep -q 'deb-systemd-helper' "$ctl/DEBIAN/postinst" || fail "postinst does not enable ringmx.service"
rm -rf "$ctl"

# The packaged binary runs, and accepts the packaged config.
"$root/usr/bin/ringmx" --version
"$root/usr/bin/ringmx" check-config --config "$root/etc/ringmx/ringmx.toml" >/dev/null \
    || fail "the packaged /etc/ringmx/ringmx.toml does not pass check-config"
# The unit, with its commands pointed at the unpacked binary (verify checks
# that they exist); the man page is checked above, not through man(1).
unit=$(mktemp -d)
sed "s|/usr/bin/ringmx|$root/usr/bin/ringmx|g" "$root/usr/lib/systemd/system/ringmx.service" \
    > "$unit/ringmx.service"
out=$(systemd-analyze verify --man=no "$unit/ringmx.service" 2>&1) || true
rm -rf "$unit"
[ -z "$out" ] || fail "systemd-analyze verify ringmx.service: $out"
# What a newcomer does after `dpkg -i` and `systemctl start ringmx`: the
# packaged binary on the packaged config (its spool and SMTP port moved to
# scratch ones, as systemd's StateDirectory and port 25 are not ours here)
# takes a message, and the metrics endpoint the config turns on counts it.
spool=$(mktemp -d)
"$root/usr/bin/ringmx" serve --config "$root/etc/ringmx/ringmx.toml" \
    --listen 127.0.0.1:0 --spool "$spool/spool" 2>"$spool/log" &
pid=$!
addr=""
for _ in $(seq 100); do
    addr=$(grep -o 'listening on [0-9.:]*' "$spool/log" | awk '{print $3}') && [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { kill $pid; fail "the packaged server did not start: $(cat "$spool/log")"; }
python3 - "$addr" <<'PY' || { kill $pid; fail "mail or metrics failed: $(cat "$spool/log")"; }
import smtplib, sys, urllib.request
host, port = sys.argv[1].rsplit(":", 1)
with smtplib.SMTP(host, int(port), timeout=20) as s:
    s.sendmail("a@example.org", ["postmaster@localhost"], "Subject: installed\r\n\r\nhi\r\n")
page = urllib.request.urlopen("http://127.0.0.1:9325/metrics", timeout=20).read().decode()
n = sum(float(l.rsplit(" ", 1)[1]) for l in page.splitlines()
        if l.startswith("ringmx_messages_accepted_total{"))
assert n == 1, page
PY
kill -TERM $pid; wait $pid || true
rm -rf "$spool"
echo "check-deb: ok: $deb"
