#!/usr/bin/env bash
# coordinator.sh: the coordinator's own numbers, in one run.
#   1. lookup_bench: prefix lookups over the control protocol from several
#      client processes against a standalone agent (agent + embedded
#      coordinator) holding --keys blocks: keys/s and calls/s, no lease
#      (target >= 1e6 keys/s in total) and with a read lease + release (info).
#   2. coordinator_bench: the core in process, no network: bytes per indexed
#      block at 10^6 and 10^7 blocks (target <= 128, DESIGN.md "Scale"), and
#      single-thread allocate+commit and lookup rates: the ceiling that (1)
#      pays the protocol, the sockets and the scheduler on top of.
# and a summary: lookup keys/s over the network / in process. The two index
# sizes differ (lookup_bench: --keys real 64 KiB blocks, all in cache;
# coordinator_bench: 10^6 and more), so the ratio bounds the protocol's cost
# from below, it does not isolate it.
#
# Kept apart from vs_peers.sh: that script compares the data path with its
# peers (ucx_perftest, memcpy) and already fills its time budget; these are
# control-plane figures with their own targets and no UCX peer.
#
# Reproduce (from the repository root, after
# `ninja -C build lookup_bench coordinator_bench kvpool-agent`):
#   bench/coordinator.sh
#   bench/coordinator.sh --seconds 5 --clients 2 --window 16 --checkpoints 1000000,10000000
#   bench/coordinator.sh --json > coordinator.json
# Flags may also come from the environment: SECONDS_PER_MODE, CLIENTS,
# CONNECTIONS, WINDOW, KEYS, CHECKPOINTS, BIN.

set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
PY=/usr/bin/python3   # Debian's python, not the pyenv python3 first on PATH (DESIGN.md)

SECONDS_PER_MODE=${SECONDS_PER_MODE:-3}
CLIENTS=${CLIENTS:-2}
CONNECTIONS=${CONNECTIONS:-1}
WINDOW=${WINDOW:-16}
KEYS=${KEYS:-4096}
CHECKPOINTS=${CHECKPOINTS:-1000000,10000000}
BIN=${BIN:-$repo/build/bin}
JSON=0

usage() {
  cat <<EOF
Usage: $0 [--seconds S] [--clients N] [--connections N] [--window W] [--keys N]
          [--checkpoints LIST] [--bin DIR] [--json]
  --seconds      measured seconds per lookup mode (default $SECONDS_PER_MODE)
  --clients      lookup client processes (default $CLIENTS)
  --connections  control connections per client process (default $CONNECTIONS)
  --window       lookups in flight per connection (default $WINDOW)
  --keys         64 KiB blocks put before the lookups (default $KEYS)
  --checkpoints  coordinator_bench block counts (default $CHECKPOINTS)
  --bin          directory of the built programs (default $BIN)
  --json         one JSON object on stdout
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER_MODE=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --window) WINDOW=$2; shift 2 ;;
    --keys) KEYS=$2; shift 2 ;;
    --checkpoints) CHECKPOINTS=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --json) JSON=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "coordinator: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

die() { echo "coordinator: $*" >&2; exit 2; }
[ -x "$PY" ] || die "$PY not found"
for b in lookup_bench coordinator_bench kvpool-agent; do
  [ -x "$BIN/$b" ] || die "$BIN/$b not found (ninja -C build lookup_bench coordinator_bench kvpool-agent)"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/coordinator.XXXXXX") || die "mktemp failed"
bg_pid=
stop_bg() {
  [ -n "$bg_pid" ] || return 0
  kill "$bg_pid" 2>/dev/null   # lookup_bench stops its agent on SIGTERM
  wait "$bg_pid" 2>/dev/null
  bg_pid=
}
trap 'stop_bg; rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$JSON" = 1 ]; then exec 3>&2; else exec 3>&1; fi
{
  echo "# coordinator: lookup_bench (network, $CLIENTS client processes) and coordinator_bench (in process)"
  echo "# host: $(uname -r), $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
} >&3

failed=0
t_start=$(date +%s)
echo "coordinator: lookup_bench" >&2
"$BIN/lookup_bench" --json --seconds "$SECONDS_PER_MODE" --clients "$CLIENTS" --connections "$CONNECTIONS" \
  --window "$WINDOW" --keys "$KEYS" >"$work/lookup.json" 2>"$work/lookup.err" &
bg_pid=$!
wait "$bg_pid" || { echo "coordinator: lookup_bench failed: $(grep -v ' I rpc' "$work/lookup.err" | tail -3)" >&2; failed=1; }
bg_pid=
echo "coordinator: coordinator_bench --checkpoints $CHECKPOINTS" >&2
"$BIN/coordinator_bench" --checkpoints "$CHECKPOINTS" >"$work/core.txt" 2>"$work/core.err" &
bg_pid=$!
wait "$bg_pid" || { echo "coordinator: coordinator_bench failed: $(tail -3 "$work/core.err")" >&2; failed=1; }
bg_pid=
elapsed=$(($(date +%s) - t_start))

"$PY" - "$work" "$JSON" "$elapsed" "$failed" <<'EOF'
import json, os, re, sys

work, as_json, elapsed, failed = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4] == "1"
try:
    with open(os.path.join(work, "lookup.json")) as f:
        lookup = json.load(f)
except (OSError, ValueError):
    lookup = None
    failed = True
core_text = open(os.path.join(work, "core.txt")).read() if os.path.exists(os.path.join(work, "core.txt")) else ""

# coordinator_bench's checkpoint table: blocks, RSS MiB, B/block, index B/b,
# alloc+commit/s, lookup keys/s, lookup+lease/s, fill s.
core = []
for line in core_text.splitlines():
    f = line.split()
    if len(f) == 8 and all(re.fullmatch(r"[0-9.]+", x) for x in f):
        core.append(dict(blocks=int(f[0]), rss_mib=float(f[1]), bytes_per_block=float(f[2]),
                         index_bytes_per_block=float(f[3]), alloc_commit_per_s=float(f[4]),
                         lookup_keys_per_s=float(f[5]), lookup_lease_keys_per_s=float(f[6]), fill_s=float(f[7]),
                         verdict="PASS" if float(f[2]) <= 128 else "below"))
if not core:
    failed = True

def row(mode):
    for r in (lookup or {}).get("rows", []):
        if r["mode"] == mode:
            return r
    return None

summary = []
if core:
    first = core[0]
    for mode, key in (("lookup", "lookup_keys_per_s"), ("lookup+lease", "lookup_lease_keys_per_s")):
        r = row(mode)
        if r and r.get("ok"):
            summary.append(dict(mode=mode, network_keys_per_s=r["keys_per_s"], core_keys_per_s=first[key],
                                core_blocks=first["blocks"], ratio=r["keys_per_s"] / first[key]))

if as_json:
    json.dump(dict(elapsed_s=elapsed, lookup_bench=lookup, coordinator_bench=core,
                   coordinator_bench_text=core_text, network_vs_core=summary, ok=not failed),
              sys.stdout, indent=2)
    print()
else:
    if lookup:
        print()
        print(f"lookup_bench: standalone agent, {lookup['keys']} keys of {lookup['block_bytes'] >> 10} KiB present; "
              f"{lookup['clients']} client process(es) x {lookup['connections_per_client']} connection(s) x window "
              f"{lookup['window']}; {lookup['batch']} keys per call; {lookup['seconds']:.1f} s per mode")
        print(f"{'mode':<13} {'calls/s':>10} {'keys/s':>11} {'p50 us':>8} {'p99 us':>8} {'coord cores':>11} "
              f"{'client cores':>12} {'errors':>6}  target")
        for r in lookup["rows"]:
            tgt = f">= {lookup['target_keys_per_s']:.0f} keys/s {r['verdict']}" if r["verdict"] != "info" else "info"
            print(f"{r['mode']:<13} {r['calls_per_s']:10.0f} {r['keys_per_s']:11.0f} {r['p50_us']:8.1f} "
                  f"{r['p99_us']:8.1f} {r['coordinator_cores']:11.2f} {r['client_cores']:12.2f} "
                  f"{r['errors'] + r['misses']:6d}  {tgt}{'' if r['ok'] else '  FAILED: ' + r['error']}")
    print()
    print(core_text.rstrip())
    if core:
        print()
        print("bytes per block (RSS growth per indexed block, target <= 128): " +
              ", ".join(f"{c['blocks']:.0e} blocks: {c['bytes_per_block']:.1f} B {c['verdict']}" for c in core))
    for s in summary:
        print(f"{s['mode']}: {s['network_keys_per_s']:.0f} keys/s over the network ({lookup['keys']} keys indexed, "
              f"cache-resident) vs {s['core_keys_per_s']:.0f} in process (one thread, {s['core_blocks']:.0e} blocks "
              f"indexed): {s['ratio']:.2f}")
    print()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"ran in {elapsed} s; load average at the end: {load} (on {os.cpu_count()} cores: other work skews "
          "tcp rows most); " + ("a tool FAILED (see stderr)" if failed else "all tools ran"))
sys.exit(1 if failed else 0)
EOF
