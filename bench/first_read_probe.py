#!/usr/bin/python3
"""first_read_probe.py: the first read of a shm agent's region through a
kvpool client's own mapping (issue 20's "gets slower than puts"), with the
real agent, the real package and UCX's own mapping of the region.

Starts a standalone kvpool-agent (--tls posix,cma,self, --pool-size 1GiB),
then runs the steps of --seq one after the other, each in a FRESH client
process (Client(tls="posix,cma,self"), registered page-aligned buffer):
  put       put --mib MiB of 64 KiB blocks (the region's first writer)
  get       get them twice (two timed passes)
  touch     read one byte per 4 KiB of the whole mapped region (numpy over
            the mapping UCX made: the largest /dev/shm/ucx_shm_posix_*
            mapping of the process), twice
  pw-touch  madvise(MADV_POPULATE_WRITE) on that mapping (what
            transport::RemoteRegion::prefault does), then the same touch
  pw-get    MADV_POPULATE_WRITE, then get twice
Each line: seconds, GB/s (bytes read / s) and the process's minor faults.

  /usr/bin/python3 bench/first_read_probe.py --bin-dir /path/to/bin --seq put,touch,touch
  /usr/bin/python3 bench/first_read_probe.py --seq put,pw-touch,touch
"""

import argparse
import ctypes
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
BLOCK = 64 << 10
MADV_POPULATE_WRITE = 23


def timed(name, fn, nbytes):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    print(f"  {name:44s} {dt:7.3f} s {nbytes / dt / 1e9:8.2f} GB/s {faults:7d} minor faults", flush=True)


def region():
    best = None
    with open("/proc/self/maps") as f:
        for line in f:
            if "ucx_shm_posix" in line:
                a, b = (int(x, 16) for x in line.split()[0].split("-"))
                if best is None or b - a > best[1] - best[0]:
                    best = (a, b)
    return best


def client_step(step, coordinator, secret, mib):
    import mmap
    import numpy as np
    import kvpool
    kvpool.set_log_level("error")
    c = kvpool.Client(coordinator, secret, tls="posix,cma,self", timeout_s=60)
    ns = c.register_namespace(model_id="first-read", dtype="bf16", num_layers=1, num_kv_heads=1, head_dim=1,
                              tokens_per_block=16, layout="probe", block_bytes=BLOCK)
    buf = mmap.mmap(-1, 16 * BLOCK)
    buf.write(os.urandom(16 * BLOCK))
    c.register_buffer(buf)
    n = (mib << 20) // BLOCK
    keys = [i.to_bytes(16, "little") for i in range(1, n + 1)]
    if step == "put":
        timed("put", lambda: [c.put(ns, keys[i:i + 16], buf) for i in range(0, n, 16)], n * BLOCK)
        return
    c.get(ns, keys[:1], memoryview(buf)[:BLOCK])  # connects to the agent: UCX maps its region here
    a, b = region()
    print(f"  the region as UCX mapped it here: {(b - a) >> 20} MiB at {a:#x}"
          f" ({'2 MiB-aligned' if a % (2 << 20) == 0 else 'not 2 MiB-aligned'})", flush=True)
    arr = np.ctypeslib.as_array(ctypes.cast(a, ctypes.POINTER(ctypes.c_uint8)), shape=(b - a,))
    if step.startswith("pw-"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        timed("madvise(MADV_POPULATE_WRITE), whole region", lambda: libc.madvise(a, b - a, MADV_POPULATE_WRITE),
              b - a)
    if step.endswith("touch"):
        for _ in range(2):
            timed("read 1 byte per 4 KiB, whole region", lambda: int(arr[::4096].sum()), b - a)
    if step.endswith("get"):
        for p in (1, 2):
            timed(f"get pass {p}", lambda: [c.get(ns, keys[i:i + 16], buf) for i in range(0, n, 16)], n * BLOCK)
    c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", default="put,touch,touch,pw-touch")
    ap.add_argument("--mib", type=int, default=512, help="MiB the put step writes (default 512)")
    ap.add_argument("--bin-dir", type=pathlib.Path,
                    default=pathlib.Path(os.environ.get("KVPOOL_BIN_DIR", HERE.parent / "build" / "bin")))
    ap.add_argument("--agent-args", default="", help="extra kvpool-agent flags, e.g. '--huge-pages off'")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--coordinator", help=argparse.SUPPRESS)
    ap.add_argument("--secret", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        return client_step(args.step, args.coordinator, args.secret, args.mib)
    # The package: as bench/throughput.py finds it.
    sys.path.insert(0, str(HERE))
    import throughput
    throughput.find_package(argparse.Namespace(lib=None, bin_dir=args.bin_dir))
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kvpool-first-read-"))
    port_file = tmp / "port"
    agent = subprocess.Popen([str(args.bin_dir / "kvpool-agent"), "--standalone", "--listen", "127.0.0.1:0",
                              "--port-file", str(port_file), "--pool-size", "1GiB", "--log-level", "info",
                              "--secret-file", str(tmp / "secret"), "--tls", "posix,cma,self",
                              *args.agent_args.split()], stdout=open(tmp / "agent.log", "w"),
                             stderr=subprocess.STDOUT)
    try:
        while not (port_file.exists() and port_file.read_text().strip()):
            if agent.poll() is not None:
                sys.exit(f"kvpool-agent exited: {(tmp / 'agent.log').read_text()}")
            time.sleep(0.05)
        coordinator = "127.0.0.1:" + port_file.read_text().strip()
        for line in (tmp / "agent.log").read_text().splitlines():
            if "pool region at" in line and "requested" in line:
                print("agent:", line.split("pool region at", 1)[1].strip())
        for step in args.seq.split(","):
            with open("/proc/loadavg") as f:
                load = " ".join(f.read().split()[:3])
            print(f"fresh client process: {step} (load average {load})", flush=True)
            subprocess.run([sys.executable, __file__, "--step", step, "--coordinator", coordinator, "--secret",
                            str(tmp / "secret"), "--mib", str(args.mib)], check=True)
    finally:
        agent.terminate()
        agent.wait()
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    main()
