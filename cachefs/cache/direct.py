"""Block files written with O_DIRECT: the bytes go from one reused, page-aligned buffer to the disk,
not through the page cache.

Why: a fetched block is handed to its reader and kept by the memory tier already, so a page-cache
copy of its file is a third copy nobody reads soon; and filling the page cache costs CPU (page
allocation, later writeback by the kernel). On this project's 2-core test machine (a VM), buffered
writes of 256 MiB of blocks cost 0.4-0.75 CPU-s of kernel time against 0.02-0.03 with O_DIRECT
(docs/BENCHMARKS.md), which on a CPU-bound cold read is throughput.

O_DIRECT wants the buffer address, the file offset and the length aligned (ALIGN covers every
device's logical block size), so the header and payload are copied into an aligned buffer, the
write is padded to a multiple of ALIGN and the file is then truncated to its real length. A block
fetched from S3 needs no copy: it was received into a recycled, page-aligned chunk with room for the
header in front (native.buffer's headroom), so the header is put there and the chunk written as it
is (native.write_framed; measured in docs/BENCHMARKS.md). A
filesystem that refuses O_DIRECT (tmpfs, some FUSE or network filesystems: EINVAL at open or write)
gets buffered writes, decided once per directory by the caller.
"""
from __future__ import annotations

import errno
import mmap
import os
import queue

from cachefs import native
from cachefs.stats import Stats

ALIGN = 4096
POOL = 4          # buffers: a write takes ~1-3 ms, so 4 keep up with 16 fetching threads


class DirectUnsupported(Exception):
    """This filesystem does not take O_DIRECT writes; write buffered instead."""


class AlignedBuffers:
    """A few page-aligned buffers of `capacity` bytes, lent out one per write (anonymous mmaps are
    page-aligned; they are touched, so count in RSS, only once used)."""

    def __init__(self, capacity: int, count: int = POOL, stats: Stats | None = None) -> None:
        self.capacity = -(-capacity // ALIGN) * ALIGN
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self.stats = stats       # counts cache_writes_in_place (files written from their receive buffer)
        for _ in range(count):
            self._free.put(mmap.mmap(-1, self.capacity))

    def write_file(self, path: str, parts: list[bytes | memoryview], mode: int = 0o600) -> int:
        """Create `path` holding the concatenation of `parts`; returns the bytes written (the real
        length, so the caller can detect a short write). Raises DirectUnsupported or OSError.
        [header, payload] with the payload received into a recycled chunk with header room
        (native.buffer) is written from that chunk, without the copy (native.write_framed)."""
        total = sum(len(p) for p in parts)
        if total > self.capacity:
            raise DirectUnsupported(f"{total} bytes do not fit a {self.capacity}-byte buffer")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, mode)
        except OSError as e:
            if e.errno == errno.EINVAL:   # no O_DIRECT on this filesystem
                raise DirectUnsupported(str(e)) from None
            raise
        try:
            try:
                written = native.write_framed(fd, parts[1], parts[0]) if len(parts) == 2 else None
                if written is None:
                    written = self._write_copied(fd, parts, total)
                elif self.stats is not None:
                    self.stats.add("cache_writes_in_place")
            except OSError as e:
                if e.errno == errno.EINVAL:
                    raise DirectUnsupported(str(e)) from None
                raise
            if written >= total:
                os.ftruncate(fd, total)
            return min(written, total)
        finally:
            os.close(fd)

    def _write_copied(self, fd: int, parts: list[bytes | memoryview], total: int) -> int:
        """Copy `parts` into a free aligned buffer, zero-pad it to ALIGN, write it in one call."""
        buf = self._free.get()
        try:
            pos = 0
            for p in parts:
                buf[pos:pos + len(p)] = p
                pos += len(p)
            padded = -(-total // ALIGN) * ALIGN
            if padded > total:
                buf[total:padded] = bytes(padded - total)
            return os.write(fd, memoryview(buf)[:padded])
        finally:
            self._free.put(buf)
