"""The LMCache remote storage plugin against a real pool, loaded and driven
the way LMCache does, with stand-in LMCache classes built from
engines/lmcache_manifest.py (which names each LMCache file and commit).

Each step follows an LMCache file:
1. The config is python/README.md's LMCache file, parsed with
   yaml.safe_load as lmcache/v1/config.py loads LMCACHE_CONFIG_FILE.
2. lmcache/v1/storage_backend/__init__.py, CreateStorageBackends: one
   RemoteBackend(config, metadata, loop, local_cpu_backend, dst_device,
   plugin_name=name) per entry of remote_storage_plugins.
3. lmcache/v1/storage_backend/remote_backend.py, RemoteBackend.__init__ /
   init_connection: CreateConnector(f"plugin://{name}", loop,
   local_cpu_backend, config, metadata, plugin_name=name); an exception is
   logged and the backend runs without a connection.
4. lmcache/v1/storage_backend/connector/__init__.py, ConnectorManager:
   _remote_adapters_plugin_launcher imports
   extra_config["remote_storage_plugin.<name>.module_path"], getattr
   class_name, checks issubclass(cls, ConnectorAdapter) and
   isinstance(cls(), ConnectorAdapter); create_connector gives a
   ConnectorContext(url, loop, local_cpu_backend (None -> SafeLocalCPUBackend),
   config, metadata, plugin_name) to the first adapter whose can_parse takes
   the URL; CreateConnector wraps the connector in
   InstrumentedRemoteConnector (connector/instrumented_connector.py: drops
   the ref count after put and batched_put).
5. RemoteBackend's calls on the connection: contains (exists through
   run_coroutine_threadsafe, or exists_sync), batched_contains -> int,
   batched_submit_put_task (batched_put) and submit_put_task (put),
   get_blocking (get), batched_get_blocking (batched_get, one entry per key),
   batched_async_contains -> int, batched_get_non_blocking (leading hits),
   remove (remove_sync), close.
"""

import asyncio
import importlib
import pathlib

import numpy as np
import pytest
import yaml

import kvpool
from engines import lmcache_manifest as M
from engines import lmcache_stubs as S
from kvpool.integrations import lmcache_connector, lmcache_plugin

README = pathlib.Path(__file__).resolve().parents[2] / "python" / "README.md"
KV_SHAPE = (2, 2, 256, 8, 128)  # 2 layers, K and V, 256 tokens, 8 heads of 128: a 2 MiB chunk in bf16
CHUNK_SHAPE = (2, 2, 256, 1024)  # LMCache's KV_2LTD chunk for KV_SHAPE


def readme_lmcache_config():
    """python/README.md's LMCache config file, as yaml.safe_load gives it to LMCache."""
    text = README.read_text().split("<!-- lmcache-config -->", 1)[1].split("```", 2)[1]
    assert text.startswith("yaml\n"), "python/README.md's LMCache config is not a yaml block"
    return yaml.safe_load(text[len("yaml\n"):])


@pytest.fixture
def lmc():
    """lmcache.v1.storage_backend.connector (and base_connector) built from the manifest."""
    yield S.install()
    S.uninstall()


def config_for(pool, request, **extra):
    """The README's config with the test pool's address, no secret file, and
    the test's own namespace."""
    values = readme_lmcache_config()
    values["extra_config"].update(kvpool_coordinator=pool.coordinator, kvpool_secret_file=None,
                                  kvpool_model=request.node.name)
    values["extra_config"].update(extra)
    return S.LMCacheEngineConfig.from_dict(values)


def worker(lmc, config, plugin="kvpool", backend=None, **kw):
    return S.RemoteBackend(lmc, config, S.metadata("worker"), backend or S.FakeLocalCPUBackend(), plugin, **kw)


def scheduler(lmc, config, plugin="kvpool"):
    # CreateStorageBackends: local_cpu_backend is None for the scheduler role.
    return S.RemoteBackend(lmc, config, S.metadata("scheduler"), None, plugin)


def chunks(n, seed, tokens=256):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        obj = S.FakeMemoryObj((2, 2, tokens - 16 * i, 1024), "torch.bfloat16", S.KV_2LTD)  # later ones partial
        obj.array[:] = rng.integers(0, 256, obj.array.shape, dtype=np.uint8)
        out.append(obj)
    return out


def connector_of(backend):
    return backend.connection._connector  # under LMCache's InstrumentedRemoteConnector


def test_the_readme_config_loads_through_lmcaches_plugin_loader_and_round_trips(pool, lmc, request):
    values = readme_lmcache_config()
    assert values.get("remote_url") is None  # else LMCache makes a second remote backend
    assert values["remote_storage_plugins"] == ["kvpool"]
    extra = values["extra_config"]
    assert extra["remote_storage_plugin.kvpool.module_path"] == "kvpool.integrations.lmcache_plugin"
    assert extra["remote_storage_plugin.kvpool.class_name"] == "KvpoolConnectorAdapter"
    assert extra["kvpool_coordinator"] and extra["kvpool_secret_file"]  # config values, not defaults in code
    assert values["max_local_cpu_size"] > 0  # LMCache's remote backends need its local CPU backend
    config = config_for(pool, request)

    w = worker(lmc, config)
    assert w.init_error is None, w.init_error
    assert isinstance(w.connection, S.Instrumented)
    assert isinstance(connector_of(w), importlib.import_module(M.BASE_MODULE).RemoteConnector)
    keys = [S.Key(i) for i in range(10)]  # more than the connector's 8 staging slots
    objs = chunks(10, 1)
    w.batched_submit_put_task(keys, objs).result(10)
    assert [o.ref_count for o in objs] == [0] * 10  # LMCache's wrapper dropped them; the connector did not

    got = w.batched_get_blocking(keys)
    for want, have in zip(objs, got):
        assert have.shape == want.shape and str(have.dtype) == "torch.bfloat16" and have.fmt == S.KV_2LTD
        np.testing.assert_array_equal(have.array, want.array)
    w.close()


def test_scheduler_and_worker_roles_get_one_block_size_and_namespace(pool, lmc, request):
    """Both roles get the ConnectorContext's metadata; the scheduler's
    local_cpu_backend is a SafeLocalCPUBackend (no metadata, allocate
    raises), the worker's one without metadata either, so the block comes
    from the context alone."""
    config = config_for(pool, request)
    s, w = scheduler(lmc, config), worker(lmc, config)
    assert s.init_error is None and w.init_error is None, (s.init_error, w.init_error)
    sc, wc = connector_of(s), connector_of(w)
    assert type(sc.local_cpu_backend).__name__ == "SafeLocalCPUBackend"
    want = lmcache_connector.block_bytes_for(S.metadata("worker"))
    assert want == (2 << 20) + 4096  # the 2 MiB chunk plus the header, in 4 KiB pages
    assert sc.block_bytes == wc.block_bytes == want
    assert sc.namespace == wc.namespace

    keys = [S.Key(100 + i) for i in range(3)]
    w.batched_submit_put_task(keys, chunks(3, 2)).result(10)
    assert s.batched_contains(keys + [S.Key(999)]) == 3  # the scheduler sees the worker's chunks
    assert s.batched_async_contains("lookup-1", keys) == 3
    assert s.contains(keys[1]) is True and s.contains_sync(S.Key(998)) is False
    s.close()
    w.close()


def test_a_second_worker_process_reads_bit_exact_with_lmcaches_return_types(pool, lmc, request):
    config = config_for(pool, request)
    a = worker(lmc, config)
    b = worker(lmc, config)  # another process's connector: its own kvpool client
    assert connector_of(a).client is not connector_of(b).client
    keys = [S.Key(200 + i) for i in range(4)]
    objs = chunks(4, 3)
    a.batched_submit_put_task(keys[:3], objs[:3]).result(10)
    assert a.submit_put_task(keys[3], objs[3]).result(10) is None
    assert objs[3].ref_count == 0

    missing = S.Key(299)
    assert b.batched_contains(keys + [missing]) == 4 and type(b.batched_contains(keys)) is int
    hits = b.batched_async_contains("l", [keys[0], missing, keys[1]])
    assert hits == 1 and type(hits) is int  # leading hits only
    assert b.contains(keys[2]) is True and b.contains(missing) is False
    one = b.get_blocking(keys[2])
    np.testing.assert_array_equal(one.array, objs[2].array)
    assert b.get_blocking(missing) is None
    got = b.batched_get_blocking([keys[0], missing, keys[3]])
    assert isinstance(got, list) and len(got) == 3 and got[1] is None
    np.testing.assert_array_equal(got[0].array, objs[0].array)
    np.testing.assert_array_equal(got[2].array, objs[3].array)
    lead = b.batched_get_non_blocking("l", keys + [missing])
    assert isinstance(lead, list) and len(lead) == 4
    for want, have in zip(objs, lead):
        assert have.shape == want.shape
        np.testing.assert_array_equal(have.array, want.array)

    assert b.remove(keys[1]) is True
    assert a.batched_contains(keys) == 1
    a.close()
    b.close()


def test_can_parse_takes_only_the_plugin_url_it_is_configured_with(lmc):
    adapter = lmcache_plugin.__getattr__("KvpoolConnectorAdapter")()
    assert isinstance(adapter, lmc.ConnectorAdapter)
    for url in ("plugin://kvpool", "plugin://kvpool.primary"):
        assert adapter.can_parse(url), url
    for url in ("plugin://fs", "plugin://kvpoolx", "plugin://kvpool.", "plugin://kvpool/x", "plugin://", "kvpool://h:1",
                "plugin://kvpool.a?x=1", "external://host:0/kvpool.integrations.lmcache_connector/", "", None):
        assert not adapter.can_parse(url), url


def test_another_plugins_url_goes_to_its_own_adapter(pool, lmc, request):
    """ConnectorManager gives the URL to the first adapter whose can_parse
    takes it (plugin adapters in set order): kvpool's, asked first, must
    leave another plugin's URL to that plugin's adapter."""
    made = []

    class FsAdapter(lmc.ConnectorAdapter):
        def __init__(self):
            super().__init__("plugin://fs")

        def create_connector(self, context):
            made.append(context.url)
            return "the fs connector"

    ours = lmcache_plugin.__getattr__("KvpoolConnectorAdapter")()
    config = config_for(pool, request)
    config.remote_storage_plugins = None  # only the adapters below, in this order
    got = S.create_connector(lmc, "plugin://fs", None, S.FakeLocalCPUBackend(), config, S.metadata("worker"),
                             plugin_name="fs", extra_adapters=[ours, FsAdapter()])
    assert made == ["plugin://fs"] and got._connector == "the fs connector"
    got = S.create_connector(lmc, "plugin://kvpool", None, S.FakeLocalCPUBackend(), config, S.metadata("worker"),
                             plugin_name="kvpool", extra_adapters=[FsAdapter(), ours])
    assert made == ["plugin://fs"] and isinstance(got._connector, lmcache_connector.KvpoolRemoteConnector)
    asyncio.run(got.close())


def test_an_instances_own_keys_win_over_the_bare_ones(pool, lmc, request):
    """remote_storage_plugins: ["kvpool.a"]; remote_storage_plugin.kvpool.a.<key>
    over <key>, as LMCache's own plugin adapters read their settings."""
    config = config_for(pool, request)
    config.remote_storage_plugins = ["kvpool.a"]
    extra = config.extra_config
    for key in M.PLUGIN_KEYS:
        extra[key.format(name="kvpool.a")] = extra.pop(key.format(name="kvpool"))
    extra.update({"kvpool_coordinator": "127.0.0.1:1",  # nothing listens there
                  "remote_storage_plugin.kvpool.a.kvpool_coordinator": pool.coordinator,
                  "remote_storage_plugin.kvpool.a.kvpool_model": request.node.name + "-a"})
    a = worker(lmc, config, plugin="kvpool.a")
    assert a.init_error is None, a.init_error
    assert connector_of(a).client.coordinator == pool.coordinator
    plain = kvpool.Client(pool.coordinator, timeout_s=10)
    try:
        other = plain.register_namespace(model_id=request.node.name, dtype="bytes", num_layers=0, num_kv_heads=0,
                                         head_dim=0, tokens_per_block=0, layout="lmcache-chunk-v1",
                                         block_bytes=connector_of(a).block_bytes)
        assert connector_of(a).namespace != other  # its own model, so its own namespace
    finally:
        plain.close()
    a.close()


@pytest.mark.parametrize("change,cause", [
    (dict(kvpool_block_bytes="lots"), "kvpool_block_bytes='lots'"),
    (dict(kvpool_timeout_s="soon"), "kvpool_timeout_s='soon'"),
    (dict(kvpool_timeout_s=0), "kvpool_timeout_s=0"),
    (dict(kvpool_coordinator="127.0.0.1:1", kvpool_timeout_s=1), "127.0.0.1:1"),
])
def test_a_bad_setting_is_a_runtime_error_naming_it(pool, lmc, request, change, cause):
    w = worker(lmc, config_for(pool, request, **change))
    assert w.connection is None
    assert isinstance(w.init_error, RuntimeError) and isinstance(w.init_error, kvpool.Error)
    assert cause in str(w.init_error)
    w.close()


def test_no_metadata_and_no_block_size_is_a_runtime_error(pool, lmc, request):
    config = config_for(pool, request)
    w = S.RemoteBackend(lmc, config, None, S.FakeLocalCPUBackend(), "kvpool")
    assert isinstance(w.init_error, RuntimeError) and "kvpool_block_bytes" in str(w.init_error)
    w.close()
    config = config_for(pool, request, kvpool_block_bytes=1 << 20)
    w = S.RemoteBackend(lmc, config, None, S.FakeLocalCPUBackend(), "kvpool")
    assert w.init_error is None and connector_of(w).block_bytes == 1 << 20
    w.close()


def test_the_adapter_refuses_a_url_that_is_not_its_plugins(lmc):
    adapter = lmcache_plugin.__getattr__("KvpoolConnectorAdapter")()
    context = lmc.ConnectorContext("plugin://fs", None, None, S.LMCacheEngineConfig(), None)
    with pytest.raises(RuntimeError, match="remote_storage_plugins"):
        adapter.create_connector(context)
    context = lmc.ConnectorContext("plugin://kvpool", None, None, S.LMCacheEngineConfig(extra_config=[1]), None)
    with pytest.raises(RuntimeError, match="extra_config"):
        adapter.create_connector(context)


def test_lmcaches_abstract_methods_are_checked(pool, lmc, request, monkeypatch):
    """The connector is a real RemoteConnector subclass: one LMCache method
    missing fails construction, as LMCache's own ABC would."""
    monkeypatch.delattr(lmcache_connector.KvpoolRemoteConnector, "exists_sync")
    w = worker(lmc, config_for(pool, request))
    assert isinstance(w.init_error, TypeError) and "exists_sync" in str(w.init_error)
    w.close()
