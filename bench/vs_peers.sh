#!/usr/bin/env bash
# vs_peers.sh: kvpool's data path (kvbench) next to its peers, in one run.
#
# For every transport (shm = UCX_TLS=posix,self, tcp = UCX_TLS=tcp) and every
# block size it runs, with one UCX environment for all of them:
#   - ucx_perftest -t ucp_put_bw, -t ucp_get and -t ucp_get -O BATCH, server and client over
#     loopback (127.0.0.1, a free port picked here), one message of SIZE per
#     iteration; -n is --total/SIZE, capped so that one run takes about 2 s
#     (a short probe run of the same test measures the rate first);
#   - kvbench --json (ops put, get, owner-read, owner-stream; --memcpy with the shm session:
#     single-threaded memcpy to and from the same mapped region, spread the
#     same way as kvbench's blocks).
# and prints one row per kvbench row with its peer and target:
#   shm put, get        / spread memcpy        >= 0.9 at >= 1 MiB, >= 0.6 at >= 64 KiB
#   shm owner-read      / spread memcpy        info
#   shm put, get, o-r   / ucx_perftest         info (perftest reuses one buffer:
#                                              its shm figures are cache-resident)
#   tcp put             / ucx_perftest put_bw  >= 0.9
#   tcp owner-read      / ucx_perftest put_bw  >= 0.8 (the owner puts to us)
#   tcp owner-stream    / ucx_perftest put_bw  info (the owner sends us messages)
#   tcp get             / ucx_perftest ucp_get info
#   get (any transport) / ucp_get -O BATCH     info (perftest's ucp_get keeps one
#                                              get in flight; kvbench keeps --batch)
# then the peer figures themselves.
#
# Then the end-to-end section: for every --e2e-sizes block size and transport,
# one `kvbench --mode raw,e2e --batch E2E_BATCH` run (the raw transport rows
# and, through a standalone kvpool-agent, libkvpool's Client::put/get of the
# same size and batch, one after the other), printed as ratios:
#   e2e-put / raw put                           >= 0.85 at >= 1 MiB, >= 0.6 at >= 64 KiB
#   e2e-get / raw read path the runtime takes   the same targets
#            (get over shared memory; owner-stream where UCX emulates RMA: tcp)
#   e2e-get / raw owner-read and get over tcp   info
# and a serial model of an e2e batch: control round trips (e2e-lookup p50 per
# call: allocate + commit for put, lookup for get) + XXH3 checksum of the
# batch in one thread + the raw transfer the runtime makes, slot headers
# included (put-fenced: payloads, fence, headers; get+hdr or owner-stream+hdr:
# payloads and headers in one batch), next to the measured p50. The model
# is serial on purpose; the runtime overlaps: a put hashes while its allocate
# is out, and over shared memory (the agent's region mapped into the worker)
# it copies and hashes each block in one pass, split over two threads, where
# the raw rows are one thread's UCX put or get; over tcp gets verify chunk i
# while chunk i+1 moves. So e2e below the model is expected. The e2e
# client's UCX_TLS is shm = posix,cma,self or tcp = tcp; the agent keeps
# kvpool's default and serves both. Lanes are what the client really used.
#
# Units: GB/s = 1e9 bytes/s everywhere;
# ucx_perftest prints MB/s = 2^20 bytes/s (UCS_MBYTE), converted here.
# Below-target rows are reported ("below"), not failures: the exit status is
# non-zero only when a tool failed (no result, error row, bad exit status).
#
# Reproduce (from the repository root, after `ninja -C build kvbench`):
#   bench/vs_peers.sh                          # 64 KiB and 1 MiB, 2 GiB moved per op
#   bench/vs_peers.sh --sizes 65536,1048576 --total 2GiB --batch 16 --region 2GiB
#   bench/vs_peers.sh --json > vs_peers.json   # machine-readable (header to stderr)
#   bench/vs_peers.sh --e2e-sizes 64KiB,2MiB --e2e-batch 64 --e2e-total 1GiB --e2e-region 2GiB
#   bench/vs_peers.sh --no-e2e                  # the raw rows and peers only
#   bench/vs_peers.sh --no-raw                  # the end-to-end section only (its raw rows included)
# Flags may also come from the environment: SIZES, TOTAL, BATCH, REGION,
# TRANSPORTS, KVBENCH, PERFTEST_SECONDS, E2E_SIZES, E2E_BATCH, E2E_TOTAL,
# E2E_REGION, E2E (0: skip the section), RAW (0: skip the first section).

set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
PY=/usr/bin/python3   # Debian's python, not the pyenv python3 first on PATH (DESIGN.md)

SIZES=${SIZES:-65536,1048576}
TOTAL=${TOTAL:-2GiB}
BATCH=${BATCH:-16}
REGION=${REGION:-2GiB}
TRANSPORTS=${TRANSPORTS:-shm,tcp}
KVBENCH=${KVBENCH:-$repo/build/bin/kvbench}
PERFTEST_SECONDS=${PERFTEST_SECONDS:-2}   # cap on one ucx_perftest measurement
E2E=${E2E:-1}
RAW=${RAW:-1}
E2E_SIZES=${E2E_SIZES:-65536,2097152}
E2E_BATCH=${E2E_BATCH:-64}
E2E_TOTAL=${E2E_TOTAL:-1GiB}     # per op; e2e writes at most 90% of the pool
E2E_REGION=${E2E_REGION:-2GiB}   # raw owner's region and the agent's pool
JSON=0

usage() {
  cat <<EOF
Usage: $0 [--sizes LIST] [--total SIZE] [--batch N] [--region SIZE]
          [--transports shm,tcp] [--kvbench PATH] [--perftest-seconds S] [--json]
  --sizes       block sizes, comma-separated, bytes or with KiB/MiB/GiB (default $SIZES)
  --total       bytes moved per operation (default $TOTAL); ucx_perftest moves the
                same unless that would take longer than --perftest-seconds
  --batch       kvbench blocks per batch (default $BATCH)
  --region      kvbench region size, also the memcpy baseline's (default $REGION)
  --transports  shm (UCX_TLS=posix,self), tcp (UCX_TLS=tcp), or a comma-free raw
                UCX_TLS value (kvbench splits its --transports at commas)
  --json        print the combined rows as JSON on stdout (header to stderr)
  --e2e-sizes   block sizes of the end-to-end section (default $E2E_SIZES)
  --e2e-batch   its blocks per batch, raw and e2e alike (default $E2E_BATCH)
  --e2e-total   its bytes per op (default $E2E_TOTAL)
  --e2e-region  its raw region and agent pool size (default $E2E_REGION)
  --no-e2e      skip the end-to-end section
  --no-raw      skip the first section (perftest, memcpy and kvbench rows): the
                end-to-end section alone, which measures its own raw rows
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) SIZES=$2; shift 2 ;;
    --sizes=*) SIZES=${1#*=}; shift ;;
    --total) TOTAL=$2; shift 2 ;;
    --total=*) TOTAL=${1#*=}; shift ;;
    --batch) BATCH=$2; shift 2 ;;
    --batch=*) BATCH=${1#*=}; shift ;;
    --region) REGION=$2; shift 2 ;;
    --region=*) REGION=${1#*=}; shift ;;
    --transports) TRANSPORTS=$2; shift 2 ;;
    --transports=*) TRANSPORTS=${1#*=}; shift ;;
    --kvbench) KVBENCH=$2; shift 2 ;;
    --kvbench=*) KVBENCH=${1#*=}; shift ;;
    --perftest-seconds) PERFTEST_SECONDS=$2; shift 2 ;;
    --perftest-seconds=*) PERFTEST_SECONDS=${1#*=}; shift ;;
    --json) JSON=1; shift ;;
    --e2e-sizes) E2E_SIZES=$2; shift 2 ;;
    --e2e-sizes=*) E2E_SIZES=${1#*=}; shift ;;
    --e2e-batch) E2E_BATCH=$2; shift 2 ;;
    --e2e-batch=*) E2E_BATCH=${1#*=}; shift ;;
    --e2e-total) E2E_TOTAL=$2; shift 2 ;;
    --e2e-total=*) E2E_TOTAL=${1#*=}; shift ;;
    --e2e-region) E2E_REGION=$2; shift 2 ;;
    --e2e-region=*) E2E_REGION=${1#*=}; shift ;;
    --no-e2e) E2E=0; shift ;;
    --no-raw) RAW=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "vs_peers: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

die() { echo "vs_peers: $*" >&2; exit 2; }

# "64KiB", "1 MiB", "2G", "65536" -> bytes.
to_bytes() {
  "$PY" - "$1" <<'EOF' || return 1
import re, sys
m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b?)\s*", sys.argv[1], re.I)
if not m:
    sys.exit("bad size: " + sys.argv[1])
print(int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()])
EOF
}

[ -x "$PY" ] || die "$PY not found"
[ -x "$KVBENCH" ] || die "kvbench not found at $KVBENCH (ninja -C build kvbench)"
command -v ucx_perftest >/dev/null || die "ucx_perftest not found"
command -v ucx_info >/dev/null || die "ucx_info not found"

total_b=$(to_bytes "$TOTAL") || die "bad --total $TOTAL"
region_b=$(to_bytes "$REGION") || die "bad --region $REGION"
[[ "$BATCH" =~ ^[1-9][0-9]*$ ]] || die "bad --batch $BATCH"
sizes_b=()
IFS=',' read -r -a _sizes <<<"$SIZES"
for s in "${_sizes[@]}"; do
  b=$(to_bytes "$s") || die "bad size $s"
  [ "$b" -gt 0 ] || die "bad size $s"
  sizes_b+=("$b")
done
e2e_sizes_b=()
if [ "$E2E" = 1 ]; then
  e2e_total_b=$(to_bytes "$E2E_TOTAL") || die "bad --e2e-total $E2E_TOTAL"
  e2e_region_b=$(to_bytes "$E2E_REGION") || die "bad --e2e-region $E2E_REGION"
  [[ "$E2E_BATCH" =~ ^[1-9][0-9]*$ ]] || die "bad --e2e-batch $E2E_BATCH"
  IFS=',' read -r -a _sizes <<<"$E2E_SIZES"
  for s in "${_sizes[@]}"; do
    b=$(to_bytes "$s") || die "bad e2e size $s"
    [ "$b" -gt 0 ] || die "bad e2e size $s"
    e2e_sizes_b+=("$b")
  done
  [ -x "$(dirname "$KVBENCH")/kvpool-agent" ] || die "kvpool-agent not found next to $KVBENCH (ninja -C build kvpool-agent)"
fi
IFS=',' read -r -a transports <<<"$TRANSPORTS"
[ ${#transports[@]} -gt 0 ] && [ ${#sizes_b[@]} -gt 0 ] || die "nothing to run"

tls_of() {
  case "$1" in
    shm) echo "posix,self" ;;
    tcp) echo "tcp" ;;
    *) echo "$1" ;;
  esac
}

# One UCX environment for every process started here (kvbench, its owner,
# ucx_perftest server and client). These are kvpool's own defaults (see
# transport/transport.cc), named explicitly so ucx_perftest gets them too;
# only UCX_TLS changes per transport.
# UCX_TLS is set per transport below (kvbench: --transports; perftest: per call).
unset UCX_TLS
export UCX_TCP_TX_SEG_SIZE=${UCX_TCP_TX_SEG_SIZE:-256k}
export UCX_TCP_RX_SEG_SIZE=${UCX_TCP_RX_SEG_SIZE:-256k}
export UCX_ALLOC_PRIO=${UCX_ALLOC_PRIO:-md:posix,md:sysv,huge,thp,md:*,mmap,heap}
# The TCP variables are unused under UCX_TLS=posix,self: keep UCX quiet about it.
export UCX_WARN_UNUSED_ENV_VARS=${UCX_WARN_UNUSED_ENV_VARS:-n}

work=$(mktemp -d "${TMPDIR:-/tmp}/vs_peers.XXXXXX") || die "mktemp failed"
# The one background child alive at a time (a ucx_perftest server or kvbench),
# cleared once reaped so that a recycled pid is never signalled.
bg_pid=
stop_bg() {
  [ -n "$bg_pid" ] || return 0
  if kill -0 "$bg_pid" 2>/dev/null; then
    kill "$bg_pid" 2>/dev/null
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$bg_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$bg_pid" 2>/dev/null
  fi
  wait "$bg_pid" 2>/dev/null
  bg_pid=
}
cleanup() {
  stop_bg
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Header: to stdout for the table, to stderr when stdout carries JSON.
# (A duplicated descriptor, not >/dev/stdout: that would truncate a redirected file.)
if [ "$JSON" = 1 ]; then exec 3>&2; else exec 3>&1; fi
ucx_version=$(ucx_info -v | head -1)
{
  echo "# vs_peers: kvpool kvbench vs ucx_perftest and spread memcpy"
  echo "# ucx_info -v | head -1: $ucx_version"
  echo "# UCX env: $(env | grep '^UCX_' | sort | tr '\n' ' ')(UCX_TLS per transport: $(for t in "${transports[@]}"; do printf '%s=%s ' "$t" "$(tls_of "$t")"; done))"
  echo "# sizes: ${sizes_b[*]} bytes; total/op: $total_b; batch: $BATCH; region: $region_b; kvbench: $KVBENCH"
  [ "$E2E" = 1 ] && echo "# e2e: sizes ${e2e_sizes_b[*]} bytes; batch $E2E_BATCH; total/op $e2e_total_b; region/pool $e2e_region_b; client UCX_TLS shm=posix,cma,self tcp=tcp; agent: kvpool default"
  echo "# host: $(uname -r), $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
} >&3

failed=0
log() { echo "vs_peers: $*" >&2; }

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# True once something listens on TCP port $1 (IPv4 or IPv6, any address).
listening() {
  local hex
  hex=$(printf ':%04X ' "$1")
  awk -v p="$hex" '$4 == "0A" && index($2 " ", p) {found=1} END {exit !found}' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# perftest_once TLS TEST SIZE ITERS WARMUP OUTFILE [EXTRA ARGS]: sets $result to the CSV
# result line "iterations,p50,avg_lat,overall_lat,avg_bw,overall_bw,avg_mr,
# overall_mr". Runs in this shell (no $(...)) so the EXIT trap knows the server.
perftest_once() {
  local tls=$1 test=$2 size=$3 iters=$4 warm=$5 out=$6 port spid i rc attempt
  shift 6
  for attempt in 1 2 3; do
    port=$(free_port) || return 1
    UCX_TLS=$tls ucx_perftest -p "$port" -t "$test" -s "$size" -n "$iters" -w "$warm" "$@" >"$out.server" 2>&1 &
    spid=$!
    bg_pid=$spid
    for ((i = 0; i < 200; i++)); do
      listening "$port" && break
      kill -0 "$spid" 2>/dev/null || break
      sleep 0.05
    done
    if ! listening "$port"; then
      stop_bg
      log "ucx_perftest server on port $port did not listen (attempt $attempt): $(tail -2 "$out.server" | tr '\n' ' ')"
      continue
    fi
    UCX_TLS=$tls timeout 120 ucx_perftest 127.0.0.1 -p "$port" -t "$test" -s "$size" -n "$iters" -w "$warm" "$@" -v \
      >"$out" 2>&1
    rc=$?
    for ((i = 0; i < 100; i++)); do kill -0 "$spid" 2>/dev/null || break; sleep 0.05; done
    stop_bg   # the server exits after its one test; stop it if it did not
    if [ $rc -ne 0 ]; then
      log "ucx_perftest $test -s $size (UCX_TLS=$tls) exited $rc: $(tail -3 "$out" | tr '\n' ' ')"
      return 1
    fi
    # The final line is the one without the "[thread N]" progress prefix.
    local line
    line=$(grep -E '^ *[0-9]+,[0-9.]+,' "$out" | tail -1 | tr -d ' ')
    if [ -z "$line" ]; then
      log "ucx_perftest $test -s $size: no result in output: $(tail -3 "$out" | tr '\n' ' ')"
      return 1
    fi
    result=$line
    return 0
  done
  return 1
}

# perftest T LABEL SIZE TEST [EXTRA ARGS]: probe, then the measured run;
# appends a TSV row to $work/peers.tsv:
#   transport tls label size iters seconds mbps gbps p50_us status
perftest() {
  local t=$1 label=$2 size=$3 test=$4 tls n_full n_probe mbps n warm
  shift 4
  tls=$(tls_of "$t")
  n_full=$((total_b / size)); [ "$n_full" -ge 1 ] || n_full=1
  n_probe=$(((64 << 20) / size)); [ "$n_probe" -ge 4 ] || n_probe=4
  [ "$n_probe" -le "$n_full" ] || n_probe=$n_full
  perftest_once "$tls" "$test" "$size" "$n_probe" 4 "$work/pt.$t.$label.$size.probe" "$@" || {
    printf '%s\t%s\t%s\t%s\t0\t0\t0\t0\t0\tFAILED\n' "$t" "$tls" "$label" "$size" >>"$work/peers.tsv"
    failed=1; return 1; }
  mbps=$(cut -d, -f6 <<<"$result")
  # Iterations for about min(--total, PERFTEST_SECONDS s at the probed rate).
  n=$("$PY" -c "import sys
size,nf,mbps,sec=int(sys.argv[1]),int(sys.argv[2]),float(sys.argv[3]),float(sys.argv[4])
cap=int(mbps*1048576*sec/size) if mbps>0 else nf
print(max(1,min(nf,cap)))" "$size" "$n_full" "$mbps" "$PERFTEST_SECONDS")
  warm=$((n / 10)); [ "$warm" -ge 4 ] || warm=4; [ "$warm" -le 1000 ] || warm=1000
  perftest_once "$tls" "$test" "$size" "$n" "$warm" "$work/pt.$t.$label.$size" "$@" || {
    printf '%s\t%s\t%s\t%s\t0\t0\t0\t0\t0\tFAILED\n' "$t" "$tls" "$label" "$size" >>"$work/peers.tsv"
    failed=1; return 1; }
  "$PY" - "$t" "$tls" "$label" "$size" "$result" >>"$work/peers.tsv" <<'EOF'
import sys
t, tls, test, size, line = sys.argv[1:6]
f = line.split(",")
iters, p50, overall_lat, overall_mbps = int(f[0]), float(f[1]), float(f[3]), float(f[5])
seconds = iters * overall_lat / 1e6
gbps = overall_mbps * 1048576 / 1e9   # UCX MB/s is 2^20 bytes/s
print("\t".join(map(str, [t, tls, test, size, iters, seconds, overall_mbps, gbps, p50, "ok"])))
EOF
}

: >"$work/peers.tsv"
t_start=$(date +%s)
[ "$RAW" = 1 ] || sizes_b=()  # --no-raw: no first section
for size in "${sizes_b[@]}"; do
  first=1
  for t in "${transports[@]}"; do
    log "ucx_perftest ucp_put_bw, ucp_get, ucp_get -O $BATCH: $t $size"
    perftest "$t" ucp_put_bw "$size" ucp_put_bw
    perftest "$t" ucp_get "$size" ucp_get
    perftest "$t" "ucp_get-O$BATCH" "$size" ucp_get -O "$BATCH"
    log "kvbench $t $size"
    extra=()
    [ "$t" = shm ] && extra=(--memcpy)
    first=0
    out="$work/kv.$t.$size.json"
    "$KVBENCH" --transports "$t" --block "$size" --batch "$BATCH" --region "$region_b" --total "$total_b" \
      --json "${extra[@]}" >"$out" 2>"$out.err" &
    bg_pid=$!
    wait "$bg_pid"
    rc=$?
    bg_pid=
    if [ $rc -ne 0 ]; then
      log "kvbench $t $size exited $rc: $(tail -3 "$out.err" | tr '\n' ' ')"
      failed=1
    fi
  done
done
# The end-to-end section: raw and e2e rows of one size and batch from one
# kvbench run, so their ratios come from the same minute of this machine.
for size in "${e2e_sizes_b[@]}"; do
  for t in "${transports[@]}"; do
    # put-fenced, get+hdr, owner-stream+hdr: the runtime's own transfers
    # (slot headers included) for the model; owner-stream: its read path over
    # tcp, owner-read and get the ones it does not take there.
    ops=put,put-fenced,get,get+hdr
    [ "$t" = shm ] || ops=put,put-fenced,get,owner-read,owner-stream,owner-stream+hdr
    log "kvbench --mode raw,e2e $t $size batch $E2E_BATCH"
    out="$work/e2e.$t.$size.json"
    "$KVBENCH" --mode raw,e2e --transports "$t" --block "$size" --batch "$E2E_BATCH" --region "$e2e_region_b" \
      --total "$e2e_total_b" --ops "$ops" --e2e-ops e2e-put,e2e-get,e2e-lookup,checksum --json \
      >"$out" 2>"$out.err" &
    bg_pid=$!
    wait "$bg_pid"
    rc=$?
    bg_pid=
    if [ $rc -ne 0 ]; then
      log "kvbench --mode raw,e2e $t $size exited $rc: $(grep -v ' I rpc' "$out.err" | tail -3 | tr '\n' ' ')"
      failed=1
    fi
  done
done
elapsed=$(($(date +%s) - t_start))
log "measured in ${elapsed}s"

"$PY" - "$work" "$JSON" "$ucx_version" "$elapsed" "${transports[@]}" <<'EOF'
import glob, json, os, sys

work, as_json, ucx_version, elapsed = sys.argv[1], sys.argv[2] == "1", sys.argv[3], int(sys.argv[4])
transports = sys.argv[5:]
failed = False

def fmt_size(b):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if b >= (1 << shift) and b % (1 << shift) == 0:
            return f"{b >> shift} {unit}"
    return f"{b} B"

peers = []
with open(os.path.join(work, "peers.tsv")) as f:
    for line in f:
        t, tls, test, size, iters, secs, mbps, gbps, p50, status = line.rstrip("\n").split("\t")
        peers.append(dict(tool="ucx_perftest", transport=t, ucx_tls=tls, test=test, block_bytes=int(size),
                          iterations=int(iters), bytes=int(iters) * int(size), seconds=float(secs),
                          mbps_2p20=float(mbps), gbps=float(gbps), p50_us=float(p50), ok=status == "ok"))
        failed |= status != "ok"

kv = []
for t in transports:
    for path in sorted(glob.glob(os.path.join(work, f"kv.{t}.*.json"))):
        try:
            with open(path) as f:
                rows = json.load(f)
        except (OSError, ValueError) as e:
            failed = True
            print(f"vs_peers: cannot read kvbench output {path}: {e}", file=sys.stderr)
            continue
        for r in rows:
            r["name"] = t if not r["op"].startswith("memcpy") else "memcpy"
            kv.append(r)
            if not r.get("ok", False):
                failed = True
                print(f"vs_peers: kvbench {t} {r['op']} {r['block_bytes']}: {r.get('error')}", file=sys.stderr)

# kvbench --memcpy: memcpy into ("memcpy") and out of ("memcpy-read") the
# same mapped shared-memory region, spread the same way: the limit for put
# and for get respectively.
memcpy = {r["block_bytes"]: r for r in kv if r["op"] == "memcpy"}
memcpy_read = {r["block_bytes"]: r for r in kv if r["op"] == "memcpy-read"}
for name, table in (("memcpy to region", memcpy), ("memcpy from region", memcpy_read)):
    for r in table.values():
        peers.append(dict(tool="kvbench --memcpy", transport="memcpy", ucx_tls="", test=name,
                          block_bytes=r["block_bytes"], iterations=r["blocks"], bytes=r["bytes"],
                          seconds=r["seconds"], mbps_2p20=r["gbps"] * 1e9 / 1048576, gbps=r["gbps"],
                          p50_us=r["p50_us"], ok=r["ok"]))

def perf(t, test, size):
    for p in peers:
        if p["tool"] == "ucx_perftest" and p["transport"] == t and p["test"] == test and p["block_bytes"] == size:
            return p
    return None

def shm_target(size):
    if size >= (1 << 20):
        return 0.9
    if size >= (64 << 10):
        return 0.6
    return None

rows = []
def add(r, peer_name, peer, target):
    peer_gbps = peer["gbps"] if peer and peer.get("ok") else None
    ratio = r["gbps"] / peer_gbps if peer_gbps and r.get("ok") else None
    if target is None:
        verdict = "info"
    elif ratio is None:
        verdict = "n/a"
    else:
        verdict = "PASS" if ratio >= target else "below"
    rows.append(dict(transport=r["name"], ucx_tls=r["transport"], lanes=r["lanes"], op=r["op"],
                     block_bytes=r["block_bytes"], batch=r["batch"], kvbench_gbps=r["gbps"] if r.get("ok") else None,
                     p50_us=r["p50_us"], p99_us=r["p99_us"], peer=peer_name, peer_gbps=peer_gbps,
                     ratio=ratio, target=target, verdict=verdict, kvbench_ok=r.get("ok", False),
                     error=r.get("error", "")))

for r in kv:
    if r["op"].startswith("memcpy"):
        continue
    t, op, size = r["name"], r["op"], r["block_bytes"]
    mc = memcpy.get(size) if op == "put" else memcpy_read.get(size)
    mc_name = "memcpy to region" if op == "put" else "memcpy from region"
    if t == "tcp":
        if op == "put":
            add(r, "perftest ucp_put_bw", perf(t, "ucp_put_bw", size), 0.9)
        elif op == "owner-read":
            add(r, "perftest ucp_put_bw", perf(t, "ucp_put_bw", size), 0.8)
        elif op == "owner-stream":
            add(r, "perftest ucp_put_bw", perf(t, "ucp_put_bw", size), None)
        else:
            add(r, "perftest ucp_get", perf(t, "ucp_get", size), None)
            add(r, f"perftest ucp_get -O{r['batch']}", perf(t, f"ucp_get-O{r['batch']}", size), None)
    elif t == "shm":
        add(r, mc_name, mc, shm_target(size) if op in ("put", "get") else None)
    else:  # a raw UCX_TLS value: information only
        add(r, mc_name, mc, None)
    if t != "tcp":  # perftest as information next to the memcpy peer
        if op == "get":
            add(r, "perftest ucp_get", perf(t, "ucp_get", size), None)
            add(r, f"perftest ucp_get -O{r['batch']}", perf(t, f"ucp_get-O{r['batch']}", size), None)
        else:
            add(r, "perftest ucp_put_bw", perf(t, "ucp_put_bw", size), None)

order = {t: i for i, t in enumerate(transports)}
opord = {"put": 0, "get": 1, "owner-read": 2, "owner-stream": 3}
rows.sort(key=lambda x: (order.get(x["transport"], 99), x["block_bytes"], opord.get(x["op"], 9)))  # stable
peers.sort(key=lambda p: (p["block_bytes"], order.get(p["transport"], 98) if p["transport"] != "memcpy" else -1, p["test"]))

# The end-to-end section.
e2e_raw = []  # every row of the raw,e2e runs
for t in transports:
    for path in sorted(glob.glob(os.path.join(work, f"e2e.{t}.*.json"))):
        try:
            with open(path) as f:
                got = json.load(f)
        except (OSError, ValueError) as e:
            failed = True
            print(f"vs_peers: cannot read kvbench output {path}: {e}", file=sys.stderr)
            continue
        for r in got:
            r["name"] = t
            e2e_raw.append(r)
            if not r.get("ok", False):
                failed = True
                print(f"vs_peers: kvbench {r.get('mode')} {t} {r['op']} {r['block_bytes']}: {r.get('error')}",
                      file=sys.stderr)

def e2e_target(size):
    if size >= (1 << 20):
        return 0.85
    if size >= (64 << 10):
        return 0.6
    return None

def find(t, mode, op, size):
    for r in e2e_raw:
        if r["name"] == t and r.get("mode") == mode and r["op"] == op and r["block_bytes"] == size:
            return r
    return None

e2e_rows = []
e2e_model = []
for r in e2e_raw:
    if r.get("mode") != "e2e" or r["op"] not in ("e2e-put", "e2e-get"):
        continue
    t, size = r["name"], r["block_bytes"]
    emulated = "emulated" in (r.get("lanes") or "")
    if r["op"] == "e2e-put":
        pairs = [("put", e2e_target(size))]
    else:
        # The runtime reads with UCX get, or asks the agent to send the bytes
        # where UCX emulates RMA in software (tcp): compare with the path it
        # takes, and show the others beside it.
        pairs = ([("owner-stream", e2e_target(size)), ("owner-read", None), ("get", None)] if emulated
                 else [("get", e2e_target(size))])
    for raw_op, target in pairs:
        raw = find(t, "raw", raw_op, size)
        raw_gbps = raw["gbps"] if raw and raw.get("ok") else None
        ratio = r["gbps"] / raw_gbps if raw_gbps and r.get("ok") else None
        verdict = "info" if target is None else ("n/a" if ratio is None else ("PASS" if ratio >= target else "below"))
        e2e_rows.append(dict(transport=t, ucx_tls=r["transport"], lanes=r["lanes"], op=r["op"], block_bytes=size,
                             batch=r["batch"], blocks=r["blocks"], e2e_gbps=r["gbps"] if r.get("ok") else None,
                             e2e_p50_us=r["p50_us"], e2e_p99_us=r["p99_us"], raw_op=raw_op,
                             raw_ucx_tls=raw["transport"] if raw else None, raw_lanes=raw["lanes"] if raw else None,
                             raw_gbps=raw_gbps, raw_p50_us=raw["p50_us"] if raw else None, ratio=ratio,
                             target=target, verdict=verdict, error=r.get("error", "")))
    # Serial model of one batch: round trips + checksum + raw transfer.
    lk, ck = find(t, "e2e", "e2e-lookup", size), find(t, "e2e", "checksum", size)
    # The runtime's transfers, slot headers included: payloads, a fence,
    # then headers (put-fenced); payloads and headers in one batch (+hdr).
    raw = find(t, "raw", "put-fenced" if r["op"] == "e2e-put" else pairs[0][0] + "+hdr", size)
    if lk and ck and raw and lk.get("ok") and ck.get("ok") and raw.get("ok"):
        trips = 2 if r["op"] == "e2e-put" else 1
        model = trips * lk["p50_us"] + ck["p50_us"] + raw["p50_us"]
        e2e_model.append(dict(transport=t, op=r["op"], block_bytes=size, e2e_p50_us=r["p50_us"], round_trips=trips,
                              round_trip_p50_us=lk["p50_us"], checksum_p50_us=ck["p50_us"],
                              checksum_gbps=ck["gbps"], raw_op=raw["op"], raw_p50_us=raw["p50_us"],
                              serial_model_us=model, unexplained_us=r["p50_us"] - model))
e2e_rows.sort(key=lambda x: (x["block_bytes"], order.get(x["transport"], 99), x["op"] != "e2e-put"))
e2e_model.sort(key=lambda x: (x["block_bytes"], order.get(x["transport"], 99), x["op"] != "e2e-put"))

env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("UCX_")}
if as_json:
    json.dump(dict(ucx_version=ucx_version, env=env, elapsed_s=elapsed, rows=rows, peers=peers,
                   kvbench=[{k: v for k, v in r.items() if k != "name"} for r in kv],
                   e2e=e2e_rows, e2e_model=e2e_model,
                   e2e_kvbench=[dict(r) for r in e2e_raw], ok=not failed),
              sys.stdout, indent=2)
    print()
else:
    def g(x, w=8, p=2):
        return f"{x:{w}.{p}f}" if x is not None else f"{'-':>{w}}"
    print()
    print(f"{'transport':<9} {'ucx lanes':<15} {'op':<12} {'block':>7} {'kvbench':>8}  {'peer':<20} {'peer':>8} "
          f"{'ratio':>6} {'target':>6}  verdict")
    print(f"{'':<9} {'':<15} {'':<12} {'':>7} {'GB/s':>8}  {'':<20} {'GB/s':>8} {'':>6} {'':>6}")
    for x in rows:
        tgt = f">={x['target']:.1f}" if x["target"] is not None else "-"
        print(f"{x['transport']:<9} {x['lanes']:<15} {x['op']:<12} {fmt_size(x['block_bytes']):>7} "
              f"{g(x['kvbench_gbps'])}  {x['peer']:<20} {g(x['peer_gbps'])} {g(x['ratio'], 6)} {tgt:>6}  "
              f"{x['verdict']}{'  ' + x['error'] if x['error'] else ''}")
    print()
    print("peers (GB/s = 1e9 B/s; ucx_perftest MB/s = 2^20 B/s):")
    print(f"{'transport':<9} {'UCX_TLS':<11} {'test':<16} {'block':>7} {'GB/s':>8} {'MB/s':>10} {'iters':>7} "
          f"{'moved':>9} {'seconds':>8}")
    for p in peers:
        print(f"{p['transport']:<9} {p['ucx_tls'] or '-':<11} {p['test']:<16} {fmt_size(p['block_bytes']):>7} "
              f"{g(p['gbps'] if p['ok'] else None)} {g(p['mbps_2p20'] if p['ok'] else None, 10, 1)} {p['iterations']:>7} "
              f"{fmt_size(p['bytes']):>9} {p['seconds']:>8.3f}{'' if p['ok'] else '  FAILED'}")
    if e2e_raw:
        print()
        print("end to end (libkvpool Client through a standalone kvpool-agent) vs raw transport, same kvbench run, "
              "same block and batch:")
        print(f"{'transport':<9} {'client lanes':<15} {'op':<8} {'block':>7} {'batch':>5} {'e2e':>8} {'p50 us':>8} "
              f"{'p99 us':>8}  {'raw op':<12} {'raw':>8} {'p50 us':>8} {'ratio':>6} {'target':>6}  verdict")
        print(f"{'':<9} {'':<15} {'':<8} {'':>7} {'':>5} {'GB/s':>8} {'':>8} {'':>8}  {'':<12} {'GB/s':>8}")
        for x in e2e_rows:
            tgt = f">={x['target']:.2f}" if x["target"] is not None else "-"
            print(f"{x['transport']:<9} {x['lanes']:<15} {x['op']:<8} {fmt_size(x['block_bytes']):>7} "
                  f"{x['batch']:>5} {g(x['e2e_gbps'])} {g(x['e2e_p50_us'], 8, 0)} {g(x['e2e_p99_us'], 8, 0)}  "
                  f"{x['raw_op']:<12} {g(x['raw_gbps'])} {g(x['raw_p50_us'], 8, 0)} {g(x['ratio'], 6)} {tgt:>6}  "
                  f"{x['verdict']}{'  ' + x['error'] if x['error'] else ''}")
        if e2e_model:
            print()
            print("where an e2e batch's time goes (p50 per batch, us): control round trips (e2e-lookup p50 each) + "
                  "XXH3 of the batch (one thread) + the raw transfer = serial model:")
            print(f"{'transport':<9} {'op':<8} {'block':>7} {'e2e p50':>8}  {'trips x RTT':>12} {'checksum':>9} "
                  f"{'(GB/s)':>7} {'raw':>8} {'raw op':<14} {'model':>8} {'e2e-model':>9}")
            for m in e2e_model:
                print(f"{m['transport']:<9} {m['op']:<8} {fmt_size(m['block_bytes']):>7} {m['e2e_p50_us']:8.0f}  "
                      f"{m['round_trips']:>3} x {m['round_trip_p50_us']:6.0f} {m['checksum_p50_us']:9.0f} "
                      f"{m['checksum_gbps']:7.1f} {m['raw_p50_us']:8.0f} {m['raw_op']:<14} "
                      f"{m['serial_model_us']:8.0f} {m['unexplained_us']:9.0f}")
    print()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"ran in {elapsed} s; load average at the end: {load} (on {os.cpu_count()} cores: other work skews "
          "tcp rows most); " + ("a tool FAILED (see stderr)" if failed else "all tools ran"))
sys.exit(1 if failed else 0)
EOF
rc=$?
[ $failed = 0 ] || rc=1
exit $rc
