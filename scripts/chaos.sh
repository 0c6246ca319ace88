#!/usr/bin/env bash
# Chaos against real nodes, checked: starts a cluster, runs `chargechaos real`
# (the seeded workload over gRPC, retries on the same request ids, while a
# seeded nemesis kills, pauses and cuts off nodes one at a time), heals,
# waits for the replicas to converge, reads the balances back and runs the
# history checker. Exit status 0 only with zero violations.
#
#   scripts/chaos.sh [--quick] [--target local|compose] [--seed N] [--duration S]
#
# --quick: a bounded standard scenario (local: 60 s of load and faults; the
#          whole script stays under 3 minutes once the binaries are built).
# local:   3 chargerd processes (scripts/cluster.sh, own folder .chaos-cluster,
#          fsync always): kill -9 + restart, SIGSTOP + SIGCONT; on either
#          target, now and then every node killed at once, then restarted.
# compose: the 3-container cluster (scripts/compose.sh): docker kill + start,
#          pause + unpause, network disconnect + connect, and partitions
#          (two nodes both ways or one way, a node cut off from its peers
#          while clients reach it) as iptables rules, healed after each.
# Binaries: debug builds (cargo build), made on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

target=local seed=${CHAOS_SEED:-$(date +%s)} duration=120
while (($#)); do
  case "$1" in
    --quick) duration=60; shift ;;
    --target) target=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    *) sed -n '2,19p' "$0"; exit 64 ;;
  esac
done

bin=${CARGO_TARGET_DIR:-target}/debug
echo "== building chargerd, chargectl, chargechaos (debug)"
cargo build -q --bin chargerd --bin chargectl --bin chargechaos

case "$target" in
  local)
    export CLUSTER_DIR=.chaos-cluster CHARGERD=$bin/chargerd CHARGECTL=$bin/chargectl
    scripts/cluster.sh wipe >/dev/null 2>&1 || true
    trap 'scripts/cluster.sh stop >/dev/null 2>&1 || true; for p in .chaos-cluster/node*/pid; do kill -CONT "$(cat "$p" 2>/dev/null)" 2>/dev/null || true; done; scripts/cluster.sh wipe >/dev/null 2>&1 || true' EXIT
    scripts/cluster.sh start --nodes 3 --shards 4 --fsync always
    ;;
  compose)
    export CHARGECTL=$bin/chargectl
    trap 'scripts/compose.sh down -v >/dev/null 2>&1 || true' EXIT
    scripts/compose.sh up
    ;;
  *) echo "chaos.sh: unknown target $target" >&2; exit 64 ;;
esac

echo "== chargechaos real --target $target --seed $seed --duration $duration"
"$bin/chargechaos" real --target "$target" --cluster-dir .chaos-cluster --nodes 3 \
  --seed "$seed" --duration "$duration"
