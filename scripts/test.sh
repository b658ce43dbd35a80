#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test through ctest.
# Exits non-zero on any failure.
#
#   scripts/test.sh                 release build in build/
#   KVPOOL_SANITIZE=1 scripts/test.sh   ASan+UBSan build in build-asan/
#   scripts/test.sh -R transport    extra arguments go to ctest
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
kvpool_install_deps

if [ "${KVPOOL_SANITIZE:-0}" = "1" ]; then
  dir="$KVPOOL_ROOT/build-asan"
  # What the sanitized run has no use for stays out of its build: the GPU
  # path (no GPU where it runs; the release build compiles it), the
  # benchmarks but kvbench, and full debug info (line tables are what ASan's
  # reports need).
  kvpool_build "$dir" -DKVPOOL_SANITIZE=ON -DKVPOOL_CUDA=OFF -DKVPOOL_BENCH=OFF \
    "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG" "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG"
  # Sanitized code runs several times slower: scale the tests' time bounds.
  export KVPOOL_TEST_TIME_SCALE="${KVPOOL_TEST_TIME_SCALE:-4}"
  # UCX keeps allocations until process exit by design; leaks are not ours.
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
else
  dir="$KVPOOL_ROOT/build"
  kvpool_build "$dir"
fi

cd "$dir"
# One test at a time: several tests bound times and move gigabytes, and the
# machine has two cores.
ctest --output-on-failure --timeout 600 "$@"
