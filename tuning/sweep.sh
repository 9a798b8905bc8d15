#!/usr/bin/env bash
# One ringmx knob at a time (cores, read buffer, segment size, buffered
# message size, connections); a table per knob and the winner. See
# tuning/sweep.py for the baseline, the knobs and the env variables.
#   cargo build --release && tuning/sweep.sh
#   KNOBS=cores,read-buffer tuning/sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 tuning/sweep.py "$@"
