#!/usr/bin/env bash
# A local multi-process cluster: one chargerd process per node, node i on
# 127.0.0.i (api :50051, raft :51051, metrics :9100), data under one folder.
#
#   scripts/cluster.sh start [--nodes N] [--shards S] [--fsync always|never] [--no-auth]
#                                        --no-auth (new cluster): TLS without bearer tokens
#   scripts/cluster.sh token ROLE [TTL]  print a token (charging|billing|admin; TTL e.g. 1h, default 1h)
#   scripts/cluster.sh status            nodes, shards, leaders, applied, lag
#   scripts/cluster.sh stop              graceful stop of every node (SIGTERM)
#   scripts/cluster.sh kill N            kill -9 node N
#   scripts/cluster.sh restart N [--no-wait]  (re)start node N with its data kept
#                                        (waits for every shard to have a leader unless --no-wait)
#   scripts/cluster.sh add               start node N+1; it joins and replicas move onto it
#   scripts/cluster.sh drain N           move every replica off node N (waits, bounded)
#   scripts/cluster.sh remove N          take drained node N out of the cluster and stop it
#   scripts/cluster.sh wipe              stop, then delete the data folder
#
# Secure by default. The first start makes a local CA and certificates in
# $CLUSTER_DIR/certs (`chargerd certs`) and a token key pair in
# $CLUSTER_DIR/jwt.pem / jwt.pub.pem (`chargerd keygen`): every node runs TLS
# and [auth] (bearer tokens, roles). Talk to the cluster with
#   export CHARGING_CA=.cluster/certs/ca.pem
#   export CHARGING_TOKEN=$(scripts/cluster.sh token admin)
#   chargectl --endpoint https://127.0.0.1:50051 status
# --no-auth on the first start: TLS without tokens. CLUSTER_INSECURE=1 on the
# first start: plaintext, no TLS and no tokens. This script's own chargectl
# calls carry an admin token (unless CHARGING_TOKEN is set).
# Cluster changes (drain, remove; chargectl node add|drain|remove) go to a
# node's admin listener, 127.0.0.i:52051, with the operator's client
# certificate certs/client-ops.pem / .key (CHARGING_CERT / CHARGING_KEY);
# the public port refuses them from anyone but a node.
#
# Environment: CLUSTER_DIR (default .cluster), CHARGERD / CHARGECTL (binaries;
# default: target/release, built on first use), CLUSTER_READY_TIMEOUT (s, 60).
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${CLUSTER_DIR:-.cluster}
ready_timeout=${CLUSTER_READY_TIMEOUT:-60}
chargerd=${CHARGERD:-target/release/chargerd}
chargectl=${CHARGECTL:-target/release/chargectl}

usage() { sed -n '2,30p' "$0"; exit "${1:-64}"; }

build() {
  if [[ -z "${CHARGERD:-}" && ! -x "$chargerd" ]] || [[ -z "${CHARGECTL:-}" && ! -x "$chargectl" ]]; then
    echo "== building chargerd and chargectl (release)" >&2
    cargo build --release -q --bin chargerd --bin chargectl
  fi
  auth_env
}

# A cluster with bearer tokens (the default) has its token keys in $dir; this
# script's own chargectl calls then carry an admin token (unless
# CHARGING_TOKEN is set).
auth_on() { [[ -f "$dir/jwt.pem" ]]; }
auth_env() {
  if auth_on && [[ -z "${CHARGING_TOKEN:-}" ]]; then
    CHARGING_TOKEN=$("$chargerd" token --key "$dir/jwt.pem" --role admin --ttl 1h)
    export CHARGING_TOKEN
  fi
}

# The [auth] section of a node's config (nothing for a cluster without tokens).
auth_section() {
  auth_on || return 0
  printf '\n[auth]\nenabled = true\nkeys = ["%s"]\naudience = "charging"\nnode_key = "%s"\n' \
    "$dir/jwt.pub.pem" "$dir/jwt.pem"
}

nodes_of() { cat "$dir/nodes" 2>/dev/null || echo 0; }
# A cluster is secure (TLS) unless it was made with CLUSTER_INSECURE=1.
secure() { [[ ! -f "$dir/insecure" ]]; }
scheme() { if secure; then echo https; else echo http; fi; }
# chargectl reads the CA from the environment, as a user's shell would (and
# must not have one for a plaintext cluster: it would dial https).
use_ca() { if secure; then export CHARGING_CA="$dir/certs/ca.pem"; else unset CHARGING_CA; fi; }
# Node certificates (and the CA, on the first call) for the given ids.
make_certs() { # ids
  secure || return 0
  local id
  for id in "$@"; do
    # Node i is reached at 127.0.0.i: its certificate names that address.
    "$chargerd" certs --dir "$dir/certs" --nodes "$id" --hosts "127.0.0.$id" --clients ops >/dev/null
  done
}
# The [tls] section of a node's config (paths relative to node<N>/node.toml),
# or `insecure = true` for a plaintext cluster.
tls_section() { # id
  if secure; then
    printf '\n[tls]\nca = "../certs/ca.pem"\ncert = "../certs/node%s.pem"\nkey = "../certs/node%s.key"\n' "$1" "$1"
  fi
}
pid_of() { cat "$dir/node$1/pid" 2>/dev/null || true; }
alive() { local p; p=$(pid_of "$1"); [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; }

# Common keys of node $1's config.
config_head() { # id shards fsync
  local id=$1 shards=$2 fsync=$3
  echo "node_id = $id"
  secure || echo "insecure = true"
  echo "public_addr = \"127.0.0.$id:50051\""
  echo "internal_addr = \"127.0.0.$id:51051\""
  echo "metrics_addr = \"127.0.0.$id:9100\""
  # Cluster changes (add/drain/remove node, drop replica) from operators
  # only there, with a client certificate; the public port refuses them.
  secure && echo "admin_addr = \"127.0.0.$id:52051\""
  echo "data_dir = \"$dir/node$id/data\""
  echo "shards = $shards"
  echo "fsync = \"$fsync\""
}

write_config() { # id nodes shards fsync: an initial member
  local id=$1 n=$2 f="$dir/node$1/node.toml"
  mkdir -p "$dir/node$id"
  {
    config_head "$id" "$3" "$4"
    echo "replication_factor = $n"
    for p in $(seq 1 "$n"); do
      printf '\n[[peers]]\nid = %s\npublic = "127.0.0.%s:50051"\ninternal = "127.0.0.%s:51051"\n' "$p" "$p" "$p"
    done
    tls_section "$id"
    auth_section
  } >"$f"
}

write_join_config() { # id shards fsync via: a node added to the running cluster
  mkdir -p "$dir/node$1"
  { config_head "$1" "$2" "$3"; echo "join = \"$4\""; tls_section "$1"; auth_section; } >"$dir/node$1/node.toml"
}

# A live node's public address (to send admin calls and joins through).
# chargectl for a cluster change: at a live node's admin listener with the
# operator's client certificate (certs/client-ops), or its public port on a
# cluster made without admin listeners.
ctl_admin() {
  local via
  via=$(any_live) || return 1
  local id=${via#127.0.0.}
  id=${id%%:*}
  if grep -q '^admin_addr' "$dir/node$id/node.toml" 2>/dev/null; then
    CHARGING_CERT="$dir/certs/client-ops.pem" CHARGING_KEY="$dir/certs/client-ops.key" \
      "$chargectl" --endpoint "https://127.0.0.$id:52051" "$@"
  else
    "$chargectl" --endpoint "$(scheme)://$via" "$@"
  fi
}

any_live() {
  local n id
  n=$(nodes_of)
  for id in $(seq 1 "$n"); do
    if alive "$id"; then echo "127.0.0.$id:50051"; return 0; fi
  done
  echo "no live node" >&2
  return 1
}

# Polls `chargectl node list --json` until the python predicate (given the
# list of nodes as `nodes`) holds; bounded by ready_timeout.
wait_nodes() { # predicate description
  local deadline=$((SECONDS + ready_timeout)) via
  while ((SECONDS < deadline)); do
    via=$(any_live) || return 1
    if "$chargectl" --endpoint "$(scheme)://$via" node list --json 2>/dev/null |
      python3 -c "import json,sys; nodes=json.load(sys.stdin)['nodes']; sys.exit(0 if ($1) else 1)" 2>/dev/null; then
      echo "$2"
      return 0
    fi
    sleep 0.5
  done
  echo "timed out after ${ready_timeout}s waiting: $2" >&2
  return 1
}

launch() { # id
  local id=$1
  if alive "$id"; then echo "node $id already running (pid $(pid_of "$id"))"; return; fi
  "$chargerd" start --config "$dir/node$id/node.toml" >>"$dir/node$id/log" 2>&1 &
  echo $! >"$dir/node$id/pid"
  echo "node $id: pid $! api $(scheme)://127.0.0.$id:50051 metrics http://127.0.0.$id:9100/metrics log $dir/node$id/log"
}

wait_ready() { # waits until every shard has a leader, bounded
  local deadline=$((SECONDS + ready_timeout)) n
  n=$(nodes_of)
  while ((SECONDS < deadline)); do
    for id in $(seq 1 "$n"); do
      alive "$id" || continue
      if "$chargectl" --endpoint "$(scheme)://127.0.0.$id:50051" status --json 2>/dev/null |
        python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["shard_status"] and all(x.get("leader",0) for x in s["shard_status"]) else 1)' 2>/dev/null; then
        echo "ready: every shard has a leader"
        return 0
      fi
    done
    sleep 0.5
  done
  echo "not ready after ${ready_timeout}s; see $dir/node*/log" >&2
  return 1
}

cmd=${1:-}
[[ -n "$cmd" ]] || usage
use_ca
shift
case "$cmd" in
  start)
    # Tokens on unless --no-auth, or a plaintext cluster (CLUSTER_INSECURE)
    # without an explicit --auth.
    n=3 shards=16 fsync=always auth=
    while (($#)); do
      case "$1" in
        --auth) auth=1; shift ;;
        --no-auth) auth=0; shift ;;
        --nodes) n=$2; shift 2 ;;
        --shards) shards=$2; shift 2 ;;
        --fsync) fsync=$2; shift 2 ;;
        *) usage ;;
      esac
    done
    if [[ -z "$auth" ]]; then
      if [[ -n "${CLUSTER_INSECURE:-}" ]]; then auth=0; else auth=1; fi
    fi
    build
    mkdir -p "$dir"
    if [[ -f "$dir/nodes" ]]; then
      n=$(nodes_of)
      echo "== restarting the existing $n-node cluster in $dir (scripts/cluster.sh wipe for a new one)"
    else
      echo "== new $n-node cluster in $dir: $shards shards, fsync $fsync"
      if [[ -n "${CLUSTER_INSECURE:-}" ]]; then
        touch "$dir/insecure"
        echo "   INSECURE: plaintext, no TLS (CLUSTER_INSECURE is set)"
      else
        make_certs $(seq 1 "$n")
        echo "   TLS: CA and certificates in $dir/certs; export CHARGING_CA=$dir/certs/ca.pem"
      fi
      if ((auth)); then
        "$chargerd" keygen --out "$dir/jwt" >/dev/null
        auth_env
        tok_cmd="scripts/cluster.sh token admin"
        [[ "$dir" == .cluster ]] || tok_cmd="CLUSTER_DIR=$dir $tok_cmd"
        echo "   tokens: keys in $dir/jwt*.pem; export CHARGING_TOKEN=\$($tok_cmd)"
      else
        echo "   NO TOKENS: [auth] off (--no-auth or CLUSTER_INSECURE); anyone reaching a node may call anything"
      fi
      echo "$n" >"$dir/nodes"
      for id in $(seq 1 "$n"); do write_config "$id" "$n" "$shards" "$fsync"; done
      use_ca # again: secure or not is decided only now
    fi
    for id in $(seq 1 "$n"); do launch "$id"; done
    wait_ready
    ;;
  status)
    build
    n=$(nodes_of)
    for id in $(seq 1 "$n"); do
      if alive "$id"; then echo "node $id: up (pid $(pid_of "$id"))"; else echo "node $id: down"; fi
    done
    for id in $(seq 1 "$n"); do
      if alive "$id"; then exec "$chargectl" --endpoint "$(scheme)://127.0.0.$id:50051" status; fi
    done
    ;;
  stop)
    n=$(nodes_of)
    for id in $(seq 1 "$n"); do alive "$id" && kill -TERM "$(pid_of "$id")"; done
    deadline=$((SECONDS + 20))
    for id in $(seq 1 "$n"); do
      while alive "$id" && ((SECONDS < deadline)); do sleep 0.1; done
      if alive "$id"; then echo "node $id did not stop in time: kill -9"; kill -9 "$(pid_of "$id")"; fi
      rm -f "$dir/node$id/pid"
    done
    echo "stopped"
    ;;
  kill)
    id=${1:?node number}
    if alive "$id"; then kill -9 "$(pid_of "$id")"; echo "node $id: killed (-9)"; else echo "node $id: not running"; fi
    rm -f "$dir/node$id/pid"
    ;;
  restart)
    id=${1:?node number}
    build
    if alive "$id"; then kill -TERM "$(pid_of "$id")"; while alive "$id"; do sleep 0.1; done; fi
    launch "$id"
    # With every node down, the first one back has no majority to elect.
    [[ "${2:-}" == --no-wait ]] || wait_ready
    ;;
  add)
    build
    n=$(nodes_of)
    ((n > 0)) || { echo "no cluster in $dir: scripts/cluster.sh start first" >&2; exit 1; }
    id=$((n + 1))
    via=$(any_live)
    shards=$(sed -n 's/^shards = //p' "$dir/node1/node.toml")
    fsync=$(sed -n 's/^fsync = "\(.*\)"/\1/p' "$dir/node1/node.toml")
    make_certs "$id"
    write_join_config "$id" "$shards" "$fsync" "$via"
    echo "$id" >"$dir/nodes"
    launch "$id"
    wait_nodes "any(x['node_id'] == $id and x['replicas'] > 0 for x in nodes)" \
      "node $id joined; the placement driver is moving replicas onto it (chargectl node list)"
    ;;
  drain)
    id=${1:?node number}
    build
    ctl_admin node drain "$id"
    wait_nodes "all(x['replicas'] == 0 for x in nodes if x['node_id'] == $id)" \
      "node $id drained: it holds no replica"
    ;;
  remove)
    id=${1:?node number}
    build
    ctl_admin node remove "$id"
    if alive "$id"; then kill -TERM "$(pid_of "$id")"; fi
    echo "node $id removed from the cluster (its id is retired)"
    ;;
  token)
    role=${1:-}
    [[ "$role" =~ ^(charging|billing|admin)$ ]] || { echo "token: role charging, billing or admin, got '$role'" >&2; exit 64; }
    build
    auth_on || { echo "no token keys in $dir: it was made with --no-auth or CLUSTER_INSECURE=1 (tokens are not checked)" >&2; exit 1; }
    "$chargerd" token --key "$dir/jwt.pem" --role "$role" --ttl "${2:-1h}"
    ;;
  wipe)
    "$0" stop || true
    rm -rf "$dir"
    echo "wiped $dir"
    ;;
  -h|--help) usage 0 ;;
  *) usage ;;
esac
