#!/bin/bash
# Everything the GPU issue measures, in one device call (bench/gpu/README.md):
# the GPU tests (bit-exact round trips), the copy limit, gather/scatter
# bandwidth, the pool round trip over shared memory and TCP, and fetch versus
# recompute with transformers' Llama code. Expects what bench/gpu/prepare.sh
# put in .gpu/ (our binaries, libkvpool_c.so and Debian's UCX runtime).
#   bench/gpu/run_all.sh [tests,bench,model]   (default: all three)
# Full logs go to $OUT (or /tmp/gpu-out); short tables are printed last.
set -u
what=${1:-tests,bench,model}
HERE=$(cd "$(dirname "$0")" && pwd)
G=${KVPOOL_GPU_DIR:-$(pwd)/.gpu}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$G/lib:${LD_LIBRARY_PATH:-}
export UCX_MODULE_DIR=$G/lib/ucx
export KVPOOL_TEST_BIN_DIR=$G/bin
export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
rc=0
nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv 2>&1 | tee "$OUT/device.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>&1 | tee -a "$OUT/device.txt"
if [[ $what == *tests* ]]; then
  echo "== tests (gpu_test, gpu_layout_test) =="
  "$G/bin/gpu_layout_test" 2>&1 | tail -3
  timeout 150 "$G/bin/gpu_test" -d yes > "$OUT/tests.log" 2>&1; t=$?
  grep -E "passed|failed|FAILED|REQUIRE|CHECK|skipped" "$OUT/tests.log" | tail -25
  echo "gpu_test exit $t"; [[ $t == 0 ]] || rc=1
fi
if [[ $what == *bench* ]]; then
  echo "== gpu_bench =="
  timeout 200 "$G/bin/gpu_bench" --json "$OUT/gpu_bench.json" > "$OUT/gpu_bench.log" 2>&1; t=$?
  echo "gpu_bench exit $t"; [[ $t == 0 ]] || rc=1
fi
if [[ $what == *model* ]]; then
  echo "== fetch vs recompute =="
  timeout 230 python3 "$HERE/fetch_vs_recompute.py" --lib "$G/lib/libkvpool_c.so.1" \
    --agent "$G/bin/kvpool-agent" --json "$OUT/fetch_vs_recompute.json" > "$OUT/fetch.log" 2>&1; t=$?
  echo "fetch_vs_recompute exit $t"; [[ $t == 0 ]] || rc=1
fi
[[ -f $OUT/gpu_bench.log ]] && cat "$OUT/gpu_bench.log"
[[ -f $OUT/fetch.log ]] && tail -12 "$OUT/fetch.log"
exit $rc
