"""Fetch versus recompute with transformers' Llama code (bench/gpu/README.md).

LlamaForCausalLM at Llama-3-8B's shapes with random bf16 weights (fixed
seed; no weights can be downloaded on the device). For each prompt length:
  recompute: prefill the whole prompt (time to the first token's logits);
  fetch:     load the prompt's KV blocks but the last from the pool into the
             model's cache (transformers' DynamicCache: per layer K and V
             [1, kv_heads, seq, head_dim], kvpool's hf-contiguous layout) and
             prefill only the last block.
The next-token logits of both must agree (bf16 tolerance, equal argmax).
Beside them, in the same run, the limit: recompute time over (one large
pinned host->device copy of the same KV + the suffix prefill).

It reaches the pool through the kvpool package (python/README.md), as an
engine would: run it with a Python that has the wheel installed (run_all.sh
makes a venv with --system-site-packages for torch and installs the wheel
with pip --no-index --no-deps).

Usage: fetch_vs_recompute.py (--coordinator HOST:PORT | --agent .gpu/bin/kvpool-agent) [--tokens 4096,16384,32768]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import transformers
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import kvpool
import kvpool.gpu

TPB = 16


def llama3_8b_config():
    """Llama-3-8B's shapes (random weights: the seed and the bf16 default are
    set here too, so every benchmark builds the same model)."""
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=65536,
                       rope_theta=500000.0, attn_implementation="sdpa")


def start_agent(binary, pool_size):
    d = tempfile.mkdtemp()
    port_file = os.path.join(d, "port")
    p = subprocess.Popen([binary, "--standalone", "--listen", "127.0.0.1:0", "--port-file", port_file,
                          "--pool-size", pool_size, "--log-level", "warn"])
    for _ in range(1200):
        if os.path.exists(port_file) and open(port_file).read().strip():
            return p, "127.0.0.1:" + open(port_file).read().strip()
        if p.poll() is not None:
            raise RuntimeError("agent exited")
        time.sleep(0.1)
    raise RuntimeError("agent did not start")


def layer_kv(cache, i):
    if hasattr(cache, "layers"):
        return cache.layers[i].keys, cache.layers[i].values
    return cache.key_cache[i], cache.value_cache[i]


def forward(model, ids, cache):
    try:
        return model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    except TypeError:
        return model(ids, past_key_values=cache, use_cache=True, num_logits_to_keep=1)


def timed(fn, reps):
    fn()  # warm-up
    torch.cuda.synchronize()
    ts, out = [], None
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return ts[len(ts) // 2], out


def main():
    ap = argparse.ArgumentParser()
    pool = ap.add_mutually_exclusive_group(required=True)
    pool.add_argument("--coordinator", help="a running pool (e.g. kvpool-agent --standalone)")
    pool.add_argument("--agent", help="kvpool-agent binary: start a standalone pool of --pool-size")
    ap.add_argument("--tokens", default="4096,16384,32768")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--pool-size", default="12GiB")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"device {torch.cuda.get_device_name(0)}", flush=True)
    print(f"kvpool {kvpool.__version__} from {kvpool.library_path()}", flush=True)
    agent, coord = start_agent(args.agent, args.pool_size) if args.agent else (None, args.coordinator)
    results = []
    try:
        client = kvpool.Client(coord, timeout_s=60)
        cfg = llama3_8b_config()
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
        model.eval()
        L, H, D = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
        kv_bytes_per_token = 2 * L * H * D * 2
        stream = torch.cuda.current_stream()
        print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params, bf16, sdpa", flush=True)
        for n_tok in [int(x) for x in args.tokens.split(",")]:
            g = torch.Generator().manual_seed(n_tok)
            ids = torch.randint(0, cfg.vocab_size, (1, n_tok), generator=g).cuda()
            with torch.no_grad():
                # Recompute: the whole prompt.
                rec_ms, rec = timed(lambda: forward(model, ids, DynamicCache()), args.reps)
                rec_logits = rec.logits[0, -1].float()
                cache = rec.past_key_values
                layout = kvpool.gpu.KvLayout("hf-contiguous", num_layers=L, num_kv_heads=H, head_dim=D,
                                             max_seq=n_tok, tokens_per_block=TPB)
                ns = client.register_namespace(**layout.namespace("random-llama-3-8b-shapes"))
                keys = kvpool.prefix_keys(ids[0].tolist(), ns, TPB)
                nkeys = len(keys)
                nload = nkeys - 1  # the last block is prefilled
                kv = [layer_kv(cache, i) for i in range(L)]
                assert kv[0][0].shape == (1, H, n_tok, D) and kv[0][0].is_contiguous(), kv[0][0].shape
                saver = kvpool.gpu.KvMover(client, ns, layout, [k for k, _ in kv], [v for _, v in kv])
                with saver.save(keys[:nload], range(nload), stream) as t:
                    sres = t.wait()
                assert sres.done == nload, (sres.done, nload)
                saver.close()
                del rec, cache, kv
                # Fetch: the engine's cache memory, preallocated (as an engine's is).
                dst_k = [torch.empty((1, H, n_tok, D), device="cuda") for _ in range(L)]
                dst_v = [torch.empty((1, H, n_tok, D), device="cuda") for _ in range(L)]
                pre = nload * TPB
                stats, fetch_ms, fetch_logits = {}, {}, None
                # Checksums verified on the GPU (the default), on the CPU, or not at all.
                for verify, gpu_sums in (("gpu", True), ("cpu", False), ("none", True)):
                    loader = kvpool.gpu.KvMover(client, ns, layout, dst_k, dst_v, verify_loads=verify != "none",
                                                gpu_checksums=gpu_sums)
                    fts = []
                    for rep in range(args.reps + 1):  # the first is a warm-up
                        for t in dst_k + dst_v:
                            t.fill_(float("nan"))  # poison: anything not loaded shows
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        with loader.load(keys[:nload], range(nload), stream) as t:
                            r = t.wait()
                        assert r.done == nload, (r.done, nload, r.stopped)
                        c = DynamicCache()
                        for i in range(L):
                            c.update(dst_k[i][:, :, :pre], dst_v[i][:, :, :pre], i)
                        out = forward(model, ids[:, pre:], c)
                        torch.cuda.synchronize()
                        if rep > 0:
                            fts.append((time.perf_counter() - t0) * 1e3)
                        stats[verify] = {
                            f: getattr(r, f) for f in ("control_ms", "copy_done_ms", "hash_done_ms", "hash_ms",
                                                       "total_ms")}
                    fts.sort()
                    fetch_ms[verify] = fts[len(fts) // 2]
                    if verify == "gpu":
                        fetch_logits = out.logits[0, -1].float()
                    loader.close()
                # The limit, same run: one pinned copy of the KV + the suffix prefill on a resident cache.
                kvb = pre * kv_bytes_per_token
                host = torch.empty(kvb // 2, dtype=torch.bfloat16, pin_memory=True)
                devb = torch.empty(kvb // 2, dtype=torch.bfloat16, device="cuda")
                copy_ms, _ = timed(lambda: devb.copy_(host, non_blocking=True), args.reps)
                del host, devb

                def suffix():
                    c = DynamicCache()
                    for i in range(L):
                        c.update(dst_k[i][:, :, :pre], dst_v[i][:, :, :pre], i)
                    return forward(model, ids[:, pre:], c)

                suffix_ms, _ = timed(suffix, args.reps)
                client.remove(ns, keys)
                del dst_k, dst_v
                torch.cuda.empty_cache()
            diff = (fetch_logits - rec_logits).abs().max().item()
            rel = ((fetch_logits - rec_logits).norm() / rec_logits.norm()).item()
            same = int(fetch_logits.argmax()) == int(rec_logits.argmax())
            limit = rec_ms / (copy_ms + suffix_ms)
            ratio = rec_ms / fetch_ms["gpu"]
            row = dict(tokens=n_tok, kv_gib=kvb / 2**30, recompute_ms=rec_ms, fetch_ms=fetch_ms["gpu"],
                       speedup=ratio, fetch_cpu_sums_ms=fetch_ms["cpu"], fetch_noverify_ms=fetch_ms["none"], copy_ms=copy_ms, copy_gbs=kvb / copy_ms / 1e6, suffix_ms=suffix_ms,
                       limit_speedup=limit, of_limit=ratio / limit, argmax_equal=same, max_abs_diff=diff,
                       rel_l2=rel, load=stats, saved_path=sres.path)
            results.append(row)
            print(json.dumps(row), flush=True)
        client.close()
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait()
    print("\n== fetch vs recompute, Llama-3-8B shapes (random bf16 weights), transformers sdpa ==")
    print("fetch: same-host pool, checksums verified on the GPU; 'cpu sums': verified by 8 CPU threads; "
          "'no verify': header checks only. limit = recompute / (pinned copy of the KV + suffix prefill)")
    print(f"{'tokens':>7} {'KV GiB':>7} {'recompute':>10} {'fetch':>8} {'speedup':>8} | {'copy':>6} {'suffix':>7} "
          f"{'limit':>6} {'of lim':>7} | {'cpu sums':>8} {'of lim':>6} | {'no verify':>9} {'of lim':>6} | "
          f"{'argmax':>6} {'max|d|':>7} {'rel L2':>7}")
    for r in results:
        print(f"{r['tokens']:>7} {r['kv_gib']:>7.2f} {r['recompute_ms']:>8.1f}ms {r['fetch_ms']:>6.1f}ms "
              f"{r['speedup']:>7.2f}x | {r['copy_ms']:>4.1f}ms {r['suffix_ms']:>5.1f}ms {r['limit_speedup']:>5.2f}x "
              f"{r['of_limit']:>7.2f} | {r['fetch_cpu_sums_ms']:>6.1f}ms {r['recompute_ms'] / r['fetch_cpu_sums_ms'] / r['limit_speedup']:>6.2f} | "
              f"{r['fetch_noverify_ms']:>7.1f}ms {r['recompute_ms'] / r['fetch_noverify_ms'] / r['limit_speedup']:>6.2f} | {str(r['argmax_equal']):>6} {r['max_abs_diff']:>7.3f} {r['rel_l2']:>7.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    ok = all(r["argmax_equal"] and r["rel_l2"] < 0.05 for r in results)
    print("logits check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
