"""Fixtures for the kvpool Python tests: a real standalone pool.

kvpool-agent --standalone (agent + embedded coordinator) is started from
KVPOOL_TEST_BIN_DIR (ctest sets it; else build/bin of this checkout) on a port
the OS picks, and stopped after the tests. Time bounds scale with
KVPOOL_TEST_TIME_SCALE, as in the C++ tests.
"""

import os
import pathlib
import signal
import subprocess
import tempfile
import time

import pytest

try:
    import kvpool
except ImportError as e:  # a clearer cause than a bare "No module named kvpool"
    raise ImportError(f"{e}: build the kvpool_python target (cmake --build build --target kvpool_python) and put "
                      "build/python on PYTHONPATH") from e

TIME_SCALE = max(1.0, float(os.environ.get("KVPOOL_TEST_TIME_SCALE", "1")))
BLOCK = 64 << 10  # the smallest block size a namespace may have


def scaled(seconds):
    return seconds * TIME_SCALE


def bin_dir():
    env = os.environ.get("KVPOOL_TEST_BIN_DIR")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parents[2] / "build" / "bin"


class Pool:
    """A running kvpool-agent --standalone."""

    def __init__(self, pool_size="64MiB", extra_args=()):
        agent = bin_dir() / "kvpool-agent"
        if not agent.exists():
            pytest.fail(f"{agent} not found: build it, or set KVPOOL_TEST_BIN_DIR")
        fd, port_file = tempfile.mkstemp(prefix="kvpool-pytest-", suffix="-port")
        os.close(fd)
        os.unlink(port_file)
        self.process = subprocess.Popen([
            str(agent), "--standalone", "--listen", "127.0.0.1:0", "--port-file", port_file, "--pool-size", pool_size,
            "--log-level", "warn", *extra_args
        ])
        deadline = time.monotonic() + scaled(30)
        port = 0
        while time.monotonic() < deadline and port == 0:
            try:
                port = int(pathlib.Path(port_file).read_text().strip() or 0)
            except (FileNotFoundError, ValueError):
                if self.process.poll() is not None:
                    pytest.fail(f"kvpool-agent exited with {self.process.returncode} before writing its port")
                time.sleep(0.01)
        if port == 0:
            self.stop()
            pytest.fail("kvpool-agent wrote no port file within the deadline")
        os.unlink(port_file)
        self.coordinator = f"127.0.0.1:{port}"

    def pause(self):
        """Stops the agent, returning once every thread of it has stopped:
        SIGSTOP wakes one thread to start the group stop, and under load the
        others can still serve a request meanwhile."""
        self.process.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + scaled(10)
        while not self._all_threads_stopped():
            if time.monotonic() > deadline:
                pytest.fail("kvpool-agent did not stop after SIGSTOP")
            time.sleep(0.001)

    def _all_threads_stopped(self):
        tasks = pathlib.Path(f"/proc/{self.process.pid}/task")
        for stat in tasks.glob("*/stat"):
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, IndexError):
                continue  # a thread that exited meanwhile
            if state not in ("T", "t"):
                return False
        return True

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def stop(self):
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout=scaled(10))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session", autouse=True)
def quiet_runtime():
    kvpool.set_log_level("warn")


@pytest.fixture(scope="module")
def pool():
    p = Pool()
    yield p
    p.stop()


@pytest.fixture
def private_pool():
    """A pool of the test's own, for tests that pause it."""
    p = Pool()
    yield p
    p.stop()


@pytest.fixture
def client(pool):
    with kvpool.Client(pool.coordinator, timeout_s=scaled(10)) as c:
        yield c


def namespace_args(model):
    return dict(model_id=model, dtype="bf16", num_layers=1, num_kv_heads=1, head_dim=1, tokens_per_block=16,
                layout="test", block_bytes=BLOCK)


@pytest.fixture
def ns(client, request):
    """A namespace of the test's own (its model id is the test's name)."""
    return client.register_namespace(**namespace_args(request.node.name))
