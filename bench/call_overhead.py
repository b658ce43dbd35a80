"""Where a small batch's time goes (issue 20): per call, against the
loopback round trip the control plane cannot go below.

Against a running pool (e.g. kvpool-agent --standalone --tls posix,cma,self),
through the Python package as throughput.py's workers call it, one process:

  tcp ping-pong   two processes of this script echoing 600 bytes over a
                  loopback TCP socket (TCP_NODELAY): the kernel's round trip;
  lookup          Client.lookup of 16 absent keys: one coordinator round trip;
  put / get       Client.put / Client.get of 16 blocks from / into a
                  registered buffer (256 MiB per pass, removed after), per
                  call, at 64 KiB and 1 MiB blocks.

The per-call cost a put or get pays beyond moving its bytes is
(us per call at 64 KiB) - (us per MiB at 1 MiB blocks) x 1 MiB.

Usage: call_overhead.py --coordinator HOST:PORT [--tls posix,cma,self] [--reps 3]
"""
import argparse
import mmap
import os
import socket
import statistics
import time


def ping_pong(n=5000, size=600):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        c = socket.create_connection(("127.0.0.1", port))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            d = c.recv(65536)
            if not d:
                os._exit(0)
            c.sendall(d)
    s, _ = srv.accept()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"x" * size

    def once():
        s.sendall(msg)
        got = 0
        while got < size:
            got += len(s.recv(65536))

    for _ in range(200):
        once()
    t = time.perf_counter()
    for _ in range(n):
        once()
    us = (time.perf_counter() - t) / n * 1e6
    s.close()
    srv.close()
    os.waitpid(pid, 0)
    return us


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--tls", default="posix,cma,self")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    import kvpool
    kvpool.set_log_level("error")
    c = kvpool.Client(args.coordinator, tls=args.tls, timeout_s=60)
    batch = 16
    rows = {}

    def add(name, v):
        rows.setdefault(name, []).append(v)

    spaces = {}
    for block in (65536, 1 << 20):
        ns = c.register_namespace(model_id=f"call-overhead-{block}", dtype="bf16", num_layers=1, num_kv_heads=1,
                                  head_dim=1, tokens_per_block=16, layout="throughput", block_bytes=block)
        src, dst = mmap.mmap(-1, batch * block), mmap.mmap(-1, batch * block)
        src.write(os.urandom(batch * block))
        dst.write(b"\0" * (batch * block))
        c.register_buffer(src)
        c.register_buffer(dst)
        spaces[block] = (ns, src, dst)
    absent = [(1 << 100 | i).to_bytes(16, "little") for i in range(batch)]
    for rep in range(args.reps):
        add("tcp ping-pong 600 B (us)", ping_pong())
        ns = spaces[65536][0]
        for _ in range(200):
            c.lookup(ns, absent)
        n = 3000
        t = time.perf_counter()
        for _ in range(n):
            c.lookup(ns, absent)
        add("lookup of 16 keys (us)", (time.perf_counter() - t) / n * 1e6)
        for block, (ns, src, dst) in spaces.items():
            nb = (256 << 20) // block
            keys = [((rep + 1) << 64 | block << 32 | i).to_bytes(16, "little") for i in range(nb)]
            t0 = time.perf_counter()
            for i in range(0, nb, batch):
                assert c.put(ns, keys[i:i + batch], src).written == batch
            t1 = time.perf_counter()
            for i in range(0, nb, batch):
                assert c.get(ns, keys[i:i + batch], dst) == batch
            t2 = time.perf_counter()
            for i in range(0, nb, 1024):
                c.remove(ns, keys[i:i + 1024])
            calls = nb // batch
            add(f"put {block >> 10} KiB x 16 (us per call)", (t1 - t0) / calls * 1e6)
            add(f"get {block >> 10} KiB x 16 (us per call)", (t2 - t1) / calls * 1e6)
    for op in ("put", "get"):
        small = [r for r in rows[f"{op} 64 KiB x 16 (us per call)"]]
        big = [r / 16 for r in rows[f"{op} 1024 KiB x 16 (us per call)"]]  # us per MiB
        rows[f"{op}: per-call cost beyond the bytes (us)"] = [s - b for s, b in zip(small, big)]
    c.close()
    print(f"# call_overhead.py, {args.tls}, {args.reps} repetition(s), load average {os.getloadavg()}")
    print(f"{'row':48} " + " ".join(f"{'rep ' + str(i + 1):>8}" for i in range(args.reps)) + f" {'median':>8}")
    for name, vs in rows.items():
        print(f"{name:48} " + " ".join(f"{v:8.1f}" for v in vs) + f" {statistics.median(vs):8.1f}")


if __name__ == "__main__":
    main()
