#!/usr/bin/env bash
# Network namespaces for kvpool fault tests and by-hand experiments.
#
# Topology (one set per PREFIX, so concurrent runs never collide):
#   PREFIX-hub        a namespace holding only the bridge br0
#   PREFIX-c          coordinator   198.18.0.10
#   PREFIX-a1..a3     agents        198.18.0.11 .. .13
#   PREFIX-w1, -w2    workers       198.18.0.21, .22
# Each node namespace has lo and eth0, a veth whose other end (named
# PREFIX-NODE) sits in the hub, on br0. The bridge lives in its own namespace
# and nothing has a default route: no packet can leave these namespaces, and
# the root namespace's interfaces and firewall are never touched.
#
# Usage (as root):
#   netns.sh check                     exit 0 if namespaces can be made, else 77
#   netns.sh up PREFIX                 create the namespaces (prints PREFIX)
#   netns.sh down PREFIX               kill every process in them, delete them
#   netns.sh exec PREFIX NODE CMD...   run CMD in NODE with UCX forced onto TCP
#   netns.sh cut PREFIX NODE [PEER]    drop NODE's traffic (with PEER only, or
#                                      all of it: its veth goes down)
#   netns.sh heal PREFIX NODE [PEER]   undo cut
#   netns.sh slow PREFIX NODE RATE     tbf RATE (e.g. 4mbit) on NODE's link, both ways
#   netns.sh fast PREFIX NODE          remove the tbf
#   netns.sh addr NODE                 NODE's address
# Sourcing it defines the same operations as functions netns_<verb>.
#
# Namespaces share IPC: processes in two of them still reach each other over
# shared memory, and a cut link would change nothing. `exec` therefore sets
# UCX_TLS=tcp and UCX_NET_DEVICES=eth0 (tests also assert the transport used).

KVPOOL_NETNS_NODES=(c a1 a2 a3 w1 w2)

netns_addr() {
  case "$1" in
    c) echo 198.18.0.10 ;;
    a1) echo 198.18.0.11 ;;
    a2) echo 198.18.0.12 ;;
    a3) echo 198.18.0.13 ;;
    w1) echo 198.18.0.21 ;;
    w2) echo 198.18.0.22 ;;
    *) echo "netns: unknown node '$1'" >&2; return 1 ;;
  esac
}

netns_check() {
  local probe="kvnchk$$"
  command -v ip >/dev/null && command -v tc >/dev/null || return 77
  [ "$(id -u)" -eq 0 ] || return 77
  ip netns add "$probe" 2>/dev/null || return 77
  ip netns del "$probe"
  return 0
}

# A prefix unique to this run: short, since interface names stop at 15 bytes.
netns_new_prefix() { printf 'kvn%05d' "$(( ($$ + RANDOM) % 100000 ))"; }

netns_up() {
  local p="$1" n
  [ -n "$p" ] || { echo "netns up: PREFIX missing" >&2; return 2; }
  ip netns add "$p-hub" || return 1
  ip -n "$p-hub" link set lo up
  ip -n "$p-hub" link add br0 type bridge
  ip -n "$p-hub" link set br0 up
  for n in "${KVPOOL_NETNS_NODES[@]}"; do
    ip netns add "$p-$n" || return 1
    ip -n "$p-$n" link set lo up
    # Created in the hub, the peer moved into the node as eth0.
    ip -n "$p-hub" link add "$p-$n" type veth peer name eth0 netns "$p-$n" || return 1
    ip -n "$p-hub" link set "$p-$n" master br0 up
    ip -n "$p-$n" addr add "$(netns_addr "$n")/24" dev eth0
    ip -n "$p-$n" link set eth0 up
  done
  echo "$p"
}

netns_down() {
  local p="$1" n pids
  [ -n "$p" ] || return 0
  for n in "${KVPOOL_NETNS_NODES[@]}" hub; do
    ip netns list 2>/dev/null | grep -q "^$p-$n\b" || continue
    # Only our processes live in our namespaces. SIGCONT first: a stopped
    # process would not die of SIGTERM until continued.
    pids=$(ip netns pids "$p-$n" 2>/dev/null)
    if [ -n "$pids" ]; then
      kill -CONT $pids 2>/dev/null
      kill -KILL $pids 2>/dev/null
    fi
  done
  for n in "${KVPOOL_NETNS_NODES[@]}" hub; do
    ip netns list 2>/dev/null | grep -q "^$p-$n\b" || continue
    ip netns del "$p-$n" 2>/dev/null
  done
  return 0
}

netns_exec() {
  local p="$1" n="$2"
  shift 2
  ip netns exec "$p-$n" env UCX_TLS=tcp UCX_NET_DEVICES=eth0 "$@"
}

netns_cut() {
  local p="$1" n="$2" peer="${3:-}" a
  if [ -z "$peer" ]; then
    ip -n "$p-hub" link set "$p-$n" down
    return
  fi
  a=$(netns_addr "$peer") || return 1
  ip netns exec "$p-$n" iptables -w -I INPUT -s "$a" -j DROP
  ip netns exec "$p-$n" iptables -w -I OUTPUT -d "$a" -j DROP
}

netns_heal() {
  local p="$1" n="$2" peer="${3:-}" a
  if [ -z "$peer" ]; then
    ip -n "$p-hub" link set "$p-$n" up
    return
  fi
  a=$(netns_addr "$peer") || return 1
  ip netns exec "$p-$n" iptables -w -D INPUT -s "$a" -j DROP
  ip netns exec "$p-$n" iptables -w -D OUTPUT -d "$a" -j DROP
}

# tbf on both ends of NODE's veth: eth0's egress (what NODE sends) and the
# hub end's egress (what NODE receives). No netem on this kernel.
netns_slow() {
  local p="$1" n="$2" rate="$3"
  tc -n "$p-$n" qdisc replace dev eth0 root tbf rate "$rate" burst 16kb latency 100ms
  tc -n "$p-hub" qdisc replace dev "$p-$n" root tbf rate "$rate" burst 16kb latency 100ms
}

netns_fast() {
  local p="$1" n="$2"
  tc -n "$p-$n" qdisc del dev eth0 root 2>/dev/null
  tc -n "$p-hub" qdisc del dev "$p-$n" root 2>/dev/null
  return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -u
  verb="${1:-}"
  shift || true
  case "$verb" in
    check) netns_check ;;
    up) netns_up "${1:-$(netns_new_prefix)}" ;;
    down | exec | cut | heal | slow | fast | addr) "netns_$verb" "$@" ;;
    *)
      sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
      exit 2
      ;;
  esac
fi
