#!/usr/bin/env bash
# The main job, for now the transport demo: a region owner and a client
# process move 1 GiB in 1 MiB blocks each way (put, get, and read by the
# owner) over shared memory and over TCP, verify every byte, and print a
# summary table. Exits non-zero on any wrong byte or failed transfer.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
kvpool_install_deps
kvpool_build "$KVPOOL_ROOT/build"

echo
echo "kvpool transport demo: 1 GiB each way in 1 MiB blocks, every byte verified"
echo
"$KVPOOL_ROOT/build/bin/kvbench" --region 1GiB --total 1GiB --block 1MiB --batch 16 \
  --transports shm,tcp --ops put,get,owner-read --verify "$@"
echo
echo "put: client -> owner's region; get: UCX get from the region;"
echo "owner-read: the owner puts into the client's registered buffer (over TCP, UCX get is slow)."
