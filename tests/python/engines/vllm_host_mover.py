"""The CPU test's transfer layer: KvMover's contract (save/load -> a
transfer with wait() and close()) over numpy KV tensors, staged through
Client.put/get in the same pool block bytes as the GPU path (per layer K
then V page runs, layer-major: runtime/gpu/plan.h). vLLM runs with
kvpool.gpu.KvMover; only tests/python/test_vllm_connector.py installs this
(KvpoolConnector.mover_factory)."""

import types

import numpy as np

import kvpool


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


class HostStagedMover:
    instances = []

    def __init__(self, client, namespace_id, layout, path):
        self.client, self.ns, self.layout = client, namespace_id, layout
        assert client.block_bytes(namespace_id) == layout.block_bytes
        HostStagedMover.instances.append(self)

    def _block(self, page):
        parts = []
        for t in self.layout.tensors:
            for run in self.layout.runs(t, page):
                parts.append(np.ascontiguousarray(run).view(np.uint8).ravel())
        return np.concatenate(parts)

    def save(self, keys, pages, stream=None):
        blocks = np.stack([self._block(self._page(p)) for p in pages])
        r = self.client.put(self.ns, keys, blocks)
        return _Done(r.written + r.deduplicated, r.failed, blocks.nbytes)

    def load(self, keys, pages, stream=None):
        buf = np.zeros((len(keys), self.layout.block_bytes), np.uint8)
        try:
            n = self.client.get(self.ns, keys, buf)
            stopped = "ok" if n == len(keys) else "not_found"
        except kvpool.DataLoss:
            n, stopped = 0, "data_loss"
        for i in range(n):
            off = 0
            page = self._page(pages[i])
            for t in self.layout.tensors:
                for run in self.layout.runs(t, page):
                    view = run.view(np.uint8).reshape(-1)
                    view[:] = buf[i, off:off + view.size]
                    off += view.size
        return _Done(n, 0, n * self.layout.block_bytes, stopped)

    def _page(self, p):
        return p if self.layout.backend == "FLASH_ATTN" else p // 2

    def close(self):
        pass
