#!/bin/bash
# Collects what the device lacks into one folder to carry (DESIGN.md, "The
# machines we build on"): our binaries and libkvpool_c.so (stripped), the
# non-system shared libraries they load (Debian's UCX and its modules, spdlog,
# fmt, OpenSSL, numa, verbs), the bench/gpu scripts, and the kvpool wheel
# (scripts/build_wheel.sh) that run_all.sh installs into a venv.
#   bench/gpu/prepare.sh BUILD_DIR DEST     (e.g. build /work/main/.gpu)
# Then on the device: bash .gpu/scripts/run_all.sh (carry=[".gpu"]).
set -euo pipefail
B=${1:-build}
D=${2:-.gpu}
SRC=$(cd "$(dirname "$0")" && pwd)
rm -rf "$D"
mkdir -p "$D/bin" "$D/lib/ucx" "$D/scripts"
for b in gpu_test gpu_layout_test gpu_bench kvpool-agent; do
  strip -o "$D/bin/$b" "$B/bin/$b"
done
strip -o "$D/lib/libkvpool_c.so.1" "$B/lib/libkvpool_c.so.1"
cp "$SRC"/run_all.sh "$SRC"/fetch_vs_recompute.py "$SRC"/layerwise.py "$SRC"/ucm_rows.py "$SRC"/package_check.py \
  "$D/scripts/"
"$SRC"/../../scripts/build_wheel.sh "$B" "$D/dist"
ucxdir=/usr/lib/x86_64-linux-gnu/ucx
cp "$ucxdir"/*.so* "$D/lib/ucx/"
# Every library the binaries, libkvpool_c and UCX's modules load, but glibc's
# and the C++ runtime (the device's are newer and compatible).
{
  ldd "$D"/bin/* "$D"/lib/libkvpool_c.so.1 "$D"/lib/ucx/*.so* 2>/dev/null | awk '/=>/ {print $3}'
} | sort -u | grep -v -E '/(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|ld-linux-x86-64)\.so' |
  while read -r lib; do
    [[ -f $lib ]] && cp -L "$lib" "$D/lib/"
  done
du -sh "$D"
