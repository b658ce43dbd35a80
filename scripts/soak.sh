#!/usr/bin/env bash
# Soak: mixed put/get load from several workers (half over shared memory,
# half over TCP) while agents and the coordinator are killed and restarted
# and agents frozen, every byte checked; then the pool settles and must not
# have leaked a byte. Prints operations, errors surfaced, wrong bytes (must
# be 0), leaked bytes (must be 0) and the longest stall.
#
#   scripts/soak.sh MINUTES [kvpool-soak flags...]    e.g. scripts/soak.sh 30
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
minutes="${1:-2}"
shift || true
kvpool_install_deps
kvpool_build "$KVPOOL_ROOT/build" >/dev/null
seconds=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
# UCX logs every endpoint a killed agent leaves behind: expected here, and
# not what the run is judged by.
export UCX_LOG_LEVEL="${UCX_LOG_LEVEL:-fatal}"
exec "$KVPOOL_ROOT/build/bin/kvpool-soak" --seconds "$seconds" "$@"
