"""Flipping a byte of a block inside a running agent's pool region (as a
stray write would), to test that such a block is never loaded as data. The
agent is the test's own child process: its memory is reached through
/proc/PID/mem, found by searching its shared writable mappings (the
region is UCX-allocated shared memory, /dev/shm/ucx_shm_posix_*) for the
block's first bytes. Private mappings are not searched: under ASan they
include terabytes of shadow memory."""

import re

_MAP = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) ")


def flip_byte_after(pid, needle, offset=1000, chunk=16 << 20):
    """Finds `needle` (bytes, >= 32 long and unique) in process pid's
    shared writable memory and flips the byte `offset` bytes after its start.
    Returns the address flipped; raises LookupError when not found."""
    with open(f"/proc/{pid}/maps") as f:
        shared_rw = [m for m in map(_MAP.match, f) if m and m.group(3).startswith("rw") and m.group(3)[3] == "s"]
    regions = [(int(m.group(1), 16), int(m.group(2), 16)) for m in shared_rw]
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
        for start, end in regions:
            pos = start
            while pos < end:
                size = min(chunk + len(needle), end - pos)
                try:
                    mem.seek(pos)
                    data = mem.read(size)
                except OSError:
                    break
                i = data.find(needle)
                if i >= 0:
                    addr = pos + i + offset
                    mem.seek(addr)
                    b = mem.read(1)
                    mem.seek(addr)
                    mem.write(bytes([b[0] ^ 1]))
                    return addr
                pos += chunk
    raise LookupError("the block's bytes are not in the agent's memory")
