#!/usr/bin/env bash
# The README's two-minute tour, against a running dev cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin chargectl -q
c=./target/release/chargectl
$c create-account alice --currency EUR --balance 1000
$c top-up alice 500
out=$($c --json reserve alice --session s1 --rg 32 --bytes 10MB)
echo "$out"
rid=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["reservation_id"])')
$c commit alice "$rid" --bytes 6MB --final
$c balance alice
