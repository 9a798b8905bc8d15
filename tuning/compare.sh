#!/usr/bin/env bash
# Side-by-side comparison of ringmx (fsync, none), Postfix (durable, HOLD),
# smtp-sink and Haraka; see tuning/compare.py for what it does and its knobs.
#   cargo build --release && tuning/compare.sh          # full matrix
#   QUICK=1 tuning/compare.sh                           # reduced matrix
#   TLS=1 tuning/compare.sh                             # the STARTTLS cell (issue 10)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 tuning/compare.py "$@"
