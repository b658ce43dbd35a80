#!/usr/bin/env python3
"""ucm_rows.py: UCM's device-pointer path (kvpool.gpu.RowMover, what
kvpool.integrations.ucm_store uses under vLLM) against the layout mover
(kvpool.gpu.KvMover, vllm-paged) over the same KV tensors, and against one
large pinned cudaMemcpy of the same bytes (torch: the PCIe peer), measured
in one process, the arms alternating within each repetition.

Llama-3-8B KV shapes: 32 layers of vLLM's [2, pages, 16, 8, 128] bf16, so a
block is 2 MiB: 64 runs of 32 KiB, and a UCM row is 64 device addresses
(KVCacheLayout.extract_block_addrs: layer by layer, K then V, each at
base + page * 32 KiB). Each repetition saves --blocks blocks with each mover
(fresh keys; removed afterwards) and loads them back into other pages;
every load is checked bit-exact once. Needs a standalone agent on this host
(the mapped path) with room for --blocks blocks:

    python bench/gpu/ucm_rows.py --coordinator 127.0.0.1:PORT [--blocks 512] [--reps 7]

(bench/gpu/run_all.sh rows runs it against its own agent.)
"""

import argparse
import statistics
import time

import numpy as np
import torch

import kvpool

LAYERS, HEADS, DIM, TPB = 32, 8, 128, 16
RUN = TPB * HEADS * DIM * 2  # bytes of one page of K (or V) of one layer


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--blocks", type=int, default=512)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    n = args.blocks
    pages = 2 * n + 8
    g = torch.Generator(device="cuda").manual_seed(1)
    kv = [torch.randint(-(1 << 15), 1 << 15, (2, pages, TPB, HEADS, DIM), generator=g, device="cuda",
                        dtype=torch.int32).to(torch.int16).view(torch.bfloat16) for _ in range(LAYERS)]
    src, dst = list(range(n)), list(range(n, 2 * n))
    bases = [(layer[0][0].data_ptr(), layer[1][0].data_ptr()) for layer in kv]

    def rows(ids):  # what UCM passes: a (blocks, 64) uint64 array
        return np.array([[base + p * RUN for pair in bases for base in pair] for p in ids], dtype=np.uint64)

    layout = kvpool.gpu.KvLayout("vllm-paged", num_layers=LAYERS, num_kv_heads=HEADS, head_dim=DIM,
                                 tokens_per_block=TPB, num_pages=pages)
    block = layout.block_bytes
    pinned = torch.empty(n * block, dtype=torch.uint8, pin_memory=True)
    flat = torch.empty(n * block, dtype=torch.uint8, device="cuda")
    with kvpool.Client(args.coordinator, timeout_s=60) as client:
        ns_rows = client.register_namespace(model_id="ucm-rows-bench", dtype="bytes", num_layers=0, num_kv_heads=0,
                                            head_dim=0, tokens_per_block=0, layout="ucm-shard-v1", block_bytes=block)
        ns_layout = client.register_namespace(**layout.namespace("ucm-rows-bench"))
        row_mover = kvpool.gpu.RowMover(client, ns_rows, 2 * LAYERS)
        kv_mover = kvpool.gpu.KvMover(client, ns_layout, layout, kv)
        src_rows, dst_rows = rows(src), rows(dst)
        times = {k: [] for k in ("memcpy d2h", "memcpy h2d", "rows save", "rows load", "layout save",
                                 "layout load")}
        checked = False
        for rep in range(args.reps):
            keys_r = kvpool.engine_keys(ns_rows, [f"{rep}/{i}".encode() for i in range(n)])
            keys_l = kvpool.engine_keys(ns_layout, [f"{rep}/{i}".encode() for i in range(n)])
            results = {}

            def run(name, fn):
                results[name] = fn()

            arms = [
                ("memcpy d2h", lambda: timed(lambda: pinned.copy_(flat, non_blocking=True))),
                ("rows save", lambda: timed(lambda: results.__setitem__(
                    "rs", row_mover.save_rows(keys_r, src_rows).wait()))),
                ("layout save", lambda: timed(lambda: results.__setitem__(
                    "ls", kv_mover.save(keys_l, src).wait()))),
                ("memcpy h2d", lambda: timed(lambda: flat.copy_(pinned, non_blocking=True))),
                ("rows load", lambda: timed(lambda: results.__setitem__(
                    "rl", row_mover.load_rows(keys_r, dst_rows).wait()))),
                ("layout load", lambda: timed(lambda: results.__setitem__(
                    "ll", kv_mover.load(keys_l, dst).wait()))),
            ]
            if rep % 2:  # saves before loads, but each group's order alternates
                arms = arms[:3][::-1] + arms[3:][::-1]
            for name, fn in arms:
                times[name].append(fn())
                if name == "rows load" and not checked:
                    same = all(torch.equal(layer[:, src].view(torch.int16), layer[:, dst].view(torch.int16))
                               for layer in kv)
                    assert same, "rows load is not bit-exact"
                    checked = True
            for key in ("rs", "ls", "rl", "ll"):
                r = results[key]
                assert r.done == n and r.path == "mapped", (key, r)
            client.remove(ns_rows, keys_r)
            client.remove(ns_layout, keys_l)
        gib = n * block / (1 << 30)
        print(f"{n} blocks of {block >> 20} MiB ({gib:.2f} GiB), {args.reps} repetitions, median GB/s "
              f"(ratio to the pinned cudaMemcpy of the same direction, per repetition: median (min-max)); "
              f"rows load checked bit-exact: {checked}")
        for name in ("rows save", "layout save", "rows load", "layout load"):
            peer = times["memcpy d2h" if "save" in name else "memcpy h2d"]
            ratios = [p / t for p, t in zip(peer, times[name])]
            print(f"  {name:12s} {n * block / statistics.median(times[name]) / 1e9:6.1f} GB/s   "
                  f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) of memcpy "
                  f"{n * block / statistics.median(peer) / 1e9:.1f} GB/s")
        row_mover.close()
        kv_mover.close()


if __name__ == "__main__":
    main()
