#!/bin/bash
# The kvpool wheel as an engine's venv uses it, on the GPU machine (python/
# README.md): the GPU tests, then a venv over the machine's Python with the
# wheel installed by pip --no-index --no-deps, bench/gpu/package_check.py in
# it, and the GPU tests of tests/python/gpu (the vLLM connector, layer-wise
# loads and saves, UCM's device-pointer path) in it.
# Expects bench/gpu/prepare.sh's .gpu/ (binaries, Debian's UCX, the wheel);
# run from the repository root:  bash bench/gpu/wheel_on_gpu.sh   (carry .gpu)
# SKIP_GPU_TEST=1 skips gpu_test. Logs go to $OUT (or /tmp/res).
R=$(pwd); G=$R/.gpu; RES=${OUT:-/tmp/res}; mkdir -p "$RES"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__)'
[[ ${SKIP_GPU_TEST:-0} == 1 ]] || {
  echo "== gpu_test =="
  LD_LIBRARY_PATH=$G/lib UCX_MODULE_DIR=$G/lib/ucx KVPOOL_TEST_BIN_DIR=$G/bin timeout 150 "$G/bin/gpu_test" \
    > "$RES/gpu_test.log" 2>&1
  echo "gpu_test exit $?"; grep -E "passed|failed|FAILED" "$RES/gpu_test.log" | tail -5
}
# The agent runs on .gpu's Debian UCX; the venv's Python must not see it (the
# wheel brings its own UCX): a wrapper gives the agent its environment.
mkdir -p /tmp/agentbin
printf '#!/bin/bash\nLD_LIBRARY_PATH=%s/lib UCX_MODULE_DIR=%s/lib/ucx exec %s/bin/kvpool-agent "$@"\n' "$G" "$G" "$G" \
  > /tmp/agentbin/kvpool-agent
chmod +x /tmp/agentbin/kvpool-agent
V=/tmp/venv
python3 -m venv --system-site-packages $V 2>&1 | tail -2 || python3 -m venv --system-site-packages --without-pip $V
# The machine's torch (and pytest) live in a venv of their own (/opt/torch/.venv), which
# --system-site-packages does not reach: point the new venv at it.
TP=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
echo "torch from $TP"
echo "$TP" > "$($V/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/system_torch.pth"
echo "== pip install --no-index --no-deps $(basename $G/dist/*.whl) =="
$V/bin/python -m pip install --force-reinstall --no-index --no-deps $G/dist/*.whl 2>&1 | tail -2
rm -f /tmp/agent.port
(cd /tmp && /tmp/agentbin/kvpool-agent --standalone --listen 127.0.0.1:0 --port-file /tmp/agent.port \
  --pool-size 2GiB --log-level warn > "$RES/agent.log" 2>&1) &
A=$!; for _ in $(seq 300); do [[ -s /tmp/agent.port ]] && break; sleep 0.1; done
echo "== package_check.py (venv) =="
env -u LD_LIBRARY_PATH -u UCX_MODULE_DIR timeout 120 $V/bin/python "$R/bench/gpu/package_check.py" \
  --coordinator "127.0.0.1:$(cat /tmp/agent.port)" 2>&1 | tee "$RES/package.log"
echo "== python -m kvpool doctor --require-gpu (venv) =="
(cd /tmp && env -u LD_LIBRARY_PATH -u UCX_MODULE_DIR timeout 60 $V/bin/python -m kvpool doctor \
  --coordinator "127.0.0.1:$(cat /tmp/agent.port)" --require-gpu 2>&1 | tee "$RES/doctor.log")
pkill -f "kvpool-agent --standalone --listen 127.0.0.1:0 --port-file /tmp/agent.port"; wait $A 2>/dev/null
echo "== vLLM connector and layer-wise GPU tests (venv, wheel) =="
cd "$R/tests/python" && timeout 300 env -u LD_LIBRARY_PATH -u UCX_MODULE_DIR PYTHONPATH="$R/tests/python" \
  KVPOOL_TEST_BIN_DIR=/tmp/agentbin PYTHONDONTWRITEBYTECODE=1 $V/bin/python -m pytest -q -p no:cacheprovider \
  -rs -W ignore::DeprecationWarning gpu/test_vllm_gpu.py gpu/test_layerwise_gpu.py gpu/test_ucm_gpu.py 2>&1 | tee "$RES/vllm_gpu.log" | tail -25
