#!/usr/bin/env bash
# Nchf_ConvergedCharging conformance (issue 18): schemathesis, pinned, from a
# venv this script makes, fuzzes a `chargerd dev` node's Nchf listener with
# the official Rel-17 YAML in ../shared/specs, unmodified.
#
# - Phase `fuzzing` only: `examples` crashes inside hypothesis on this YAML.
# - Checks: not_a_server_error, status_code_conformance,
#   content_type_conformance, response_headers_conformance,
#   response_schema_conformance, positive_data_acceptance. Not
#   negative_data_rejection: it needs the whole deep schema validated, and
#   the producer reads a subset.
# - A live ChargingDataRef (a session opened with curl first) goes in through
#   schemathesis.toml, so update and release are exercised beyond 404.
# - Bounded: NCHF_FUZZ_SECS (120) of fuzzing.
#
# Env: NCHF_SPECS (../shared/specs), NCHF_VENV (target/nchf-venv),
# NCHF_BASE_PORT (50151: gRPC 50151-50153, Nchf 50181-50183).
set -euo pipefail
cd "$(dirname "$0")/.."
specs=${NCHF_SPECS:-../shared/specs}
venv=${NCHF_VENV:-target/nchf-venv}
secs=${NCHF_FUZZ_SECS:-120}
base=${NCHF_BASE_PORT:-50151}
nchf=$((base + 30))
yaml=$specs/TS32291_Nchf_ConvergedCharging.yaml
[ -f "$yaml" ] || { echo "nchf-conformance: $yaml not found (NCHF_SPECS)" >&2; exit 1; }
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q '4\.32\.5'; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis==4.32.5
fi
cargo build -q --bin chargerd
work=$(mktemp -d)
log=$work/dev.log
target/debug/chargerd dev --base-port "$base" >"$log" 2>&1 &
dev=$!
trap 'kill -INT $dev 2>/dev/null; wait $dev 2>/dev/null || true; rm -rf "$work"' EXIT
# `chargerd dev` prints "ready." once leaders are elected and demo data is in.
if ! timeout 60 bash -c "until grep -q '^ready' '$log'; do sleep 0.2; done"; then
  cat "$log" >&2
  echo "nchf-conformance: chargerd dev did not become ready" >&2
  exit 1
fi
root=http://127.0.0.1:$nchf/nchf-convergedcharging/v3
# A live session on a demo account (prepaid, EUR 100).
ref=$(curl -s -D - -o /dev/null --http2-prior-knowledge "$root/chargingdata" \
  -H 'content-type: application/json' -d "{
    \"subscriberIdentifier\": \"imsi-001010000000001\",
    \"nfConsumerIdentification\": {\"nodeFunctionality\": \"SMF\"},
    \"invocationTimeStamp\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\",
    \"invocationSequenceNumber\": 0,
    \"multipleUnitUsage\": [{\"ratingGroup\": 32, \"requestedUnit\": {\"totalVolume\": 1000000}}]}" |
  tr -d '\r' | awk -F/ 'tolower($0) ~ /^location:/ { print $NF }')
[ -n "$ref" ] || { echo "nchf-conformance: Create gave no Location" >&2; exit 1; }
echo "nchf-conformance: live ChargingDataRef $ref"
cat >"$work/schemathesis.toml" <<EOF
[parameters]
"path.ChargingDataRef" = "$ref"
EOF
"$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$yaml" \
  --url "$root" \
  --phases fuzzing \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,positive_data_acceptance \
  --max-time "$secs" \
  --request-timeout 10
