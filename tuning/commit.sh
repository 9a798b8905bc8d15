#!/usr/bin/env bash
# Durable commit latency and CPU (issue 15): the device's own fdatasync
# beside ringmx fsync vs none at 16 and 256 connections, with the per-stage
# breakdown of a commit. See tuning/commit.py for what it does and its knobs.
#   cargo build --release && tuning/commit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 tuning/commit.py "$@"
