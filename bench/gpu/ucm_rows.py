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
every load is checked bit-exact once. The layer-wise arms are UCM's
UCMLayerWiseConnector: 32 dumps of one layer each (RowMover with
layers=32, begin_save_layer_rows, then a commit once every layer is in),
and 32 loads of one layer each, each waited before the next is started
(wait_for_layer_load), so they show the per-layer cost a forward pass
would hide behind its layers. Needs a standalone agent on this host
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

    def layer_rows(ids):  # extract_block_addrs(..., layer_first=True): per layer a (blocks, 2) array
        return [np.ascontiguousarray(np.array([[k + p * RUN, v + p * RUN] for p in ids], dtype=np.uint64))
                for k, v in bases]

    layout = kvpool.gpu.KvLayout("vllm-paged", num_layers=LAYERS, num_kv_heads=HEADS, head_dim=DIM,
                                 tokens_per_block=TPB, num_pages=pages)
    block = layout.block_bytes
    pinned = torch.empty(n * block, dtype=torch.uint8, pin_memory=True)
    flat = torch.empty(n * block, dtype=torch.uint8, device="cuda")
    with kvpool.Client(args.coordinator, timeout_s=60) as client:
        ns_rows = client.register_namespace(model_id="ucm-rows-bench", dtype="bytes", num_layers=0, num_kv_heads=0,
                                            head_dim=0, tokens_per_block=0, layout="ucm-shard-v1", block_bytes=block)
        ns_layout = client.register_namespace(**layout.namespace("ucm-rows-bench"))
        ns_layers = client.register_namespace(model_id="ucm-rows-bench", dtype="bytes", num_layers=LAYERS,
                                              num_kv_heads=0, head_dim=0, tokens_per_block=0, layout="ucm-shard-v1",
                                              block_bytes=block)
        row_mover = kvpool.gpu.RowMover(client, ns_rows, 2 * LAYERS)
        layer_mover = kvpool.gpu.RowMover(client, ns_layers, 2 * LAYERS, layers=LAYERS)
        kv_mover = kvpool.gpu.KvMover(client, ns_layout, layout, kv)
        src_rows, dst_rows = rows(src), rows(dst)
        src_layers, dst_layers = layer_rows(src), layer_rows(dst)
        times = {k: [] for k in ("memcpy d2h", "memcpy h2d", "rows save", "rows load", "layout save",
                                 "layout load", "layers save", "layers load")}

        def save_layers(keys):  # save_kv_layer per layer, then wait_for_save
            with layer_mover.begin_save_layer_rows(keys) as save:
                for layer in range(LAYERS):
                    save.save_layer_rows(layer, src_layers[layer])
                return save.finish()

        def load_layers(keys):  # start_load_kv, then wait_for_layer_load per layer
            done = []
            for layer in range(LAYERS):
                with layer_mover.load_layer_rows(keys, layer, dst_layers[layer]) as t:
                    done.append(t.wait().done)
            return min(done)
        checked = {}
        for rep in range(args.reps):
            keys_r = kvpool.engine_keys(ns_rows, [f"{rep}/{i}".encode() for i in range(n)])
            keys_l = kvpool.engine_keys(ns_layout, [f"{rep}/{i}".encode() for i in range(n)])
            keys_w = kvpool.engine_keys(ns_layers, [f"{rep}/{i}".encode() for i in range(n)])
            results = {}

            def run(name, fn):
                results[name] = fn()

            arms = [
                ("memcpy d2h", lambda: timed(lambda: pinned.copy_(flat, non_blocking=True))),
                ("rows save", lambda: timed(lambda: results.__setitem__(
                    "rs", row_mover.save_rows(keys_r, src_rows).wait()))),
                ("layout save", lambda: timed(lambda: results.__setitem__(
                    "ls", kv_mover.save(keys_l, src).wait()))),
                ("layers save", lambda: timed(lambda: results.__setitem__("ws", save_layers(keys_w)))),
                ("memcpy h2d", lambda: timed(lambda: flat.copy_(pinned, non_blocking=True))),
                ("rows load", lambda: timed(lambda: results.__setitem__(
                    "rl", row_mover.load_rows(keys_r, dst_rows).wait()))),
                ("layout load", lambda: timed(lambda: results.__setitem__(
                    "ll", kv_mover.load(keys_l, dst).wait()))),
                ("layers load", lambda: timed(lambda: results.__setitem__("wl", load_layers(keys_w)))),
            ]
            if rep % 2:  # saves before loads, but each group's order alternates
                arms = arms[:4][::-1] + arms[4:][::-1]
            for name, fn in arms:
                check = name in ("rows load", "layers load") and not checked.get(name)
                if check:  # the check then sees only what this load wrote
                    for layer in kv:
                        layer[:, dst] = 0
                times[name].append(fn())
                if check:
                    same = all(torch.equal(layer[:, src].view(torch.int16), layer[:, dst].view(torch.int16))
                               for layer in kv)
                    assert same, f"{name} is not bit-exact"
                    checked[name] = True
            for key in ("rs", "ls", "rl", "ll", "ws"):
                r = results[key]
                assert r.done == n and r.path == "mapped", (key, r)
            assert results["wl"] == n, results["wl"]
            client.remove(ns_rows, keys_r)
            client.remove(ns_layout, keys_l)
            client.remove(ns_layers, keys_w)
        gib = n * block / (1 << 30)
        print(f"{n} blocks of {block >> 20} MiB ({gib:.2f} GiB), {args.reps} repetitions, median GB/s "
              f"(ratio to the pinned cudaMemcpy of the same direction, per repetition: median (min-max)); "
              f"checked bit-exact: {sorted(checked)}")
        for name in ("rows save", "layout save", "layers save", "rows load", "layout load", "layers load"):
            peer = times["memcpy d2h" if "save" in name else "memcpy h2d"]
            ratios = [p / t for p, t in zip(peer, times[name])]
            print(f"  {name:12s} {n * block / statistics.median(times[name]) / 1e9:6.1f} GB/s   "
                  f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) of memcpy "
                  f"{n * block / statistics.median(peer) / 1e9:.1f} GB/s")
        row_mover.close()
        layer_mover.close()
        kv_mover.close()


if __name__ == "__main__":
    main()
