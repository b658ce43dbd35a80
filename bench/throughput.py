#!/usr/bin/python3
"""throughput.py: kvpool through its Python package beside the kernel's TCP
(iperf3), Redis and a spread memcpy, in one run (issue 20's benchmark).

Arms, each run once per repetition, repetitions alternating (every arm of
repetition r runs before any of r+1; every second repetition runs the arms in
reverse order, so no arm always follows the same one):

  kvpool   the Python package (python/kvpool over libkvpool_c.so) against a
           standalone kvpool-agent, from 1 and 4 client processes, over tcp
           and shm, put and get, 64 KiB and 1 MiB blocks, batches of 16, one
           registered buffer per process (page-aligned anonymous memory,
           Client.register_buffer: the zero-copy path an engine takes).
           Transport forced on both sides: one agent per transport, started
           with --tls tcp or --tls posix,cma,self, clients with
           Client(tls="tcp") or Client(tls="posix,cma,self"); each worker
           checks Client.stats()["transports"] ("tcp (emulated)" / "posix").
           Per arm: fresh worker processes connect and register; one untimed
           round (put, get, remove of the working set) maps the pages they
           use; then timed put rounds (each a fresh set of keys: put them,
           then, untimed, remove them, so the pool never evicts) until
           --seconds of put time, then timed get passes over the last round's
           keys until --seconds. Each round or pass starts at one instant for
           all workers (a start time sent to every worker: the start
           barrier); its time is the slowest worker's end minus that start.
           GB/s = all workers' bytes / the sum of those times. Every put must
           write every block and every get load every block (verified by the
           runtime's checksums), or the arm is reported as failed.
  iperf3   Debian's iperf3 on 127.0.0.1, -P 1 and -P 4, -t --iperf-seconds,
           a one-off server (-1) on a free port; GB/s = the receiver's
           bits/s / 8e9.
  redis    Debian's redis-server on a free 127.0.0.1 port (--save ""
           --appendonly no), redis-benchmark -c 4 -d SIZE -r KEYS over a key
           space of --redis-keyspace-bytes: an untimed SET of 3x KEYS requests
           (fills 95% of the keys: Redis's memory is allocated and touched,
           as kvpool's warm-up round does for the pool), then timed SET and
           GET with -P 16 (the batch) and with -P 1, each sized by a short
           probe run to last about --seconds; GB/s of values = requests/s x
           SIZE (GET: x the fraction of the key space filled, from DBSIZE: a
           GET of a missing key moves no value). kvpool is compared with the
           better of -P 16 and -P 1 of the same repetition: with 1 MiB values
           redis-benchmark -P 16 is limited by the benchmark client itself
           (bench/README.md).
  memcpy   spread_memcpy.c (compiled here with gcc): glibc memcpy to and
           from the shm agent's own pool region (mapped through
           /proc/AGENT/map_files, the region UCX allocated in /dev/shm; only
           its payload area, never the slot header table, and only while the
           pool holds no blocks), with 1 and 4 threads, blocks spread over
           the region like kvbench's; each thread first copies its share once
           untimed (this process's first touch of the mapping), then copies
           for --memcpy-seconds from one barrier.

Ratios, per repetition, then their median (issue 20's targets):
  kvpool tcp / iperf3, same number of streams     >= 0.8
  kvpool tcp / Redis (4 procs vs -c 4, Redis's better -P)  >= 1.5
  4 procs / 1 proc, every path                    >= 1.0
  shm get / shm put, same size and procs          >= 0.9
  shm put / memcpy to, get / memcpy from          >= 0.8 (threads = procs)

Usage (from the repository root; Debian's python, not a pyenv one):
  bench/throughput.sh                           # R=3, about 4-5 minutes
  /usr/bin/python3 bench/throughput.py --reps 3 --json out.json
  /usr/bin/python3 bench/throughput.py --bin-dir /path/to/bin --lib /path/to/libkvpool_c.so.1
  /usr/bin/python3 bench/throughput.py --only kvpool,memcpy --sizes 1MiB --procs 4
Binaries: --bin-dir, else $KVPOOL_BIN_DIR, else build/bin. The library: --lib,
else $KVPOOL_C_LIB (with the package from python/), else build/python when the
package was staged there (cmake --build build --target kvpool_python), else
BIN_DIR/../lib/libkvpool_c.so.1 (with the package from python/).
Every server is started here on 127.0.0.1 on a port the OS picked, and
stopped at the end, also on error or Ctrl-C.
"""

import argparse
import json
import mmap
import multiprocessing as mp
import os
import pathlib
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
TCP_TLS = "tcp"
SHM_TLS = "posix,cma,self"
EXPECTED_LANES = {"tcp": "tcp", "shm": "posix"}


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B?)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    unit = (m.group(2) or "").upper()[:1]
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[unit]


def fmt_size(b):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if b >= 1 << shift and b % (1 << shift) == 0:
            return f"{b >> shift} {unit}"
    return f"{b} B"


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def free_port():
    """A port the OS picks (bound to port 0, then released for the server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    """Whether something listens on 127.0.0.1:port (from /proc/net/tcp, so
    that no probe connection reaches the server: iperf3 -s -1 would take it
    for its one client)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                return True
    return False


def wait_listening(port, proc, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        if listening(port):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} not listening on 127.0.0.1:{port} after {timeout} s")


class Servers:
    """Every process this script starts, stopped (by its own pid) at the end."""

    def __init__(self):
        self.procs = []

    def start(self, argv, **kw):
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, timeout=10):
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGCONT)
                p.terminate()
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(reversed(self.procs)):
            self.stop(p)


# ------------------------------------------------------------- kvpool --

def key_bytes(run_id, worker, rnd, i):
    return ((run_id << 64) | (worker << 48) | (rnd << 32) | i).to_bytes(16, "little")


def kv_worker(conn, coordinator, secret, tls, block, batch, worker, nblocks, run_id, transport):
    """One client process: connects, registers a namespace and two buffers,
    then does what the parent asks, one command at a time."""
    import kvpool
    kvpool.set_log_level("error")
    try:
        c = kvpool.Client(coordinator, secret, tls=tls, timeout_s=60)
        ns = c.register_namespace(model_id=f"throughput-{block}", dtype="bf16", num_layers=1, num_kv_heads=1,
                                  head_dim=1, tokens_per_block=16, layout="throughput", block_bytes=block)
        src = mmap.mmap(-1, batch * block)  # page-aligned, like an engine's host pool
        dst = mmap.mmap(-1, batch * block)
        src.write(os.urandom(batch * block))
        dst.write(b"\0" * (batch * block))
        c.register_buffer(src)
        c.register_buffer(dst)
        conn.send(("ready", None))
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    keys = []
    while True:
        cmd, arg = conn.recv()
        if cmd == "stop":
            c.close()
            conn.send(("stopped", None))
            return
        try:
            if cmd == "remove":
                for i in range(0, len(keys), 1024):
                    c.remove(ns, keys[i:i + 1024])
                conn.send(("done", None))
                continue
            rnd, start = arg
            if cmd == "put":
                keys = [key_bytes(run_id, worker, rnd, i) for i in range(nblocks)]
            errors = 0
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            delay = start - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t0 = time.perf_counter()
            if cmd == "put":
                for i in range(0, nblocks, batch):
                    r = c.put(ns, keys[i:i + batch], src)
                    errors += batch - r.written
            else:
                for i in range(0, nblocks, batch):
                    errors += batch - c.get(ns, keys[i:i + batch], dst)
            t1 = time.perf_counter()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
            lanes = c.stats()["transports"]
            if EXPECTED_LANES[transport] not in lanes:
                raise RuntimeError(f"{transport} arm ran over '{lanes}'")
            conn.send(("done", dict(t0=t0, t1=t1, bytes=nblocks * block, errors=errors, minor_faults=faults,
                                    lanes=lanes)))
        except BaseException as e:
            conn.send(("error", f"{type(e).__name__}: {e}"))


class WorkerSet:
    def __init__(self, ctx, n, coordinator, secret, tls, block, batch, nblocks, run_id, transport):
        self.conns, self.procs = [], []
        for w in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=kv_worker, args=(child, coordinator, secret, tls, block, batch, w, nblocks,
                                                    run_id, transport), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)
        for reply in self._collect(timeout=120):
            pass

    def _collect(self, timeout=300):
        out = []
        for c in self.conns:
            if not c.poll(timeout):
                raise RuntimeError("a kvpool worker did not answer")
            kind, value = c.recv()
            if kind == "error":
                raise RuntimeError(f"kvpool worker: {value}")
            out.append(value)
        return out

    def timed(self, cmd, rnd):
        """All workers run `cmd` from one start instant; returns (wall s, bytes, errors, faults, lanes)."""
        start = time.perf_counter() + 0.05
        for c in self.conns:
            c.send((cmd, (rnd, start)))
        rs = self._collect()
        wall = max(r["t1"] for r in rs) - start
        return (wall, sum(r["bytes"] for r in rs), sum(r["errors"] for r in rs), sum(r["minor_faults"] for r in rs),
                rs[0]["lanes"])

    def remove(self):
        for c in self.conns:
            c.send(("remove", None))
        self._collect()

    def close(self, graceful=True):
        if not graceful:  # on error or interrupt: no goodbyes
            for p in self.procs:
                if p.is_alive():
                    p.terminate()
            for p in self.procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join()
            return
        for c in self.conns:
            try:
                c.send(("stop", None))
            except OSError:
                pass
        for c in self.conns:
            try:
                if c.poll(10):
                    c.recv()
            except (OSError, EOFError):
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join()


def run_kvpool(ctx, agent, transport, procs, block, args, run_id):
    """One kvpool arm: returns its put and get results."""
    total = min(args.round_bytes, int(agent["pool"] * 0.75))
    per_worker = max(args.batch, total // procs // block // args.batch * args.batch)
    ws = WorkerSet(ctx, procs, agent["coordinator"], agent["secret"], TCP_TLS if transport == "tcp" else SHM_TLS,
                   block, args.batch, per_worker, run_id, transport)
    out = {}
    try:
        # Untimed: map the pages these processes will use, connect, warm up.
        warm_put = ws.timed("put", 0)
        warm_get = ws.timed("get", 0)
        ws.remove()
        rounds, walls, nbytes, errors, faults = 0, 0.0, 0, 0, 0
        while rounds == 0 or (walls < args.seconds and rounds < args.max_rounds):
            if rounds:
                ws.remove()
            wall, b, e, f, lanes = ws.timed("put", rounds + 1)
            rounds += 1
            walls += wall
            nbytes += b
            errors += e
            faults += f
        out["put"] = dict(gbps=nbytes / walls / 1e9, bytes=nbytes, seconds=walls, rounds=rounds, errors=errors,
                          minor_faults=faults, lanes=lanes, warmup_gbps=warm_put[1] / warm_put[0] / 1e9,
                          warmup_minor_faults=warm_put[3])
        passes, walls, nbytes, errors, faults = 0, 0.0, 0, 0, 0
        while passes == 0 or (walls < args.seconds and passes < args.max_rounds):
            wall, b, e, f, lanes = ws.timed("get", rounds)
            passes += 1
            walls += wall
            nbytes += b
            errors += e
            faults += f
        out["get"] = dict(gbps=nbytes / walls / 1e9, bytes=nbytes, seconds=walls, rounds=passes, errors=errors,
                          minor_faults=faults, lanes=lanes, warmup_gbps=warm_get[1] / warm_get[0] / 1e9,
                          warmup_minor_faults=warm_get[3])
        ws.remove()
    except BaseException:
        ws.close(graceful=False)
        raise
    ws.close()
    for r in out.values():
        r["ok"] = r["errors"] == 0
        r["working_set_bytes"] = per_worker * procs * block
    return out


def start_agent(servers, bin_dir, tmp, transport, pool):
    port_file = tmp / f"agent-{transport}.port"
    secret = tmp / "secret"
    log = open(tmp / f"agent-{transport}.log", "w")
    p = servers.start([str(bin_dir / "kvpool-agent"), "--standalone", "--listen", "127.0.0.1:0", "--port-file",
                       str(port_file), "--pool-size", str(pool), "--log-level", "warn", "--secret-file", str(secret),
                       "--tls", TCP_TLS if transport == "tcp" else SHM_TLS],
                      stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    port = 0
    while not port:
        if p.poll() is not None:
            raise RuntimeError(f"kvpool-agent ({transport}) exited with {p.returncode}: see {log.name}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"kvpool-agent ({transport}) wrote no port in 60 s")
        try:
            port = int(port_file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
    return dict(proc=p, coordinator=f"127.0.0.1:{port}", secret=str(secret), pool=pool, transport=transport)


def agent_region(pid):
    """The agent's pool region: its largest shared writable mapping of a UCX
    posix segment (as tests/python/engines/pool_memory.py finds it)."""
    best = None
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 6 or not fields[1].startswith("rw") or fields[1][3] != "s":
                continue
            if "ucx_shm_posix" not in fields[5]:
                continue
            a, b = (int(x, 16) for x in fields[0].split("-"))
            if best is None or b - a > best[1] - best[0]:
                best = (a, b, fields[0], fields[5])
    return best


# ----------------------------------------------------------- the peers --

def run_iperf3(servers, streams, seconds):
    port = free_port()
    srv = servers.start(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, srv, "iperf3 -s")
        r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-P", str(streams), "-t", str(seconds),
                            "-J"], capture_output=True, text=True, timeout=seconds + 30)
        j = json.loads(r.stdout)
        if "error" in j:
            raise RuntimeError(f"iperf3: {j['error']}")
        recv = j["end"]["sum_received"]
        return dict(gbps=recv["bits_per_second"] / 8e9, bytes=recv["bytes"], seconds=recv["seconds"],
                    streams=streams, ok=True)
    finally:
        servers.stop(srv)


def redis_cli(port, *cmd):
    r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *cmd], capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout.strip()


def redis_bench(port, test, size, requests, keyspace, clients, pipeline):
    r = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients), "-P",
                        str(pipeline), "-d", str(size), "-t", test, "-n", str(requests), "-r", str(keyspace), "--csv"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"redis-benchmark -t {test}: {r.stderr.strip()}")
    for line in r.stdout.splitlines():
        cells = [c.strip('"') for c in line.split('","')]
        if cells and cells[0].strip('"').upper() == test.upper():
            return float(cells[1].strip('"'))
    raise RuntimeError(f"redis-benchmark -t {test}: no result in {r.stdout!r}")


def run_redis(port, size, args):
    keyspace = max(16, args.redis_keyspace_bytes // size)
    redis_cli(port, "FLUSHALL")
    # Untimed: SET over the key space 3x (95% of the keys), so that the timed
    # SETs overwrite values in memory Redis already has, as kvpool's timed
    # puts go to a pool its agent prefaulted and its clients mapped in the
    # warm-up round.
    t0 = time.perf_counter()
    redis_bench(port, "set", size, 3 * keyspace, keyspace, 4, 1)
    out = {"warmup_seconds": time.perf_counter() - t0, "keyspace": keyspace}
    for pipeline in sorted({args.batch, 1}, reverse=True):
        for op, test in (("put", "set"), ("get", "get")):
            # A short probe run sets the request count for about --seconds.
            probe = 4 * max(1, pipeline) * 4
            rps = redis_bench(port, test, size, probe, keyspace, 4, pipeline)
            n = max(probe, int(rps * args.seconds))
            filled = int(redis_cli(port, "DBSIZE")) / keyspace
            t0 = time.perf_counter()
            rps = redis_bench(port, test, size, n, keyspace, 4, pipeline)
            secs = time.perf_counter() - t0
            # A GET of a key never SET moves no value: count the hits only.
            gbps = rps * size * (filled if op == "get" else 1) / 1e9
            out[f"{op}_P{pipeline}"] = dict(gbps=gbps, rps=rps, requests=n, seconds=secs, pipeline=pipeline,
                                           filled=filled, ok=True)
    redis_cli(port, "FLUSHALL")
    # The figure kvpool is compared with: Redis's better pipeline depth of
    # this run (redis-benchmark -P 16 with 1 MiB values is slower than -P 1:
    # the benchmark client, not the server, is then the bottleneck; README).
    for op in ("put", "get"):
        best = max((v for k, v in out.items() if k.startswith(op + "_P")), key=lambda v: v["gbps"])
        out[op] = dict(best, best_of="-P " + str(best["pipeline"]))
    return out


def run_memcpy(exe, agent, size, threads, direction, args):
    pid = agent["proc"].pid
    reg = agent_region(pid)
    if reg is None:
        raise RuntimeError("no UCX posix segment in the shm agent's maps")
    a, b, rng, path = reg
    length = b - a
    header_table = -(-(length // 1024) // 65536) * 65536  # pool::RegionLayout: 64 B per 64 KiB, in granules
    r = subprocess.run([str(exe), f"/proc/{pid}/map_files/{rng}", str(length), str(header_table), str(size),
                        str(args.batch), str(threads), direction, str(args.memcpy_seconds)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"spread_memcpy: {r.stderr.strip() or r.returncode}")
    out = json.loads(r.stdout)
    out["ok"] = True
    out["region"] = path
    out["cold_gbps"] = out["cold_bytes"] / out["cold_seconds"] / 1e9
    return out


# ---------------------------------------------------------- reporting --

def arm_names(args):
    names = []
    for t in args.transports:
        for p in args.procs:
            for s in args.sizes:
                names.append(("kvpool", t, p, s))
    if "iperf3" in args.only:
        for p in args.procs:
            names.append(("iperf3", p))
    if "redis" in args.only:
        for s in args.sizes:
            names.append(("redis", s))
    if "memcpy" in args.only and "shm" in args.transports:
        for s in args.sizes:
            for p in args.procs:
                for d in ("to", "from"):
                    names.append(("memcpy", d, p, s))
    return names if "kvpool" in args.only else [n for n in names if n[0] != "kvpool"]


def gb(x):
    return f"{x:6.2f}" if x is not None else f"{'-':>6}"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def report(results, args, meta):
    reps = len(results)
    rows = []  # (label, [per-rep gbps])

    def val(rep, *key):
        r = results[rep].get(key)
        return r["gbps"] if r and r.get("ok") else None

    lines = []
    w = lines.append
    w(f"# throughput.py: {meta['started']} .. {meta['ended']} UTC, {reps} repetition(s), host {meta['host']}")
    w("# load average (1/5/15 min) at the start of each repetition: "
      + "; ".join(f"rep {i + 1}: {l}" for i, l in enumerate(meta["load_at_rep"])) + f"; at the end: {meta['load_end']}")
    w(f"# {os.cpu_count()} cores; batch {args.batch}; kvpool timed put/get >= {args.seconds} s per arm "
      f"(working set {fmt_size(args.round_bytes)} per round); lib {meta['library']}")
    hdr = f"{'row':<44}" + "".join(f"{'rep ' + str(i + 1):>8}" for i in range(reps)) + f"{'median':>8}"
    w("")
    w("GB/s (1e9 B/s)")
    w(hdr)
    for key in meta["arms"]:
        if key[0] == "kvpool":
            _, t, p, s = key
            for op in ("put", "get"):
                vals = [(results[i].get(key) or {}).get(op) for i in range(reps)]
                g = [v["gbps"] if v and v.get("ok") else None for v in vals]
                label = f"kvpool {t:<3} {op:<3} {fmt_size(s):>7} {p} proc{'s' if p > 1 else ''}"
                rows.append(((key, op), g))
                w(f"{label:<44}" + "".join(f"{gb(x):>8}" for x in g) + f"{gb(median(g)):>8}")
        elif key[0] == "iperf3":
            g = [val(i, *key) for i in range(reps)]
            rows.append((key, g))
            w(f"{'iperf3 loopback -P ' + str(key[1]):<44}" + "".join(f"{gb(x):>8}" for x in g) + f"{gb(median(g)):>8}")
        elif key[0] == "redis":
            for op, name in (("put", "SET"), ("get", "GET")):
                for pipeline in sorted({args.batch, 1}, reverse=True):
                    vals = [(results[i].get(key) or {}).get(f"{op}_P{pipeline}") for i in range(reps)]
                    g = [v["gbps"] if v and v.get("ok") else None for v in vals]
                    label = f"redis {name} {fmt_size(key[1])} -c 4 -P {pipeline}"
                    w(f"{label:<44}" + "".join(f"{gb(x):>8}" for x in g) + f"{gb(median(g)):>8}")
                vals = [(results[i].get(key) or {}).get(op) for i in range(reps)]
                rows.append(((key, op), [v["gbps"] if v and v.get("ok") else None for v in vals]))
        elif key[0] == "memcpy":
            _, d, p, s = key
            g = [val(i, *key) for i in range(reps)]
            rows.append((key, g))
            label = f"memcpy {d:<4} region {fmt_size(s):>7} {p} thread{'s' if p > 1 else ''}"
            w(f"{label:<44}" + "".join(f"{gb(x):>8}" for x in g) + f"{gb(median(g)):>8}")

    def series(key, op=None):
        for k, g in rows:
            if k == ((key, op) if op else key):
                return g
        return [None] * reps

    def ratio_row(label, num, den, target):
        rs = [n / d if n is not None and d else None for n, d in zip(num, den)]
        m = median(rs)
        verdict = "-" if m is None else ("PASS" if m >= target else "below")
        w(f"{label:<44}" + "".join(f"{gb(x):>8}" for x in rs) + f"{gb(m):>8}  >= {target:<4} {verdict}")
        return dict(label=label, per_rep=rs, median=m, target=target, verdict=verdict)

    ratios = []
    w("")
    w("ratios (per repetition, then the median of those)")
    w(hdr + "  target")
    for s in args.sizes:
        for p in args.procs:
            if "tcp" in args.transports and "iperf3" in args.only:
                for op in ("put", "get"):
                    ratios.append(ratio_row(f"tcp {op} {fmt_size(s)} {p}p / iperf3 -P {p}",
                                            series(("kvpool", "tcp", p, s), op), series(("iperf3", p)), 0.8))
    for s in args.sizes:
        if "tcp" in args.transports and "redis" in args.only and 4 in args.procs:
            for op in ("put", "get"):
                ratios.append(ratio_row(f"tcp {op} {fmt_size(s)} 4p / redis {'SET' if op == 'put' else 'GET'} best P",
                                        series(("kvpool", "tcp", 4, s), op), series(("redis", s), op), 1.5))
    if 1 in args.procs and 4 in args.procs:
        for t in args.transports:
            for s in args.sizes:
                for op in ("put", "get"):
                    ratios.append(ratio_row(f"{t} {op} {fmt_size(s)} 4p / 1p", series(("kvpool", t, 4, s), op),
                                            series(("kvpool", t, 1, s), op), 1.0))
    if "shm" in args.transports:
        for s in args.sizes:
            for p in args.procs:
                ratios.append(ratio_row(f"shm get / put {fmt_size(s)} {p}p", series(("kvpool", "shm", p, s), "get"),
                                        series(("kvpool", "shm", p, s), "put"), 0.9))
        if "memcpy" in args.only:
            for s in args.sizes:
                for p in args.procs:
                    ratios.append(ratio_row(f"shm put {fmt_size(s)} {p}p / memcpy to {p}t",
                                            series(("kvpool", "shm", p, s), "put"), series(("memcpy", "to", p, s)),
                                            0.8))
                    ratios.append(ratio_row(f"shm get {fmt_size(s)} {p}p / memcpy from {p}t",
                                            series(("kvpool", "shm", p, s), "get"), series(("memcpy", "from", p, s)),
                                            0.8))
    failed = [f"rep {i + 1} {k}: {e}" for i, res in enumerate(results) for k, e in res.get("errors", {}).items()]
    for i, res in enumerate(results):
        for k, v in res.items():
            if k == "errors" or not isinstance(v, dict):
                continue
            for op in ("put", "get"):
                if isinstance(v.get(op), dict) and not v[op].get("ok", True):
                    failed.append(f"rep {i + 1} {k} {op}: {v[op].get('errors')} blocks not written/loaded")
    w("")
    if failed:
        w("FAILED arms:")
        for f in failed:
            w(f"  {f}")
    else:
        w("every arm ran; every kvpool put wrote and every get loaded every block")
    return "\n".join(lines), ratios, failed


# --------------------------------------------------------------- main --

def find_package(args):
    """Puts the kvpool package on sys.path (for this process and the
    workers) and names its library; returns the library path."""
    staged = REPO / "build" / "python"
    if args.lib:
        os.environ["KVPOOL_C_LIB"] = str(args.lib)
    elif "KVPOOL_C_LIB" not in os.environ:
        if (staged / "kvpool" / "_native").is_dir():
            sys.path.insert(0, str(staged))
            os.environ["PYTHONPATH"] = os.pathsep.join([str(staged), os.environ.get("PYTHONPATH", "")]).rstrip(
                os.pathsep)
            return str(staged / "kvpool" / "_native")
        guess = args.bin_dir.parent / "lib" / "libkvpool_c.so.1"
        if guess.exists():
            os.environ["KVPOOL_C_LIB"] = str(guess)
    sys.path.insert(0, str(REPO / "python"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "python"), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    return os.environ.get("KVPOOL_C_LIB", "libkvpool_c.so.1 (loader path)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--sizes", default="64KiB,1MiB", help="block / value sizes (default 64KiB,1MiB)")
    ap.add_argument("--procs", default="1,4", help="client processes / streams / threads (default 1,4)")
    ap.add_argument("--transports", default="tcp,shm", help="kvpool transports (default tcp,shm)")
    ap.add_argument("--only", default="kvpool,iperf3,redis,memcpy", help="arms to run (default all)")
    ap.add_argument("--batch", type=int, default=16, help="blocks per call; redis-benchmark -P (default 16)")
    ap.add_argument("--seconds", type=float, default=1.0,
                    help="kvpool: timed put and timed get per arm, at least (default 1.0); redis: about this")
    ap.add_argument("--iperf-seconds", type=int, default=2, help="iperf3 -t (default 2)")
    ap.add_argument("--memcpy-seconds", type=float, default=0.5, help="timed memcpy per arm (default 0.5)")
    ap.add_argument("--round-bytes", type=parse_size, default=parse_size("1GiB"),
                    help="kvpool working set of one put round, all processes together (default 1GiB; at most 3/4 "
                         "of the pool)")
    ap.add_argument("--max-rounds", type=int, default=40, help="kvpool: cap on put rounds / get passes per arm")
    ap.add_argument("--pool", type=parse_size, default=parse_size("2GiB"), help="each agent's --pool-size (2GiB)")
    ap.add_argument("--redis-keyspace-bytes", type=parse_size, default=parse_size("512MiB"),
                    help="Redis: -r = this / size (default 512MiB)")
    ap.add_argument("--bin-dir", type=pathlib.Path,
                    default=pathlib.Path(os.environ.get("KVPOOL_BIN_DIR", REPO / "build" / "bin")))
    ap.add_argument("--lib", type=pathlib.Path, help="libkvpool_c.so to load (sets KVPOOL_C_LIB)")
    ap.add_argument("--json", type=pathlib.Path, help="write every raw result here")
    args = ap.parse_args()
    args.sizes = [parse_size(s) for s in args.sizes.split(",")]
    args.procs = [int(p) for p in args.procs.split(",")]
    args.transports = [t for t in args.transports.split(",") if t]
    args.only = set(args.only.split(","))
    for t in args.transports:
        if t not in ("tcp", "shm"):
            ap.error(f"unknown transport {t}")
    if "kvpool" in args.only and not (args.bin_dir / "kvpool-agent").exists():
        ap.error(f"{args.bin_dir}/kvpool-agent not found (--bin-dir, $KVPOOL_BIN_DIR)")
    for tool in (["iperf3"] if "iperf3" in args.only else []) + (
            ["redis-server", "redis-benchmark", "redis-cli"] if "redis" in args.only else []) + (
            ["gcc"] if "memcpy" in args.only else []):
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found (Debian: iperf3, redis-server, redis-tools, gcc; scripts/lib.sh installs them)")
    if "memcpy" in args.only and "shm" not in args.transports:
        ap.error("the memcpy arm maps the shm agent's region: keep shm in --transports")
    library = find_package(args)

    servers = Servers()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kvpool-throughput-"))

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # Both explicitly: a shell starts background jobs with SIGINT ignored,
    # and Python keeps it so unless told.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    results, load_at_rep = [], []
    ctx = mp.get_context("spawn")
    run_id = random.getrandbits(32)
    try:
        agents = {}
        if "kvpool" in args.only or "memcpy" in args.only:
            for t in args.transports:
                agents[t] = start_agent(servers, args.bin_dir, tmp, t, args.pool)
        redis_port = None
        if "redis" in args.only:
            redis_port = free_port()
            srv = servers.start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(tmp), "--daemonize", "no", "--loglevel",
                                 "warning"], stdout=open(tmp / "redis.log", "w"), stderr=subprocess.STDOUT)
            wait_listening(redis_port, srv, "redis-server")
        memcpy_exe = None
        if "memcpy" in args.only:
            memcpy_exe = tmp / "spread_memcpy"
            subprocess.run(["gcc", "-O2", "-o", str(memcpy_exe), str(HERE / "spread_memcpy.c"), "-lpthread"],
                           check=True)
        arms = arm_names(args)
        for rep in range(args.reps):
            load_at_rep.append(loadavg())
            res = {"errors": {}, "load": {}}
            order = arms if rep % 2 == 0 else list(reversed(arms))
            for key in order:
                l0 = loadavg()
                print(f"rep {rep + 1}/{args.reps}: {key} (load {l0})", file=sys.stderr, flush=True)
                try:
                    if key[0] == "kvpool":
                        _, t, p, s = key
                        res[key] = run_kvpool(ctx, agents[t], t, p, s, args, run_id)
                    elif key[0] == "iperf3":
                        res[key] = run_iperf3(servers, key[1], args.iperf_seconds)
                    elif key[0] == "redis":
                        res[key] = run_redis(redis_port, key[1], args)
                    elif key[0] == "memcpy":
                        _, d, p, s = key
                        res[key] = run_memcpy(memcpy_exe, agents["shm"], s, p, d, args)
                except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
                    res["errors"][key] = str(e)
                    print(f"  failed: {e}", file=sys.stderr, flush=True)
                res["load"][key] = (l0, loadavg())
            results.append(res)
    finally:
        servers.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    ended = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    meta = dict(started=started, ended=ended, host=f"{os.uname().release}", load_at_rep=load_at_rep,
                load_end=loadavg(), arms=arm_names(args), library=library)
    text, ratios, failed = report(results, args, meta)
    print(text)
    if args.json:
        def k(key):
            return " ".join(str(x) for x in key)
        raw = dict(meta={**meta, "arms": [k(a) for a in meta["arms"]]},
                   args={k2: (v if isinstance(v, (int, float, str, list)) else str(v)) for k2, v in vars(args).items()},
                   repetitions=[{k(key): v for key, v in r.items() if key not in ("errors", "load")}
                                | {"errors": {k(key): v for key, v in r["errors"].items()},
                                   "load": {k(key): v for key, v in r["load"].items()}} for r in results],
                   ratios=ratios, failed=failed)
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        print(f"throughput.py: interrupted ({e}); servers stopped", file=sys.stderr)
        sys.exit(130)
