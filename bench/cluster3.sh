#!/usr/bin/env bash
# A throwaway 3-process cluster for measurements (RF 3, 16 shards) on
# 127.0.1.{1,2,3} (api :50051, raft :51051, metrics :9100), beside any dev
# cluster of scripts/cluster.sh (127.0.0.x).
#
#   bench/cluster3.sh start [--fsync never|always]   fresh data, waits for leaders
#   bench/cluster3.sh stop                           SIGTERM, then SIGKILL after 10 s
#   bench/cluster3.sh pids                           the node pids
#   bench/cluster3.sh endpoints                      --endpoint flags for chargebench
#
# Environment: C3_DIR (default /tmp/chargec3), CHARGERD / CHARGECTL,
# C3_SNAPSHOT_LOGS (the nodes' snapshot_logs limit), C3_LIMITS (more
# [limits] lines, e.g. 'election_timeout_min_ms = 400\nelection_timeout_max_ms = 800'), C3_TLS=1 (TLS between
# the nodes and to clients, certificates in $C3_DIR/certs; then
# `export CHARGING_CA=$C3_DIR/certs/ca.pem` for chargebench and chargectl).
# C3_AUTH=1 (with C3_TLS=1) also turns bearer tokens on: keys in $C3_DIR/jwt*.pem;
# `bench/cluster3.sh token ROLE` prints a token (export CHARGING_TOKEN=...).
# Plaintext by default: the figures of record are measured without TLS.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${C3_DIR:-/tmp/chargec3}
scheme=http
[[ -n "${C3_TLS:-}" ]] && scheme=https
chargerd=${CHARGERD:-target/release/chargerd}
chargectl=${CHARGECTL:-target/release/chargectl}

case "${1:-}" in
  start)
    fsync=never
    [[ "${2:-}" == --fsync ]] && fsync=${3:?never|always}
    "$0" stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    mkdir -p "$dir"
    if [[ -n "${C3_TLS:-}" ]]; then
      # Node i is reached at 127.0.1.i: its certificate names that address.
      for id in 1 2 3; do
        "$chargerd" certs --dir "$dir/certs" --nodes "$id" --hosts "127.0.1.$id" >/dev/null
      done
      export CHARGING_CA=$dir/certs/ca.pem
    fi
    if [[ -n "${C3_AUTH:-}" ]]; then
      "$chargerd" keygen --out "$dir/jwt" >/dev/null
      CHARGING_TOKEN=$("$chargerd" token --key "$dir/jwt.pem" --role admin --ttl 1h)
      export CHARGING_TOKEN
    fi
    for id in 1 2 3; do
      mkdir -p "$dir/node$id"
      {
        echo "node_id = $id"
        [[ -n "${C3_TLS:-}" ]] || echo "insecure = true"
        echo "public_addr = \"127.0.1.$id:50051\""
        echo "internal_addr = \"127.0.1.$id:51051\""
        echo "metrics_addr = \"127.0.1.$id:9100\""
        echo "data_dir = \"$dir/node$id/data\""
        echo "shards = 16"
        echo "replication_factor = 3"
        echo "fsync = \"$fsync\""
        if [[ -n "${C3_SNAPSHOT_LOGS:-}${C3_LIMITS:-}" ]]; then
          printf '[limits]\n'
          [[ -z "${C3_SNAPSHOT_LOGS:-}" ]] || printf 'snapshot_logs = %s\n' "$C3_SNAPSHOT_LOGS"
          [[ -z "${C3_LIMITS:-}" ]] || printf '%b\n' "$C3_LIMITS"
        fi
        for p in 1 2 3; do
          printf '\n[[peers]]\nid = %s\npublic = "127.0.1.%s:50051"\ninternal = "127.0.1.%s:51051"\n' "$p" "$p" "$p"
        done
        if [[ -n "${C3_TLS:-}" ]]; then
          printf '\n[tls]\nca = "../certs/ca.pem"\ncert = "../certs/node%s.pem"\nkey = "../certs/node%s.key"\n' "$id" "$id"
        fi
        if [[ -n "${C3_AUTH:-}" ]]; then
          printf '\n[auth]\nenabled = true\nkeys = ["%s"]\naudience = "charging"\nnode_key = "%s"\n' "$dir/jwt.pub.pem" "$dir/jwt.pem"
        fi
      } >"$dir/node$id/node.toml"
      "$chargerd" start --config "$dir/node$id/node.toml" >"$dir/node$id/log" 2>&1 &
      echo $! >"$dir/node$id/pid"
    done
    deadline=$((SECONDS + 90))
    until "$chargectl" --endpoint $scheme://127.0.1.1:50051 status --json 2>/dev/null |
      python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["shard_status"] and all(x.get("leader",0) for x in s["shard_status"]) else 1)' 2>/dev/null; do
      if ((SECONDS >= deadline)); then echo "cluster not ready" >&2; "$0" stop; exit 1; fi
      sleep 0.5
    done
    # The demo tariffs of `chargerd dev` (the bench's workloads rate against them).
    e=(--endpoint $scheme://127.0.1.1:50051)
    "$chargectl" "${e[@]}" set-tariff --rg 32 --price bytes:1000000:1000000000 >/dev/null
    "$chargectl" "${e[@]}" set-tariff --rg 10 --price seconds:60:5000000000 >/dev/null
    "$chargectl" "${e[@]}" set-tariff --rg 100 --price units:1:10000000000 >/dev/null
    echo "ready (fsync $fsync): $("$0" pids)"
    ;;
  stop)
    for id in 1 2 3; do
      p=$(cat "$dir/node$id/pid" 2>/dev/null || true)
      [[ -n "$p" ]] && kill -TERM "$p" 2>/dev/null || true
    done
    for id in 1 2 3; do
      p=$(cat "$dir/node$id/pid" 2>/dev/null || true)
      [[ -z "$p" ]] && continue
      for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$p" 2>/dev/null || true
      rm -f "$dir/node$id/pid"
    done
    echo stopped
    ;;
  pids) cat "$dir"/node*/pid 2>/dev/null | tr '\n' ' ' ;;
  token) "$chargerd" token --key "$dir/jwt.pem" --role "${2:?charging|billing|admin}" --ttl "${3:-1h}" ;;
  endpoints) echo "--endpoint $scheme://127.0.1.1:50051 --endpoint $scheme://127.0.1.2:50051 --endpoint $scheme://127.0.1.3:50051" ;;
  *) sed -n '2,16p' "$0"; exit 64 ;;
esac
