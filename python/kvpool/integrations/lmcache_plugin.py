"""kvpool as an LMCache remote storage plugin (the recommended LMCache route).

LMCache loads this module unmodified through its remote storage plugin
framework; the chunks, keys and block size are those of
``lmcache_connector.KvpoolRemoteConnector``, which this adapter builds.
tests/python/engines/lmcache_manifest.py lists every LMCache file read and
its commit; tests/python/test_lmcache_plugin.py replays LMCache's calls.

How LMCache (LMCache/LMCache main, no release tag resolved) gets here:

- lmcache/v1/config.py (at 000620e37eb7e8e54bd6f0aa0809b7dbef8a11e8):
  ``remote_storage_plugins`` is a list of plugin names, ``extra_config`` a
  dict; both come from the YAML file that ``LMCACHE_CONFIG_FILE`` names (or
  ``LMCACHE_REMOTE_STORAGE_PLUGINS`` and ``LMCACHE_EXTRA_CONFIG`` as JSON).
- lmcache/v1/storage_backend/__init__.py (``CreateStorageBackends``; read
  through the code index, commit not resolvable): one ``RemoteBackend(...,
  plugin_name=name)`` per entry of ``remote_storage_plugins``, which asks
  ``CreateConnector`` for the URL ``plugin://<name>``. A ``remote_url`` set
  as well makes a second, deprecated ``RemoteBackend``: leave it unset.
- lmcache/v1/storage_backend/connector/__init__.py (at
  0109660ce57fe9c046eb7953dfb56fb1e3c6d9fd, and a later version read
  through the index): ``ConnectorManager`` imports
  ``extra_config["remote_storage_plugin.<name>.module_path"]``, takes
  ``class_name`` from it, checks it is a ``ConnectorAdapter`` (``isinstance``
  of the instance there, ``issubclass`` of the class later), instantiates it
  with no arguments, and gives the URL to the first adapter (built-in ones
  first) whose ``can_parse`` accepts it; ``create_connector`` gets a
  ``ConnectorContext`` (``url``, ``loop``, ``local_cpu_backend``: the
  scheduler's ``None`` wrapped as ``SafeLocalCPUBackend``, ``config``,
  ``metadata``, ``plugin_name``).
- ``can_parse`` accepts ``plugin://kvpool`` and ``plugin://kvpool.<instance>``
  only: the plugin type is the name before the first dot, as LMCache's
  ``extract_plugin_type`` and its built-in plugin adapters
  (connector/hf3fs_adapter.py at 5ad85869d4403c87b68e0322c4783f214b434e6b)
  have it. So the name in ``remote_storage_plugins`` must be ``kvpool`` or
  ``kvpool.<instance>``; other plugins' URLs are left to their adapters.

Configuration, LMCache YAML (python/README.md has the literal file)::

    remote_storage_plugins: ["kvpool"]
    extra_config:
      remote_storage_plugin.kvpool.module_path: kvpool.integrations.lmcache_plugin
      remote_storage_plugin.kvpool.class_name: KvpoolConnectorAdapter
      kvpool_coordinator: "10.0.0.5:7400"
      kvpool_secret_file: /etc/kvpool/secret

Keys of ``extra_config``, each looked up as
``remote_storage_plugin.<name>.<key>`` first (one plugin instance), then as
``<key>``: ``kvpool_coordinator`` (else $KVPOOL_COORDINATOR, else
127.0.0.1:7400), ``kvpool_secret_file`` (else $KVPOOL_SECRET_FILE, else
kvpool's default path), ``kvpool_timeout_s`` (every pool call, default 10),
``kvpool_block_bytes`` (default: LMCache's full chunk from the metadata),
``kvpool_model`` (the namespace's model, default ``extra_config["model"]``
or "lmcache").

One block size in every role: ``create_connector`` passes
``context.metadata`` (which LMCache gives the scheduler and the workers
alike) as ``metadata``, so both derive the block from ``kv_shape`` and
``kv_dtype`` (lmcache/v1/metadata.py at
0ca52cb17ed482c6bd20c08555e03cd4aa9027b2), hence one namespace. With no
metadata and no ``kvpool_block_bytes``, construction fails.

Errors: a bad setting, an unreachable coordinator or a URL that is not
``plugin://kvpool[.<instance>]`` raise a ``kvpool.Error`` (a RuntimeError)
naming the setting; LMCache's ``RemoteBackend.init_connection`` logs it as
"Failed to initialize/re-establish remote connection" and retries later,
serving without the pool meanwhile.

``KvpoolConnectorAdapter`` is made on first access (module ``__getattr__``)
as a real subclass of LMCache's ``ConnectorAdapter``; the connector it
returns is a real subclass of ``RemoteConnector``, made the same way, so
LMCache's abstract methods are checked at construction. Importing this
module imports no engine.
"""

from __future__ import annotations

from typing import Optional

import kvpool

from ._common import setting
from .lmcache_connector import KvpoolRemoteConnector

PLUGIN_TYPE = "kvpool"
PLUGIN_SCHEME = "plugin://"
# kvpool settings in extra_config, per plugin instance first.
SETTINGS = ("kvpool_coordinator", "kvpool_secret_file", "kvpool_timeout_s", "kvpool_block_bytes", "kvpool_model",
            "model")


def plugin_name(url) -> Optional[str]:
    """The plugin instance that a ``plugin://`` URL names when its type is
    kvpool ("kvpool", "kvpool.<instance>"); else None."""
    if not isinstance(url, str) or not url.startswith(PLUGIN_SCHEME):
        return None
    name = url[len(PLUGIN_SCHEME):]
    kind, dot, instance = name.partition(".")
    if kind != PLUGIN_TYPE or (dot and not instance):
        return None
    if any(c in name for c in "/?#:@ "):
        return None  # a URL with more than a plugin name: not one LMCache makes
    return name


def plugin_settings(config, name):
    """The kvpool keys of config.extra_config for plugin instance ``name``:
    ``remote_storage_plugin.<name>.<key>`` over ``<key>``."""
    extra = setting(config, "extra_config")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise kvpool.InvalidArgument(f"kvpool: LMCache's extra_config is a {type(extra).__name__}, not a mapping")
    out = {}
    for key in SETTINGS:
        for candidate in (f"remote_storage_plugin.{name}.{key}", key):
            if extra.get(candidate) is not None:
                out[key] = extra[candidate]
                break
    return out


class KvpoolPluginAdapter:
    """LMCache ``ConnectorAdapter`` for ``plugin://kvpool[.<instance>]`` (see
    the module docstring). LMCache instantiates it with no arguments."""

    def __init__(self) -> None:
        self.schema = PLUGIN_SCHEME + PLUGIN_TYPE

    def can_parse(self, url: str) -> bool:
        return plugin_name(url) is not None

    def create_connector(self, context):
        url = getattr(context, "url", None)
        name = plugin_name(url)
        if name is None:
            raise kvpool.InvalidArgument(
                f"kvpool's LMCache plugin serves plugin://kvpool[.<instance>], not {url!r}: list \"kvpool\" in "
                "remote_storage_plugins and leave remote_url unset")
        # LMCache passes the instance name too; the URL is built from it.
        name = getattr(context, "plugin_name", None) or name
        settings = plugin_settings(context.config, name)
        return _connector_class()(context.loop, context.local_cpu_backend, {"extra_config": settings},
                                  metadata=context.metadata)

    def __repr__(self) -> str:
        return f"<KvpoolConnectorAdapter {self.schema}>"


def _connector_class():
    # A real RemoteConnector subclass, so LMCache's abstract methods are
    # checked when the connector is built.
    from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector
    return type("KvpoolConnector", (KvpoolRemoteConnector, RemoteConnector), {"__module__": __name__})


def __getattr__(name):
    # LMCache's plugin loader requires a ConnectorAdapter: the class is made
    # when LMCache asks for it, as a real subclass of LMCache's ABC.
    if name != "KvpoolConnectorAdapter":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lmcache.v1.storage_backend.connector import ConnectorAdapter
    return type("KvpoolConnectorAdapter", (KvpoolPluginAdapter, ConnectorAdapter), {"__module__": __name__})


# KvpoolConnectorAdapter stays out of __all__: a star import would import LMCache.
__all__ = ["KvpoolPluginAdapter", "plugin_name", "plugin_settings"]
