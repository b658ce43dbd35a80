"""The UCM store adapter against a real pool, driven the way UCM's connectors
use a UcmKVStoreBaseV1 store (see the adapter's docstring for the UCM commit):
the factory imports the class by module path (a UcmKVStoreBaseV1) and builds
it from a config dict; the worker dumps rows of tensors per block and waits
on the task; the scheduler asks lookup_on_prefix (index of the last hit);
the worker loads the hit blocks and waits, or polls with check."""

import abc
import gc
import hashlib
import importlib
import sys
import time
import types
import weakref

import numpy as np
import pytest

import kvpool
from conftest import scaled
from kvpool.integrations.ucm_store import KvpoolUcmStore

TENSOR = 32 << 10  # bytes of one tensor of a row
COLUMNS = 4  # tensors per block row (e.g. K and V of two layers): 128 KiB blocks


@pytest.fixture
def fake_ucm(monkeypatch):
    mod = types.ModuleType("ucm.store.ucmstore_v1")

    class UcmKVStoreBaseV1(abc.ABC):
        @abc.abstractmethod
        def lookup(self, block_ids):
            ...

    mod.UcmKVStoreBaseV1 = UcmKVStoreBaseV1
    for name in ["ucm", "ucm.store"]:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod


@pytest.fixture
def store(pool, fake_ucm, request):
    # UcmConnectorFactoryV1.create_connector, step by step.
    module = importlib.import_module("kvpool.integrations.ucm_store")
    cls = getattr(module, "UcmKvpoolStore")
    assert issubclass(cls, fake_ucm.UcmKVStoreBaseV1)
    s = cls({"kvpool_coordinator": pool.coordinator, "shard_size": COLUMNS * TENSOR, "model": request.node.name,
             "kvpool_staging_blocks": 4})
    yield s
    s.close()


def block_ids(n, tag=b""):
    return [hashlib.sha256(tag + i.to_bytes(4, "little")).digest() for i in range(n)]


def rows(n, seed=None):
    rng = np.random.default_rng(seed)
    if seed is None:
        return [[np.zeros(TENSOR, np.uint8) for _ in range(COLUMNS)] for _ in range(n)]
    return [[rng.integers(0, 256, TENSOR, dtype=np.uint8) for _ in range(COLUMNS)] for _ in range(n)]


def assert_rows_equal(got, want):
    for g_row, w_row in zip(got, want):
        for g, w in zip(g_row, w_row):
            np.testing.assert_array_equal(g, w)


def test_dump_lookup_load_round_trip(store):
    ids = block_ids(6)  # more blocks than staging slots: moved in turns
    src = rows(6, seed=1)
    task = store.dump(ids, [0] * 6, src)
    assert store.wait(task) is None and store.check(task)
    store.commit(ids)
    assert store.lookup_on_prefix(ids) == 5
    assert store.lookup(ids) == [True] * 6
    dst = rows(6)
    task = store.load(ids, [0] * 6, dst)
    while not store.check(task):
        time.sleep(0.001)
    store.wait(task)
    assert_rows_equal(dst, src)
    store.prefetch(ids)  # nothing to do, but callable


def test_a_gap_stops_lookup_on_prefix_and_load(store, client):
    ids = block_ids(5, b"gap")
    src = rows(5, seed=2)
    store.wait(store.dump(ids, [0] * 5, src))
    assert client.remove(store.namespace, store._keys([ids[2]], [0])[0])
    assert store.lookup_on_prefix(ids) == 1
    assert store.lookup(ids) == [True, True, False, True, True]
    assert store.lookup_on_prefix(block_ids(2, b"none")) == -1
    assert store.lookup_on_prefix([]) == -1 and store.lookup([]) == []
    dst = rows(5)
    task = store.load(ids, [0] * 5, dst)
    with pytest.raises(kvpool.NotFound):
        store.wait(task)
    assert store.check(task)
    assert_rows_equal(dst[:2], src[:2])  # the blocks before the gap arrived


def test_shards_are_separate_blocks_and_raw_addresses_work(store):
    ids = block_ids(2, b"shard")
    shard1 = rows(2, seed=3)
    addrs = [[t.__array_interface__["data"][0] for t in row] for row in shard1]
    store.wait(store.dump_data(ids, [1, 1], addrs))
    assert store.lookup_on_prefix(ids) == -1  # lookups look at shard 0
    dst = rows(2)
    store.wait(store.load_data(ids, [1, 1], np.array([[t.__array_interface__["data"][0] for t in r] for r in dst],
                                                      dtype=np.uint64)))
    assert_rows_equal(dst, shard1)


def test_error_paths(store):
    ids = block_ids(2, b"err")
    with pytest.raises(kvpool.InvalidArgument):  # rows that do not fill a block
        store.dump(ids, [0, 0], [[np.zeros(TENSOR, np.uint8)]] * 2)
    with pytest.raises(kvpool.InvalidArgument):  # lengths disagree
        store.dump(ids, [0], rows(2, seed=4))

    class CudaTensor:
        device = types.SimpleNamespace(type="cuda")

        def data_ptr(self):
            return 1 << 40

    with pytest.raises(kvpool.InvalidArgument):
        store.load(ids[:1], [0], [[CudaTensor()] * COLUMNS])

    class StridedTensor:  # a CPU tensor view with gaps: its bytes are not [ptr, ptr + size)
        device = types.SimpleNamespace(type="cpu")

        def data_ptr(self):
            return 1 << 40

        def is_contiguous(self):
            return False

    with pytest.raises(kvpool.InvalidArgument):
        store.dump(ids[:1], [0], [[StridedTensor()] * COLUMNS])
    with pytest.raises(kvpool.InvalidArgument):
        store.dump(ids[:1], [0], [[np.zeros((TENSOR, 2), np.uint8)[:, 0]] * COLUMNS])  # numpy, strided
    with pytest.raises(NotImplementedError):
        store.cc_store()
    with pytest.raises(kvpool.InvalidArgument):
        KvpoolUcmStore({"kvpool_coordinator": store.client.coordinator})  # no block size


def test_load_returns_a_task_at_once_and_check_polls_it(private_pool, fake_ucm, request):
    s = KvpoolUcmStore({"kvpool_coordinator": private_pool.coordinator, "shard_size": COLUMNS * TENSOR,
                        "model": request.node.name})
    ids = block_ids(2, b"async")
    src = rows(2, seed=6)
    s.wait(s.dump(ids, [0, 0], src))
    dst = rows(2)
    private_pool.pause()
    try:
        start = time.monotonic()
        task = s.load(ids, [0, 0], dst)
        assert time.monotonic() - start < scaled(0.2)  # the load runs on the store's threads
        time.sleep(0.3)
        assert not s.check(task)  # the pool is paused: still in flight
    finally:
        private_pool.resume()
    s.wait(task)
    assert s.check(task)
    assert_rows_equal(dst, src)

    # The task holds the caller's tensors until it is done: dropping them
    # while it waits on the pool frees nothing it writes to.
    private_pool.pause()
    try:
        task = s.load(ids, [0, 0], rows(2))
        ref = weakref.ref(task._keepalive[0][0])
        gc.collect()
        assert ref() is not None
    finally:
        private_pool.resume()
    s.wait(task)
    gc.collect()
    assert ref() is None
    s.close()
