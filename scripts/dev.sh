#!/usr/bin/env bash
# Starts the embedded 3-node dev cluster (release build) with demo data.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --bin chargerd -- dev "$@"
