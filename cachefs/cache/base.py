"""The BlockCache seam: blocks by 16-byte key. A failed read is a miss, never an error."""
from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Protocol

# One indexed block: (key, size, time stored, disk directory id).
IndexEntry = tuple[bytes, int, float, int]


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

    @abc.abstractmethod
    def put(self, key: bytes, data: bytes | memoryview, memory: bool = True) -> bool:
        """Store a block if the cache admits it; never raises for I/O. memory=False: not in the
        memory tiers (a block of a sequential stream: see TieredCache.put)."""

    @abc.abstractmethod
    def contains(self, key: bytes) -> bool:
        ...

    def in_memory(self, key: bytes) -> bool:
        """True if a hit would cost no I/O (get_nowait would answer)."""
        return False

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
