"""The CPU test's transfer layer: KvMover's contract over numpy KV tensors,
staged through Client.put/get in the same pool block bytes as the GPU path
(per layer K then V page runs, layer-major: runtime/gpu/plan.h). vLLM runs
with kvpool.gpu.KvMover; only tests/python/test_vllm_connector.py installs
this (KvpoolConnector.mover_factory).

Whole blocks: save/load -> a transfer with wait() and close().

Layer by layer (include/kvpool/gpu.h, LayerTransfer and LayerSave), with the
same semantics where a host can show them:

- load_layers(keys, pages, stream) -> a LayerTransfer: ``found`` (the
  leading keys in the pool) at once, ``layers``; there are no CUDA events,
  so layer l's bytes land in the pages when a stream "waits" for it
  (``wait_layer(l, stream)``), or at ``wait()`` / ``close()``, never before:
  a caller that reads layer l before waiting for it reads what the pages
  held. A block found but not verified (Client.get stopped there: a failed
  checksum) lands as poison bytes, as the GPU path lands bytes it then
  reports; ``wait()`` gives done = the leading verified blocks, stopped
  "data_loss". ``wait_layer`` and ``layer_event`` check the layer index
  (InvalidArgument), and fail on a closed transfer.
- begin_save_layers(keys, pages) -> a LayerSave: ``save_layer(l, stream)``
  takes layer l's bytes of every page as they are at that call (the point of
  the stream), InvalidArgument for a layer out of range or saved twice;
  ``finish()`` puts the blocks once every layer was saved, else
  FailedPrecondition with nothing committed; ``close()`` before it aborts.
  ``layer_save_commits`` picks when the put happens: "finish" (KvMover on
  both paths: nothing is committed before finish(), so close() aborts) or
  "last_layer" (a mover that puts the whole blocks as soon as the last
  layer is saved, as the staged path's WholeSaveAsLayers did before it
  moved its put into finish(): the connector must stay correct with it).

``open`` holds a mover's layer-wise transfers not closed yet (a test checks
that none outlives its step); ``calls`` counts the calls made."""

import collections
import types

import numpy as np

import kvpool

POISON = 0x5A  # the bytes of a block that landed but did not verify


class _Done:
    def __init__(self, done, failed=0, nbytes=0, stopped="ok"):
        self.result = types.SimpleNamespace(done=done, failed=failed, bytes=nbytes, stopped=stopped)

    def wait(self):
        return self.result

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_layer(layer, layers):
    if not isinstance(layer, int) or not 0 <= layer < layers:
        raise kvpool.InvalidArgument(f"layer {layer} of a transfer of {layers} layers")


class _LayerLoad:
    def __init__(self, mover, pages, buf, found, done, stopped):
        self._m = mover
        self._pages = list(pages)
        self._buf = buf
        self._done = done
        self.found = found
        self.layers = mover.layout.num_layers
        self._landed = [False] * self.layers
        self._result = types.SimpleNamespace(done=done, failed=0, bytes=done * mover.layout.block_bytes,
                                             stopped=stopped)
        self._closed = False
        self.waited = False  # wait() was called (a host synchronisation)
        mover.open.add(self)

    def _live(self, layer):
        if self._closed:
            raise kvpool.InvalidArgument("the transfer is closed")
        _check_layer(layer, self.layers)

    def _land(self, layer):
        if self._landed[layer]:
            return
        self._landed[layer] = True
        lb = self._m.layer_bytes
        for i in range(self.found):
            data = self._buf[i, layer * lb:(layer + 1) * lb] if i < self._done else np.full(lb, POISON, np.uint8)
            self._m._write_slice(self._m._page(self._pages[i]), layer, data)

    def layer_event(self, layer):
        self._live(layer)
        return None  # no CUDA events here

    def wait_layer(self, layer, stream=None):
        self._live(layer)
        self._m.calls["wait_layer"] += 1
        self._land(layer)

    def wait(self):
        if self._closed:
            raise kvpool.InvalidArgument("the transfer is closed")
        for layer in range(self.layers):
            self._land(layer)
        self.waited = True
        self._m.calls["load_wait"] += 1
        return self._result

    def close(self):
        if not self._closed:
            for layer in range(self.layers):  # the real close waits for the transfer: every layer lands
                self._land(layer)
            self._closed = True
            self._m.open.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _LayerSave:
    def __init__(self, mover, keys, pages):
        self._m = mover
        self._keys = list(keys)
        self._pages = [mover._page(p) for p in pages]
        self.layers = mover.layout.num_layers
        self._slices = [None] * self.layers
        self._put_result = None
        self._result = None
        self._error = None
        self._closed = False
        mover.open.add(self)

    def save_layer(self, layer, stream=None):
        if self._closed:
            raise kvpool.InvalidArgument("the layer-wise save is closed")
        if self._result is not None or self._error is not None:
            raise kvpool.FailedPrecondition("save_layer: the save is finished")
        _check_layer(layer, self.layers)
        if self._slices[layer] is not None:
            raise kvpool.InvalidArgument(f"save_layer: layer {layer} saved twice")
        self._slices[layer] = [self._m._read_slice(p, layer).copy() for p in self._pages]
        self._m.calls["save_layer"] += 1
        if self._m.layer_save_commits == "last_layer" and all(s is not None for s in self._slices):
            self._put()

    def _put(self):
        blocks = np.stack([np.concatenate([self._slices[layer][j] for layer in range(self.layers)])
                           for j in range(len(self._pages))]) if self._pages else \
            np.zeros((0, self._m.layout.block_bytes), np.uint8)
        r = self._m.client.put(self._m.ns, self._keys, blocks) if self._keys else None
        done = 0 if r is None else r.written + r.deduplicated
        self._put_result = types.SimpleNamespace(done=done, failed=0 if r is None else r.failed,
                                                 bytes=0 if r is None else r.written * self._m.layout.block_bytes,
                                                 stopped="ok")

    def finish(self):
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        if self._closed:
            raise kvpool.InvalidArgument("the layer-wise save is closed")
        missing = [layer for layer, s in enumerate(self._slices) if s is None]
        if missing:
            self._error = kvpool.FailedPrecondition(f"layer-wise save: layer {missing[0]} was not saved")
            raise self._error
        if self._put_result is None:
            self._put()
        self._result = self._put_result
        self._m.calls["save_finish"] += 1
        return self._result

    def close(self):
        if not self._closed:
            if self._result is None:
                self._m.calls["save_abort"] += 1
            self._closed = True
            self._m.open.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class HostStagedMover:
    instances = []
    layer_save_commits = "finish"  # or "last_layer": see the module docstring

    def __init__(self, client, namespace_id, layout, path):
        self.client, self.ns, self.layout = client, namespace_id, layout
        assert client.block_bytes(namespace_id) == layout.block_bytes
        self.layer_bytes = layout.block_bytes // layout.num_layers
        self.open = set()
        self.calls = collections.Counter()
        HostStagedMover.instances.append(self)

    def _layer_runs(self, page, layer):
        return [run.view(np.uint8).reshape(-1) for run in self.layout.runs(self.layout.tensors[layer], page)]

    def _read_slice(self, page, layer):
        return np.concatenate([np.ascontiguousarray(run) for run in self._layer_runs(page, layer)])

    def _write_slice(self, page, layer, data):
        off = 0
        for view in self._layer_runs(page, layer):
            view[:] = data[off:off + view.size]
            off += view.size

    def _block(self, page):
        return np.concatenate([self._read_slice(page, layer) for layer in range(self.layout.num_layers)])

    def save(self, keys, pages, stream=None):
        self.calls["save"] += 1
        blocks = np.stack([self._block(self._page(p)) for p in pages])
        r = self.client.put(self.ns, keys, blocks)
        return _Done(r.written + r.deduplicated, r.failed, blocks.nbytes)

    def _get(self, keys):
        buf = np.zeros((len(keys), self.layout.block_bytes), np.uint8)
        try:
            n = self.client.get(self.ns, keys, buf)
            stopped = "ok" if n == len(keys) else "not_found"
        except kvpool.DataLoss:
            n, stopped = 0, "data_loss"
        return buf, n, stopped

    def load(self, keys, pages, stream=None):
        self.calls["load"] += 1
        buf, n, stopped = self._get(keys)
        for i in range(n):
            page = self._page(pages[i])
            for layer in range(self.layout.num_layers):
                self._write_slice(page, layer, buf[i, layer * self.layer_bytes:(layer + 1) * self.layer_bytes])
        return _Done(n, 0, n * self.layout.block_bytes, stopped)

    def load_layers(self, keys, pages, stream=None):
        self.calls["load_layers"] += 1
        if len(keys) != len(pages):
            raise kvpool.InvalidArgument(f"{len(keys)} keys and {len(pages)} pages")
        found = self.client.lookup(self.ns, keys) if keys else 0
        buf, n, stopped = self._get(keys[:found])
        if n < found:
            stopped = "data_loss"  # found but not verified
        elif found < len(keys):
            stopped = "not_found"
        return _LayerLoad(self, pages, buf, found, n, stopped)

    def begin_save_layers(self, keys, pages):
        self.calls["begin_save_layers"] += 1
        if len(keys) != len(pages):
            raise kvpool.InvalidArgument(f"{len(keys)} keys and {len(pages)} pages")
        return _LayerSave(self, keys, pages)

    def _page(self, p):
        return p if self.layout.backend == "FLASH_ATTN" else p // 2

    def close(self):
        for t in list(self.open):
            t.close()
