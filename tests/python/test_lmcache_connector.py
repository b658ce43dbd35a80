"""The LMCache remote-connector adapter against a real pool, driven the way
LMCache's RemoteBackend and external connector adapter use a RemoteConnector
(see the adapter's docstring for the LMCache commit): loaded from an
external:// URL (issubclass check, then cls(loop=, local_cpu_backend=,
config=)); batched_put of chunks; batched_async_contains (leading hits) and
exists; batched_get_non_blocking / get / batched_get allocating from the
local CPU backend; close."""

import asyncio
import importlib
import types
import urllib.parse

import numpy as np
import pytest

import kvpool
from engines import lmcache_stubs as S
from engines.lmcache_stubs import KV_2LTD, FakeLocalCPUBackend, FakeMemoryObj, Key
from kvpool.integrations import lmcache_connector as lmc


class Config:
    def __init__(self, extra):
        self.extra_config = extra


@pytest.fixture
def fake_lmcache():
    """LMCache's base_connector module, RemoteConnector built from engines/lmcache_manifest.py."""
    S.install()
    yield importlib.import_module(S.M.BASE_MODULE)
    S.uninstall()


def load_like_the_external_adapter(fake_lmcache, url, loop, backend, config):
    parsed = urllib.parse.urlparse(url)
    module = importlib.import_module(parsed.path.strip("/"))
    cls = getattr(module, urllib.parse.parse_qs(parsed.query)["connector_name"][0])
    assert issubclass(cls, fake_lmcache.RemoteConnector)
    return cls(loop=loop, local_cpu_backend=backend, config=config)


def connector(pool, fake_lmcache, request, backend=None, block=1 << 20):
    url = "external://host:0/kvpool.integrations.lmcache_connector/?connector_name=KvpoolConnector"
    config = Config({"kvpool_coordinator": pool.coordinator, "kvpool_block_bytes": block,
                     "kvpool_model": request.node.name})
    return load_like_the_external_adapter(fake_lmcache, url, None, backend or FakeLocalCPUBackend(), config)


def chunks(n, seed, tokens=256):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        obj = FakeMemoryObj((2, 4, tokens - 16 * i, 64), "torch.bfloat16", KV_2LTD)  # later chunks shorter
        obj.array[:] = rng.integers(0, 256, obj.array.shape, dtype=np.uint8)
        out.append(obj)
    return out


def test_put_contains_and_get_round_trip(pool, fake_lmcache, request):
    c = connector(pool, fake_lmcache, request)
    keys = [Key(i) for i in range(10)]  # more than the staging slots: batched in turns
    objs = chunks(10, 1)

    async def run():
        await c.batched_put(keys, objs)
        assert await c.batched_async_contains("lookup-1", keys) == 10
        assert await c.exists(keys[3]) and c.exists_sync(keys[9])
        assert not await c.exists(Key(999))
        got = await c.batched_get_non_blocking("lookup-1", keys)
        single = await c.get(keys[4])
        batched = await c.batched_get(keys[:2] + [Key(998)])
        return got, single, batched

    got, single, batched = asyncio.run(run())
    assert len(got) == 10
    for want, have in zip(objs, got):
        assert have.shape == want.shape and str(have.dtype) == "torch.bfloat16" and have.fmt == KV_2LTD
        np.testing.assert_array_equal(have.array, want.array)
    np.testing.assert_array_equal(single.array, objs[4].array)
    assert batched[2] is None and len(batched) == 3
    np.testing.assert_array_equal(batched[1].array, objs[1].array)
    asyncio.run(c.close())


def test_a_gap_stops_contains_and_gets(pool, client, fake_lmcache, request):
    c = connector(pool, fake_lmcache, request)
    keys = [Key(100 + i) for i in range(5)]
    asyncio.run(c.batched_put(keys, chunks(5, 2)))
    assert c.remove_sync(keys[2])
    assert asyncio.run(c.batched_async_contains("l", keys)) == 2
    assert c.batched_contains(keys) == 2  # an int, as RemoteBackend.batched_contains returns it
    assert len(asyncio.run(c.batched_get_non_blocking("l", keys))) == 2
    assert asyncio.run(c.get(keys[2])) is None
    # batched_get answers per key (RemoteBackend.batched_get_blocking): the keys after the gap are read.
    each = asyncio.run(c.batched_get(keys))
    assert len(each) == 5 and each[2] is None and all(o is not None for o in each[:2] + each[3:])
    asyncio.run(c.close())


def test_error_paths(pool, fake_lmcache, request):
    c = connector(pool, fake_lmcache, request, backend=FakeLocalCPUBackend(capacity=1), block=64 << 10)
    with pytest.raises(NotImplementedError):
        asyncio.run(c.list())
    big = chunks(1, 3)[0]  # 512 KiB: more than a 64 KiB block holds
    with pytest.raises(kvpool.InvalidArgument):
        asyncio.run(c.put(Key(1), big))
    small = [FakeMemoryObj((2, 4, 16, 64), "torch.bfloat16", KV_2LTD) for _ in range(2)]
    asyncio.run(c.batched_put([Key(2), Key(3)], small))
    # LMCache's allocator full after one chunk: the rest is a miss, not an error.
    assert len(asyncio.run(c.batched_get_non_blocking("l", [Key(2), Key(3)]))) == 1
    asyncio.run(c.close())
    # Headers of blocks not written by this connector are refused as data loss.
    with pytest.raises(kvpool.DataLoss):
        lmc.decode_header(bytes(lmc.HEADER_BYTES))


def test_the_event_loop_runs_while_a_get_waits_on_the_pool(private_pool, fake_lmcache, request):
    """LMCache awaits connector calls on its event loop: a get blocked on a
    paused pool must leave the loop (and the GIL) to other tasks."""
    c = connector(private_pool, fake_lmcache, request)
    keys = [Key(500 + i) for i in range(2)]
    asyncio.run(c.batched_put(keys, chunks(2, 5)))

    async def run():
        ticks = 0
        private_pool.pause()
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, private_pool.resume)
        get = asyncio.ensure_future(c.batched_get(keys))
        while not get.done():
            ticks += 1
            await asyncio.sleep(0.01)
        return ticks, await get

    ticks, got = asyncio.run(run())
    assert ticks >= 20, ticks  # the loop kept turning for most of the pause
    assert len(got) == 2 and all(o is not None for o in got)
    asyncio.run(c.close())


def test_the_block_size_follows_lmcaches_chunk_shape(pool, fake_lmcache, request):
    class Dtype:  # a torch dtype's itemsize
        itemsize = 2

    backend = FakeLocalCPUBackend()
    backend.metadata = types.SimpleNamespace(kv_shape=(4, 2, 256, 8, 128), kv_dtype=Dtype())  # 4 MiB of KV
    url = "external://host:0/kvpool.integrations.lmcache_connector/?connector_name=KvpoolConnector"
    config = Config({"kvpool_coordinator": pool.coordinator, "kvpool_model": request.node.name})
    c = load_like_the_external_adapter(fake_lmcache, url, None, backend, config)
    assert c.block_bytes == (4 << 20) + 4096  # the chunk plus the header, in 4 KiB pages
    full = FakeMemoryObj((4, 2, 256, 8, 128), "torch.bfloat16", KV_2LTD)
    full.array[:] = 9
    asyncio.run(c.put(Key(1), full))
    got = asyncio.run(c.get(Key(1)))
    np.testing.assert_array_equal(got.array, full.array)
    asyncio.run(c.close())
    assert lmc.block_bytes_for(None) is None
    assert lmc.block_bytes_for(types.SimpleNamespace(kv_shape=(1, 2, 16, 1, 8), kv_dtype=Dtype())) == 64 << 10


@pytest.mark.parametrize("setting", [dict(kvpool_block_bytes="lots"), dict(kvpool_block_bytes=-1),
                                     dict(kvpool_timeout_s="soon"), dict(kvpool_timeout_s=True)])
def test_a_bad_setting_is_an_error_naming_it(pool, request, setting):
    config = Config(dict({"kvpool_coordinator": pool.coordinator, "kvpool_block_bytes": 1 << 20,
                          "kvpool_model": request.node.name}, **setting))
    with pytest.raises(kvpool.InvalidArgument, match=next(iter(setting))):
        lmc.KvpoolRemoteConnector(None, FakeLocalCPUBackend(), config)


def test_scheduler_and_worker_derive_one_block_size(pool, request):
    """LMCache's scheduler gets a SafeLocalCPUBackend (no metadata) and the
    ConnectorContext's metadata; the worker a LocalCPUBackend with metadata.
    Both derive the same block, hence the same namespace; a role with
    neither fails instead of picking a size of its own."""
    class Dtype:
        itemsize = 2

    meta = types.SimpleNamespace(kv_shape=(2, 2, 16, 8, 128), kv_dtype=Dtype())
    config = Config({"kvpool_coordinator": pool.coordinator, "kvpool_model": request.node.name})
    worker_backend = FakeLocalCPUBackend()
    worker_backend.metadata = meta
    worker = lmc.KvpoolRemoteConnector(None, worker_backend, config)
    scheduler = lmc.KvpoolRemoteConnector(None, object(), config, metadata=meta)
    assert worker.namespace == scheduler.namespace and worker.block_bytes == scheduler.block_bytes
    with pytest.raises(RuntimeError, match="kvpool_block_bytes"):
        lmc.KvpoolRemoteConnector(None, object(), config)
    for c in (worker, scheduler):
        asyncio.run(c.close())
