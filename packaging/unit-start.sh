#!/usr/bin/env bash
# What `systemctl start ringmx` does, for a machine without systemd as PID
# 1 (a CI container): the unit's StateDirectory, limits, User/Group and
# AmbientCapabilities, then its ExecStartPre and ExecStart, read from the
# installed unit file. packaging/check-deb.sh runs it after `dpkg -i`.
set -euo pipefail
unit=/lib/systemd/system/ringmx.service
[ -f "$unit" ] || unit=/usr/lib/systemd/system/ringmx.service
val() { sed -n "s/^$1=//p" "$unit" | head -1; }
user=$(val User); group=$(val Group)
install -d -o "$user" -g "$group" -m "$(val StateDirectoryMode)" "/var/lib/$(val StateDirectory)"
caps=$(val AmbientCapabilities | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')
run_as=(setpriv --reuid="$user" --regid="$group" --init-groups --inh-caps="$caps" --ambient-caps="$caps")
# As far as this machine lets root go (a container may cap it).
[ "$(val LimitMEMLOCK)" = infinity ] && { ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -H -l)"; }
ulimit -n "$(val LimitNOFILE)" 2>/dev/null || ulimit -n "$(ulimit -H -n)"
read -r -a pre <<<"$(val ExecStartPre)"
"${run_as[@]}" "${pre[@]}"
read -r -a main <<<"$(val ExecStart)"
exec "${run_as[@]}" "${main[@]}"
