#!/bin/bash
# Builds the kvpool wheel (python/README.md): the pure-Python package plus
# libkvpool_c.so and every native library it loads beyond glibc and the C++
# runtime (UCX and its transport modules, spdlog, fmt, OpenSSL, numa, verbs,
# ...), with $ORIGIN run paths. No network: the wheel is written with
# Python's zipfile (python/make_wheel.py).
#   scripts/build_wheel.sh [BUILD_DIR] [OUT_DIR]     (default: build, BUILD_DIR/dist)
# Then: pip install --no-index build/dist/kvpool-*.whl
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/build}"
OUT="${2:-$BUILD/dist}"

for tool in patchelf objdump ldd strip; do
  if ! command -v "$tool" >/dev/null; then
    echo "build_wheel.sh: $tool is missing (Debian: apt-get install patchelf binutils; scripts/lib.sh lists it)" >&2
    exit 1
  fi
done
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
# libkvpool_c.so and the staged package; the rest of the project is not needed.
cmake --build "$BUILD" -j "${KVPOOL_BUILD_JOBS:-2}" --target kvpool_python >/dev/null
# Debian's python3 (a pyenv python3 may come first on PATH; any 3.10+ works).
exec /usr/bin/python3 "$ROOT/python/make_wheel.py" --source "$ROOT/python/kvpool" \
  --library "$BUILD/python/kvpool/_native/libkvpool_c.so.1" --out "$OUT"
