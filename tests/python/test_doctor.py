"""``python -m kvpool doctor`` run as an operator runs it: a subprocess of
this interpreter with this environment (PYTHONPATH, KVPOOL_C_LIB), against a
real standalone agent that uses a secret file of the test's own."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import kvpool
import kvpool.gpu
from conftest import Pool, scaled

CHECKS = ["package", "python", "coordinator", "secret", "roundtrip", "ucx", "gpu", "torch"]


def write_secret(path):
    path.write_text(os.urandom(32).hex() + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    return write_secret(tmp_path_factory.mktemp("doctor") / "secret")


@pytest.fixture(scope="module")
def secured_pool(secret):
    p = Pool(extra_args=["--secret-file", str(secret)])
    yield p
    p.stop()


def doctor(*args, env=None):
    """(completed process, seconds it took): `python -m kvpool doctor ARGS`."""
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "kvpool", "doctor", *args], capture_output=True, text=True,
                       env=os.environ if env is None else env, timeout=scaled(120))
    return p, time.monotonic() - start


def parse(stdout):
    """{check: (status, detail)} from the lines, in order."""
    checks = {}
    for line in stdout.splitlines():
        status, name, detail = line.split(None, 2)
        checks[name] = (status, detail)
    return checks


def free_port():
    """A port that was just bound and closed: nothing listens there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_healthy_install_passes_and_the_round_trip_cleans_up(secured_pool, secret):
    p, _ = doctor("--coordinator", secured_pool.coordinator, "--secret-file", str(secret), "--timeout",
                  str(scaled(10)))
    assert p.returncode == 0, p.stdout + p.stderr
    checks = parse(p.stdout)
    assert list(checks) == CHECKS, p.stdout
    for name in ("package", "python", "coordinator", "secret", "roundtrip", "ucx"):
        assert checks[name][0] == "ok", p.stdout
    assert checks["gpu"][0] in ("ok", "skip") and checks["torch"][0] in ("ok", "skip"), p.stdout
    # Which library, and its version: the one this process loads from the same environment.
    assert kvpool.library_path() in checks["package"][1] and f"kvpool {kvpool.__version__}" in checks["package"][1]
    assert checks["python"][1].startswith(f"CPython {sys.version.split()[0]}")
    assert f"{secured_pool.coordinator} (from --coordinator)" in checks["coordinator"][1]
    assert f"{secret} (from --secret-file): accepted" in checks["secret"][1]
    assert "64 KiB block" in checks["roundtrip"][1] and "kvpool-doctor" in checks["roundtrip"][1]
    assert checks["ucx"][1].startswith("transports used: ") and "UCX 1." in checks["ucx"][1]
    if importlib.util.find_spec("torch") is None:
        assert checks["torch"] == ("skip", "not installed (kvpool does not need it: KvMover also takes device "
                                   "pointers)")

    # The scratch namespace exists and the block is gone again.
    q, _ = doctor("--coordinator", secured_pool.coordinator, "--secret-file", str(secret), "--json")
    report = json.loads(q.stdout)
    roundtrip = next(c for c in report["checks"] if c["name"] == "roundtrip")
    assert roundtrip["status"] == "ok" and roundtrip["block_bytes"] == 64 << 10
    layout = kvpool.gpu.KvLayout("vllm-paged", num_layers=1, num_kv_heads=8, head_dim=128, num_pages=1)
    with kvpool.Client(secured_pool.coordinator, secret, timeout_s=scaled(10)) as c:
        ns = kvpool.namespace_id(**layout.namespace("kvpool-doctor"))
        assert c.lookup(ns, bytes.fromhex(roundtrip["key"])) == 0  # NotFound if never registered


def test_the_address_and_secret_come_from_the_environment_as_for_the_adapters(secured_pool, secret):
    env = dict(os.environ, KVPOOL_COORDINATOR=secured_pool.coordinator, KVPOOL_SECRET_FILE=str(secret))
    p, _ = doctor("--timeout", str(scaled(10)), env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    checks = parse(p.stdout)
    assert f"{secured_pool.coordinator} (from $KVPOOL_COORDINATOR): reachable" in checks["coordinator"][1]
    assert f"{secret} (from $KVPOOL_SECRET_FILE): accepted" in checks["secret"][1]


def test_a_wrong_secret_fails_naming_the_secret(secured_pool, tmp_path):
    wrong = write_secret(tmp_path / "wrong-secret")
    p, _ = doctor("--coordinator", secured_pool.coordinator, "--secret-file", str(wrong))
    assert p.returncode == 1, p.stdout + p.stderr
    checks = parse(p.stdout)
    assert checks["coordinator"][0] == "ok"  # it was reached: the secret is what is wrong
    status, detail = checks["secret"]
    assert status == "FAIL" and str(wrong) in detail and "authentication refused" in detail, p.stdout
    assert checks["roundtrip"][0] == "skip"

    # A secret file the client cannot use is another failure, with the fix.
    loose = write_secret(tmp_path / "loose-secret")
    loose.chmod(0o644)
    p, _ = doctor("--coordinator", secured_pool.coordinator, "--secret-file", str(loose))
    assert p.returncode == 1
    status, detail = parse(p.stdout)["secret"]
    assert status == "FAIL" and "unusable" in detail and f"chmod 600 {loose}" in detail, p.stdout
    assert "authentication refused" not in detail


def test_a_ucx_that_cannot_start_fails_ucx_not_the_secret(secured_pool, secret):
    # The client starts UCX before it reads the secret, and both fail with
    # the same codes; UCX also prints to stdout, which --json must survive.
    env = dict(os.environ, UCX_TLS="no-such-transport")
    p, _ = doctor("--coordinator", secured_pool.coordinator, "--secret-file", str(secret), "--json", env=env)
    assert p.returncode == 1, p.stdout + p.stderr
    report = json.loads(p.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["failed"] == ["ucx"], p.stdout
    assert checks["coordinator"]["status"] == "ok" and checks["secret"]["status"] == "ok"
    assert "UCX_TLS=no-such-transport" in checks["ucx"]["detail"] and checks["roundtrip"]["status"] == "skip"


def test_nothing_listening_fails_unreachable_quickly(secret):
    address = f"127.0.0.1:{free_port()}"
    p, took = doctor("--coordinator", address, "--secret-file", str(secret), "--timeout", str(scaled(60)))
    assert p.returncode == 1, p.stdout + p.stderr
    checks = parse(p.stdout)
    status, detail = checks["coordinator"]
    assert status == "FAIL" and "unreachable" in detail and "connection refused" in detail, p.stdout
    assert checks["secret"][0] == "skip" and "not verified" in checks["secret"][1]
    assert checks["roundtrip"][0] == "skip"
    assert took < scaled(15), f"{took:.1f} s: a refused connection must not wait for --timeout"


def test_a_stopped_coordinator_fails_within_the_timeout(secret):
    pool = Pool(extra_args=["--secret-file", str(secret)])
    try:
        pool.pause()
        p, took = doctor("--coordinator", pool.coordinator, "--secret-file", str(secret), "--timeout", "1")
    finally:
        pool.stop()
    assert p.returncode == 1, p.stdout + p.stderr
    status, detail = parse(p.stdout)["coordinator"]
    assert status == "FAIL" and "unreachable" in detail and "handshake" in detail, p.stdout
    assert took < scaled(15)


def test_a_step_that_never_returns_is_abandoned(secured_pool, secret):
    # A connect stuck forever (a stand-in for one stuck in the C library):
    # the doctor reports it and exits instead of waiting.
    hang = textwrap.dedent("""
        import sys, time, kvpool
        kvpool.Client = lambda *a, **k: time.sleep(3600)
        from kvpool.__main__ import main
        sys.exit(main(sys.argv[1:]))
    """)
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-c", hang, "doctor", "--coordinator", secured_pool.coordinator,
                        "--secret-file", str(secret), "--timeout", "0.5"], capture_output=True, text=True,
                       timeout=scaled(60))
    took = time.monotonic() - start
    assert p.returncode == 1, p.stdout + p.stderr
    checks = parse(p.stdout)
    assert list(checks) == CHECKS, p.stdout  # every line printed, then os._exit
    status, detail = checks["coordinator"]
    assert status == "FAIL" and "no answer within" in detail, p.stdout
    assert took < scaled(15)


def test_a_block_that_comes_back_different_fails_the_round_trip(secured_pool, secret):
    # A get that corrupts one byte of what it loads: the comparison must see it.
    corrupt = textwrap.dedent("""
        import sys, kvpool._client
        real_get = kvpool._client.Client.get
        def get(self, ns, keys, out):
            loaded = real_get(self, ns, keys, out)
            out[100] ^= 0xFF
            return loaded
        kvpool._client.Client.get = get
        from kvpool.__main__ import main
        sys.exit(main(sys.argv[1:]))
    """)
    p = subprocess.run([sys.executable, "-c", corrupt, "doctor", "--coordinator", secured_pool.coordinator,
                        "--secret-file", str(secret)], capture_output=True, text=True, timeout=scaled(60))
    assert p.returncode == 1, p.stdout + p.stderr
    status, detail = parse(p.stdout)["roundtrip"]
    assert status == "FAIL" and "differs from the one written (1 of 65536 bytes)" in detail, p.stdout


def test_json_parses_and_carries_every_check(secured_pool, secret):
    p, _ = doctor("--coordinator", secured_pool.coordinator, "--secret-file", str(secret), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)
    assert report["ok"] is True and report["failed"] == []
    assert [c["name"] for c in report["checks"]] == CHECKS
    assert all(c["status"] in ("ok", "skip") and c["detail"] for c in report["checks"])
    package = report["checks"][0]
    assert package["library"] == kvpool.library_path() and package["version"] == kvpool.__version__
    ucx = next(c for c in report["checks"] if c["name"] == "ucx")
    assert ucx["transports"]

    q, _ = doctor("--coordinator", f"127.0.0.1:{free_port()}", "--secret-file", str(secret), "--json")
    assert q.returncode == 1
    failing = json.loads(q.stdout)
    assert failing["ok"] is False and failing["failed"] == ["coordinator"]
    assert "unreachable" in failing["checks"][2]["detail"]


def test_no_write_leaves_the_pool_alone(secret):
    pool = Pool(extra_args=["--secret-file", str(secret)])
    try:
        p, _ = doctor("--coordinator", pool.coordinator, "--secret-file", str(secret), "--no-write")
        layout = kvpool.gpu.KvLayout("vllm-paged", num_layers=1, num_kv_heads=8, head_dim=128, num_pages=1)
        ns = kvpool.namespace_id(**layout.namespace("kvpool-doctor"))
        with kvpool.Client(pool.coordinator, secret, timeout_s=scaled(10)) as c:
            with pytest.raises(kvpool.NotFound):
                c.lookup(ns, bytes(16))  # the coordinator never heard of the scratch namespace
    finally:
        pool.stop()
    assert p.returncode == 0, p.stdout + p.stderr
    checks = parse(p.stdout)
    assert checks["roundtrip"] == ("skip", "--no-write: nothing written to the pool")
    assert checks["secret"][0] == "ok"


@pytest.mark.skipif(kvpool.gpu.gpu_available(), reason="a GPU is usable here")
def test_without_a_gpu_the_gpu_check_skips_unless_required(secured_pool, secret):
    args = ("--coordinator", secured_pool.coordinator, "--secret-file", str(secret))
    p, _ = doctor(*args)
    status, detail = parse(p.stdout)["gpu"]
    if os.path.exists("/proc/driver/nvidia/version"):
        assert status == "FAIL"  # a GPU host where kvpool cannot use the GPU
    else:
        assert status == "skip" and p.returncode == 0, p.stdout
    assert "no GPU usable" in detail and ("built with CUDA;" in detail or "built without CUDA;" in detail), detail
    q, _ = doctor(*args, "--require-gpu")
    assert q.returncode == 1 and parse(q.stdout)["gpu"][0] == "FAIL"


def test_torch_is_reported_when_installed_and_failing_only_when_broken(secured_pool, secret, tmp_path):
    args = ("--coordinator", secured_pool.coordinator, "--secret-file", str(secret), "--no-write")
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(textwrap.dedent("""
        import types
        __version__ = "9.9.9+fake"
        version = types.SimpleNamespace(cuda=None)
        cuda = types.SimpleNamespace(is_available=lambda: False, device_count=lambda: 0)
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    p, _ = doctor(*args, env=env)
    assert parse(p.stdout)["torch"] == ("ok", "torch 9.9.9+fake (CUDA none), no CUDA devices usable"), p.stdout

    (fake / "__init__.py").write_text("raise OSError('libtorch_cuda.so: cannot open shared object file')\n")
    p, _ = doctor(*args, env=env)
    status, detail = parse(p.stdout)["torch"]
    assert status == "FAIL" and "libtorch_cuda.so" in detail and p.returncode == 1, p.stdout


def test_a_library_that_does_not_load_stops_the_command_naming_the_file(tmp_path):
    missing = tmp_path / "libkvpool_c.so.1"
    p, _ = doctor("--no-write", env=dict(os.environ, KVPOOL_C_LIB=str(missing)))
    assert p.returncode != 0 and p.stdout == ""
    assert f"cannot load libkvpool_c.so from {missing}" in p.stderr and "KVPOOL_C_LIB" in p.stderr
