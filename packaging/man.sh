#!/usr/bin/env bash
# Writes ringmx(8), in roff, from the binary's own --help texts, so that the
# man page never drifts from the flags: packaging/man.sh BINARY > ringmx.8
set -euo pipefail
bin=${1:?usage: packaging/man.sh path/to/ringmx}
version=$("$bin" --version | awk '{print $2}')

# Help text as roff: backslashes doubled, a leading . or ' escaped.
roff() { sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/"; }

cat <<HEAD
.TH RINGMX 8 "" "ringmx $version" "System Administration"
.SH NAME
ringmx \- thread-per-core SMTP server for bulk inbound mail
.SH SYNOPSIS
.B ringmx serve
.RB [ \-\-config
.IR FILE ]
.RI [ FLAGS ]
.br
.B ringmx check-config \-\-config
.I FILE
.RB [ \-\-all ]
.br
.B ringmx spool
.I COMMAND
.br
.B ringmx ship
.RI [ ARGS ]
.SH DESCRIPTION
ringmx accepts mail over SMTP, one shard per CPU core, and answers 250 only
once a message is durable in its per-core spool. Under systemd it runs as
.B ringmx.service
with the settings of
.IR /etc/ringmx/ringmx.toml ;
.B systemctl reload ringmx
(SIGHUP) applies the settings that can change at run time and logs those
that need a restart.
.PP
Each section below is the output of the command's
.BR \-\-help .
HEAD
for sub in "" serve check-config spool ship; do
    if [ -z "$sub" ]; then
        echo ".SH OVERVIEW"
    else
        echo ".SH $(echo "ringmx $sub" | tr '[:lower:]' '[:upper:]')"
    fi
    echo ".nf"
    # shellcheck disable=SC2086
    "$bin" $sub --help | roff
    echo ".fi"
done
cat <<'TAIL'
.SH FILES
.TP
.I /etc/ringmx/ringmx.toml
Settings (a conffile); check it with
.BR "ringmx check-config \-\-config /etc/ringmx/ringmx.toml" .
.TP
.I /var/lib/ringmx/spool
The spool (StateDirectory=ringmx).
.SH SEE ALSO
.BR systemctl (1),
.BR journalctl (1);
.I /usr/share/doc/ringmx/README.md
and
.IR /usr/share/doc/ringmx/SPOOL-FORMAT.md .
TAIL
