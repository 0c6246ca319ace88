#!/usr/bin/env bash
# The 3-node container cluster of compose.yaml (image chargerd:dev, FROM scratch).
# Node i: api 127.0.0.1:2505i, metrics http://127.0.0.1:2910i/metrics.
#
#   scripts/compose.sh up            build the image if missing, start node1-3, wait for leaders
#   scripts/compose.sh down [-v]     stop and remove the containers (-v: and the data volumes)
#   scripts/compose.sh smoke         from the host: charge through all 3 nodes, kill the leader
#                                    of the account's shard, charge again, restart it, catch-up
#   scripts/compose.sh status        chargectl status through the first node that answers
#   scripts/compose.sh token ROLE [TTL]  print a bearer token (charging|billing|admin; TTL default 1h)
#   scripts/compose.sh ps | logs N
#   scripts/compose.sh kill N | start N | stop N | pause N | unpause N
#   scripts/compose.sh disconnect N | connect N   cut node N off the network / reattach it
#   scripts/compose.sh partition N M [--oneway]   drop node N <-> M traffic (--oneway: N -> M only)
#   scripts/compose.sh isolate N     cut node N off its peers; clients still reach it
#   scripts/compose.sh heal          remove every partition rule (iptables DOCKER-USER, needs root)
#   scripts/compose.sh add N         start node4 or node5 (profile scale): it joins, replicas move
#   scripts/compose.sh drain N       move every replica off node N (waits)
#
# Secure: TLS and bearer tokens. `up` makes the CA, node certificates and an
# ES256 token key pair in deploy/certs on first use (the image's chargerd);
# from the host: export CHARGING_CA=deploy/certs/ca.pem
#                export CHARGING_TOKEN=$(scripts/compose.sh token admin)
# This script's own chargectl calls (and smoke.py's) carry an admin token
# unless CHARGING_TOKEN is set.
#
# Environment: CHARGERD_IMAGE (chargerd:dev), COMPOSE_PROJECT (chargerd),
# READY_TIMEOUT (s, 90), CHARGECTL (default target/release/chargectl).
set -euo pipefail
cd "$(dirname "$0")/.."

project=${COMPOSE_PROJECT:-chargerd}
image=${CHARGERD_IMAGE:-chargerd:dev}
export CHARGERD_IMAGE=$image
ready_timeout=${READY_TIMEOUT:-90}
chargectl_given=${CHARGECTL:+1}
chargectl=${CHARGECTL:-${CARGO_TARGET_DIR:-target}/release/chargectl}
export CHARGECTL=$chargectl COMPOSE_PROJECT=$project
# The cluster runs TLS; chargectl (and smoke.py through it) read the CA here.
certs=deploy/certs
export CHARGING_CA=$certs/ca.pem

usage() { sed -n '2,28p' "$0"; exit "${1:-64}"; }
die() { echo "compose.sh: $*" >&2; exit 1; }

# `docker compose` (v2 plugin) if present, else docker-compose (v1.28+ for profiles).
if docker compose version >/dev/null 2>&1; then
  dc=(docker compose)
elif command -v docker-compose >/dev/null; then
  dc=(docker-compose)
else
  die "neither 'docker compose' nor 'docker-compose' is installed"
fi
compose() { "${dc[@]}" -p "$project" -f compose.yaml "$@"; }

node_arg() { # validates N, prints the service name
  [[ "${1:-}" =~ ^[1-5]$ ]] || die "node number 1-5 expected, got '${1:-}'"
  echo "node$1"
}
container() { # container id of service nodeN (running or not)
  local id
  id=$(docker ps -aq --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1")
  [[ -n "$id" ]] || die "$1 has no container (scripts/compose.sh up first)"
  echo "$id"
}
network() { echo "${project}_charging"; }

# Partitions are DROP rules in the host's DOCKER-USER chain (container-to-
# container traffic on the bridge passes it with br_netfilter), tagged so that
# `heal` removes exactly these. Node i is 172.28.0.1i; clients come through the
# bridge gateway 172.28.0.1, which no rule names.
chaos_tag=chargerd-chaos-$project
drop_rule() { # N M: drop packets from node N to node M
  command -v iptables >/dev/null || die "partition: iptables is not installed"
  iptables -I DOCKER-USER -s "172.28.0.1$1" -d "172.28.0.1$2" \
    -m comment --comment "$chaos_tag" -j DROP ||
    die "partition: iptables refused (root, and Docker's DOCKER-USER chain, are needed)"
}

ensure_chargectl() {
  if [[ -z "$chargectl_given" && ! -x "$chargectl" ]]; then
    echo "== building chargectl (release)"
    cargo build --release -q --bin chargectl
  fi
  [[ -x "$chargectl" ]] || die "$chargectl is not executable"
}

ensure_image() {
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    [[ "$image" == chargerd:dev ]] || die "image $image is missing"
    echo "== image $image missing: scripts/image.sh"
    scripts/image.sh
  fi
}

# The image's own chargerd, as the containers' user, on deploy/certs
# (mounted at /certs): the keys it writes are readable by the nodes, and
# only by them and root.
image_chargerd() { # mount-mode args...
  local mode=$1
  shift
  docker run --rm --network none --user 65532:65532 -v "$PWD/$certs:/certs:$mode" \
    --entrypoint /usr/local/bin/chargerd "$image" "$@"
}

# The CA and node certificates, and the token key pair (each once).
ensure_certs() {
  [[ -f "$certs/node5.pem" && -f "$certs/client-ops.pem" && -f "$certs/jwt.pub.pem" ]] && return 0
  mkdir -p "$certs"
  chmod 0777 "$certs"
  if [[ ! -f "$certs/node5.pem" || ! -f "$certs/client-ops.pem" ]]; then
    image_chargerd rw certs --dir /certs --nodes 1,2,3,4,5 --clients ops >/dev/null ||
      die "making certificates in $certs failed"
    echo "== TLS: CA and node certificates in $certs (export CHARGING_CA=$certs/ca.pem)"
  fi
  if [[ ! -f "$certs/jwt.pub.pem" ]]; then
    image_chargerd rw keygen --out /certs/jwt >/dev/null ||
      die "making the token keys in $certs failed"
    echo "== tokens: ES256 key pair in $certs/jwt*.pem (export CHARGING_TOKEN=\$(scripts/compose.sh token admin))"
  fi
  chmod 0755 "$certs"
}

# Prints a token for roles $1 (TTL $2), signed by the image's chargerd with
# deploy/certs/jwt.pem (readable only by the containers' user).
token() { # role ttl
  [[ -f "$certs/jwt.pub.pem" ]] || die "no token keys in $certs: scripts/compose.sh up first"
  image_chargerd ro token --key /certs/jwt.pem --role "$1" --ttl "$2" ||
    die "signing a token failed"
}

# This script's chargectl calls (and smoke.py's) carry an admin token.
ensure_token() {
  [[ -z "${CHARGING_TOKEN:-}" ]] || return 0
  ensure_image >&2
  CHARGING_TOKEN=$(token admin 1h)
  export CHARGING_TOKEN
}

# The first node whose published API answers.
any_endpoint() {
  local i
  for i in 1 2 3 4 5; do
    if "$chargectl" --endpoint "https://127.0.0.1:2505$i" status >/dev/null 2>&1; then
      echo "https://127.0.0.1:2505$i"
      return 0
    fi
  done
  die "no node answers on 127.0.0.1:25051-5"
}

# Polls `chargectl node list --json` until the python predicate over `nodes` holds.
wait_node() { # predicate description
  local deadline=$((SECONDS + ready_timeout))
  while ((SECONDS < deadline)); do
    if "$chargectl" --endpoint "$(any_endpoint)" node list --json 2>/dev/null |
      python3 -c "import json,sys; nodes=json.load(sys.stdin)['nodes']; sys.exit(0 if ($1) else 1)" 2>/dev/null; then
      echo "$2"
      return 0
    fi
    sleep 1
  done
  die "timed out after ${ready_timeout}s waiting: $2"
}

cmd=${1:-}
[[ -n "$cmd" ]] || usage
shift
case "$cmd" in
  up)
    ensure_chargectl
    ensure_image
    ensure_certs
    ensure_token
    t0=$SECONDS
    compose up -d --no-build node1 node2 node3
    if ! python3 deploy/smoke.py ready --timeout "$ready_timeout"; then
      echo "compose.sh: not ready; see scripts/compose.sh logs N (down -v starts a fresh cluster)" >&2
      exit 1
    fi
    echo "up in $((SECONDS - t0)) s: api 127.0.0.1:25051-25053, metrics 127.0.0.1:29101-29103"
    ;;
  down)
    args=()
    case "${1:-}" in
      -v | --volumes) args=(--volumes) ;;
      "") ;;
      *) usage ;;
    esac
    # With the profile, so that node4/node5 (if started) go too.
    compose --profile scale down --remove-orphans "${args[@]}"
    # No partition rule outlives its cluster.
    if command -v iptables >/dev/null && iptables -S DOCKER-USER 2>/dev/null | grep -q -- "--comment $chaos_tag"; then
      "$0" heal
    fi
    ;;
  smoke)
    ensure_chargectl
    ensure_token
    python3 deploy/smoke.py run
    ;;
  status)
    ensure_chargectl
    ensure_token
    for i in 1 2 3 4 5; do
      if "$chargectl" --endpoint "https://127.0.0.1:2505$i" --deadline-ms 1000 --max-retries 0 status 2>/dev/null; then exit 0; fi
    done
    die "no node answers on 127.0.0.1:25051-25055"
    ;;
  token)
    role=${1:-}
    [[ "$role" =~ ^(charging|billing|admin)$ ]] || die "token: role charging, billing or admin, got '$role'"
    ensure_image >&2
    token "$role" "${2:-1h}"
    ;;
  ps) compose --profile scale ps ;;
  logs) compose logs --no-color "$(node_arg "${1:-}")" ;;
  kill)
    s=$(node_arg "${1:-}")
    docker kill "$(container "$s")" >/dev/null
    echo "$s: killed (SIGKILL)"
    ;;
  start)
    s=$(node_arg "${1:-}")
    docker start "$(container "$s")" >/dev/null
    echo "$s: started"
    ;;
  stop)
    s=$(node_arg "${1:-}")
    docker stop -t 20 "$(container "$s")" >/dev/null
    echo "$s: stopped (SIGTERM)"
    ;;
  pause | unpause)
    s=$(node_arg "${1:-}")
    docker "$cmd" "$(container "$s")" >/dev/null
    echo "$s: ${cmd}d"
    ;;
  disconnect)
    s=$(node_arg "${1:-}")
    docker network disconnect "$(network)" "$(container "$s")"
    echo "$s: disconnected from $(network) (its published ports go dead too)"
    ;;
  connect)
    n=${1:-}
    s=$(node_arg "$n")
    docker network connect --ip "172.28.0.1$n" "$(network)" "$(container "$s")"
    echo "$s: reconnected to $(network) as 172.28.0.1$n"
    ;;
  partition)
    a=${1:-} b=${2:-}
    node_arg "$a" >/dev/null
    node_arg "$b" >/dev/null
    [[ "$a" != "$b" ]] || die "partition: two different nodes"
    drop_rule "$a" "$b"
    if [[ "${3:-}" == --oneway ]]; then
      echo "node$a -> node$b: dropped (one way)"
    else
      drop_rule "$b" "$a"
      echo "node$a <-> node$b: dropped"
    fi
    ;;
  isolate)
    n=${1:-}
    node_arg "$n" >/dev/null
    for m in 1 2 3 4 5; do
      if [[ "$m" != "$n" ]]; then
        drop_rule "$n" "$m"
        drop_rule "$m" "$n"
      fi
    done
    echo "node$n: cut off from its peers (clients still reach it)"
    ;;
  heal)
    command -v iptables >/dev/null || die "heal: iptables is not installed"
    n=0
    while read -r rule; do
      # shellcheck disable=SC2086 # the rule's words, as iptables -S prints them
      iptables ${rule/-A DOCKER-USER/-D DOCKER-USER}
      n=$((n + 1))
    done < <(iptables -S DOCKER-USER | grep -- "--comment $chaos_tag" || true)
    echo "healed: $n partition rule(s) removed"
    ;;
  add)
    n=${1:-}
    [[ "$n" =~ ^[45]$ ]] || die "add: node 4 or 5 (profile scale), got '$n'"
    ensure_image
    ensure_chargectl
    ensure_token
    compose --profile scale up -d "node$n"
    wait_node "any(x['node_id'] == $n and x['replicas'] > 0 for x in nodes)" \
      "node$n joined; replicas are moving onto it ($0 status)"
    ;;
  drain)
    n=${1:-}
    node_arg "$n" >/dev/null
    ensure_chargectl
    ensure_token
    # A cluster change: at the admin listener, with the operator's certificate.
    admin_ep=$(any_endpoint | sed 's/:2505/:2605/')
    CHARGING_CERT=$certs/client-ops.pem CHARGING_KEY=$certs/client-ops.key \
      "$chargectl" --endpoint "$admin_ep" node drain "$n"
    wait_node "all(x['replicas'] == 0 for x in nodes if x['node_id'] == $n)" \
      "node$n drained: it holds no replica"
    ;;
  -h | --help) usage 0 ;;
  *) usage ;;
esac
