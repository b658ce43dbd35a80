"""Every binding call against a real standalone pool (conftest.py)."""

import gc
import os
import pathlib
import tempfile
import threading
import time

import numpy as np
import pytest

import kvpool
from conftest import BLOCK, namespace_args, scaled


def make_keys(ns, n, first_token=0):
    return kvpool.prefix_keys(range(first_token, first_token + 16 * n), ns, 16)


def random_blocks(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, BLOCK), dtype=np.uint8)


def test_numpy_blocks_round_trip(client, ns):
    keys = make_keys(ns, 6)
    blocks = random_blocks(6)
    r = client.put(ns, keys, blocks)  # one buffer holding six blocks
    assert (r.written, r.deduplicated, r.pending, r.failed) == (6, 0, 0, 0)
    assert r.outcomes == ["written"] * 6
    assert r.errors == [None] * 6
    out = np.zeros_like(blocks)
    assert client.get(ns, keys, out) == 6
    assert np.array_equal(out, blocks)
    rows = [np.zeros(BLOCK, np.uint8) for _ in range(6)]  # or one buffer per key
    assert client.get(ns, keys, rows) == 6
    assert all(np.array_equal(rows[i], blocks[i]) for i in range(6))


def test_bytearray_and_memoryview_round_trip(client, ns):
    keys = make_keys(ns, 3, 100)
    data = [bytearray(random_blocks(1, seed=i).tobytes()) for i in range(3)]
    assert client.put(ns, keys, [bytes(data[0]), data[1], memoryview(data[2])]).written == 3
    out = [bytearray(BLOCK) for _ in range(3)]
    assert client.get(ns, keys, [out[0], memoryview(out[1]), out[2]]) == 3
    assert out == data
    # A larger destination is fine for get; the block lands at its start.
    big = bytearray(BLOCK + 10)
    assert client.get(ns, keys[0], [big]) == 1
    assert big[:BLOCK] == data[0]


def test_single_key_forms(client, ns):
    (k,) = make_keys(ns, 1, 200)
    block = random_blocks(1)[0]
    assert client.put(ns, k, block).written == 1
    assert client.lookup(ns, k) == 1
    assert client.lookup(ns, kvpool.key_to_int(k)) == 1  # keys as ints
    out = bytearray(BLOCK)
    assert client.get(ns, k, out) == 1
    assert bytes(out) == block.tobytes()
    assert client.wait_for(ns, k, 1.0) is True
    assert client.remove(ns, k) is True
    assert client.remove(ns, k) is False


def test_a_second_put_of_the_same_blocks_is_deduplicated(client, ns):
    keys = make_keys(ns, 5)
    blocks = random_blocks(5)
    assert client.put(ns, keys[:3], blocks[:3]).written == 3
    r = client.put(ns, keys, blocks)
    assert (r.deduplicated, r.written) == (3, 2)
    assert r.outcomes == ["exists"] * 3 + ["written"] * 2
    assert "deduplicated=3" in repr(r)


def test_lookup_reports_the_present_prefix(client, ns):
    keys = make_keys(ns, 6)
    client.put(ns, keys[:4], random_blocks(4))
    assert client.lookup(ns, keys) == 4
    assert client.lookup(ns, keys[:2]) == 2
    assert client.lookup(ns, [keys[0], keys[5], keys[1]]) == 1
    assert client.lookup(ns, []) == 0


def test_remove_drops_blocks_from_lookups_and_gets(client, ns):
    keys = make_keys(ns, 4)
    blocks = random_blocks(4)
    client.put(ns, keys, blocks)
    assert client.remove(ns, [keys[2], make_keys(ns, 1, 5000)[0]]) == [True, False]
    assert client.lookup(ns, keys) == 2
    out = np.zeros_like(blocks)
    assert client.get(ns, keys, out) == 2  # a miss is not an error
    assert np.array_equal(out[:2], blocks[:2])
    assert not out[2:].any()


def test_registered_buffers_move_data(client, ns):
    keys = make_keys(ns, 4)
    src = random_blocks(4)
    dst = np.zeros_like(src)
    client.register_buffer(src)
    client.register_buffer(dst)
    assert client.put(ns, keys, src).written == 4
    assert client.get(ns, keys, dst) == 4
    assert np.array_equal(src, dst)
    client.unregister_buffer(src)
    client.unregister_buffer(dst)
    with pytest.raises(kvpool.NotFound):
        client.unregister_buffer(dst)
    # A raw host pointer, registered and unregistered by address.
    raw = np.zeros_like(src)
    client.register_buffer_ptr(raw.ctypes.data, raw.nbytes)
    assert client.get(ns, keys, raw) == 4
    assert np.array_equal(src, raw)
    client.unregister_buffer(raw.ctypes.data)
    # The same as a (pointer, length) pair.
    raw[:] = 0
    client.register_buffer((raw.ctypes.data, raw.nbytes))
    assert client.get(ns, keys, raw) == 4
    assert np.array_equal(src, raw)
    client.unregister_buffer(raw.ctypes.data)
    with pytest.raises(kvpool.InvalidArgument):
        client.register_buffer((0, 16))


def test_a_registered_buffer_cannot_be_freed_or_resized(client, ns):
    buf = bytearray(2 * BLOCK)
    client.register_buffer(buf)
    with pytest.raises(BufferError):
        buf.extend(b"x")  # would move the memory the runtime registered
    keys = make_keys(ns, 2, 300)
    client.put(ns, keys, random_blocks(2))
    view = memoryview(buf)
    del buf
    gc.collect()
    assert client.get(ns, keys, view) == 2  # still alive: the client holds it
    client.unregister_buffer(view)
    view.release()
    # Dropped while registered: no crash, and the client keeps working.
    dropped = np.zeros((2, BLOCK), np.uint8)
    client.register_buffer(dropped)
    del dropped
    gc.collect()
    assert client.lookup(ns, keys) == 2


def test_wait_for_wakes_when_a_put_from_another_thread_commits(pool, client, ns, request):
    keys = make_keys(ns, 3, 400)
    blocks = random_blocks(3)

    def writer():
        time.sleep(0.3)
        with kvpool.Client(pool.coordinator) as w:
            w.register_namespace(**namespace_args(request.node.name))  # the fixture's namespace
            w.put(ns, keys, blocks)

    t = threading.Thread(target=writer)
    start = time.monotonic()
    t.start()
    committed = client.wait_for(ns, keys, scaled(20))
    waited = time.monotonic() - start
    t.join()
    assert committed == [True, True, True]
    assert 0.25 <= waited < scaled(10)
    # At the timeout, it returns which keys are there; not an error.
    start = time.monotonic()
    assert client.wait_for(ns, make_keys(ns, 2, 9000), 0.2) == [False, False]
    assert time.monotonic() - start >= 0.15


def test_async_put_and_get(client, ns):
    keys = make_keys(ns, 5, 500)
    blocks = random_blocks(5)
    f = client.put_async(ns, keys, list(blocks))
    assert isinstance(f, kvpool.Future)
    r = f.wait()
    assert f.done()
    assert r.written == 5
    assert f.wait(timeout_s=0).written == 5  # the same result again
    out = np.zeros_like(blocks)
    g = client.get_async(ns, keys, out)
    del keys, blocks  # the future holds what it needs
    assert g.result(timeout_s=scaled(10)) == 5
    assert np.array_equal(out, random_blocks(5))
    # Argument errors come from the call itself.
    with pytest.raises(kvpool.InvalidArgument):
        client.get_async(ns, make_keys(ns, 2), out)
    # Dropping a future in flight waits for it.
    h = client.get_async(ns, make_keys(ns, 5, 500), out)
    del h
    gc.collect()


def test_errors_map_to_exceptions(pool, client, ns):
    keys = make_keys(ns, 2)
    blocks = random_blocks(2)
    other = ns + 1
    with pytest.raises(kvpool.FailedPrecondition) as e:  # not registered by this client
        client.put(other, keys, blocks)
    assert e.value.code == "failed_precondition" and e.value.message
    assert isinstance(e.value, kvpool.Error)
    with pytest.raises(kvpool.NotFound) as e:  # unknown to the coordinator
        client.lookup(other, keys)
    assert e.value.code == "not_found" and "namespace" in e.value.message
    assert str(e.value).startswith("not_found: ")

    # Wrong sizes are refused before anything moves.
    with pytest.raises(kvpool.InvalidArgument):
        client.put(ns, keys, [blocks[0], blocks[1][:-1]])
    with pytest.raises(ValueError):
        client.put(ns, keys, blocks[:1])  # one buffer, one block short
    with pytest.raises(ValueError):
        client.put(ns, keys, [blocks[0]])  # one buffer for two keys
    with pytest.raises(ValueError):
        client.get(ns, keys, [bytearray(BLOCK), bytearray(BLOCK - 1)])
    assert client.lookup(ns, keys) == 0
    with pytest.raises(kvpool.InvalidArgument):
        client.get(ns, keys, [bytes(BLOCK), bytes(BLOCK)])  # read-only destinations
    with pytest.raises(kvpool.InvalidArgument):
        client.register_buffer(b"read-only")

    # Bad keys and descriptors.
    with pytest.raises(kvpool.InvalidArgument):
        client.lookup(ns, [b"short"])
    with pytest.raises(kvpool.InvalidArgument):
        client.lookup(ns, [1 << 128])
    with pytest.raises(TypeError):
        client.lookup(ns, [1.5])
    with pytest.raises(kvpool.InvalidArgument):
        client.register_namespace(**dict(namespace_args("bad"), dtype="fp7", block_bytes=0))
    with pytest.raises(kvpool.InvalidArgument):
        client.register_namespace(**dict(namespace_args("bad"), block_bytes=1024))

    # Connecting: the secret must match the coordinator's (SECURITY.md).
    with tempfile.TemporaryDirectory() as d:
        missing = os.path.join(d, "missing")
        with pytest.raises(kvpool.FailedPrecondition) as e:
            kvpool.Client(pool.coordinator, secret_file=missing)
        assert missing in e.value.message
        other = os.path.join(d, "other")
        fd = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(32).hex().encode() + b"\n")
        os.close(fd)
        with pytest.raises(kvpool.PermissionDenied) as e:
            kvpool.Client(pool.coordinator, secret_file=other)
        assert isinstance(e.value, PermissionError)
    with pytest.raises(kvpool.InvalidArgument):
        kvpool.Client("no-port")
    c = kvpool.Client(pool.coordinator)
    c.close()
    assert c.closed
    with pytest.raises(kvpool.FailedPrecondition):
        c.lookup(ns, keys)


def test_unreachable_coordinator_is_unavailable(private_pool):
    address = private_pool.coordinator
    private_pool.stop()
    with pytest.raises(kvpool.Unavailable) as e:
        kvpool.Client(address, timeout_s=2)
    assert isinstance(e.value, ConnectionError)


class Counter:
    """A Python thread counting while it holds the GIL in turns."""

    def __init__(self):
        self.count = 0
        self.stop = False
        self.thread = threading.Thread(target=self.run)

    def run(self):
        while not self.stop:
            self.count += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()


def test_wait_for_releases_the_gil(client, ns):
    with Counter() as counter:
        # The counter's pace while this thread sleeps (GIL released).
        c0 = counter.count
        time.sleep(0.2)
        rate = (counter.count - c0) / 0.2
        c1 = counter.count
        start = time.monotonic()
        assert client.wait_for(ns, make_keys(ns, 1, 7000), 1.0) == [False]
        waited = time.monotonic() - start
        during = counter.count - c1
    assert waited >= 0.9
    # Holding the GIL would leave the counter a few switch intervals (5 ms
    # each) of counting; released, it counts for most of the second.
    assert during > 0.3 * rate * waited, (during, rate)


def test_blocking_calls_and_future_wait_release_the_gil(private_pool):
    """With the pool paused, a get blocks until a Python thread resumes it:
    only possible if the blocked call let that thread run."""
    with kvpool.Client(private_pool.coordinator, timeout_s=scaled(10)) as c:
        ns = c.register_namespace(**namespace_args("gil"))
        keys = make_keys(ns, 4)
        blocks = random_blocks(4)
        c.put(ns, keys, blocks)
        out = np.zeros_like(blocks)
        for form in ["get_async", "get"]:
            out[:] = 0
            private_pool.pause()
            resumer = threading.Timer(0.5, private_pool.resume)
            try:
                with Counter() as counter:
                    start = time.monotonic()
                    resumer.start()
                    if form == "get_async":
                        f = c.get_async(ns, keys, out)
                        assert not f.done()
                        with pytest.raises(TimeoutError):
                            f.wait(timeout_s=0.05)
                        loaded = f.wait()
                    else:
                        loaded = c.get(ns, keys, out)
                    waited = time.monotonic() - start
            finally:
                resumer.cancel()
                private_pool.resume()
            assert loaded == 4, form
            assert np.array_equal(out, blocks), form
            assert 0.4 <= waited < scaled(5), form
            assert counter.count > 10_000, form


def test_a_secret_file_path_is_kept_and_authenticates(pool):
    # The pool's own secret, found the way every component finds it.
    path = os.environ.get("KVPOOL_SECRET_FILE") or ("/etc/kvpool/secret" if os.geteuid() == 0
                                                    else os.path.expanduser("~/.config/kvpool/secret"))
    c = kvpool.Client(pool.coordinator, pathlib.Path(path))  # a PathLike; positional as in the issue
    with c:
        assert c.secret_file == path
        assert c.lookup(c.register_namespace(**namespace_args("secret")), [0]) == 0
    assert kvpool.Client(pool.coordinator).secret_file is None


def test_engine_keys_are_deterministic_typed_and_per_namespace():
    ns = kvpool.namespace_id(**namespace_args("engine-keys"))
    one = kvpool.engine_keys(ns, b"\x01" * 32)
    assert isinstance(one, bytes) and len(one) == 16
    assert kvpool.engine_keys(ns, [b"\x01" * 32]) == [one]
    assert kvpool.engine_keys(ns, b"\x01" * 32) == one  # same answer every call (and process: a pure hash)
    # b"12", "12" and 12 are different engine keys; so is another namespace.
    forms = kvpool.engine_keys(ns, [b"12", "12", 12, -12])
    assert len(set(forms)) == 4
    assert kvpool.engine_keys(ns + 1, "12") != forms[1]
    assert kvpool.engine_keys(ns, bytearray(b"12")) == forms[0]
    with pytest.raises(TypeError):
        kvpool.engine_keys(ns, [1.5])


def test_engine_keys_match_independent_xxh3_vectors():
    """Stored blocks outlive processes and releases: the mapping is pinned.
    With namespace id 0 (seed 0) an engine key is plain XXH3-128 of the type
    byte and the key's bytes; these values come from Debian's xxhsum 0.8.1
    (``printf 'sabc' | xxhsum -H2``), printed as the 128-bit value big-endian."""
    assert kvpool.key_to_int(kvpool.engine_keys(0, "abc")) == 0xeea9e19f08f2632ee39c97239db4c3fa
    assert kvpool.key_to_int(kvpool.engine_keys(0, b"\x00\x01\x02")) == 0x1856a007f8c62d9e38f03eb6b9db6d17
    assert kvpool.key_to_int(kvpool.engine_keys(0, -12)) == 0xf9ce3bc4681916d7d81f4c568a18e2d7
    # Seeded (a real namespace id): pinned from this implementation.
    assert kvpool.engine_keys(0x0123456789abcdef, "sglang-page-0#1").hex() == "48c440f4002d31d499fc44b5f289d811"


def _write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, text.encode())
    os.close(fd)


def test_a_tenant_credential_reaches_only_its_namespaces():
    # SECURITY.md, "Tenants": the coordinator's --tenants file and a
    # tenant's own credential file; refusals map to kvpool.PermissionDenied.
    from conftest import Pool
    with tempfile.TemporaryDirectory() as d:
        cluster, tenants, cred = (os.path.join(d, n) for n in ("cluster", "tenants", "acme"))
        key = os.urandom(32).hex()
        _write_private(cluster, os.urandom(32).hex() + "\n")
        _write_private(tenants, f"tenant acme {key} namespaces=acme/*\n")
        _write_private(cred, f"kvpool-tenant acme {key}\n")
        pool = Pool(extra_args=("--secret-file", cluster, "--tenants", tenants))
        try:
            with kvpool.Client(pool.coordinator, secret_file=cred, timeout_s=scaled(10)) as c:
                ns = c.register_namespace(**namespace_args("acme/python"))
                keys = make_keys(ns, 1)
                assert c.put(ns, keys, np.full(BLOCK, 7, dtype=np.uint8)).written == 1
                assert c.lookup(ns, keys) == 1
                with pytest.raises(kvpool.PermissionDenied) as e:
                    c.register_namespace(**namespace_args("beta/python"))
                assert "acme" in e.value.message
            with kvpool.Client(pool.coordinator, secret_file=cluster, timeout_s=scaled(10)) as admin:
                other = admin.register_namespace(**namespace_args("beta/python"))
            with kvpool.Client(pool.coordinator, secret_file=cred, timeout_s=scaled(10)) as c:
                with pytest.raises(kvpool.PermissionDenied):
                    c.lookup(other, make_keys(other, 1))
        finally:
            pool.stop()
