"""``python -m kvpool doctor``: checks an install from inside an engine's venv
(python/README.md, "Checking an install").

Each check ends as one line, ``ok``, ``FAIL`` or ``skip`` with the reason;
the exit status is 0 only when no check failed (a skip is not a failure).
``--json`` prints the same as one JSON object.

Never hangs: every step that talks to the network runs on a worker thread
joined with a bound (the client's own timeout, ``--timeout``, plus a
margin), so a step stuck in the C library is reported as a failure and the
process leaves with ``os._exit`` instead of waiting for it.

Writes to the pool only in the round trip (``--no-write`` skips it): it
registers the scratch namespace ``kvpool-doctor`` (idempotent, so every run
reuses the same one: the C API cannot remove a namespace), puts one 64 KiB
block under a random key, reads it back, compares, and removes it.
"""

import argparse
import ctypes
import importlib.util
import json
import os
import pathlib
import platform
import pwd
import socket
import sys
import threading
import time

import kvpool
import kvpool.gpu
from . import _capi

OK, FAIL, SKIP = "ok", "FAIL", "skip"
DESCRIPTION = ("Checks this kvpool install from inside an engine's venv: the package and its libkvpool_c.so, the "
               "coordinator, the cluster secret, a round trip of one block, UCX, the GPU path, torch. One line per "
               "check (ok, FAIL or skip and the reason); exit status 0 only when no check failed.")

# As the engine adapters resolve them (kvpool/integrations/_common.py, not
# imported here: it needs numpy).
ENV_COORDINATOR = "KVPOOL_COORDINATOR"
ENV_SECRET_FILE = "KVPOOL_SECRET_FILE"
DEFAULT_COORDINATOR = "127.0.0.1:7400"

SCRATCH_MODEL = "kvpool-doctor"
# One vLLM-paged page of 1 layer, 8 KV heads of 128 in bf16, 16 tokens: a
# 64 KiB block, the smallest a namespace may have. The GPU probe uses the
# same layout, so one namespace serves both.
SCRATCH_LAYOUT = dict(num_layers=1, num_kv_heads=8, head_dim=128, dtype="bf16", tokens_per_block=16, num_pages=1)
NVIDIA_DRIVER = pathlib.Path("/proc/driver/nvidia/version")


class Check:
    """One check's outcome: status (OK, FAIL, SKIP), a one-line detail, and
    facts for --json."""

    def __init__(self, name, status, detail, **data):
        self.name, self.status, self.detail, self.data = name, status, detail, data

    def line(self):
        return f"{self.status:<4}  {self.name:<11} {self.detail}"

    def as_dict(self):
        return {"name": self.name, "status": self.status, "detail": self.detail, **self.data}


class Stuck(Exception):
    """A bounded step did not return in time; its thread is still in the C library."""


def bounded(fn, limit_s):
    """fn() on a daemon thread, waited for at most limit_s: its value, its
    exception, or Stuck."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, name="kvpool-doctor-step", daemon=True)
    t.start()
    t.join(limit_s)
    if t.is_alive():
        raise Stuck(f"no answer within {limit_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def default_secret_path():
    """The default of runtime/common/secret.cc (default_secret_path), for
    the report only: the C library finds and reads the file itself."""
    if os.geteuid() == 0:
        return "/etc/kvpool/secret"
    home = os.environ.get("HOME") or ""
    if not home:
        try:
            home = pwd.getpwuid(os.geteuid()).pw_dir
        except KeyError:
            return None
    while len(home) > 1 and home.endswith("/"):
        home = home[:-1]
    return home + "/.config/kvpool/secret"


def tcp_probe(address, timeout_s):
    """None when a TCP connection to HOST:PORT opens within timeout_s, else
    why not (DNS resolution is bounded by the caller: bounded())."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit():
        return f"expected HOST:PORT, got {address!r}"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return None
    except socket.timeout:
        return f"TCP connect timed out after {timeout_s:g} s (a wrong address, or a firewall drops the packets)"
    except ConnectionRefusedError:
        return ("connection refused: nothing listens there (is kvpool-coordinator or kvpool-agent --standalone "
                "running, on this address?)")
    except socket.gaierror as e:
        return f"cannot resolve {host}: {e.strerror}"
    except OSError as e:
        return f"TCP connect: {e.strerror or e}"


def loaded_file(prefix):
    """The first mapped file whose name starts with prefix (/proc/self/maps), or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(None, 5)[-1]
                if path.startswith("/") and path.rsplit("/", 1)[-1].startswith(prefix):
                    return path
    except OSError:
        pass
    return None


class Doctor:

    def __init__(self, args):
        self.args = args
        self.timeout = args.timeout
        self.client = None
        self.namespace = None  # the scratch namespace, once registered
        self.transports = ""  # UCX transports the round trip used
        self.stuck = False  # a step is still running in the C library
        self.setup_error = None  # why the client could not start UCX as configured

    def step(self, fn, calls=1):
        """fn() bounded by `calls` client timeouts plus a margin."""
        try:
            return bounded(fn, calls * self.timeout + max(2.0, self.timeout))
        except Stuck:
            self.stuck = True
            raise

    # ------------------------------------------------------------- checks --

    def package(self):
        path = kvpool.library_path()
        if os.environ.get("KVPOOL_C_LIB"):
            origin = "from $KVPOOL_C_LIB"
        elif pathlib.Path(path).resolve().parent == _capi.NATIVE_DIR.resolve():
            origin = "the wheel's copy" if (_capi.NATIVE_DIR / "BUNDLED.txt").exists() else "the build tree's copy"
        else:
            origin = "from the loader's search path"
        abi = _capi.lib.kvpool_abi_version()
        package_dir = str(pathlib.Path(kvpool.__file__).resolve().parent)
        return Check("package", OK, f"kvpool {kvpool.__version__} (C ABI {abi}), {path} ({origin}); "
                     f"package at {package_dir}", version=kvpool.__version__, abi=abi, library=path,
                     library_origin=origin, package=package_dir)

    def python(self):
        v = sys.version_info
        text = f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"
        data = dict(version=platform.python_version(), executable=sys.executable)
        if v < (3, 10):
            return Check("python", FAIL, f"{text}: kvpool needs 3.10 or later", **data)
        return Check("python", OK, text, **data)

    def connection(self):
        """The coordinator and secret checks, from one authenticated connect."""
        a = self.args
        if a.coordinator:
            address, address_from = a.coordinator, "--coordinator"
        elif os.environ.get(ENV_COORDINATOR):
            address, address_from = os.environ[ENV_COORDINATOR], f"${ENV_COORDINATOR}"
        else:
            address, address_from = DEFAULT_COORDINATOR, "the default"
        if a.secret_file:
            secret, secret_from = a.secret_file, "--secret-file"
        elif os.environ.get(ENV_SECRET_FILE):
            secret, secret_from = os.environ[ENV_SECRET_FILE], f"${ENV_SECRET_FILE}"
        else:
            secret, secret_from = default_secret_path(), "the default path"
        where = f"{address} (from {address_from})"
        secret_where = f"{secret} (from {secret_from})"
        cdata = dict(address=address, address_from=address_from)
        sdata = dict(path=secret, path_from=secret_from)
        etcd = address.startswith("etcd://")

        def unreachable(why):
            return Check("coordinator", FAIL, f"{where}: unreachable: {why}", **cdata, error=why)

        def not_verified(why):
            return Check("secret", SKIP, f"{secret_where}: not verified: {why}", **sdata)

        try:
            self.client = self.start(address)
        except kvpool.PermissionDenied as e:
            return (Check("coordinator", OK, f"{where}: reachable; it answered the handshake", **cdata),
                    Check("secret", FAIL, f"{secret_where}: authentication refused: the coordinator does not share "
                          "this secret; copy the coordinator's secret file here (mode 0600), or point --secret-file "
                          f"or ${ENV_SECRET_FILE} at a copy of it", **sdata, error=str(e)))
        except (kvpool.FailedPrecondition, kvpool.Internal) as e:
            # start() ruled out UCX: the C client reads the secret file next,
            # before it dials, and these are its refusals of the file
            # (runtime/common/secret.h).
            secret_check = Check("secret", FAIL, f"{secret_where}: unusable: {e.message}", **sdata, error=str(e))
            if etcd:
                return Check("coordinator", SKIP, f"{where}: not tried: no usable secret", **cdata), secret_check
            why = self.probe(address)
            if why is not None:
                return unreachable(why), secret_check
            return (Check("coordinator", OK, f"{where}: accepts TCP connections (the handshake needs a usable secret)",
                          **cdata), secret_check)
        except (kvpool.Unavailable, kvpool.DeadlineExceeded, Stuck) as e:
            why = e.message if isinstance(e, kvpool.Error) else str(e)
            if not etcd and not self.stuck:
                probe = self.probe(address)
                if probe is not None:
                    why = probe
                elif not isinstance(e, kvpool.Unavailable):
                    why = (f"it accepts TCP connections but did not answer kvpool's handshake within {self.timeout:g} "
                           f"s (a stopped or overloaded coordinator, or another service on this port): {why}")
            return unreachable(why), not_verified("no connection to the coordinator")
        except kvpool.InvalidArgument as e:
            return (Check("coordinator", FAIL, f"{where}: {e.message}", **cdata, error=str(e)),
                    not_verified("no coordinator address to try it on"))
        except kvpool.Error as e:
            return (Check("coordinator", FAIL, f"{where}: cannot connect: {e}", **cdata, error=str(e)),
                    not_verified("no connection to the coordinator"))
        return (Check("coordinator", OK, f"{where}: reachable", **cdata),
                Check("secret", OK, f"{secret_where}: accepted by the coordinator", **sdata))

    def start(self, address):
        """A client (None when only UCX could not start: self.setup_error),
        or the exception that tells what is wrong."""

        def connect(tls):
            return self.step(lambda: kvpool.Client(address, self.args.secret_file or None, timeout_s=self.timeout,
                                                   client_id="kvpool-doctor", tls=tls))

        try:
            return connect("")
        except (kvpool.FailedPrecondition, kvpool.Internal) as e:
            first = e
        # The client starts UCX before it reads the secret file, and both
        # fail with these codes: again with UCX's in-process transport only
        # ("self", which needs no device), which settles which one it was.
        # The control connection is TCP either way.
        try:
            retry = connect("self")
        except (kvpool.FailedPrecondition, kvpool.Internal):
            raise  # not UCX's configuration: the secret file
        except BaseException:
            self.setup_error = first
            raise
        self.setup_error = first
        self.step(retry.close)
        return None

    def probe(self, address):
        try:
            return self.step(lambda: tcp_probe(address, self.timeout))
        except Stuck as e:
            return f"TCP connect: {e} (name resolution?)"

    def roundtrip(self):
        if self.setup_error is not None:
            return Check("roundtrip", SKIP, "the client cannot start UCX as configured (see ucx)")
        if self.client is None:
            return Check("roundtrip", SKIP, "no connection to the pool")
        if self.args.no_write:
            return Check("roundtrip", SKIP, "--no-write: nothing written to the pool")
        layout = kvpool.gpu.KvLayout("vllm-paged", **SCRATCH_LAYOUT)
        block = layout.block_bytes
        doing = ["register_namespace"]
        key = os.urandom(16)  # never another run's key

        def run():
            start = time.monotonic()
            self.namespace = ns = self.client.register_namespace(**layout.namespace(SCRATCH_MODEL))
            data = os.urandom(block)
            doing[0] = "put"
            put = self.client.put(ns, key, data)
            if put.written != 1:
                error = put.errors[0]
                return f"put of one {block >> 10} KiB block: {put.outcomes[0]}{f' ({error})' if error else ''}"
            try:
                doing[0] = "get"
                out = bytearray(block)
                loaded = self.client.get(ns, key, out)
                if loaded != 1:
                    return "get: the block just put was not found"
                if out != data:
                    wrong = sum(1 for x, y in zip(out, data) if x != y)
                    return f"get: the block read back differs from the one written ({wrong} of {block} bytes)"
            finally:
                doing[0] = "remove"
                removed = self.client.remove(ns, key)
            if not removed:
                return "remove: the block was not found"
            return time.monotonic() - start

        try:
            outcome = self.step(run, calls=4)
        except (kvpool.Error, Stuck) as e:
            outcome = f"{doing[0]}: {e}"
        try:
            self.transports = self.step(self.client.stats)["transports"]
        except (kvpool.Error, Stuck):
            pass
        data = dict(namespace=SCRATCH_MODEL, block_bytes=block, key=key.hex())
        if isinstance(outcome, str):
            return Check("roundtrip", FAIL, f"namespace {SCRATCH_MODEL}: {outcome}", **data, error=outcome)
        return Check("roundtrip", OK, f"put, get, compare and remove of one {block >> 10} KiB block in namespace "
                     f"{SCRATCH_MODEL}: {outcome * 1e3:.1f} ms", **data, ms=round(outcome * 1e3, 3))

    def ucx(self):
        path = loaded_file("libucp")
        version = None
        if path:
            try:
                ucp = ctypes.CDLL(path)  # already loaded: the same object
                ucp.ucp_get_version_string.restype = ctypes.c_char_p
                version = ucp.ucp_get_version_string().decode()
            except (OSError, AttributeError):
                pass
        library = f"UCX {version or '(version unknown)'} from {path or '(not found in this process)'}"
        settings = "; ".join(f"{k}={os.environ[k]}" for k in ("UCX_TLS", "UCX_NET_DEVICES") if os.environ.get(k))
        if settings:
            library += f"; {settings}"
        data = dict(ucx_version=version, ucx_library=path, transports=self.transports or None)
        if self.setup_error is not None:
            return Check("ucx", FAIL, f"the client cannot start UCX: {self.setup_error.message}; {library}", **data,
                         error=str(self.setup_error))
        if self.transports:
            return Check("ucx", OK, f"transports used: {self.transports}; {library}", **data)
        why = "no block moved (the round trip did not run)" if self.client is None or self.args.no_write else \
            "the round trip moved no bytes"
        return Check("ucx", SKIP, f"transports unknown: {why}; {library}", **data)

    def gpu(self):
        driver = None
        try:
            first = NVIDIA_DRIVER.read_text().splitlines()[0]
            driver = first.split("Kernel Module", 1)[-1].split()[0] if "Kernel Module" in first else first.strip()
        except (OSError, IndexError):
            pass
        data = dict(gpu_usable=False, built_with_cuda=None, nvidia_driver=driver)
        driver_text = f"NVIDIA driver {driver}" if driver else "no NVIDIA driver on this host"
        if kvpool.gpu.gpu_available():
            data.update(gpu_usable=True, built_with_cuda=True)
            return Check("gpu", OK, f"built with CUDA; a GPU is usable ({driver_text})", **data)
        built, why = self.cuda_build()
        data["built_with_cuda"] = built
        build = {True: "built with CUDA", False: "built without CUDA", None: "built with CUDA: unknown"}[built]
        text = f"{build}; no GPU usable: {why}; {driver_text}"
        if self.args.require_gpu:
            return Check("gpu", FAIL, f"{text}; --require-gpu", **data)
        if driver is not None:
            return Check("gpu", FAIL, f"{text}: this host has a GPU driver, so kvpool's GPU path should work here",
                         **data)
        return Check("gpu", SKIP, f"{text}; the host API works (--require-gpu makes this a failure)", **data)

    def cuda_build(self):
        """(built with CUDA: True, False or None, why no GPU is usable), asked
        of KvMover, which says Unimplemented in a build without CUDA and, when
        the namespace is registered, FailedPrecondition with the CUDA error.
        Called only when gpu_available() is False: the mover never reaches
        the (fake) device pointer."""
        if self.client is None or self.stuck:
            return None, "the reason is known only over a pool connection"
        layout = kvpool.gpu.KvLayout("vllm-paged", **SCRATCH_LAYOUT)
        registered = self.namespace is not None
        # Unregistered (--no-write), a CUDA build refuses the namespace before
        # it looks for a GPU, and a build without CUDA still says Unimplemented.
        ns = self.namespace if registered else kvpool.namespace_id(**layout.namespace(SCRATCH_MODEL))

        def run():
            kvpool.gpu.KvMover(self.client, ns, layout, [0x1000]).close()

        try:
            self.step(run)
        except kvpool.Unimplemented:
            return False, "this libkvpool_c.so has no GPU path"
        except (kvpool.FailedPrecondition, kvpool.NotFound) as e:
            if not registered:
                return True, "the reason is known only with the scratch namespace (run without --no-write)"
            return True, e.message.removeprefix("gpu: ")
        except (kvpool.Error, Stuck) as e:
            return None, f"the GPU probe failed: {e}"
        return True, "a GPU mover was created although gpu_available() is False"

    def torch(self):
        if importlib.util.find_spec("torch") is None:
            return Check("torch", SKIP, "not installed (kvpool does not need it: KvMover also takes device pointers)")
        try:
            import torch  # noqa: PLC0415 - only when installed
            cuda = torch.version.cuda
            usable = bool(torch.cuda.is_available())
            devices = torch.cuda.device_count() if usable else 0
        except Exception as e:  # noqa: BLE001 - a broken torch is this check's finding
            return Check("torch", FAIL, f"installed but import failed: {type(e).__name__}: {e}")
        return Check("torch", OK, f"torch {torch.__version__} (CUDA {cuda or 'none'}), "
                     f"{devices if usable else 'no'} CUDA device{'s' if devices != 1 else ''} usable",
                     version=torch.__version__, cuda=cuda, cuda_available=usable, devices=devices)

    def close(self):
        if self.client is not None and not self.stuck:
            try:
                self.step(self.client.close)
            except (kvpool.Error, Stuck):
                pass


def add_arguments(p):
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help=f"the pool's coordinator (default: ${ENV_COORDINATOR}, else {DEFAULT_COORDINATOR})")
    p.add_argument("--secret-file", metavar="PATH",
                   help=f"the cluster secret (default: ${ENV_SECRET_FILE}, else /etc/kvpool/secret for root, "
                   "~/.config/kvpool/secret otherwise)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="bound of each network step (default 5)")
    p.add_argument("--no-write", action="store_true",
                   help="skip the round trip (it registers namespace kvpool-doctor and puts and removes one block)")
    p.add_argument("--require-gpu", action="store_true", help="fail, not skip, when no GPU is usable")
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.add_argument("--log-level", default=os.environ.get("KVPOOL_LOG_LEVEL") or "off",
                   help="kvpool's own stderr log level (default: $KVPOOL_LOG_LEVEL, else off)")


def run(args):
    """Runs the checks and prints them; returns the exit status."""
    if not args.timeout > 0:
        print("kvpool doctor: --timeout must be positive", file=sys.stderr)
        return 2
    try:
        kvpool.set_log_level(args.log_level)
    except kvpool.InvalidArgument as e:
        print(f"kvpool doctor: --log-level: {e.message}", file=sys.stderr)
        return 2
    # UCX prints its warnings to stdout: while the checks run, file
    # descriptor 1 is stderr, so stdout carries the report only (and --json
    # stays parseable).
    sys.stdout.flush()
    report_fd = os.dup(1)
    os.dup2(2, 1)
    out = os.fdopen(report_fd, "w")
    try:
        d = Doctor(args)
        checks = []

        def report(*cs):
            for c in cs:
                checks.append(c)
                if not args.json:
                    print(c.line(), file=out, flush=True)

        report(d.package(), d.python())
        report(*d.connection())
        report(d.roundtrip(), d.ucx(), d.gpu(), d.torch())
        d.close()
        failed = [c.name for c in checks if c.status == FAIL]
        if args.json:
            print(json.dumps({"ok": not failed, "failed": failed, "checks": [c.as_dict() for c in checks]},
                             indent=2), file=out)
    finally:
        out.flush()
        sys.stdout.flush()
        os.dup2(report_fd, 1)
        out.close()
    status = 1 if failed else 0
    if d.stuck:
        # A step's thread is still inside the C library: leave without
        # waiting for it (interpreter shutdown would join the client's work).
        sys.stderr.flush()
        os._exit(status)
    return status


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m kvpool doctor", description=DESCRIPTION)
    add_arguments(p)
    return run(p.parse_args(argv))
