#!/usr/bin/env bash
# Chaos against real nodes, checked: starts a cluster, runs `chargechaos real`
# (the seeded workload over gRPC, retries on the same request ids, while a
# seeded nemesis kills, pauses and cuts off nodes one at a time), heals,
# waits for the replicas to converge, reads the balances back and runs the
# history checker. Exit status 0 only with zero violations.
#
#   scripts/chaos.sh [--quick] [--target local|compose] [--seed N] [--duration S] [--no-bench]
#
# --quick: a bounded standard scenario (local: 60 s of load and faults; the
#          whole script stays under 3 minutes once the binaries are built).
# local:   3 chargerd processes (scripts/cluster.sh, own folder .chaos-cluster,
#          fsync always, TLS and bearer tokens: every client carries an admin
#          token, CHARGING_TOKEN): kill -9 + restart, SIGSTOP + SIGCONT (one node or
#          two: the third serves with no majority); on either target, now and
#          then every node killed at once, then restarted.
# compose: the 3-container cluster (scripts/compose.sh): docker kill + start,
#          pause + unpause, network disconnect + connect, and partitions
#          (two nodes both ways or one way, a node cut off from its peers
#          while clients reach it, two such: every node alone) as iptables
#          rules, healed after each.
# Bench load: chargebench (reserve-commit, 16 callers, its own 500 accounts on
#          rating group 40, spread over every node) runs alongside for the
#          length of the faults and checks its own drift at the end; a drift,
#          or an account it could not read back, fails the run. --no-bench:
#          the checked workload alone. CHAOS_BENCH_JSON=path keeps its report.
# Binaries: debug builds (cargo build), made on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

target=local seed=${CHAOS_SEED:-$(date +%s)} duration=120 bench=1
while (($#)); do
  case "$1" in
    --quick) duration=60; shift ;;
    --target) target=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --no-bench) bench=0; shift ;;
    *) sed -n '2,27p' "$0"; exit 64 ;;
  esac
done

bin=${CARGO_TARGET_DIR:-target}/debug
echo "== building chargerd, chargectl, chargechaos, chargebench (debug)"
cargo build -q --bin chargerd --bin chargectl --bin chargechaos --bin chargebench

# One exit path: the bench (if started) first, then the target's cluster.
bench_pid="" bench_json="" bench_log=""
stop_cluster() { :; }
cleanup() {
  [[ -z "$bench_pid" ]] || kill "$bench_pid" 2>/dev/null || true
  [[ -z "$bench_log" ]] || rm -f "$bench_log"
  [[ -n "${CHAOS_BENCH_JSON:-}" || -z "$bench_json" ]] || rm -f "$bench_json"
  stop_cluster
}
trap cleanup EXIT

case "$target" in
  local)
    export CLUSTER_DIR=.chaos-cluster CHARGERD=$bin/chargerd CHARGECTL=$bin/chargectl
    scripts/cluster.sh wipe >/dev/null 2>&1 || true
    stop_cluster() {
      # First resume a node left SIGSTOPped, or the stop waits 20 s for it.
      for p in .chaos-cluster/node*/pid; do kill -CONT "$(cat "$p" 2>/dev/null)" 2>/dev/null || true; done
      scripts/cluster.sh stop >/dev/null 2>&1 || true
      scripts/cluster.sh wipe >/dev/null 2>&1 || true
    }
    scripts/cluster.sh start --nodes 3 --shards 4 --fsync always
    # The cluster runs TLS and bearer tokens: chargectl, chargebench and
    # chargechaos read the CA and an admin token from the environment.
    export CHARGING_CA=.chaos-cluster/certs/ca.pem
    CHARGING_TOKEN=$(scripts/cluster.sh token admin 6h)
    export CHARGING_TOKEN
    endpoints=(https://127.0.0.1:50051 https://127.0.0.2:50051 https://127.0.0.3:50051)
    ;;
  compose)
    export CHARGECTL=$bin/chargectl
    stop_cluster() { scripts/compose.sh down -v >/dev/null 2>&1 || true; }
    scripts/compose.sh up
    export CHARGING_CA=deploy/certs/ca.pem
    CHARGING_TOKEN=$(scripts/compose.sh token admin 6h)
    export CHARGING_TOKEN
    endpoints=(https://127.0.0.1:25051 https://127.0.0.1:25052 https://127.0.0.1:25053)
    ;;
  *) echo "chaos.sh: unknown target $target" >&2; exit 64 ;;
esac

if ((bench)); then
  # Its own rating group and account prefix: the checked workload's accounts
  # and tariff (rating group 32) are untouched.
  "$CHARGECTL" --endpoint "${endpoints[0]}" --deadline-ms 10000 set-tariff --rg 40 \
    --price bytes:1MB:1000000000 >/dev/null
  bench_json=${CHAOS_BENCH_JSON:-$(mktemp)}
  bench_log=$(mktemp)
  bench_args=()
  for e in "${endpoints[@]}"; do bench_args+=(--endpoint "$e"); done
  echo "== chargebench run --workload reserve-commit --concurrency 16 --rating-groups 40 --duration $duration (alongside)"
  "$bin/chargebench" run "${bench_args[@]}" --route any --workload reserve-commit \
    --concurrency 16 --rating-groups 40 --accounts 500 --prefix chaosbench \
    --duration "$duration" --quiet --json "$bench_json" >"$bench_log" 2>&1 &
  bench_pid=$!
fi

echo "== chargechaos real --target $target --seed $seed --duration $duration"
rc=0
"$bin/chargechaos" real --target "$target" --cluster-dir .chaos-cluster --nodes 3 \
  --seed "$seed" --duration "$duration" || rc=$?

if [[ -n "$bench_pid" ]]; then
  brc=0
  wait "$bench_pid" || brc=$?
  python3 - "$bench_json" "$brc" <<'PY' || { rc=1; tail -n 20 "$bench_log" >&2; }
import json, sys
path, brc = sys.argv[1], int(sys.argv[2])
try:
    r = json.load(open(path))
except Exception as e:
    print(f"chargebench: no report ({e}); exit {brc}")
    sys.exit(1)
print(f"chargebench alongside: {r.get('ops')} ops ({r.get('ops_per_sec', 0):.0f}/s), "
      f"errors {r.get('errors')} {r.get('errors_by_code', '')}, p50 {r.get('p50_us')} us, "
      f"p99 {r.get('p99_us')} us; drift {r.get('drift')} (accounts checked "
      f"{r.get('drift_accounts_checked')}, with an unknown outcome {r.get('drift_unverified')}, "
      f"unread {r.get('drift_unread')})")
bad = (brc != 0 or r.get("drift") != 0 or r.get("drift_unread", 0) != 0
       or not r.get("drift_accounts_checked"))
sys.exit(1 if bad else 0)
PY
fi
exit "$rc"
