#!/usr/bin/env bash
# Scale-out under load, measured: starts a 3-process cluster, runs chargebench
# reserve-commit against it, adds node 4 and node 5 while it runs, waits for
# the placement driver to settle, and prints throughput and p99 before, during
# and after the moves, the time to rebalance and the failed operations.
#
#   scripts/scaleout.sh [--fsync always|never] [--concurrency C] [--duration S]
#
# Bounded: the bench stops after --duration seconds (default 60); every wait
# has a deadline. Uses its own cluster folder (CLUSTER_DIR, default
# .cluster-scaleout), wiped first. Leaves bench/results/scaleout.json.
set -euo pipefail
cd "$(dirname "$0")/.."

fsync=never concurrency=16 duration=60
while (($#)); do
  case "$1" in
    --fsync) fsync=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    *) sed -n '2,11p' "$0"; exit 64 ;;
  esac
done
export CLUSTER_DIR=${CLUSTER_DIR:-.cluster-scaleout}
cargo build --release -q --bin chargerd --bin chargectl --bin chargebench
chargectl=target/release/chargectl
mkdir -p bench/results
out=bench/results/scaleout.json
events=$(mktemp)
trap 'rm -f "$events"; scripts/cluster.sh stop >/dev/null 2>&1 || true' EXIT

scripts/cluster.sh wipe >/dev/null
scripts/cluster.sh start --fsync "$fsync"
# The cluster runs TLS and bearer tokens; chargectl and chargebench read its
# CA and an admin token from here.
export CHARGING_CA=$CLUSTER_DIR/certs/ca.pem
CHARGING_TOKEN=$(scripts/cluster.sh token admin 1h)
export CHARGING_TOKEN
# Data at 1 cent per started MB (tariffs are shard state: they move too).
"$chargectl" --endpoint https://127.0.0.1:50051 set-tariff --rg 32 --price bytes:1MB:1000000000 >/dev/null
t0=$(date +%s.%N)
target/release/chargebench run --endpoint https://127.0.0.1:50051 --workload reserve-commit \
  --concurrency "$concurrency" --duration "$duration" --accounts 2000 --quiet --json "$out" &
bench=$!

# Settled: the metadata leader's driver sees no move, and every node holds
# replicas within one of the others.
settled() {
  local leader
  leader=$("$chargectl" --endpoint https://127.0.0.1:50051 status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["meta_leader"])')
  "$chargectl" --endpoint "https://127.0.0.$leader:50051" status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
r = [n["replicas"] for n in s["nodes"]]
sys.exit(0 if s["moves_in_progress"] == 0 and len(r) == '"$1"' and max(r) - min(r) <= 1 else 1)'
}
wait_settled() { # nodes
  local deadline=$((SECONDS + 120))
  until settled "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "not settled within 120 s" >&2; exit 1; }
    sleep 0.2
  done
}

sleep 15
now() { python3 -c "import time; print(time.time() - $t0)"; }
echo "add_start $(now)" >>"$events"
scripts/cluster.sh add
scripts/cluster.sh add
wait_settled 5
echo "settled $(now)" >>"$events"
"$chargectl" --endpoint https://127.0.0.1:50051 node list
wait "$bench"

python3 - "$out" "$events" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
ev = dict(l.split() for l in open(sys.argv[2]))
start, end = float(ev["add_start"]), float(ev["settled"])
tl = r["timeline"]
def window(lo, hi):
    pts = [p for p in tl if lo <= p["t_s"] < hi]
    if not pts:
        return "n/a"
    secs = len(pts)
    ops = sum(p["ops"] for p in pts)
    errs = sum(p["errors"] for p in pts)
    p99 = max(p["p99_us"] for p in pts)
    return f"{ops / secs:,.0f} ops/s, worst 1-s p99 {p99 / 1000:.1f} ms, {errs} errors over {secs} s"
# Times are from the bench's start; its timeline starts after the preload of
# 2,000 accounts (well under a second), so windows may be off by that much.
print(f"rebalance 3 -> 5 nodes: {end - start:.1f} s from the first add to settled")
print("before:", window(0, start - 2))
print("during:", window(start, end))
print("after: ", window(end + 1, 1e9))
print(f"whole run: {r['ops_per_sec']:,.0f} ops/s, p99 {r['p99_us'] / 1000:.1f} ms, errors {r['errors']}, drift {r['drift']}")
EOF
