"""The BlockCache seam: blocks by 16-byte key. A failed read is a miss, never an error.

From the trio thread (no worker-thread hop), these never wait for a disk:
    get_nowait(key)                   a memory hit (or a block queued for its disk copy), else None
    in_memory(key), contains(key)     lookups, no I/O
    put_nowait(key, data, memory)     store a fetched block: memory now, disk by the cache's own
                                      writer thread; False (nothing done): store it with put() in a
                                      worker thread instead
Everything else (get: a disk hit reads a file; put: writes one; flush; drain) may wait for a disk
and belongs in a worker thread. docs/CACHING.md ("The store per object") has the costs measured.
"""
from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Protocol

# One indexed block: (key, size, time stored, disk directory id, pack number (-1: a file of its
# own), offset in the pack).
IndexEntry = tuple[bytes, int, float, int, int, int]


class BlockIndex(Protocol):
    """Where the disk tiers' block index persists across restarts (meta.MetaStore, which the cache
    does not import: the daemon hands it in)."""

    def block_index(self) -> list[IndexEntry]: ...

    def update_block_index(self, added: Iterable[IndexEntry], removed: Iterable[bytes]) -> None: ...


class BlockCache(abc.ABC):
    @abc.abstractmethod
    def get(self, key: bytes) -> bytes | None:
        """The block's verified bytes, or None (absent, unreadable or corrupt: all misses)."""

    def get_nowait(self, key: bytes) -> memoryview | None:
        """A hit that costs no I/O (memory), or None; safe to call on the trio thread."""
        return None

    def put_nowait(self, key: bytes, data: bytes | memoryview, memory: bool = True) -> bool:
        """Store a fetched block without waiting for a disk (safe on the trio thread): the memory copy
        now, the disk copy soon after by a writer thread; readable at once (get_nowait, contains).
        False, having done nothing, when this cache cannot take it that way now (its writer's queue is
        full, or no such path): the caller then calls put() in a worker thread. Weaker than put() on one
        point: a kill -9 may lose disk copies still queued (fetched again later, never served wrong);
        drain() waits for them."""
        return False

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every block taken by put_nowait is on disk (or declined); False on timeout.
        Blocks: a worker thread's call."""
        return True

    @abc.abstractmethod
    def put(self, key: bytes, data: bytes | memoryview, memory: bool = True) -> bool:
        """Store a block if the cache admits it; never raises for I/O. memory=False: not in the
        memory tiers (a block of a sequential stream: see TieredCache.put)."""

    @abc.abstractmethod
    def contains(self, key: bytes) -> bool:
        """Whether a get would find it (no I/O: safe on the trio thread)."""

    def in_memory(self, key: bytes) -> bool:
        """True if a hit would cost no I/O (get_nowait would answer)."""
        return False

    def cool(self, key: bytes) -> None:
        """Its reader is done with the block for now (read once in an order's epoch): the first to
        leave memory, before blocks still ahead of the reader; disk copies keep their place. Safe on
        the trio thread."""

    def ahead_capacity(self) -> int:
        """What it holds below its high watermarks: the bound of what prefetching fetches ahead
        (0: unknown)."""
        return 0

    def ahead_room(self) -> int:
        """What it takes before its high watermarks, less what waits to be written (0: unknown)."""
        return 0

    @property
    @abc.abstractmethod
    def used_bytes(self) -> int:
        ...

    @property
    @abc.abstractmethod
    def block_count(self) -> int:
        ...

    def close(self) -> None:
        """Persist what is pending."""
