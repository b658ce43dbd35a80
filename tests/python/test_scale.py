"""bench/scale.py: the arithmetic of 10^8 entries over N shards, and its
parsing of coordinator_bench's checkpoint table (a real run, small)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import bin_dir

SCALE = pathlib.Path(__file__).resolve().parents[2] / "bench" / "scale.py"
GIVEN = ["--shard-keys-per-s", "4e6", "--failover-ms", "5000", "--elect-ms", "2000"]


def scale(*args):
    out = subprocess.run([sys.executable, str(SCALE), "--bin", str(bin_dir()), "--json", *args], check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return json.loads(out)


def test_the_table_follows_from_the_inputs_and_the_stated_demand():
    d = scale("--bytes-per-entry", "100", "--alloc-commit-per-s", "1e6", *GIVEN, "--shards", "1,4",
              "--gpus", "1000", "--requests-per-gpu", "2", "--prompt-tokens", "4096", "--tokens-per-block", "16",
              "--output-tokens", "512", "--hit-rate", "0.5", "--peak", "3")
    # 1000 GPUs x 2 req/s x peak 3 = 6000 lookups/s of 4096/16 = 256 keys.
    assert d["demand"]["lookup_calls_per_s"] == pytest.approx(6000)
    assert d["demand"]["lookup_keys_per_s"] == pytest.approx(6000 * 256)
    # Misses (128 blocks) and output (32 blocks) are written.
    assert d["demand"]["alloc_commit_keys_per_s"] == pytest.approx(6000 * 160)
    one, four = d["rows"]
    assert one["index_gib_per_shard"] == pytest.approx(1e8 * 100 / 2**30)
    assert four["entries_per_shard"] == pytest.approx(25e6)
    assert four["lookup_headroom"] == pytest.approx(4e6 / (6000 * 256 / 4))
    # The gap plus the shard's rebuild at the given rate.
    assert one["failover_s"] == pytest.approx(5.0 + 100.0)
    assert four["failover_s"] == pytest.approx(5.0 + 25.0)
    assert four["keys_unavailable_in_failover"] == pytest.approx(0.25)


def test_bytes_per_entry_is_measured_by_coordinator_bench():
    if not (bin_dir() / "coordinator_bench").exists():
        pytest.skip("coordinator_bench not built")
    d = scale("--core-blocks", "200000", *GIVEN, "--shards", "2")
    core = d["measured"]["coordinator_bench"]
    assert core["blocks"] == 200000
    # Target <= 128 B (DESIGN.md "Scale"); the baseline weighs more at this size.
    # Under ASan (KVPOOL_SANITIZE=1 scripts/test.sh) every allocation carries
    # redzones, so only the lower bound means anything there.
    assert core["bytes_per_entry"] > 16
    if os.environ.get("KVPOOL_SANITIZE") != "1":
        assert core["bytes_per_entry"] < 512
    assert d["inputs"]["bytes_per_entry"] == core["bytes_per_entry"]
    assert d["rows"][0]["index_gib_per_shard"] == pytest.approx(5e7 * core["bytes_per_entry"] / 2**30)
