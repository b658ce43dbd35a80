"""The adapters import no engine, and engine keys are the same in every process."""

import importlib
import os
import subprocess
import sys

import pytest

import kvpool

ENGINES = ("sglang", "vllm", "lmcache", "ucm", "torch")

CHECK = """
import sys
import kvpool.integrations
from kvpool.integrations import lmcache_connector, lmcache_plugin, sglang_hicache, ucm_store, vllm
from kvpool.integrations.sglang_hicache import *
from kvpool.integrations.lmcache_connector import *
from kvpool.integrations.lmcache_plugin import *
from kvpool.integrations.ucm_store import *
from kvpool.integrations.vllm import *
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {engines!r})
print(",".join(loaded))
print(kvpool.engine_keys(42, [b"block", "block", 7])[0].hex())
"""


def test_importing_the_adapters_imports_no_engine():
    out = subprocess.run([sys.executable, "-c", CHECK.format(engines=ENGINES)], check=True, capture_output=True,
                         text=True, env=os.environ).stdout.splitlines()
    assert out[0] == ""
    # The same engine key in another process: the mapping is a pure hash.
    assert out[1] == kvpool.engine_keys(42, b"block").hex()


@pytest.mark.parametrize("module,name", [("sglang_hicache", "HiCacheKvpool"), ("lmcache_connector", "KvpoolConnector"),
                                         ("lmcache_plugin", "KvpoolConnectorAdapter"),
                                         ("ucm_store", "UcmKvpoolStore"), ("vllm", "KvpoolConnector")])
def test_the_engine_facing_class_needs_the_engine(module, name):
    """Asking for the engine-facing name imports the engine (to register the
    class with its base); without the engine that is an ImportError, which
    the engines' loaders report as such."""
    mod = importlib.import_module(f"kvpool.integrations.{module}")  # as the engines load them
    if any(e in sys.modules for e in ENGINES):
        pytest.skip("an engine (or a fake of one) is loaded in this process")
    with pytest.raises(ImportError):
        getattr(mod, name)
    with pytest.raises(AttributeError):
        getattr(mod, "NoSuchClass")
