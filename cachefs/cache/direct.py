"""Block files written with O_DIRECT: the bytes go from one reused, page-aligned buffer to the disk,
not through the page cache.

Why: a fetched block is handed to its reader and kept by the memory tier already, so a page-cache
copy of its file is a third copy nobody reads soon; and filling the page cache costs CPU (page
allocation, later writeback by the kernel). On this project's 2-core test machine (a VM), buffered
writes of 256 MiB of blocks cost 0.4-0.75 CPU-s of kernel time against 0.02-0.03 with O_DIRECT
(docs/BENCHMARKS.md), which on a CPU-bound cold read is throughput.

O_DIRECT wants the buffer address, the file offset and the length aligned (ALIGN covers every
device's logical block size), so the header and payload are copied into an aligned buffer, the
write is padded to a multiple of ALIGN and the file is then truncated to its real length. A
filesystem that refuses O_DIRECT (tmpfs, some FUSE or network filesystems: EINVAL at open or write)
gets buffered writes, decided once per directory by the caller.
"""
from __future__ import annotations

import mmap
import os
import queue

ALIGN = 4096
POOL = 4          # buffers: a write takes ~1-3 ms, so 4 keep up with 16 fetching threads


class DirectUnsupported(Exception):
    """This filesystem does not take O_DIRECT writes; write buffered instead."""


class AlignedBuffers:
    """A few page-aligned buffers of `capacity` bytes, lent out one per write (anonymous mmaps are
    page-aligned; they are touched, so count in RSS, only once used)."""

    def __init__(self, capacity: int, count: int = POOL) -> None:
        self.capacity = -(-capacity // ALIGN) * ALIGN
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(mmap.mmap(-1, self.capacity))

    def write_file(self, path: str, parts: list[bytes | memoryview], mode: int = 0o600) -> int:
        """Create `path` holding the concatenation of `parts`; returns the bytes written (the real
        length, so the caller can detect a short write). Raises DirectUnsupported or OSError."""
        total = sum(len(p) for p in parts)
        if total > self.capacity:
            raise DirectUnsupported(f"{total} bytes do not fit a {self.capacity}-byte buffer")
        buf = self._free.get()
        try:
            pos = 0
            for p in parts:
                buf[pos:pos + len(p)] = p
                pos += len(p)
            padded = -(-total // ALIGN) * ALIGN
            if padded > total:
                buf[total:padded] = bytes(padded - total)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, mode)
            except OSError as e:
                if e.errno == 22:   # EINVAL: no O_DIRECT on this filesystem
                    raise DirectUnsupported(str(e)) from None
                raise
            try:
                try:
                    written = os.write(fd, memoryview(buf)[:padded])
                except OSError as e:
                    if e.errno == 22:
                        raise DirectUnsupported(str(e)) from None
                    raise
                if written >= total:
                    os.ftruncate(fd, total)
                return min(written, total)
            finally:
                os.close(fd)
        finally:
            self._free.put(buf)
