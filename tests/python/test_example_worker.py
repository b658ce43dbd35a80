"""examples/kv_worker.py: a saving process and a loading process against a
standalone agent."""

import json
import os
import pathlib
import subprocess
import sys

from conftest import scaled

WORKER = pathlib.Path(__file__).resolve().parents[2] / "examples" / "kv_worker.py"


def start(role, pool, *args):
    return subprocess.Popen([sys.executable, str(WORKER), role, "--coordinator", pool.coordinator, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)


def finish(proc):
    out, err = proc.communicate(timeout=scaled(60))
    assert proc.returncode == 0, (out, err)
    return json.loads(out.strip().splitlines()[-1])


def test_one_process_saves_and_another_loads_every_byte(pool):
    saved = finish(start("save", pool, "--seed", "11", "--tokens", "1000"))
    assert saved["blocks"] == 62 and saved["written"] == 62 and saved["block_bytes"] == 256 << 10
    loaded = finish(start("load", pool, "--seed", "11", "--tokens", "1000", "--expect-blocks", "62"))
    assert loaded["loaded"] == 62 and loaded["wrong_bytes"] == 0

    # A longer prompt with the same beginning: only the saved prefix loads,
    # and the blocks after it are left alone.
    longer = finish(start("load", pool, "--seed", "11", "--tokens", "1600", "--expect-blocks", "62"))
    assert longer["blocks"] == 100 and longer["present"] == 62 and longer["loaded"] == 62
    assert longer["beyond_prefix_untouched"] and longer["wrong_bytes"] == 0

    # Saving again deduplicates.
    again = finish(start("save", pool, "--seed", "11", "--tokens", "1000"))
    assert again["written"] == 0 and again["deduplicated"] == 62


def test_a_loader_started_first_waits_for_the_saver(pool):
    loader = start("load", pool, "--seed", "12", "--tokens", "512", "--wait-s", str(scaled(30)), "--expect-blocks",
                   "32")
    saver = start("save", pool, "--seed", "12", "--tokens", "512")
    assert finish(saver)["written"] == 32
    loaded = finish(loader)
    assert loaded["loaded"] == 32 and loaded["wrong_bytes"] == 0


def test_a_loader_with_nothing_saved_fails(pool):
    proc = start("load", pool, "--seed", "13", "--tokens", "64")
    out, _ = proc.communicate(timeout=scaled(60))
    assert proc.returncode == 1
    assert json.loads(out.strip().splitlines()[-1])["loaded"] == 0
