"""The kvpool wheel on the GPU machine, as an engine's venv would use it
(bench/gpu/run_all.sh's "package" step): imported from the venv, with its own
bundled libkvpool_c.so, it moves vLLM-paged KV pages between real CUDA tensors
and a real agent, bit-exact, through both GPU paths, and a kvpool error is a
RuntimeError. Exits non-zero on the first failed check.

    python package_check.py --coordinator 127.0.0.1:PORT --secret-file FILE
"""

import argparse
import os
import sys

import kvpool
import kvpool.gpu
import torch


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if not cond:
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--secret-file", default=None)
    args = ap.parse_args()

    prefix = os.path.realpath(sys.prefix)
    print(f"python {sys.version.split()[0]} torch {torch.__version__} kvpool {kvpool.__version__}")
    print(f"kvpool from {kvpool.__file__}, library {kvpool.library_path()}")
    check(sys.prefix != sys.base_prefix, "running in a venv")
    check(os.path.realpath(kvpool.library_path()).startswith(prefix + os.sep), "libkvpool_c.so is the wheel's copy")
    check(kvpool.gpu.gpu_available(), "the wheel's GPU path sees the GPU")

    layers, heads, head_dim, tpb, pages = 4, 8, 128, 16, 64
    layout = kvpool.gpu.KvLayout("vllm-paged", num_layers=layers, num_kv_heads=heads, head_dim=head_dim,
                                 dtype="bf16", tokens_per_block=tpb, num_pages=pages)
    # vLLM's FlashAttention cache: per layer [2, num_pages, tokens_per_block, kv_heads, head_dim].
    shape = (2, pages, tpb, heads, head_dim)
    src = [torch.randn(shape, dtype=torch.bfloat16, device="cuda") for _ in range(layers)]
    dst = [torch.zeros(shape, dtype=torch.bfloat16, device="cuda") for _ in range(layers)]
    with kvpool.Client(args.coordinator, args.secret_file, timeout_s=30) as client:
        ns = client.register_namespace(**layout.namespace("package-check"))
        n = 16
        keys = kvpool.prefix_keys(list(range(n * tpb)), ns, tpb)
        for path in ("mapped", "staged"):
            mover = kvpool.gpu.KvMover(client, ns, layout, src if path == "mapped" else dst, path=path)
            with mover:
                if path == "mapped":
                    r = mover.save(keys, list(range(n))).wait()
                    check(r.done == n and r.failed == 0, f"save {n} pages over the {r.path} path: {r}")
                    for t in dst:
                        t.zero_()
                    continue
                # Staged: load from the pool into other page ids of dst.
                r = mover.load(keys, [pages - 1 - i for i in range(n)]).wait()
                check(r.done == n and r.stopped == "ok", f"load {n} pages over the {r.path} path: {r}")
            torch.cuda.synchronize()
        same = all(torch.equal(src[l][:, i], dst[l][:, pages - 1 - i]) for l in range(layers) for i in range(n))
        check(same, "loaded pages equal the saved ones, bit for bit, in other page ids")
        with kvpool.gpu.KvMover(client, ns, layout, dst, path="mapped") as mover:
            for t in dst:
                t.zero_()
            r = mover.load(keys, list(range(n))).wait()
            torch.cuda.synchronize()
            check(r.done == n and r.path == "mapped", f"load {n} pages over the mapped path: {r}")
            check(all(torch.equal(src[l][:, i], dst[l][:, i]) for l in range(layers) for i in range(n)),
                  "mapped load bit-exact")
        try:
            client.lookup(ns + 1, keys)
            check(False, "a lookup in an unknown namespace is refused")
        except kvpool.Error as e:
            check(isinstance(e, RuntimeError), f"a kvpool error is a RuntimeError ({type(e).__name__}: {e.code})")
    print("package check: all passed")


if __name__ == "__main__":
    main()
