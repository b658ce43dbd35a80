#!/usr/bin/env bash
# Network-fault tests of kvpool in network namespaces (issue 5). One case per
# run: run_test.sh CASE (the cases are the case_* functions below). ctest
# runs each as netns_CASE. Exit 0 pass, 1 fail, 77 skip (no privilege to
# make namespaces, or no iptables).
#
# Each run makes its own namespaces (cluster-configs/netns/netns.sh, prefix
# unique to the run), starts a coordinator and agents there (cluster.sh),
# drives kvpool_netns_worker processes through FIFOs, and deletes everything
# on exit, failed or not: deleting a namespace also drops its iptables rules
# and qdiscs, and netns_down kills every process inside first.

set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=../../cluster-configs/netns/cluster.sh
source "$ROOT/cluster-configs/netns/cluster.sh"
BIN="${KVPOOL_TEST_BIN_DIR:-$ROOT/build/bin}"
export KVPOOL_BIN="$BIN"
CASE="${1:-}"

if ! netns_check; then
  echo "SKIP: cannot create network namespaces here (needs root and iproute2)"
  exit 77
fi
if ! command -v iptables >/dev/null; then
  echo "SKIP: no iptables (apt-get install iptables; scripts/lib.sh lists it)"
  exit 77
fi
for b in kvpool-coordinator kvpool-agent kvpool_netns_worker; do
  [ -x "$BIN/$b" ] || { echo "FAIL: $BIN/$b not built"; exit 1; }
done

P="$(netns_new_prefix)"
RUN="$(mktemp -d "/tmp/kvpool-netns-$CASE.XXXXXX")"
T0=$(date +%s%N)

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  netns_down "$P"
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
    for f in "$RUN"/*.log "$RUN"/*.err; do
      [ -s "$f" ] || continue
      echo "---- tail of $(basename "$f")"
      tail -n 15 "$f"
    done
  fi
  [ -n "${KVPOOL_NETNS_KEEP:-}" ] && echo "kept $RUN" || rm -rf "$RUN"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { echo $((($(date +%s%N) - T0) / 1000000)); }
log() { echo "[$(printf '%6d' "$(now_ms)") ms] $*"; }
fail() {
  log "FAIL: $*"
  exit 1
}

netns_up "$P" >/dev/null || fail "could not create namespaces $P"

# ---- workers: kvpool_netns_worker behind two FIFOs each --------------------

declare -A WIN WOUT WPID
worker_start() {  # NAME NODE [worker flags...]
  local name="$1" node="$2" fd line
  shift 2
  mkfifo "$RUN/$name.in" "$RUN/$name.out"
  netns_exec "$P" "$node" "$BIN/kvpool_netns_worker" --coordinator "$KVPOOL_COORDINATOR_ADDR" "$@" \
    <"$RUN/$name.in" >"$RUN/$name.out" 2>"$RUN/$name.err" &
  WPID[$name]=$!
  exec {fd}>"$RUN/$name.in"
  WIN[$name]=$fd
  exec {fd}<"$RUN/$name.out"
  WOUT[$name]=$fd
  read -r -t 30 line <&"${WOUT[$name]}" || fail "worker $name did not start"
  [ "$line" = READY ] || fail "worker $name: $line"
}

# wsend NAME CMD: send without waiting; wrecv NAME [TIMEOUT_S]: the reply in R.
wsend() { echo "$2" >&"${WIN[$1]}"; }
wrecv() {
  local line
  while read -r -t "${2:-60}" line <&"${WOUT[$1]}"; do
    case "$line" in
      RESULT* | ERROR*)
        R="$line"
        log "$1: $R"
        return 0
        ;;
    esac
  done
  fail "worker $1: no reply within ${2:-60} s"
}
wcmd() {  # NAME CMD: send, wait, reply in R
  log "$1> $2"
  wsend "$1" "$2"
  wrecv "$1"
}
f() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$R"; }  # a field of R

check() {  # "ARITHMETIC" "what it means"
  if (($1)); then
    log "ok: $2"
  else
    fail "$2 (wanted $1) in: $R"
  fi
}

# eventually SECONDS NAME CMD CONDITION: repeat CMD until CONDITION (an
# arithmetic expression over $(f field)) holds.
eventually() {
  local until=$(($(date +%s) + $1)) name="$2" cmd="$3" cond="$4"
  while :; do
    wcmd "$name" "$cmd"
    if eval "(( $cond ))"; then
      log "ok: eventually $cond"
      return 0
    fi
    [ "$(date +%s)" -lt "$until" ] || fail "not within $1 s: $cond"
    sleep 0.5
  done
}

pid_of() { cat "$RUN/$1.pid"; }

# The transport must be TCP between namespaces, or a cut link tests nothing.
assert_tcp() {  # NAME
  wcmd "$1" "stats"
  local t
  t="$(f transports)"
  case "$t" in
    *posix* | *sysv* | *cma* | *xpmem* | *knem* | none | "") fail "worker $1 moved bytes over '$t', not TCP" ;;
    *tcp*) log "ok: transport in use is '$t'" ;;
    *) fail "worker $1: unexpected transport '$t'" ;;
  esac
}

# ---- cases ------------------------------------------------------------------

# A worker in its own namespace puts and gets through three agents, over TCP.
case_transport_is_tcp() {
  cluster_start "$P" "$RUN" --placement spread || fail "cluster did not start"
  worker_start w w1 --timeout-ms 3000
  wcmd w "put 1 12"
  check "$(f written) == 12" "12 blocks written across the namespaces"
  wcmd w "get 1 0 12"
  check "$(f ok) == 12 && $(f wrong) == 0" "all 12 read back and verified"
  assert_tcp w
  grep -q "UCX_TLS=tcp" "$RUN/a1.log" "$RUN/a2.log" "$RUN/a3.log" 2>/dev/null ||
    log "note: agents do not log UCX_TLS at info level"
}

# pooltool from a worker namespace works against the netns cluster like any
# other (the operations issue reuses this layout).
case_pooltool() {
  cluster_start "$P" "$RUN" --placement spread || fail "cluster did not start"
  worker_start w w1 --timeout-ms 3000
  wcmd w "put 1 12"
  check "$(f written) == 12" "12 blocks written"
  local out
  out=$(netns_exec "$P" w2 "$BIN/pooltool" --coordinator "$KVPOOL_COORDINATOR_ADDR" --json status) ||
    fail "pooltool status failed: $out"
  local alive blocks
  alive=$(echo "$out" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["agents_alive"])')
  blocks=$(echo "$out" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["blocks"])')
  check "$alive == 3 && $blocks == 12" "pooltool status from w2 sees 3 agents and 12 blocks"
  out=$(netns_exec "$P" w2 "$BIN/pooltool" --coordinator "$KVPOOL_COORDINATOR_ADDR" --json doctor) ||
    fail "pooltool doctor failed: $out"
  log "ok: pooltool doctor passes from w2 (probe over tcp)"
}

# Worker w1 cut off from agent a1 (iptables DROP in w1 both ways), then healed.
case_worker_agent_partition() {
  cluster_start "$P" "$RUN" --placement spread --agent-timeout 3s --heartbeat-interval 500ms ||
    fail "cluster did not start"
  worker_start w w1 --timeout-ms 2000
  wcmd w "put 1 12"
  check "$(f written) == 12" "12 blocks written"
  wcmd w "get 1 0 12"
  check "$(f ok) == 12" "all read back before the cut"
  assert_tcp w

  log "cut w1 <-> a1"
  netns_cut "$P" w1 a1
  wcmd w "get 1 0 12"
  check "$(f wrong) == 0" "no wrong bytes while cut"
  check "$(f failed) >= 1 && $(f ok) >= 4 && $(f ok) + $(f failed) + $(f miss) == 12" \
    "blocks on a1 fail, the others load"
  check "$(f max_ms) <= 3500" "each get ends within its 2 s deadline (+1.5 s)"
  wcmd w "put 2 6"
  check "$(f failed) >= 1 && $(f written) >= 1" "puts placed on a1 fail, the others succeed"
  check "$(f ms) <= 6000" "the put returns within its deadlines"
  # Another writer, not cut off, fills a1 where w1's failed put was placed:
  # w1's payload is still queued behind the cut and lands when it heals. The
  # space of a put that missed its deadline must not be reused before then.
  worker_start v w2 --timeout-ms 2000
  wcmd v "put 4 12"
  check "$(f written) == 12" "w2 writes while w1 is cut off"

  log "heal w1 <-> a1"
  netns_heal "$P" w1 a1
  eventually 20 w "get 1 0 12" '$(f ok) == 12 && $(f wrong) == 0'
  wcmd w "put 3 6"
  check "$(f written) == 6" "puts reach every agent again"
  wcmd w "get 3 0 6"
  check "$(f ok) == 6 && $(f wrong) == 0" "and read back"
  wcmd w "get 2 0 6"
  check "$(f wrong) == 0 && $(f failed) == 0" "blocks of the failed put are whole or missing, never wrong"
  sleep 1
  wcmd v "get 4 0 12"
  check "$(f ok) == 12 && $(f wrong) == 0" "w2's blocks survive w1's late payloads"
}

# Agent a1 cut off from the coordinator longer than the agent timeout.
# KVPOOL_NETNS_REREG=1 also asserts recovery (needs agent re-registration).
case_agent_coordinator_partition() {
  cluster_start "$P" "$RUN" --placement spread --agent-timeout 2s --heartbeat-interval 500ms ||
    fail "cluster did not start"
  worker_start w w1 --timeout-ms 2000
  wcmd w "put 1 12"
  check "$(f written) == 12" "12 blocks written"
  assert_tcp w

  log "cut a1 <-> c"
  local cut_at
  cut_at=$(now_ms)
  netns_cut "$P" a1 c
  eventually 6 w "get 1 0 12" '$(f miss) >= 1'
  local gone_ms=$(($(now_ms) - cut_at))
  log "a1's blocks left lookups ${gone_ms} ms after the cut"
  check "$gone_ms <= 2000 + 2500" "within the 2 s agent timeout (+2.5 s)"
  check "$(f wrong) == 0 && $(f failed) == 0 && $(f ok) >= 4 && $(f ok) + $(f miss) == 12" \
    "a1's blocks are misses, the rest load, no wrong bytes"
  check "$(f max_ms) <= 2500" "no get waits on the cut agent"
  wcmd w "put 2 6"
  check "$(f written) == 6 && $(f ms) <= 2500" "new puts go to the live agents at once"
  wcmd w "get 2 0 6"
  check "$(f ok) == 6 && $(f wrong) == 0" "and read back"

  log "heal a1 <-> c"
  netns_heal "$P" a1 c
  sleep 2
  wcmd w "get 1 0 12"
  check "$(f wrong) == 0 && $(f failed) == 0 && $(f ok) + $(f miss) == 12" \
    "after the heal: a1's blocks are misses until it rejoins, never wrong bytes"
  wcmd w "put 3 6"
  check "$(f written) == 6" "puts still succeed after the heal"

  if [ "${KVPOOL_NETNS_REREG:-0}" = 1 ]; then
    # a1 rejoins with its incarnation and sends its region's scan: the
    # coordinator takes its blocks back.
    local i
    for i in $(seq 100); do
      [ "$(grep -cE 'agent [0-9]+ rejoined' "$RUN/c.log")" -ge 1 ] && break
      sleep 0.1
    done
    [ "$(grep -cE 'agent [0-9]+ rejoined' "$RUN/c.log")" -ge 1 ] || fail "a1 did not rejoin within 10 s"
    log "ok: a1 rejoined"
    eventually 5 w "get 1 0 12" '$(f ok) == 12'
    check "$(f ok) == 12 && $(f wrong) == 0" "a1's blocks are back, bytes intact"
    wcmd w "put 4 12"
    check "$(f written) == 12" "puts succeed (a1's unclaimed space waits out a lease and a quarantine)"
    wcmd w "get 4 0 12"
    check "$(f ok) == 12 && $(f wrong) == 0" "and read back"
    netns_cut "$P" w1 a1
    wcmd w "get 1 0 12"
    check "$(f failed) >= 1 && $(f wrong) == 0" "the blocks taken back are served by the rejoined a1 itself"
    netns_heal "$P" w1 a1
  fi
}
case_agent_rereg() {
  KVPOOL_NETNS_REREG=1 case_agent_coordinator_partition
}

# w1's link slowed to 2 Mbit/s with tbf, both ways.
case_slow_link() {
  cluster_start "$P" "$RUN" --placement spread || fail "cluster did not start"
  worker_start w w1 --timeout-ms 1500
  log "slow w1 to 2mbit"
  netns_slow "$P" w1 2mbit
  wcmd w "put 1 1"
  check "$(f written) == 1" "one 256 KiB block goes through a 2 Mbit/s link"
  check "$(f ms) >= 700" "at the link's pace (~1 s): the tbf is in the path"
  wcmd w "get 1 0 1"
  check "$(f ok) == 1 && $(f wrong) == 0" "and comes back whole"
  assert_tcp w
  wcmd w "put 2 6"
  check "$(f failed) >= 1" "512 KiB per agent cannot move in 1.5 s: those puts fail"
  check "$(f ms) <= 3 * 1500 + 3000" "each agent's batch gives up at its deadline"
  wcmd w "get 2 0 6"
  check "$(f wrong) == 0" "no wrong bytes from the failed puts"

  log "w1's link back to full speed"
  netns_fast "$P" w1
  eventually 15 w "put 3 6" '$(f written) == 6'
  # The failed puts closed w1's endpoints: it reconnected, and reads now go
  # by UCX get (client.cc, agent()), which must work at once.
  eventually 5 w "get 3 0 6" '$(f ok) == 6 && $(f wrong) == 0'
  wcmd w "get 3 0 6"
  check "$(f ok) == 6 && $(f max_ms) <= 1000" "full-speed gets again"
  wcmd w "get 1 0 1"
  check "$(f ok) == 1 && $(f wrong) == 0" "the block put over the slow link is intact"
  wcmd w "get 2 0 6"
  check "$(f wrong) == 0 && $(f failed) == 0" "the failed put's blocks are misses, never wrong"
}

# Agent a1 frozen (SIGSTOP) shorter than the agent timeout, then continued;
# then frozen longer than it.
case_frozen_agent() {
  cluster_start "$P" "$RUN" --placement spread --agent-timeout 6s --heartbeat-interval 500ms ||
    fail "cluster did not start"
  worker_start w w1 --timeout-ms 1000
  wcmd w "put 1 12"
  check "$(f written) == 12" "12 blocks written"
  assert_tcp w
  local a1
  a1=$(pid_of a1)
  log "SIGSTOP a1 (pid $a1)"
  kill -STOP "$a1"
  [ "$(ps -o stat= -p "$a1")" = T ] || [ "$(ps -o stat= -p "$a1" | cut -c1)" = T ] || fail "a1 is not stopped"
  wcmd w "get 1 0 12"
  check "$(f wrong) == 0" "no wrong bytes from a frozen agent"
  check "$(f failed) >= 1 && $(f ok) >= 4 && $(f ok) + $(f failed) + $(f miss) == 12" \
    "blocks on a1 fail, the others load"
  check "$(f max_ms) <= 2000" "each get gives up within its 1 s deadline (+1 s)"
  log "SIGCONT a1"
  kill -CONT "$a1"
  eventually 10 w "get 1 0 12" '$(f ok) == 12 && $(f wrong) == 0'
  wcmd w "put 2 6"
  check "$(f written) == 6" "puts reach a1 again"

  log "SIGSTOP a1 past the 6 s agent timeout"
  kill -STOP "$a1"
  eventually 10 w "get 1 0 12" '$(f miss) >= 1 && $(f failed) == 0'
  check "$(f wrong) == 0 && $(f ok) >= 4" "a1 declared dead: its blocks are misses, no wrong bytes"
  check "$(f max_ms) <= 1000" "nothing waits on the dead agent any more"
  kill -CONT "$a1"
  # a1 rejoins with its region's scan: its blocks come back, bytes intact.
  eventually 10 w "get 1 0 12" '$(f ok) == 12'
  check "$(f wrong) == 0 && $(f failed) == 0" "after SIGCONT: a1 rejoined and its blocks read back whole"
}

# Late puts (DESIGN.md, "Data flows", fencing). Writer w1 behind a slow link
# has its write lease (2 s) expire mid-put; once the quarantine (3 s) has
# passed, writer w2 fills the whole pool of a1, so one of its blocks takes
# w1's slot. Whatever w1's put still delivers must not touch w2's blocks.
case_late_put() {
  local block=$((1 << 20)) slots=4
  KVPOOL_AGENTS=a1 KVPOOL_POOL_SIZE=$((slots * block)) cluster_start "$P" "$RUN" \
    --write-lease 2s --write-quarantine 3s --high-watermark 1 --low-watermark 1 || fail "cluster did not start"
  worker_start w1 w1 --timeout-ms 10000 --block-bytes "$block"
  # Its allocation retries (half the timeout) stay inside its own 2 s leases.
  worker_start w2 w2 --timeout-ms 2000 --block-bytes "$block"
  # How many blocks the pool holds (header space takes a little of it).
  wcmd w2 "put 100 $slots"
  local cap
  cap=$(f written)
  check "$cap >= 2" "a1's pool holds $cap blocks of 1 MiB"
  assert_tcp w2
  wcmd w2 "remove 100 $slots"
  sleep 0.5

  # 1 MiB at 1.2 Mbit/s takes ~7 s: far past the 2 s lease and the 3 s
  # quarantine after it.
  netns_slow "$P" w1 1200kbit
  local t_put
  t_put=$(now_ms)
  log "w1> put 7 1 (slow link)"
  wsend w1 "put 7 1"
  sleep 1.5
  # w2 fills the pool (evicting its own blocks to make room while w1's slot
  # is out); all of them fit at once only when w1's slot is back: the lease (2 s),
  # the quarantine (3 s), then the agent's invalidation.
  local i
  for i in $(seq 60); do
    wcmd w2 "put 8 $cap"
    wcmd w2 "lookup 8 $cap"
    [ "$(f present)" -ge "$cap" ] && break
    sleep 0.25
  done
  wcmd w2 "lookup 8 $cap"
  check "$(f present) == $cap" "w2 committed $cap blocks: the whole pool, w1's slot included"
  local committed_at=$(($(now_ms) - t_put))
  log "w2 committed ${committed_at} ms after w1's put began"
  check "$committed_at >= 5000 - 300" "w1's slot was not reused before its lease and quarantine ended"
  wcmd w2 "get 8 0 $cap"
  check "$(f ok) == $cap && $(f wrong) == 0" "w2's blocks verify right after their commit"

  wrecv w1 30
  check "$(f written) == 0" "w1's late put is not committed"
  check "$(f ms) <= 2000 + 1000" "w1's put gave up with its 2 s lease, not its 10 s timeout"
  log "w1's put returned $(($(now_ms) - t_put)) ms after it began ($(f err))"
  # Let anything still queued on w1's slow link drain into a1.
  sleep 3
  netns_fast "$P" w1
  wcmd w2 "get 8 0 $cap"
  check "$(f wrong) == 0" "never a wrong byte"
  check "$(f ok) == $cap" "every block committed after w1's lease expired is intact"
  wcmd w1 "get 7 0 1"
  check "$(f ok) == 0 && $(f wrong) == 0" "w1's block is not in the pool"
}

# The leader cut off from etcd (issue 9): etcd in w2, the leader in c, a
# standby in a3, two agents and a worker finding the leader through etcd.
# Cut c <-> w2 only (the leader still reaches its agents and workers): it
# must stop answering within its fence (3/4 of the 2 s lease), step down and
# exit with status 3 by itself, while the standby leads and the pool keeps
# every committed block.
case_leader_etcd_partition() {
  command -v etcd >/dev/null || { echo "SKIP: no etcd (apt-get install etcd-server)"; exit 77; }
  local e c_addr s_addr
  e="$(netns_addr w2)"
  c_addr="$(netns_addr c):7400"
  s_addr="$(netns_addr a3):7400"
  netns_exec "$P" w2 etcd --name m0 --data-dir "$RUN/etcd" \
    --listen-client-urls "http://$e:2379" --advertise-client-urls "http://$e:2379" \
    --listen-peer-urls "http://$e:2380" --initial-advertise-peer-urls "http://$e:2380" \
    --initial-cluster "m0=http://$e:2380" --initial-cluster-state new --logger zap \
    --log-outputs "$RUN/etcd.err" --log-level warn >/dev/null 2>&1 &
  local i
  for i in $(seq 100); do
    netns_exec "$P" w2 env ETCDCTL_API=3 etcdctl --endpoints="$e:2379" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
  done
  netns_exec "$P" w2 env ETCDCTL_API=3 etcdctl --endpoints="$e:2379" endpoint health >/dev/null 2>&1 ||
    fail "etcd did not start"
  local ha=(--etcd "$e:2379" --lease-ttl 2 --write-lease 2s --write-quarantine 1s
    --agent-timeout 3s --heartbeat-interval 500ms)
  # The leader's exit status lands in c.rc.
  netns_exec "$P" c bash -c '"$@"; echo $? >"'"$RUN"'/c.rc"' _ "$BIN/kvpool-coordinator" --listen "$c_addr" \
    "${ha[@]}" >"$RUN/c.log" 2>&1 &
  for i in $(seq 100); do
    grep -q 'as leader of epoch' "$RUN/c.log" 2>/dev/null && break
    sleep 0.1
  done
  grep -q 'as leader of epoch' "$RUN/c.log" || fail "c did not lead"
  netns_exec "$P" a3 "$BIN/kvpool-coordinator" --listen "$s_addr" "${ha[@]}" >"$RUN/a3.log" 2>&1 &
  for i in $(seq 100); do
    grep -q 'standing by' "$RUN/a3.log" 2>/dev/null && break
    sleep 0.1
  done
  grep -q 'standing by' "$RUN/a3.log" || fail "a3 did not stand by"
  log "ok: c leads, a3 stands by"
  local n
  for n in a1 a2; do
    netns_exec "$P" "$n" "$BIN/kvpool-agent" --coordinator "etcd://$e:2379" --name "$n" --pool-size 64MiB \
      >"$RUN/$n.log" 2>&1 &
  done
  for i in $(seq 100); do
    [ "$(grep -cE 'agent [0-9]+ registered:' "$RUN/c.log")" -ge 2 ] && break
    sleep 0.1
  done
  [ "$(grep -cE 'agent [0-9]+ registered:' "$RUN/c.log")" -ge 2 ] || fail "the agents did not join c"
  worker_start w w1 --coordinator "etcd://$e:2379" --timeout-ms 2000
  wcmd w "put 1 12"
  check "$(f written) == 12" "12 blocks written through the leader c"
  assert_tcp w

  log "cut c <-> w2 (the leader from etcd)"
  local cut_at
  cut_at=$(now_ms)
  netns_cut "$P" c w2
  # The leader's own fence: nothing it answers after 3/4 of the TTL.
  for i in $(seq 100); do
    grep -q 'stepping down' "$RUN/c.log" && break
    sleep 0.1
  done
  grep -q 'stepping down' "$RUN/c.log" || fail "c did not step down within 10 s of the cut"
  local down_ms=$(($(now_ms) - cut_at))
  log "c stepped down ${down_ms} ms after the cut"
  check "$down_ms <= 2000 + 1500" "within the 2 s lease (+1.5 s)"
  for i in $(seq 50); do
    [ -s "$RUN/c.rc" ] && break
    sleep 0.1
  done
  [ -s "$RUN/c.rc" ] || fail "c is still running after stepping down"
  check "$(cat "$RUN/c.rc") == 3" "c exited with status 3 (leadership lost)"

  for i in $(seq 100); do
    grep -q 'as leader of epoch' "$RUN/a3.log" && break
    sleep 0.1
  done
  grep -q 'as leader of epoch' "$RUN/a3.log" || fail "the standby a3 did not take over"
  local old new
  old=$(sed -n 's/.*as leader of epoch \([0-9]*\).*/\1/p' "$RUN/c.log" | head -1)
  new=$(sed -n 's/.*as leader of epoch \([0-9]*\).*/\1/p' "$RUN/a3.log" | head -1)
  log "a3 leads with epoch $new (c had $old), $(($(now_ms) - cut_at)) ms after the cut"
  check "$new > $old" "the new leader's epoch is higher"
  # The agents rejoin a3 with their scans: every committed block is back.
  eventually 20 w "get 1 0 12" '$(f ok) == 12'
  check "$(f wrong) == 0" "all 12 blocks read back whole through a3"
  eventually 10 w "put 2 6" '$(f written) == 6'
  wcmd w "get 2 0 6"
  check "$(f ok) == 6 && $(f wrong) == 0" "new blocks go through a3 and read back"
  log "the pool served again $(($(now_ms) - cut_at)) ms after the cut"
  netns_heal "$P" c w2
}

declare -F "case_$CASE" >/dev/null || fail "unknown case '$CASE'"
log "case $CASE, namespaces $P-*"
"case_$CASE"
for w in "${!WIN[@]}"; do wsend "$w" quit; done
log "PASS $CASE"
