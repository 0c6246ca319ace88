#!/usr/bin/env bash
# Bytes per idle account: starts a fresh 3-process cluster (RF 3, every node
# holds every account), preloads N accounts with chargebench, waits for the
# replicas to settle (snapshot + log purge), and prints each node's RSS
# before and after, and (after - before) / N.
#
#   bench/mem.sh N [--fsync never|always] [--mode bulk|stream] [--settle S]
#
# Nodes listen on 127.0.1.{1,2,3} (api :50051, raft :51051, metrics :9100),
# so a dev cluster of scripts/cluster.sh (127.0.0.x) can run beside it.
# Environment: MEM_DIR (default /tmp/chargemem), CHARGERD / CHARGECTL /
# CHARGEBENCH (default target/release/...). Always stops its own nodes.
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:?usage: bench/mem.sh N [--fsync never|always] [--mode bulk|stream] [--settle S]}
shift
fsync=never mode=bulk settle=20
while (($#)); do
  case "$1" in
    --fsync) fsync=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --settle) settle=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 64 ;;
  esac
done
dir=${MEM_DIR:-/tmp/chargemem}
chargerd=${CHARGERD:-target/release/chargerd}
chargectl=${CHARGECTL:-target/release/chargectl}
chargebench=${CHARGEBENCH:-target/release/chargebench}
rm -rf "$dir"
mkdir -p "$dir"

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
}
trap stop_all EXIT

for id in 1 2 3; do
  mkdir -p "$dir/node$id"
  {
    echo "node_id = $id"
    echo "insecure = true   # a throwaway measurement cluster on loopback"
    echo "public_addr = \"127.0.1.$id:50051\""
    echo "internal_addr = \"127.0.1.$id:51051\""
    echo "metrics_addr = \"127.0.1.$id:9100\""
    echo "data_dir = \"$dir/node$id/data\""
    echo "shards = 16"
    echo "replication_factor = 3"
    echo "fsync = \"$fsync\""
    for p in 1 2 3; do
      printf '\n[[peers]]\nid = %s\npublic = "127.0.1.%s:50051"\ninternal = "127.0.1.%s:51051"\n' "$p" "$p" "$p"
    done
  } >"$dir/node$id/node.toml"
  "$chargerd" start --config "$dir/node$id/node.toml" >"$dir/node$id/log" 2>&1 &
  pids+=($!)
done

deadline=$((SECONDS + 90))
until "$chargectl" --endpoint http://127.0.1.1:50051 status --json 2>/dev/null |
  python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["shard_status"] and all(x.get("leader",0) for x in s["shard_status"]) else 1)' 2>/dev/null; do
  if ((SECONDS >= deadline)); then echo "cluster not ready" >&2; tail -5 "$dir"/node*/log >&2; exit 1; fi
  sleep 0.5
done
sleep 2
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
before=()
for p in "${pids[@]}"; do before+=("$(rss "$p")"); done
echo "== ready; RSS kB before: ${before[*]}  (load: $(cut -d' ' -f1-3 /proc/loadavg))"

t0=$SECONDS
"$chargebench" preload --endpoint http://127.0.1.1:50051 --endpoint http://127.0.1.2:50051 \
  --endpoint http://127.0.1.3:50051 --accounts "$n" --preload-mode "$mode" --quiet |
  tail -1 | tee "$dir/preload.json"
echo "== preload done in $((SECONDS - t0)) s; settling ${settle} s (snapshots, log purge)"
sleep "$settle"
after=()
for p in "${pids[@]}"; do after+=("$(rss "$p")"); done
echo "== RSS kB after: ${after[*]}  (load: $(cut -d' ' -f1-3 /proc/loadavg))"
for i in 0 1 2; do
  d=$(( (after[i] - before[i]) * 1024 ))
  echo "node $((i + 1)): +$((d / 1048576)) MiB = $((d / n)) bytes/account"
done
du -sh "$dir"/node*/data 2>/dev/null | sed 's/^/disk: /'
