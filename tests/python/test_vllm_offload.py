"""The vLLM offloading-manager adapter against a real pool, driven the way
vLLM's offloading connector scheduler drives an OffloadingManager (see the
adapter's docstring for the vLLM commit): lookup -> prefix length; touch and
prepare_load for the hit blocks, the worker copies from the LoadStoreSpec,
complete_load; prepare_store for new blocks, the worker fills the spec,
complete_store."""

import hashlib

import numpy as np
import pytest

import kvpool
from conftest import BLOCK, namespace_args
from kvpool.integrations.vllm_offload import KvpoolOffloadingManager


def block_hashes(n, tag=b""):
    """vLLM's BlockHash: SHA-256 bytes, chained."""
    out, prev = [], tag
    for i in range(n):
        prev = hashlib.sha256(prev + i.to_bytes(4, "little")).digest()
        out.append(prev)
    return out


def kv_blocks(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, BLOCK), dtype=np.uint8)


@pytest.fixture
def manager(client, request):
    m = KvpoolOffloadingManager(namespace_args(request.node.name), staging_blocks=8, client=client)
    yield m
    m.close()


def store(manager, hashes, data):
    """The connector's store path: prepare_store, the worker writes the
    blocks to store into the spec's buffers, complete_store."""
    out = manager.prepare_store(iter(hashes))  # the connector passes islice iterators
    assert out is not None and out.block_hashes_evicted == []
    for h, buf in zip(out.block_hashes_to_store, out.store_spec.buffers):
        buf[:] = data[hashes.index(h)]
    manager.complete_store(set(out.block_hashes_to_store))  # its _reqs_being_stored set
    return out


def test_store_then_lookup_and_load_round_trip(manager):
    hashes = block_hashes(5)
    data = kv_blocks(5, 1)
    out = store(manager, hashes, data)
    assert out.block_hashes_to_store == hashes
    assert out.store_spec.medium() == "kvpool"
    assert manager.staging.free_slots() == 8  # complete_store gave the slots back

    manager.touch(iter(hashes))
    assert manager.lookup(iter(hashes)) == 5
    spec = manager.prepare_load(iter(hashes[1:4]))
    assert spec.medium() == "kvpool" and len(spec.buffers) == 3
    for i, buf in enumerate(spec.buffers):
        np.testing.assert_array_equal(buf, data[1 + i])
    assert manager.staging.free_slots() == 5
    manager.complete_load(set(hashes[1:4]))  # its _reqs_being_loaded set
    assert manager.staging.free_slots() == 8
    assert list(manager.take_events()) == []


def test_lookup_counts_leading_hits_and_stops_at_a_gap(manager, client):
    hashes = block_hashes(6, b"gap")
    store(manager, hashes, kv_blocks(6, 2))
    assert client.remove(manager.namespace, kvpool.engine_keys(manager.namespace, hashes[3]))
    assert manager.lookup(hashes) == 3
    assert manager.lookup(hashes[4:]) == 2
    assert manager.lookup(block_hashes(2, b"never")) == 0
    assert manager.lookup([]) == 0
    # prepare_store skips the leading run already there and stages the rest
    # (kvpool deduplicates the ones after the gap on put).
    data = kv_blocks(6, 2)
    out = store(manager, hashes, data)
    assert out.block_hashes_to_store == hashes[3:]
    assert manager.lookup(hashes) == 6


def test_prepared_blocks_survive_removal_until_complete_load(manager, client):
    """prepare_load protects blocks from eviction: here by holding their bytes."""
    hashes = block_hashes(3, b"pin")
    data = kv_blocks(3, 3)
    store(manager, hashes, data)
    spec = manager.prepare_load(hashes)
    assert client.remove(manager.namespace, kvpool.engine_keys(manager.namespace, hashes)) == [True] * 3
    assert manager.lookup(hashes) == 0
    for i, buf in enumerate(spec.buffers):
        np.testing.assert_array_equal(buf, data[i])
    manager.complete_load(hashes)


def test_two_requests_loading_one_block_share_its_slot(manager):
    hashes = block_hashes(2, b"share")
    data = kv_blocks(2, 4)
    store(manager, hashes, data)
    a = manager.prepare_load(hashes)
    b = manager.prepare_load(hashes[:1])
    assert b.slots == a.slots[:1]
    manager.complete_load(hashes)
    np.testing.assert_array_equal(b.buffers[0], data[0])  # still held by b
    assert manager.staging.free_slots() == 7
    manager.complete_load(hashes[:1])
    assert manager.staging.free_slots() == 8


def test_error_paths(manager):
    hashes = block_hashes(4, b"err")
    data = kv_blocks(4, 5)
    store(manager, hashes[:2], data[:2])
    # A block gone between lookup and prepare_load: NotFound, nothing held.
    with pytest.raises(kvpool.NotFound):
        manager.prepare_load(hashes)
    assert manager.staging.free_slots() == 8
    # More blocks than staging slots: prepare_store says "cannot store",
    # prepare_load raises ResourceExhausted.
    many = block_hashes(9, b"many")
    assert manager.prepare_store(many) is None
    with pytest.raises(kvpool.ResourceExhausted):
        manager.prepare_load(many)
    # A failed store is dropped: nothing written, slots back.
    out = manager.prepare_store(hashes[2:])
    manager.complete_store(hashes[2:], success=False)
    assert out.block_hashes_to_store == hashes[2:]
    assert manager.lookup(hashes) == 2 and manager.staging.free_slots() == 8
    # complete_* of blocks never prepared is harmless.
    manager.complete_load(block_hashes(1, b"x"))
    manager.complete_store(block_hashes(1, b"x"))


def test_connects_by_address(pool, request):
    m = KvpoolOffloadingManager(namespace_args(request.node.name), staging_blocks=2, coordinator=pool.coordinator)
    hashes = block_hashes(2, b"own")
    store(m, hashes, kv_blocks(2, 6))
    assert m.lookup(hashes) == 2
    m.close()
    assert m.client.closed


def test_an_unreachable_pool_is_a_miss_not_a_failed_step(private_pool, request):
    m = KvpoolOffloadingManager(namespace_args(request.node.name), staging_blocks=2,
                                coordinator=private_pool.coordinator, timeout_s=2)
    hashes = block_hashes(2, b"down")
    out = m.prepare_store(hashes)
    private_pool.stop()
    assert m.lookup(hashes) == 0
    m.complete_store(hashes)  # logged, not raised; the slots come back
    assert m.staging.free_slots() == 2
    assert out.block_hashes_to_store == hashes
    with pytest.raises(kvpool.Error):
        m.prepare_load(hashes)
    m.close()
