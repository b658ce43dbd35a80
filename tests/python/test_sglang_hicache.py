"""The SGLang HiCache adapter against a real pool, driven the way SGLang drives
a dynamic zero-copy backend, with a stand-in SGLang built from
engines/sglang_manifest.py. Each step follows an SGLang file (commits in the
manifest): the loader (mem_cache/storage/backend_factory.py,
StorageBackendFactory._create_dynamic_backend: required keys, import,
getattr, issubclass, cls(storage_config, kwargs)), then
HiCacheController (managers/cache_controller.py): register_mem_pool_host,
backup = all(batch_set_v1(keys, host_indices, extra_info)), prefetch =
batch_exists then batch_get_v1 counting leading Trues. The extra config is
python/README.md's SGLang command, parsed."""

import dataclasses
import importlib
import json
import pathlib
import re

import numpy as np
import pytest

import kvpool
from engines import abc_stub
from engines import sglang_manifest as M
from kvpool.integrations import sglang_hicache

README = pathlib.Path(__file__).resolve().parents[2] / "python" / "README.md"
PER_TOKEN = 16 << 10  # bytes of one token's K (and of its V)
PAGE = 4  # tokens per page: K and V objects of 64 KiB each


def readme_sglang_command():
    """(extra_config dict, --hicache-mem-layout) of python/README.md's SGLang command."""
    block = README.read_text().split("<!-- sglang-command -->", 1)[1].split("```", 2)[1]
    extra = re.search(r"--hicache-storage-backend-extra-config '([^']*)'", block)
    layout = re.search(r"--hicache-mem-layout (\S+)", block)
    assert extra and layout, "python/README.md's SGLang command lacks the extra config or the layout flag"
    assert "--hicache-storage-backend dynamic" in block
    return json.loads(extra.group(1)), layout.group(1)


class FakeHostPool:
    """An MHA host pool as SGLang's get_page_buffer_meta sees it:
    kv_buffer (2, tokens, bytes per token); per page a K and a V pointer."""

    dtype = "torch.bfloat16"
    layer_num, head_num, head_dim = 2, 8, 512

    def __init__(self, tokens=64, per_token=PER_TOKEN, layout="page_first"):
        self.layout = layout
        self.page_size = PAGE
        self.size = tokens
        self.per_token = per_token
        self.kv_buffer = np.zeros((2, tokens, per_token), dtype=np.uint8)

    def get_page_buffer_meta(self, indices):
        assert len(indices) % self.page_size == 0
        if self.layout not in ("page_first", "page_first_direct"):
            raise ValueError(f"Unsupported layout: {self.layout}")  # as pool_host/mha.py
        base = self.kv_buffer.__array_interface__["data"][0]
        idx = indices.tolist()
        ptrs = []
        for i in range(0, len(idx), self.page_size):
            k = base + idx[i] * self.per_token
            ptrs += [k, k + self.size * self.per_token]
        return ptrs, [self.page_size * self.per_token] * len(ptrs)

    def page(self, first_token):
        return self.kv_buffer[:, first_token:first_token + self.page_size].copy()


class FakeAsymmetricHostPool:
    """AsymmetricMHATokenToKVPoolHost (page_first): K and V in two buffers of
    different head dims; per page a K and a V pointer of different sizes."""

    dtype = "torch.bfloat16"
    layer_num, head_num, head_dim, v_head_dim = 2, 8, 512, 256
    layout = "page_first"

    def __init__(self, tokens=64):
        self.page_size = PAGE
        self.k_per_token, self.v_per_token = 2 * PER_TOKEN, PER_TOKEN
        self.k_buffer = np.zeros((tokens, self.k_per_token), dtype=np.uint8)
        self.v_buffer = np.zeros((tokens, self.v_per_token), dtype=np.uint8)
        self.kv_buffer = (self.k_buffer, self.v_buffer)  # what init_kv_buffer returns there

    def get_page_buffer_meta(self, indices):
        kb = self.k_buffer.__array_interface__["data"][0]
        vb = self.v_buffer.__array_interface__["data"][0]
        idx = indices.tolist()
        ptrs, sizes = [], []
        for i in range(0, len(idx), self.page_size):
            ptrs += [kb + idx[i] * self.k_per_token, vb + idx[i] * self.v_per_token]
            sizes += [self.page_size * self.k_per_token, self.page_size * self.v_per_token]
        return ptrs, sizes


for cls, attrs in ((FakeHostPool, M.HOST_POOL_ATTRIBUTES), (FakeAsymmetricHostPool, M.ASYMMETRIC_HOST_POOL_ATTRIBUTES)):
    missing = [a for a in attrs if a not in dir(cls) and a not in ("layout", "page_size", "kv_buffer", "k_buffer",
                                                                    "v_buffer")]
    assert not missing, f"{cls.__name__} lacks {missing}"

StorageConfig = dataclasses.make_dataclass(
    "HiCacheStorageConfig", [(f, object, dataclasses.field(default=None)) for f in M.STORAGE_CONFIG_FIELDS])


@pytest.fixture
def fake_sglang():
    """sglang.srt.mem_cache.hicache_storage with HiCacheStorage built from the manifest."""
    base = abc_stub.build_abc(M.BASE_CLASS, M.METHODS)
    abc_stub.install_modules({M.BASE_MODULE: {"HiCacheStorage": base, "HiCacheStorageConfig": StorageConfig}})
    yield importlib.import_module(M.BASE_MODULE)
    abc_stub.uninstall({"sglang"})


def create_like_the_factory(fake_sglang, config):
    """StorageBackendFactory._create_dynamic_backend, step by step."""
    extra = config.extra_config
    for field in M.DYNAMIC_REQUIRED_KEYS:
        if field not in extra:
            raise ValueError(f"Missing required field '{field}' in backend config for 'dynamic' backend")
    module = importlib.import_module(extra["module_path"])
    cls = getattr(module, extra["class_name"])
    if not issubclass(cls, fake_sglang.HiCacheStorage):
        raise TypeError(f"Backend class {extra['class_name']} must inherit from HiCacheStorage")
    return cls(config, {})


def storage(pool, fake_sglang, request, **config):
    extra, layout = readme_sglang_command()
    extra = dict(extra, coordinator=pool.coordinator, secret_file=None)
    values = dict(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1, is_mla_model=False,
                  enable_storage_metrics=False, is_page_first_layout=layout == "page_first", dp_rank=0, dp_size=1,
                  should_split_heads=False, model_name=request.node.name, extra_config=extra)
    values.update(config)
    return create_like_the_factory(fake_sglang, StorageConfig(**values))


def page_keys(n, tag="p"):
    return [f"{tag}{i:060d}" for i in range(n)]


def host_indices(first_page, pages):
    return np.arange(first_page * PAGE, (first_page + pages) * PAGE, dtype=np.int64)


def test_backup_then_prefetch_round_trips_bytes_zero_copy(pool, fake_sglang, request):
    backend = storage(pool, fake_sglang, request)
    host = FakeHostPool()
    backend.register_mem_pool_host(host)
    assert backend.parts_per_page == 2 and backend.object_sizes == [PAGE * PER_TOKEN] * 2
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
    v_of_page_2 = kvpool.engine_keys(backend.namespaces[1], f"{keys[2]}#1")
    assert client.remove(backend.namespaces[1], v_of_page_2)
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
                 lambda: backend.batch_get_v2([]), lambda: backend.batch_set_v2([])]:
        with pytest.raises(kvpool.Unimplemented):
            call()
    # A hybrid model's side pool: refused, naming why.
    with pytest.raises(kvpool.Unimplemented, match="hybrid model"):
        backend.register_mem_host_pool_v2(host, "mamba")
    assert backend.batch_exists([]) == 0 and backend.batch_get_v1([], host_indices(0, 0)) == []
    backend.close()

    # Page objects a kvpool block cannot be: refused when the host pool is registered.
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


def test_the_readme_command_sets_backend_name_and_a_zero_copy_layout():
    extra, layout = readme_sglang_command()
    for key in M.DYNAMIC_REQUIRED_KEYS:
        assert key in extra
    assert extra["module_path"] == "kvpool.integrations.sglang_hicache" and extra["interface_v1"] == 1
    assert layout in sglang_hicache.ZERO_COPY_LAYOUTS


def test_a_missing_abstract_method_fails_at_construction(pool, fake_sglang, request, monkeypatch):
    monkeypatch.delattr(sglang_hicache.KvpoolHiCacheStorage, "exists")
    with pytest.raises(TypeError, match="abstract"):
        storage(pool, fake_sglang, request)


def test_layer_first_and_page_head_are_refused_naming_the_flag(pool, fake_sglang, request):
    for layout in ("layer_first", "page_head"):
        backend = storage(pool, fake_sglang, request)
        with pytest.raises(kvpool.InvalidArgument, match="--hicache-mem-layout page_first"):
            backend.register_mem_pool_host(FakeHostPool(layout=layout))
        backend.close()
    backend = storage(pool, fake_sglang, request)
    backend.register_mem_pool_host(FakeHostPool(layout="page_first_direct"))
    backend.close()


def test_split_heads_is_refused(pool, fake_sglang, request):
    with pytest.raises(kvpool.InvalidArgument, match="--tp-size"):
        storage(pool, fake_sglang, request, should_split_heads=True)


def test_pipeline_and_context_parallel_ranks_never_share_blocks(pool, fake_sglang, request):
    keys = page_keys(2, "r")
    ranks = [dict(pp_rank=0, pp_size=2), dict(pp_rank=1, pp_size=2), dict(attn_cp_rank=1, attn_cp_size=2),
             dict(attn_cp_rank=1, attn_cp_size=2, pp_rank=1, pp_size=2), dict(tp_rank=1, tp_size=2)]
    writer = storage(pool, fake_sglang, request)
    host = FakeHostPool()
    host.kv_buffer[:] = 5
    writer.register_mem_pool_host(host)
    assert all(writer.batch_set_v1(keys, host_indices(0, 2)))
    seen = {tuple(writer.namespaces)}
    for cfg in ranks:
        other = storage(pool, fake_sglang, request, **cfg)
        other.register_mem_pool_host(FakeHostPool())
        assert other.batch_exists(keys) == 0, cfg
        seen.add(tuple(other.namespaces))
        other.close()
    assert len(seen) == len(ranks) + 1
    # Attention-DP replicas hold the same KV: they share blocks.
    replica = storage(pool, fake_sglang, request, dp_rank=1, dp_size=2)
    replica.register_mem_pool_host(FakeHostPool())
    assert replica.batch_exists(keys) == 2
    replica.close()
    writer.close()


def test_an_asymmetric_pool_round_trips_k_and_v_of_different_sizes(pool, fake_sglang, request):
    backend = storage(pool, fake_sglang, request)
    host = FakeAsymmetricHostPool()
    backend.register_mem_pool_host(host)
    assert backend.object_sizes == [PAGE * 2 * PER_TOKEN, PAGE * PER_TOKEN] and len(set(backend.namespaces)) == 2
    rng = np.random.default_rng(3)
    host.k_buffer[:] = rng.integers(0, 256, host.k_buffer.shape, dtype=np.uint8)
    host.v_buffer[:] = rng.integers(0, 256, host.v_buffer.shape, dtype=np.uint8)
    keys = page_keys(3, "a")
    want_k, want_v = host.k_buffer[:12].copy(), host.v_buffer[:12].copy()
    assert all(backend.batch_set_v1(keys, host_indices(0, 3)))
    assert backend.batch_exists(keys) == 3
    assert backend.batch_get_v1(keys, host_indices(8, 3)) == [True] * 3
    np.testing.assert_array_equal(host.k_buffer[32:44], want_k)
    np.testing.assert_array_equal(host.v_buffer[32:44], want_v)
    backend.close()


def test_clear_removes_what_this_instance_wrote(pool, fake_sglang, request):
    host = FakeHostPool()
    host.kv_buffer[:] = 9
    mine, theirs = page_keys(3, "c"), page_keys(2, "o")
    backend = storage(pool, fake_sglang, request)
    backend.register_mem_pool_host(host)
    other = storage(pool, fake_sglang, request)
    other.register_mem_pool_host(FakeHostPool())
    assert all(backend.batch_set_v1(mine, host_indices(0, 3)))
    assert all(other.batch_set_v1(theirs, host_indices(0, 2)))
    backend.clear()
    assert backend.batch_exists(mine) == 0
    assert backend.batch_exists(theirs) == 2  # another instance's blocks stay
    backend.clear()  # nothing left to clear: fine
    backend.close()
    other.close()
