#!/usr/bin/env bash
# A soak: chargebench at half of the cluster's measured capacity for N
# minutes against a 3-process cluster (scripts/cluster.sh: TLS, tokens),
# with a fault every minute: kill -9 of one node (nodes in turn) 20 s into
# the minute, restarted 10 s later. Prints per minute: throughput, p99 (the
# worst second's), errors, each node's RSS and the fault; then the bench's
# drift check (every account read back against what it acknowledged).
# Exit status 0 only with drift 0 and every account read back.
#
#   scripts/soak.sh [MINUTES] [--fsync always|never] [--accounts N]
#
# Defaults: 30 minutes, fsync always, 20,000 accounts. Bounded: the bench
# stops after MINUTES; every wait has a deadline. Own cluster folder
# (CLUSTER_DIR, default .cluster-soak), wiped first. Leaves
# bench/results/soak.json (the bench's report, its timeline included) and
# bench/results/soak-minutes.txt (the table).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=30 fsync=always accounts=20000
while (($#)); do
  case "$1" in
    --fsync) fsync=$2; shift 2 ;;
    --accounts) accounts=$2; shift 2 ;;
    [0-9]*) minutes=$1; shift ;;
    *) sed -n '2,17p' "$0"; exit 64 ;;
  esac
done
((minutes >= 1)) || { echo "soak: MINUTES must be >= 1" >&2; exit 64; }

export CLUSTER_DIR=${CLUSTER_DIR:-.cluster-soak}
cargo build --release -q --bin chargerd --bin chargectl --bin chargebench
chargectl=target/release/chargectl bench=target/release/chargebench
mkdir -p bench/results
out=bench/results/soak.json table=bench/results/soak-minutes.txt
events=$(mktemp) rss=$(mktemp)
bench_pid=""
cleanup() {
  [[ -z "$bench_pid" ]] || kill "$bench_pid" 2>/dev/null || true
  rm -f "$events" "$rss"
  scripts/cluster.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

scripts/cluster.sh wipe >/dev/null
scripts/cluster.sh start --fsync "$fsync"
export CHARGING_CA=$CLUSTER_DIR/certs/ca.pem
CHARGING_TOKEN=$(scripts/cluster.sh token admin 12h)
export CHARGING_TOKEN
ep=https://127.0.0.1:50051
"$chargectl" --endpoint "$ep" --deadline-ms 10000 set-tariff --rg 32 \
  --price bytes:1MB:1000000000 >/dev/null
pid_of() { cat "$CLUSTER_DIR/node$1/pid" 2>/dev/null || echo 0; }
pids() { echo "$(pid_of 1),$(pid_of 2),$(pid_of 3)"; }

echo "== capacity: 15 s closed loop, 64 callers"
cap_json=$(mktemp)
"$bench" run --endpoint "$ep" --workload reserve-commit --concurrency 64 --duration 15 \
  --accounts "$accounts" --prefix soakcap --quiet --json "$cap_json" >/dev/null
cap=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["ops_per_sec"]))' "$cap_json")
rm -f "$cap_json"
rate=$((cap / 2))
echo "   capacity ${cap} ops/s; soak at ${rate} ops/s for ${minutes} min"

echo "== soak: chargebench run --rate $rate --duration $((minutes * 60))"
"$bench" run --endpoint https://127.0.0.1:50051 --endpoint https://127.0.0.2:50051 \
  --endpoint https://127.0.0.3:50051 --route any --workload reserve-commit \
  --rate "$rate" --max-in-flight 256 --duration $((minutes * 60)) --accounts "$accounts" \
  --prefix soak --quiet --json "$out" >/dev/null 2>&1 &
bench_pid=$!
t0=$(date +%s)
sample_rss() {
  local line="$1"
  for i in 1 2 3; do
    local p; p=$(pid_of "$i")
    line+=" $(awk '/VmRSS/ {print int($2/1024)}' "/proc/$p/status" 2>/dev/null || echo -)"
  done
  echo "$line" >>"$rss"
}
sample_rss 0
for m in $(seq 1 "$minutes"); do
  node=$(( (m - 1) % 3 + 1 ))
  # 20 s into minute m: kill -9 node; 10 s later: restart it.
  until (( $(date +%s) >= t0 + (m - 1) * 60 + 20 )); do sleep 0.5; done
  kill -0 "$bench_pid" 2>/dev/null || break
  scripts/cluster.sh kill "$node" >/dev/null
  echo "$m kill -9 node $node" >>"$events"
  until (( $(date +%s) >= t0 + (m - 1) * 60 + 30 )); do sleep 0.5; done
  scripts/cluster.sh restart "$node" --no-wait >/dev/null
  until (( $(date +%s) >= t0 + m * 60 )); do sleep 0.5; done
  sample_rss "$m"
done
brc=0
wait "$bench_pid" || brc=$?
bench_pid=""

python3 - "$out" "$events" "$rss" "$brc" "$rate" <<'PY' | tee "$table"
import json, sys, collections
path, events, rss, brc, rate = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
r = json.load(open(path))
fault = {}
for l in open(events):
    m, what = l.split(" ", 1)
    fault[int(m)] = what.strip()
mem = {}
for l in open(rss):
    f = l.split()
    mem[int(f[0])] = " ".join(f"{x:>5}" for x in f[1:])
per = collections.defaultdict(lambda: {"ops": 0, "dt": 0.0, "p99": 0, "err": 0})
for p in r.get("timeline", []):
    m = int(p["t_s"] // 60) + 1
    d = per[m]
    d["ops"] += p["ops"]; d["dt"] += p["dt_s"]; d["err"] += p["errors"]
    d["p99"] = max(d["p99"], p["p99_us"])
print(f"soak at {rate} ops/s (open loop); RSS in MiB at the minute's end (start: {mem.get(0, '-')})")
print(f"{'min':>3} {'ops/s':>8} {'worst-s p99 ms':>14} {'errors':>7}  {'RSS n1    n2    n3':<18}  fault")
for m in sorted(per):
    d = per[m]
    print(f"{m:>3} {d['ops'] / max(d['dt'], 1e-9):>8.0f} {d['p99'] / 1000:>14.1f} {d['err']:>7}  "
          f"{mem.get(m, '-'):<18}  {fault.get(m, '')}")
print(f"total: {r.get('ops')} ops, errors {r.get('errors')} {r.get('errors_by_code', '')}, "
      f"p99 {r.get('p99_us')} us; drift {r.get('drift')} (accounts checked "
      f"{r.get('drift_accounts_checked')}, with an unknown outcome {r.get('drift_unverified')}, "
      f"unread {r.get('drift_unread')})")
bad = (brc != 0 or r.get("drift") != 0 or r.get("drift_unread", 0) != 0
       or not r.get("drift_accounts_checked"))
sys.exit(1 if bad else 0)
PY
