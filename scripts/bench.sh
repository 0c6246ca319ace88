#!/usr/bin/env bash
# Runs the chargebench standard profile against a local dev cluster.
#
#   scripts/bench.sh            full profile (a few minutes)
#   scripts/bench.sh --quick    a few short runs, under 60 s once built
#
# Builds release, starts `chargerd dev` in the background (waits for its
# "ready." line, bounded), runs the profile, always stops the cluster, and
# leaves the reports in bench/results/: one JSON (+ HTML) per run, and the
# merged latest.json / latest.html. Every run uses its own account prefix.
# Environment: BENCH_BASE_PORT (default 50051), BENCH_READY_TIMEOUT (s, 120).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
case "${1:-}" in
  --quick) mode=quick ;;
  "") ;;
  -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--quick]" >&2; exit 64 ;;
esac

port=${BENCH_BASE_PORT:-50051}
ready_timeout=${BENCH_READY_TIMEOUT:-120}
out=bench/results
stamp=$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"

echo "== building (release)"
cargo build --release -q --bin chargerd --bin chargebench
bench=./target/release/chargebench

log="$out/chargerd-$stamp.log"
echo "== starting chargerd dev (log: $log)"
: >"$log"
./target/release/chargerd dev --base-port "$port" >"$log" 2>&1 &
pid=$!
stop_cluster() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM

deadline=$((SECONDS + ready_timeout))
until grep -q '^ready\.' "$log"; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "chargerd exited before it was ready:" >&2; tail -20 "$log" >&2; exit 1
  fi
  if ((SECONDS >= deadline)); then
    echo "chargerd not ready after ${ready_timeout}s" >&2; tail -20 "$log" >&2; exit 1
  fi
  sleep 0.2
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0; }
echo "== cluster ready (pid $pid, RSS $(rss) kB)"

eps=(--endpoint "http://127.0.0.1:$port" --endpoint "http://127.0.0.1:$((port + 1))" --endpoint "http://127.0.0.1:$((port + 2))")
files=()
failed=()
n=0
run() { # run NAME ARGS...: one chargebench run, its JSON and HTML in $out
  local name=$1; shift
  n=$((n + 1))
  local f="$out/$stamp-$(printf %02d $n)-$name"
  echo "== $name: chargebench run $*"
  # Exit code 2 = drift: keep the report, go on, fail at the end.
  # --node-pids: chargerd dev is one process; its CPU time per op is reported.
  if "$bench" run "${eps[@]}" --quiet --node-pids "$pid" --json "$f.json" --html "$f.html" "$@"; then :; else
    failed+=("$name (exit $?)")
  fi
  [[ -f $f.json ]] && files+=("$f.json")
}

if [[ $mode == quick ]]; then
  run rc-unary-c16 --workload reserve-commit --concurrency 16 --duration 5 --accounts 2000 --baseline echo
  run rc-stream-p64 --workload reserve-commit --transport stream --batch 100 --pipeline 64 --concurrency 3000 --duration 4 --accounts 2000
  run session --workload session --updates 2 --concurrency 16 --duration 4 --accounts 2000
  run mixed-zipf --workload mixed --distribution zipf:0.99 --concurrency 16 --duration 4 --accounts 2000
else
  d=10
  acc=10000
  run rc-unary-c1 --workload reserve-commit --concurrency 1 --duration $d --accounts $acc --baseline echo
  run rc-unary-c16 --workload reserve-commit --concurrency 16 --duration $d --accounts $acc
  run rc-unary-c64 --workload reserve-commit --concurrency 64 --duration $d --accounts $acc --baseline echo
  run rc-unary-c256 --workload reserve-commit --concurrency 256 --duration $d --accounts $acc
  run rc-stream-p64 --workload reserve-commit --transport stream --batch 100 --pipeline 64 --duration $d --accounts $acc --baseline echo
  run rc-stream-p1000 --workload reserve-commit --transport stream --batch 100 --pipeline 1000 --duration $d --accounts $acc
  run debit-stream-b1000 --workload debit --transport stream --batch 1000 --pipeline 64 --duration $d --accounts $acc
  run session --workload session --updates 3 --rating-groups 32,10 --concurrency 64 --duration $d --accounts $acc
  run rc-zipf099-c64 --workload reserve-commit --distribution zipf:0.99 --concurrency 64 --duration $d --accounts $acc
  run rc-uniform-c64 --workload reserve-commit --distribution uniform --concurrency 64 --duration $d --accounts $acc
  run mixed-c64 --workload mixed --concurrency 64 --duration $d --accounts $acc
  run rc-open-2000 --workload reserve-commit --rate 2000 --duration $d --accounts $acc
fi

echo "== summary (cluster RSS $(rss) kB)"
"$bench" report "${files[@]}" --set "profile=$mode" --set "chargerd_rss_kb=$(rss)" \
  --json "$out/latest.json" --html "$out/latest.html" || failed+=("report")
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
