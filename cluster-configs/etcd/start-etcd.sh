#!/usr/bin/env bash
# Starts an etcd for kvpool's coordinators on this machine (loopback):
#   start-etcd.sh 1 DIR     one member, client port 2379
#   start-etcd.sh 3 DIR     three members, client ports 2379, 22379, 32379
# Data and logs go under DIR; the members' pids go to DIR/pids (stop them
# with `kill $(cat DIR/pids)`). Prints the endpoints for --etcd and etcd://.
# Needs Debian's etcd-server (scripts/lib.sh installs it).
set -euo pipefail
n="${1:-1}"
dir="${2:?usage: start-etcd.sh 1|3 DIR}"
case "$n" in 1 | 3) ;; *) echo "members: 1 or 3" >&2; exit 2 ;; esac
mkdir -p "$dir"
: >"$dir/pids"
client_ports=(2379 22379 32379)
peer_ports=(2380 22380 32380)
initial=""
for ((i = 0; i < n; i++)); do
  initial+="${initial:+,}m$i=http://127.0.0.1:${peer_ports[$i]}"
done
endpoints=""
for ((i = 0; i < n; i++)); do
  c="http://127.0.0.1:${client_ports[$i]}"
  p="http://127.0.0.1:${peer_ports[$i]}"
  etcd --name "m$i" --data-dir "$dir/m$i" --listen-client-urls "$c" --advertise-client-urls "$c" \
    --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" --initial-cluster "$initial" \
    --initial-cluster-state new --initial-cluster-token kvpool --logger zap --log-outputs "$dir/m$i.log" \
    --log-level warn &
  echo $! >>"$dir/pids"
  endpoints+="${endpoints:+,}127.0.0.1:${client_ports[$i]}"
done
for ((i = 0; i < n; i++)); do
  for _ in $(seq 100); do
    if ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:${client_ports[$i]}" endpoint health >/dev/null 2>&1; then break; fi
    sleep 0.1
  done
done
echo "$endpoints"
