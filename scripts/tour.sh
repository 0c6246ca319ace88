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
# Nchf (README "Nchf: what a 5G SMF sends"): create, update with usage,
# release, as an SMF would, on node 1's Nchf listener.
u=http://127.0.0.1:50081/nchf-convergedcharging/v3/chargingdata
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
nchf() { curl -sS --http2-prior-knowledge -H 'content-type: application/json' "$@"; }
$c create-account bob --currency EUR --balance 1000
ref=$(nchf -D - -o /dev/null "$u" -d '{"subscriberIdentifier": "bob",
  "nfConsumerIdentification": {"nodeFunctionality": "SMF"},
  "invocationTimeStamp": "'"$now"'", "invocationSequenceNumber": 0,
  "multipleUnitUsage": [{"ratingGroup": 32, "requestedUnit": {"totalVolume": 10000000}}]}' |
  tr -d '\r' | awk -F/ 'tolower($0) ~ /^location:/ { print $NF }')
echo "ChargingDataRef: $ref"
nchf "$u/$ref/update" -d '{"nfConsumerIdentification": {"nodeFunctionality": "SMF"},
  "invocationTimeStamp": "'"$now"'", "invocationSequenceNumber": 1,
  "multipleUnitUsage": [{"ratingGroup": 32, "requestedUnit": {"totalVolume": 10000000},
    "usedUnitContainer": [{"localSequenceNumber": 1, "totalVolume": 6000000}]}]}'
echo
nchf -o /dev/null -w 'release: HTTP %{http_code}\n' "$u/$ref/release" -d '{
  "nfConsumerIdentification": {"nodeFunctionality": "SMF"},
  "invocationTimeStamp": "'"$now"'", "invocationSequenceNumber": 2,
  "multipleUnitUsage": [{"ratingGroup": 32,
    "usedUnitContainer": [{"localSequenceNumber": 2, "totalVolume": 3500000}]}]}'
$c balance bob
