"""The SGLang HiCache adapter against a real pool, driven the way SGLang's
HiCacheController drives a dynamic zero-copy backend (see the adapter's
docstring for the SGLang commit and files): the factory imports the module
and checks the class is a HiCacheStorage, constructs it with
(storage_config, kwargs), register_mem_pool_host, then batch_set_v1 on
backup, batch_exists and batch_get_v1 on prefetch."""

import abc
import dataclasses
import importlib
import sys
import types

import numpy as np
import pytest

import kvpool
from kvpool.integrations import sglang_hicache

PER_TOKEN = 16 << 10  # bytes of one token's K (and of its V)
PAGE = 4  # tokens per page: K and V objects of 64 KiB each


class FakeHostPool:
    """A page_first MHA host pool as SGLang's get_page_buffer_meta sees it:
    kv_buffer (2, tokens, bytes per token); per page a K and a V pointer."""

    layout = "page_first"
    dtype = "torch.bfloat16"
    layer_num, head_num, head_dim = 2, 8, 512

    def __init__(self, tokens=64, per_token=PER_TOKEN):
        self.page_size = PAGE
        self.size = tokens
        self.per_token = per_token
        self.kv_buffer = np.zeros((2, tokens, per_token), dtype=np.uint8)

    def get_page_buffer_meta(self, indices):
        base = self.kv_buffer.__array_interface__["data"][0]
        idx = indices.tolist()
        ptrs = []
        for i in range(0, len(idx), self.page_size):
            k = base + idx[i] * self.per_token
            ptrs += [k, k + self.size * self.per_token]
        return ptrs, [self.page_size * self.per_token] * len(ptrs)

    def page(self, first_token):
        return self.kv_buffer[:, first_token:first_token + self.page_size].copy()


@dataclasses.dataclass
class StorageConfig:  # the fields of SGLang's HiCacheStorageConfig the adapter reads
    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1
    is_mla_model: bool = False
    model_name: str = "test/sglang"
    extra_config: dict = None


@pytest.fixture
def fake_sglang(monkeypatch):
    """sglang.srt.mem_cache.hicache_storage with an abstract HiCacheStorage,
    as the factory needs for its issubclass check."""
    mod = types.ModuleType("sglang.srt.mem_cache.hicache_storage")

    class HiCacheStorage(abc.ABC):
        @abc.abstractmethod
        def exists(self, key):
            ...

    mod.HiCacheStorage = HiCacheStorage
    for name in ["sglang", "sglang.srt", "sglang.srt.mem_cache"]:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod


def create_like_the_factory(fake_sglang, config):
    """StorageBackendFactory._create_dynamic_backend, step by step."""
    extra = config.extra_config
    module = importlib.import_module(extra["module_path"])
    cls = getattr(module, extra["class_name"])
    assert issubclass(cls, fake_sglang.HiCacheStorage)
    return cls(config, {})


def storage(pool, fake_sglang, request, **config):
    extra = {"backend_name": "kvpool", "module_path": "kvpool.integrations.sglang_hicache",
             "class_name": "HiCacheKvpool", "interface_v1": 1, "coordinator": pool.coordinator}
    cfg = StorageConfig(model_name=request.node.name, extra_config=extra, **config)
    return create_like_the_factory(fake_sglang, cfg)


def page_keys(n, tag="p"):
    return [f"{tag}{i:060d}" for i in range(n)]


def host_indices(first_page, pages):
    return np.arange(first_page * PAGE, (first_page + pages) * PAGE, dtype=np.int64)


def test_backup_then_prefetch_round_trips_bytes_zero_copy(pool, fake_sglang, request):
    backend = storage(pool, fake_sglang, request)
    host = FakeHostPool()
    backend.register_mem_pool_host(host)
    assert backend.parts_per_page == 2 and backend.object_bytes == PAGE * PER_TOKEN
    rng = np.random.default_rng(1)
    host.kv_buffer[:] = rng.integers(0, 256, host.kv_buffer.shape, dtype=np.uint8)
    keys = page_keys(6)
    written = [host.page(i * PAGE) for i in range(6)]

    # Backup: _page_set_zero_copy is all(batch_set_v1(...)).
    assert all(backend.batch_set_v1(keys, host_indices(0, 6)))
    assert backend.batch_exists(keys) == 6
    assert backend.exists(keys[0]) and not backend.exists("never-stored")

    # Prefetch into other host pages (8..13), as a new request would.
    host.kv_buffer[:, 32:] = 0
    assert backend.batch_get_v1(keys, host_indices(8, 6)) == [True] * 6
    for i in range(6):
        np.testing.assert_array_equal(host.page((8 + i) * PAGE), written[i])

    # A second backup of the same pages is deduplicated and still succeeds.
    assert backend.batch_set_v1(keys, host_indices(0, 6)) == [True] * 6
    backend.close()


def test_a_gap_stops_exists_and_get_there(pool, client, fake_sglang, request):
    backend = storage(pool, fake_sglang, request)
    host = FakeHostPool()
    backend.register_mem_pool_host(host)
    host.kv_buffer[:] = 7
    keys = page_keys(5, "g")
    assert all(backend.batch_set_v1(keys, host_indices(0, 5)))
    # Drop only page 2's V object: the page is no longer whole.
    v_of_page_2 = kvpool.engine_keys(backend.namespace, f"{keys[2]}#1")
    assert client.remove(backend.namespace, v_of_page_2)
    assert backend.batch_exists(keys) == 2
    assert backend.batch_exists(keys[3:]) == 2  # after the gap: present again
    got = backend.batch_get_v1(keys, host_indices(8, 5))
    assert got == [True, True, False, False, False]
    assert backend.batch_get_v1(["missing"] + keys[:2], host_indices(8, 3)) == [False] * 3
    backend.close()


def test_tp_ranks_use_separate_blocks_and_mla_shares_them(pool, fake_sglang, request):
    host = FakeHostPool()
    host.kv_buffer[:] = 3
    keys = page_keys(2, "t")
    rank0 = storage(pool, fake_sglang, request, tp_rank=0, tp_size=2)
    rank0.register_mem_pool_host(host)
    assert all(rank0.batch_set_v1(keys, host_indices(0, 2)))
    rank1 = storage(pool, fake_sglang, request, tp_rank=1, tp_size=2)
    rank1.register_mem_pool_host(FakeHostPool())
    assert rank1.batch_exists(keys) == 0
    mla = [storage(pool, fake_sglang, request, tp_rank=r, tp_size=2, is_mla_model=True) for r in (0, 1)]
    for m in mla:
        m.register_mem_pool_host(FakeHostPool())
    assert all(mla[0].batch_set_v1(keys, host_indices(0, 2)))
    assert mla[1].batch_exists(keys) == 2
    for b in [rank0, rank1] + mla:
        b.close()


def test_errors_and_unimplemented_methods(pool, fake_sglang, request):
    backend = storage(pool, fake_sglang, request)
    with pytest.raises(kvpool.FailedPrecondition):
        backend.batch_exists(["k"])  # before register_mem_pool_host
    with pytest.raises(kvpool.FailedPrecondition):
        backend.batch_get_v1(["k"], host_indices(0, 1))
    host = FakeHostPool()
    backend.register_mem_pool_host(host)
    with pytest.raises(kvpool.FailedPrecondition):
        backend.register_mem_pool_host(host)
    backend.register_mem_host_pool_v2(host, "kv")  # the same KV pool again: fine
    with pytest.raises(kvpool.FailedPrecondition):
        backend.register_mem_host_pool_v2(FakeHostPool(), "kv")  # another one: refused
    # Indices that are not the keys' pages: refused, nothing moves.
    assert backend.batch_set_v1(page_keys(2, "e"), host_indices(0, 1)) == [False, False]
    assert backend.batch_exists(page_keys(2, "e")) == 0
    for call in [lambda: backend.get("k"), lambda: backend.set("k", b""), lambda: backend.batch_get(["k"]),
                 lambda: backend.batch_set(["k"], [b""]), lambda: backend.batch_exists_v2(["k"]),
                 lambda: backend.batch_get_v2([]), lambda: backend.batch_set_v2([]), backend.clear,
                 lambda: backend.register_mem_host_pool_v2(host, "mamba")]:
        with pytest.raises(NotImplementedError):
            call()
    assert backend.batch_exists([]) == 0 and backend.batch_get_v1([], host_indices(0, 0)) == []
    backend.close()

    # Page objects a kvpool block cannot be (layer_first's per-layer
    # objects are small): refused when the host pool is registered.
    small = storage(pool, fake_sglang, request)
    with pytest.raises(kvpool.InvalidArgument):
        small.register_mem_pool_host(FakeHostPool(per_token=1024))
    small.close()


def test_an_unreachable_pool_fails_the_calls_not_the_engine(private_pool, fake_sglang, request):
    backend = storage(private_pool, fake_sglang, request)
    host = FakeHostPool()
    backend.register_mem_pool_host(host)
    private_pool.stop()
    assert backend.batch_set_v1(page_keys(1, "u"), host_indices(0, 1)) == [False]
    assert backend.batch_get_v1(page_keys(1, "u"), host_indices(0, 1)) == [False]
    assert backend.batch_exists(page_keys(1, "u")) == 0
    backend.close()
