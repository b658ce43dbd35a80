"""Keys from Python equal the C++ test vectors (tests/common/keys_test.cc)."""

import array

import numpy as np
import pytest

import kvpool

LLAMA_8B = dict(model_id="meta-llama/Meta-Llama-3-8B", dtype="bf16", num_layers=32, num_kv_heads=8, head_dim=128,
                tokens_per_block=16, layout="vllm-paged")


def key(lo, hi):
    """The documented bytes form: lo little-endian, then hi little-endian."""
    return lo.to_bytes(8, "little") + hi.to_bytes(8, "little")


def test_a_namespace_id_matches_the_cpp_vector():
    assert kvpool.namespace_id(**LLAMA_8B) == 0x5f01ad67c1242fee
    assert kvpool.namespace_id(**LLAMA_8B, tp_rank=1) != 0x5f01ad67c1242fee


@pytest.mark.parametrize("as_", ["list", "uint32", "int64", "array", "range"])
def test_prefix_keys_match_the_published_vectors(as_):
    tokens = [i * 1000 + 7 for i in range(40)]
    forms = {
        "list": lambda t: t,
        "uint32": lambda t: np.array(t, dtype=np.uint32),
        "int64": lambda t: np.array(t, dtype=np.int64),
        "array": lambda t: array.array("I", t),
        "range": lambda t: range(7, 40000, 1000),
    }
    keys = kvpool.prefix_keys(forms[as_](tokens), 0x5f01ad67c1242fee, 16)
    # 40 tokens: two full blocks; the last 8 tokens are not keyed.
    assert keys == [key(0xb230d67248536de7, 0xc53e13d5e8b5ff5a), key(0x840661979fad7c56, 0x66778081e9b895ff)]


def test_prefix_keys_small_vector_and_int_form():
    keys = kvpool.prefix_keys([1, 2, 3, 4], 0x0123456789abcdef, 2)
    assert keys == [key(0x2192ed86ef61cd9d, 0x3e10bb7f49220d40), key(0x63bbc33f62def66a, 0x1d7a01f3b3bdc3e5)]
    assert all(isinstance(k, bytes) and len(k) == 16 for k in keys)
    assert kvpool.key_to_int(keys[0]) == 0x3e10bb7f49220d40_2192ed86ef61cd9d
    assert kvpool.key_from_int(kvpool.key_to_int(keys[1])) == keys[1]


def test_equal_prefixes_give_equal_keys():
    a = list(range(64))
    b = list(a)
    b[20] = 999
    ka, kb = kvpool.prefix_keys(a, 7, 16), kvpool.prefix_keys(b, 7, 16)
    assert len(ka) == 4
    assert ka[0] == kb[0]
    assert all(x != y for x, y in zip(ka[1:], kb[1:]))
    assert kvpool.prefix_keys(a, 8, 16)[0] != ka[0]
    assert kvpool.prefix_keys(a[:15], 7, 16) == []


def test_bad_tokens_are_invalid_arguments():
    with pytest.raises(kvpool.InvalidArgument):
        kvpool.prefix_keys([1, 2], 7, 0)
    with pytest.raises(kvpool.InvalidArgument):
        kvpool.prefix_keys([1, -2], 7, 1)
    with pytest.raises(ValueError):  # InvalidArgument is a ValueError
        kvpool.prefix_keys([1 << 32], 7, 1)
