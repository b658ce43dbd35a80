#!/bin/bash
# Everything the GPU issue measures, in one device call (bench/gpu/README.md):
# the GPU tests (bit-exact round trips), the copy limit, gather/scatter
# bandwidth, the pool round trip over shared memory and TCP, fetch versus
# recompute with transformers' Llama code, the layer-wise fetch and save
# against their limits (layerwise.py), and UCM's device-pointer path against
# the layout mover and a pinned cudaMemcpy (ucm_rows.py, only when asked). Expects what bench/gpu/prepare.sh
# put in .gpu/ (our binaries, Debian's UCX runtime for them, and the kvpool
# wheel in .gpu/dist/, from scripts/build_wheel.sh). The Python side uses the
# package as an engine would: a venv over the machine's Python (with
# --system-site-packages, for torch) with the wheel installed by
# pip install --no-index --no-deps.
#   bench/gpu/run_all.sh [tests,bench,model,layerwise,rows]   (default: the first four)
# Full logs go to $OUT (or /tmp/gpu-out); short tables are printed last.
set -u
what=${1:-tests,bench,model,layerwise}
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
# The machine's torch and transformers may live in a venv of their own
# (/opt/torch/.venv), which a venv made with --system-site-packages does not
# reach (wheel_on_gpu.sh): a .pth file points the new venv at them.
point_at_torch() {
  local tp
  tp=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null) &&
    echo "$tp" > "$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/system_torch.pth"
  return 0
}
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
if [[ $what == *model* || $what == *layerwise* || $what == *rows* ]]; then
  echo "== the kvpool wheel in a venv, a standalone agent =="
  wheels=("$G"/dist/kvpool-*.whl)
  venv=$OUT/venv
  if [[ ! -f ${wheels[0]} ]]; then
    echo "no kvpool wheel in $G/dist: scripts/build_wheel.sh BUILD_DIR $G/dist"; rc=1
  # No pip in the venv where the machine lacks ensurepip (python3-venv): the
  # system's pip is reachable through --system-site-packages.
  elif ! { python3 -m venv --system-site-packages "$venv" 2>/dev/null ||
           python3 -m venv --system-site-packages --without-pip "$venv"; } ||
       ! { point_at_torch "$venv"
           "$venv/bin/python" -m pip install -q --no-index --no-deps "${wheels[0]}" > "$OUT/pip.log" 2>&1; }; then
    echo "installing ${wheels[0]} into $venv failed:"; tail -5 "$OUT/pip.log"; rc=1
  else
    # The agent runs on .gpu's Debian UCX (LD_LIBRARY_PATH, UCX_MODULE_DIR);
    # the venv's Python must not see those: the wheel bundles its own UCX and
    # points UCX_MODULE_DIR at it only when the variable is unset.
    port_file=$OUT/agent.port; rm -f "$port_file"
    "$G/bin/kvpool-agent" --standalone --listen 127.0.0.1:0 --port-file "$port_file" --pool-size 12GiB \
      --log-level warn > "$OUT/agent.log" 2>&1 &
    agent=$!
    for _ in $(seq 1200); do [[ -s $port_file ]] && break; sleep 0.1; done  # a 12 GiB region takes a while
    if [[ ! -s $port_file ]]; then
      echo "kvpool-agent did not start:"; tail -5 "$OUT/agent.log"; rc=1
    else
      if [[ $what == *model* ]]; then
        echo "== the wheel in $venv (package_check.py) =="
        (cd "$OUT" && timeout 120 env -u LD_LIBRARY_PATH -u UCX_MODULE_DIR "$venv/bin/python" \
          "$HERE/package_check.py" --coordinator "127.0.0.1:$(cat "$port_file")") 2>&1 | tee "$OUT/package.log"
        t=${PIPESTATUS[0]}; echo "package_check exit $t"; [[ $t == 0 ]] || rc=1
        echo "== fetch vs recompute =="
        (cd "$OUT" && timeout 230 env -u LD_LIBRARY_PATH -u UCX_MODULE_DIR "$venv/bin/python" \
          "$HERE/fetch_vs_recompute.py" --coordinator "127.0.0.1:$(cat "$port_file")" \
          --json "$OUT/fetch_vs_recompute.json") > "$OUT/fetch.log" 2>&1; t=$?
        echo "fetch_vs_recompute exit $t"; [[ $t == 0 ]] || rc=1
      fi
      if [[ $what == *layerwise* ]]; then
        echo "== layer-wise fetch and save (layerwise.py) =="
        (cd "$OUT" && timeout 400 env -u LD_LIBRARY_PATH -u UCX_MODULE_DIR "$venv/bin/python" \
          "$HERE/layerwise.py" --coordinator "127.0.0.1:$(cat "$port_file")" --agent-pid "$agent" \
          --json "$OUT/layerwise.json") > "$OUT/layerwise.log" 2>&1; t=$?
        echo "layerwise exit $t"; [[ $t == 0 ]] || rc=1
      fi
      if [[ $what == *rows* ]]; then
        echo "== UCM's device-pointer path against the layout mover and cudaMemcpy (ucm_rows.py) =="
        (cd "$OUT" && timeout 200 env -u LD_LIBRARY_PATH -u UCX_MODULE_DIR "$venv/bin/python" \
          "$HERE/ucm_rows.py" --coordinator "127.0.0.1:$(cat "$port_file")") > "$OUT/rows.log" 2>&1; t=$?
        echo "ucm_rows exit $t"; [[ $t == 0 ]] || rc=1
      fi
    fi
    kill "$agent" 2>/dev/null; wait "$agent" 2>/dev/null
  fi
fi
[[ -f $OUT/gpu_bench.log ]] && cat "$OUT/gpu_bench.log"
[[ -f $OUT/fetch.log ]] && tail -12 "$OUT/fetch.log"
[[ -f $OUT/layerwise.log ]] && tail -12 "$OUT/layerwise.log"
[[ -f $OUT/rows.log ]] && tail -12 "$OUT/rows.log"
exit $rc
