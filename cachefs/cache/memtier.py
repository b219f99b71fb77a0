"""The memory tier: verified blocks held in memory (bytes or whole buffers), within a byte budget."""
from __future__ import annotations

import time
from collections.abc import Sized
from typing import cast

from cachefs.cache.spec import TierSpec
from cachefs.cache.tier import Slot, Tier
from cachefs.stats import Stats

# Per-block bookkeeping beyond the payload (bytes object header, dict and OrderedDict entries,
# Slot): charged to the quota so that the budget is what the process really holds.
ENTRY_OVERHEAD = 512


# A buffer holding up to this much more memory than its bytes is still kept as it is (a recycled
# chunk is a block plus 4 KiB); beyond, the block is copied into memory of its own size.
SLACK = 8192


def _owns_all(data: bytes | memoryview) -> bool:
    """Bytes, or a view of the whole of a buffer that holds no more memory than that (a block
    received or read into a buffer of its own, cachefs.native.buffer): kept as it is. A view of part
    of something larger, or a short block in a recycled chunk, is copied, so that keeping it does not
    keep more memory than the quota is charged."""
    if isinstance(data, bytes):
        return True
    if not isinstance(data, memoryview) or not data.contiguous:
        return False
    try:
        whole = len(cast(Sized, data.obj)) == data.nbytes    # TypeError: an exporter without a length
    except TypeError:
        return False
    return whole and getattr(data.obj, "capacity", data.nbytes) <= data.nbytes + SLACK


class MemoryTier(Tier):
    def __init__(self, spec: TierSpec, stats: Stats) -> None:
        super().__init__(spec, stats)
        self._data: dict[bytes, bytes] = {}

    def charge(self, payload_len: int) -> int:
        return payload_len + ENTRY_OVERHEAD

    @staticmethod
    def held(data: bytes | memoryview) -> int:
        """Memory a block kept as it is holds: a native buffer's capacity (page padding, a chunk's
        spare room) counts, so that the budget is what the process really holds."""
        if isinstance(data, memoryview):
            return max(data.nbytes, getattr(data.obj, "capacity", 0))
        return len(data)

    def _choose_place(self, key: bytes) -> int | None:
        return 0

    def _read(self, key: bytes, slot: Slot) -> memoryview | None:
        data = self._data.get(key)
        return memoryview(data) if data is not None else None

    def _write(self, key: bytes, data: bytes | memoryview, slot: Slot) -> bool:
        self._data[key] = data if _owns_all(data) else bytes(data)
        return True

    def put(self, key: bytes, data: bytes | memoryview, limit: int) -> bool:
        """Tier.put in one lock section: storing is a dictionary insert, so the block needs no
        reservation while it is written (cheap on the trio thread)."""
        kept = data if _owns_all(data) else None
        size = (self.held(kept) if kept is not None else len(data)) + ENTRY_OVERHEAD
        with self._lock:
            if key in self._slots:
                return True
            if self._used + size > min(limit, self.quota):
                return False
            if kept is None:
                kept = bytes(data)     # a copy made only once admitted (under the lock: rare)
            self._data[key] = kept
            self._slots[key] = Slot(size, 0, time.time())
            self._used += size
        return True

    def _delete(self, key: bytes, slot: Slot) -> None:
        self._data.pop(key, None)

    def get_nowait(self, key: bytes) -> memoryview | None:
        """A dictionary lookup: cheap enough for the trio thread (no worker-thread hop)."""
        return self.get(key)
