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
# What a newcomer does: `dpkg -i`, `systemctl start ringmx` (here
# packaging/unit-start.sh, which does what the installed unit says: no
# systemd runs as PID 1 in CI), send mail to the configured port 25, and
# see it in `curl localhost:9325/metrics`. Then the package is purged.
# Only where we may install packages (CI's throwaway machine, as root).
if [ "$(id -u)" = 0 ] && [ -n "${CI:-}${RINGMX_CI:-}" ]; then
    dpkg -i "$deb" >/dev/null || fail "dpkg -i $deb failed"
    log=$(mktemp)
    packaging/unit-start.sh >"$log" 2>&1 &
    pid=$!
    stop() { kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true; dpkg --purge ringmx >/dev/null; rm -rf /var/lib/ringmx; }
    for _ in $(seq 100); do grep -q 'listening on' "$log" && break; sleep 0.1; done
    grep -q 'listening on' "$log" || { stop; fail "the installed ringmx did not start: $(cat "$log")"; }
    python3 - <<'PY' || { stop; fail "mail or metrics failed: $(cat "$log")"; }
import smtplib, urllib.request
with smtplib.SMTP("127.0.0.1", 25, timeout=20) as s:
    s.sendmail("a@example.org", ["postmaster@localhost"], "Subject: installed\r\n\r\nhi\r\n")
page = urllib.request.urlopen("http://127.0.0.1:9325/metrics", timeout=20).read().decode()
n = sum(float(l.rsplit(" ", 1)[1]) for l in page.splitlines()
        if l.startswith("ringmx_messages_accepted_total{"))
assert n == 1, page
PY
    ps -o user= -p $pid | grep -qx ringmx || { stop; fail "ringmx did not run as the ringmx user"; }
    stop
    rm -f "$log"
    echo "check-deb: installed, started as the unit says, took mail, counted it"
fi
echo "check-deb: ok: $deb"
