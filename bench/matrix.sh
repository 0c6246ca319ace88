#!/usr/bin/env bash
# The issue-4 figures on a fresh 3-process cluster (bench/cluster3.sh):
# reserve-commit unary at 1/16/64/256 callers (echo baseline at 1 and 64),
# streaming at pipeline 64 and 1000 (batches of 100), the session workload,
# Zipf 0.99 vs uniform. One JSON per run in bench/results/matrix-<fsync>-*.
#
#   bench/matrix.sh [never|always] [DURATION_S]
set -euo pipefail
cd "$(dirname "$0")/.."
fsync=${1:-never}
d=${2:-8}
acc=${MATRIX_ACCOUNTS:-100000}
out=bench/results
mkdir -p "$out"
bench=target/release/chargebench
bench/cluster3.sh start --fsync "$fsync"
trap 'bench/cluster3.sh stop >/dev/null' EXIT
read -r -a eps <<<"$(bench/cluster3.sh endpoints)"
# Node CPU µs per op (issue 14): the three node processes' CPU time over
# each measured window.
pids=$(bench/cluster3.sh pids)
run() { # NAME ARGS...
  local name=$1; shift
  echo "== $name (fsync $fsync, load $(cut -d' ' -f1-3 /proc/loadavg)): $*"
  timeout 300 "$bench" run "${eps[@]}" --quiet --duration "$d" --accounts "$acc" \
    --node-pids "$pids" --json "$out/matrix-$fsync-$name.json" "$@" 2>&1 |
    grep -E "^(charging|echo|ratio|pairs|drift|errors|node|warning)" || echo "FAILED: $name"
}
run rc-unary-c1 --workload reserve-commit --concurrency 1 --baseline echo
run rc-unary-c16 --workload reserve-commit --concurrency 16
run rc-unary-c64 --workload reserve-commit --concurrency 64 --baseline echo
run rc-unary-c256 --workload reserve-commit --concurrency 256
run rc-stream-p64 --workload reserve-commit --transport stream --batch 100 --pipeline 64
run rc-stream-p1000 --workload reserve-commit --transport stream --batch 100 --pipeline 1000
run session-c64 --workload session --updates 3 --rating-groups 32,10 --concurrency 64
run rc-zipf099-c64 --workload reserve-commit --distribution zipf:0.99 --concurrency 64
run rc-uniform-c64 --workload reserve-commit --distribution uniform --concurrency 64
