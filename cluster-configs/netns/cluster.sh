#!/usr/bin/env bash
# A kvpool cluster in network namespaces (netns.sh): kvpool-coordinator in
# PREFIX-c on 198.18.0.10:7400, one kvpool-agent in each of PREFIX-a1..a3,
# all over UCX's TCP transport (netns.sh forces it). Workers run in
# PREFIX-w1/w2 with `netns.sh exec PREFIX w1 ...` and reach the coordinator
# at 198.18.0.10:7400.
#
# Usage (as root, build/bin holding kvpool-coordinator and kvpool-agent):
#   cluster.sh start PREFIX RUNDIR [coordinator flags...]
#   cluster.sh stop PREFIX            (netns.sh down PREFIX also stops it)
# Environment: KVPOOL_BIN (default build/bin of this checkout),
#   KVPOOL_AGENTS (default "a1 a2 a3"), KVPOOL_POOL_SIZE (default 64MiB),
#   KVPOOL_LOG_LEVEL (default info).
# Logs go to RUNDIR/NODE.log, pids to RUNDIR/NODE.pid. `start` returns once
# every agent has registered (30 s at most; exit 1 otherwise).
#
# By hand:
#   p=$(netns.sh up); cluster.sh start $p /tmp/$p --agent-timeout 2s
#   netns.sh exec $p w1 build/bin/kvbench ...
#   netns.sh down $p

KVPOOL_NETNS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=netns.sh
source "$KVPOOL_NETNS_DIR/netns.sh"

KVPOOL_COORDINATOR_ADDR="$(netns_addr c):7400"

cluster_start() {
  local p="$1" run="$2" n i
  shift 2
  local bin="${KVPOOL_BIN:-$KVPOOL_NETNS_DIR/../../build/bin}"
  local agents="${KVPOOL_AGENTS:-a1 a2 a3}" level="${KVPOOL_LOG_LEVEL:-info}"
  mkdir -p "$run"
  netns_exec "$p" c "$bin/kvpool-coordinator" --listen "$KVPOOL_COORDINATOR_ADDR" --log-level "$level" "$@" \
    >"$run/c.log" 2>&1 &
  # An agent that finds no coordinator exits: start them once it listens.
  for i in $(seq 300); do
    grep -q 'coordinator listening' "$run/c.log" 2>/dev/null && break
    sleep 0.1
  done
  grep -q 'coordinator listening' "$run/c.log" || { echo "cluster: the coordinator did not start" >&2; return 1; }
  for n in $agents; do
    netns_exec "$p" "$n" "$bin/kvpool-agent" --coordinator "$KVPOOL_COORDINATOR_ADDR" \
      --pool-size "${KVPOOL_POOL_SIZE:-64MiB}" --log-level "$level" >"$run/$n.log" 2>&1 &
  done
  local want
  want=$(echo "$agents" | wc -w)
  for i in $(seq 300); do
    if [ "$(grep -cE 'agent [0-9]+ registered:' "$run/c.log" 2>/dev/null)" -ge "$want" ]; then
      # $! would be a subshell's pid: each node's only process is the server.
      for n in c $agents; do ip netns pids "$p-$n" >"$run/$n.pid"; done
      return 0
    fi
    sleep 0.1
  done
  echo "cluster: only $(grep -cE 'agent [0-9]+ registered:' "$run/c.log") of $want agents registered in 30 s" >&2
  return 1
}

cluster_stop() {
  local p="$1" n pids
  for n in c a1 a2 a3; do
    pids=$(ip netns pids "$p-$n" 2>/dev/null)
    [ -n "$pids" ] && kill -CONT $pids 2>/dev/null && kill -TERM $pids 2>/dev/null
  done
  return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  verb="${1:-}"
  shift || true
  case "$verb" in
    start | stop) "cluster_$verb" "$@" ;;
    *)
      sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
      exit 2
      ;;
  esac
fi
