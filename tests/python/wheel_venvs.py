"""The wheel in fresh virtual environments of other Pythons (ctest
python_wheel_venvs; python/README.md).

Builds the wheel (scripts/build_wheel.sh), starts a real kvpool-agent
--standalone from the build's bin/ on a port the OS picks, with a secret file
of its own, then for each pyenv interpreter 3.10, 3.12 and 3.13: creates a
fresh venv (no numpy, nothing but pip), installs the wheel with pip
--no-index --no-deps, and runs `python -m kvpool doctor` (exit 0: no
check failed) and CHECK in it from a directory outside the source tree:
CHECK is a host put/get round trip through bytearray and memoryview,
errors that are RuntimeErrors, and every native library loaded from the
venv (none from the system's UCX). Exits 77 (ctest's skip) when an
interpreter is missing and none failed.

    wheel_venvs.py --build-dir build [--versions 3.10,3.12,3.13]
"""

import argparse
import glob
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
SKIP = 77

CHECK = r'''
import os, sys
import kvpool

prefix = os.path.realpath(sys.prefix)
inside = lambda p: os.path.realpath(p).startswith(prefix + os.sep)
assert sys.prefix != sys.base_prefix, "not in a venv"
assert inside(kvpool.__file__), ("kvpool imported from outside the venv", kvpool.__file__)
assert inside(kvpool.library_path()), ("libkvpool_c.so loaded from outside the venv", kvpool.library_path())
assert not any(os.path.realpath(p).startswith(os.path.realpath(ROOT)) for p in sys.path if p), "source tree on sys.path"
try:
    import numpy  # noqa: F401
    raise AssertionError("numpy is importable: the venv is not bare")
except ImportError:
    pass

BLOCK = 64 << 10
with kvpool.Client(COORDINATOR, SECRET, timeout_s=20) as c:
    ns = c.register_namespace(model_id=f"wheel-{sys.version_info[0]}.{sys.version_info[1]}", dtype="bf16",
                              num_layers=1, num_kv_heads=1, head_dim=1, tokens_per_block=16, layout="test",
                              block_bytes=BLOCK)
    keys = kvpool.prefix_keys(list(range(48)), ns, 16)
    assert len(keys) == 3 and all(isinstance(k, bytes) and len(k) == 16 for k in keys)
    blocks = [bytes((i * 7 + j) % 251 for j in range(BLOCK)) for i in range(3)]
    src = bytearray(b"".join(blocks))
    c.register_buffer(src)
    r = c.put(ns, keys, memoryview(src))
    assert (r.written, r.failed) == (3, 0), r
    assert c.lookup(ns, keys) == 3
    out = [bytearray(BLOCK) for _ in range(3)]
    assert c.get(ns, keys, [out[0], memoryview(out[1]), out[2]]) == 3
    assert [bytes(b) for b in out] == blocks, "bytes differ after the round trip"
    f = c.get_async(ns, keys[0], bytearray(BLOCK))
    assert f.wait(timeout_s=20) == 1
    # Refusals: by the coordinator, and by argument checks; all RuntimeErrors.
    for call in (lambda: c.lookup(ns + 1, keys), lambda: c.put(ns, keys[0], bytearray(BLOCK - 1))):
        try:
            call()
            raise AssertionError("a refused call returned")
        except kvpool.Error as e:
            assert isinstance(e, RuntimeError), type(e).__mro__
            caught = e
    assert isinstance(caught, ValueError) and caught.code == "invalid_argument"
    assert c.remove(ns, keys) == [True, True, True]
    transports = c.stats()["transports"]
# The new C function, pinned (tests/capi and tests/python pin the same vector).
assert kvpool.engine_keys(0, "abc") == (0xeea9e19f08f2632ee39c97239db4c3fa).to_bytes(16, "little")

# Every library of the wheel is the one in use, and none came from the system's UCX.
native = os.path.join(os.path.dirname(kvpool.__file__), "_native")
bundled = {os.path.realpath(os.path.join(d, f)) for d, _, fs in os.walk(native) for f in fs if ".so" in f}
mapped = {l.split(None, 5)[5].strip() for l in open("/proc/self/maps") if len(l.split(None, 5)) == 6}
mapped = {os.path.realpath(p) for p in mapped if ".so" in p}
missing = sorted(os.path.basename(p) for p in bundled - mapped)
assert not missing, ("bundled but not loaded", missing)
system_ucx = sorted(p for p in mapped if os.path.basename(p).startswith(("libucp.", "libuct", "libucs.", "libucm."))
                    and not inside(p))
assert not system_ucx, ("UCX from the system", system_ucx)
print(f"OK python {sys.version.split()[0]} kvpool {kvpool.__version__} {len(bundled)} libraries from the wheel, "
      f"transports {transports}, UCX_MODULE_DIR={os.environ.get('UCX_MODULE_DIR')}")
'''


def start_agent(build, secret, workdir):
    agent = build / "bin" / "kvpool-agent"
    if not agent.exists():
        sys.exit(f"wheel_venvs: {agent} not found: build kvpool-agent")
    port_file = workdir / "port"
    proc = subprocess.Popen([str(agent), "--standalone", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                             "--pool-size", "64MiB", "--secret-file", str(secret), "--log-level", "warn"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = port_file.read_text().strip() if port_file.exists() else ""
        if text:
            return proc, f"127.0.0.1:{int(text)}"
        if proc.poll() is not None:
            sys.exit(f"wheel_venvs: kvpool-agent exited with {proc.returncode}")
        time.sleep(0.02)
    proc.kill()
    sys.exit("wheel_venvs: kvpool-agent wrote no port file in 30 s")


def interpreters(versions):
    root = pathlib.Path(os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))) / "versions"
    found, missing = {}, []
    for v in versions:
        candidates = sorted(glob.glob(str(root / f"{v}.*" / "bin" / "python3")))
        if candidates:
            found[v] = candidates[-1]
        else:
            missing.append(v)
    return found, missing


def bare_env():
    """The environment without anything that could point Python or the loader
    at the build or source tree."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "KVPOOL_C_LIB", "UCX_MODULE_DIR", "LD_LIBRARY_PATH",
                        "LD_PRELOAD", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1", PYTHONNOUSERSITE="1")
    return env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True, type=pathlib.Path)
    ap.add_argument("--versions", default="3.10,3.12,3.13")
    args = ap.parse_args()
    build = args.build_dir.resolve()
    found, missing = interpreters(args.versions.split(","))
    for v in missing:
        print(f"SKIP python {v}: no ~/.pyenv/versions/{v}.*/bin/python3 on this machine")
    if not found:
        return SKIP
    failed = []
    with tempfile.TemporaryDirectory(prefix="kvpool-wheel-venvs-") as tmp:
        tmp = pathlib.Path(tmp)
        start = time.monotonic()
        subprocess.run(["bash", str(ROOT / "scripts" / "build_wheel.sh"), str(build), str(tmp / "dist")], check=True)
        (wheel,) = (tmp / "dist").glob("kvpool-*.whl")
        print(f"built {wheel.name} in {time.monotonic() - start:.1f} s")
        secret = tmp / "secret"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(32).hex().encode() + b"\n")
        os.close(fd)
        agent, coordinator = start_agent(build, secret, tmp)
        try:
            check = tmp / "check.py"
            check.write_text(f"ROOT = {str(ROOT)!r}\nCOORDINATOR = {coordinator!r}\nSECRET = {str(secret)!r}\n" + CHECK)
            work = tmp / "cwd"  # outside the source tree: nothing of it on sys.path
            work.mkdir()
            env = bare_env()
            for v, python in found.items():
                t0 = time.monotonic()
                venv = tmp / f"venv-{v}"
                steps = [[python, "-m", "venv", str(venv)],
                         [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                          str(wheel)],
                         [str(venv / "bin" / "python"), "-m", "kvpool", "doctor", "--coordinator", coordinator,
                          "--secret-file", str(secret)],
                         [str(venv / "bin" / "python"), str(check)]]
                for step in steps:
                    r = subprocess.run(step, cwd=work, env=env, capture_output=True, text=True, timeout=240)
                    if r.returncode != 0:
                        print(f"FAIL python {v}: {' '.join(step)} exited {r.returncode}\n{r.stdout}{r.stderr}")
                        failed.append(v)
                        break
                else:
                    print(f"PASS python {v} ({python}, {time.monotonic() - t0:.1f} s): {r.stdout.strip()}")
        finally:
            agent.terminate()
            try:
                agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
    if failed:
        return 1
    return SKIP if missing else 0


if __name__ == "__main__":
    sys.exit(main())
