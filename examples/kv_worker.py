#!/usr/bin/env python3
"""A prefill worker that saves KV blocks into kvpool and a decode worker that
loads and verifies them, as two processes.

    build/bin/kvpool-agent --standalone --listen 127.0.0.1:7400 --pool-size 1GiB &
    PYTHONPATH=build/python /usr/bin/python3 examples/kv_worker.py save --coordinator 127.0.0.1:7400
    PYTHONPATH=build/python /usr/bin/python3 examples/kv_worker.py load --coordinator 127.0.0.1:7400

The KV cache has Llama-3-8B's shape scaled down: 8 KV heads of dimension 128
in bf16 and 16 tokens per block as in the real model, but 4 layers instead
of 32 (``--layers``), so a block is 256 KiB instead of 2 MiB. It lives in
one numpy array, block-major (blocks, layers, K/V, tokens, heads, head_dim),
so each block is contiguous and moves zero-copy from the registered array.

Both processes derive the same prompt from ``--seed`` and the same
chained prefix keys from it (``kvpool.prefix_keys``). The saver fills
every block with values derived from its key, puts them, and prints a
JSON summary. The loader (``--wait-s``: first wait until the saver's blocks
are committed, as a decode worker waits for a prefill worker) looks up the
cached prefix, gets it into a zeroed array and checks every byte. A prompt
longer than what was saved (``--tokens`` larger on the loader) loads the
saved prefix only. Exit status 0 when every loaded byte is right and at
least ``--expect-blocks`` blocks were loaded.
"""

import argparse
import json
import sys
import time

import numpy as np

import kvpool

MODEL = "meta-llama/Meta-Llama-3-8B"
KV_HEADS, HEAD_DIM, TOKENS_PER_BLOCK = 8, 128, 16


def namespace(args):
    return dict(model_id=MODEL, dtype="bf16", num_layers=args.layers, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                tokens_per_block=TOKENS_PER_BLOCK, layout="example-block-major")


def prompt(seed, tokens):
    """The prompt's token ids (Llama-3's vocabulary has 128256 tokens)."""
    return np.random.default_rng(seed).integers(0, 128256, tokens, dtype=np.uint32)


def kv_cache(blocks, layers):
    # bf16 values as their raw 16 bits: numpy has no bfloat16.
    return np.zeros((blocks, layers, 2, TOKENS_PER_BLOCK, KV_HEADS, HEAD_DIM), dtype=np.uint16)


def expected_block(key, layers):
    """What the 'model' computed for a block: a function of its key (and so of
    the whole prefix), reproducible in any process."""
    rng = np.random.default_rng(int.from_bytes(key, "little"))
    return rng.integers(0, 1 << 16, (layers, 2, TOKENS_PER_BLOCK, KV_HEADS, HEAD_DIM), dtype=np.uint16)


def save(args, client, ns, keys):
    cache = kv_cache(len(keys), args.layers)
    client.register_buffer(cache)
    for i, key in enumerate(keys):
        cache[i] = expected_block(key, args.layers)
    start = time.monotonic()
    result = client.put(ns, keys, cache)
    seconds = time.monotonic() - start
    summary = dict(role="save", blocks=len(keys), block_bytes=client.block_bytes(ns), written=result.written,
                   deduplicated=result.deduplicated, pending=result.pending, failed=result.failed,
                   seconds=round(seconds, 4), transports=client.stats()["transports"])
    print(json.dumps(summary), flush=True)
    return 0 if result.failed == 0 else 1


def load(args, client, ns, keys):
    if args.wait_s > 0:
        committed = client.wait_for(ns, keys[:args.expect_blocks or len(keys)], args.wait_s)
        if not all(committed):
            print(json.dumps(dict(role="load", error="timed out waiting for blocks")), flush=True)
            return 1
    cache = kv_cache(len(keys), args.layers)
    client.register_buffer(cache)
    present = client.lookup(ns, keys)
    start = time.monotonic()
    loaded = client.get(ns, keys, cache)
    seconds = time.monotonic() - start
    wrong = 0
    for i in range(loaded):
        wrong += int(np.count_nonzero(cache[i] != expected_block(keys[i], args.layers))) * 2
    untouched = bool(np.all(cache[loaded:] == 0))
    summary = dict(role="load", blocks=len(keys), present=present, loaded=loaded, wrong_bytes=wrong,
                   beyond_prefix_untouched=untouched, seconds=round(seconds, 4),
                   gb_per_s=round(loaded * client.block_bytes(ns) / max(seconds, 1e-9) / 1e9, 3))
    print(json.dumps(summary), flush=True)
    ok = wrong == 0 and untouched and loaded >= args.expect_blocks
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=["save", "load"])
    p.add_argument("--coordinator", default="127.0.0.1:7400")
    p.add_argument("--secret-file", default=None)
    p.add_argument("--seed", type=int, default=7, help="the prompt (same on both sides)")
    p.add_argument("--tokens", type=int, default=1024, help="prompt length; full blocks of 16 are keyed")
    p.add_argument("--layers", type=int, default=4, help="Llama-3-8B has 32")
    p.add_argument("--wait-s", type=float, default=0.0, help="load: wait this long for the blocks first")
    p.add_argument("--expect-blocks", type=int, default=1, help="load: fail below this many blocks loaded")
    args = p.parse_args()

    kvpool.set_log_level("warn")
    with kvpool.Client(args.coordinator, args.secret_file) as client:
        ns = client.register_namespace(**namespace(args))
        keys = kvpool.prefix_keys(prompt(args.seed, args.tokens), ns, TOKENS_PER_BLOCK)
        return save(args, client, ns, keys) if args.role == "save" else load(args, client, ns, keys)


if __name__ == "__main__":
    sys.exit(main())
