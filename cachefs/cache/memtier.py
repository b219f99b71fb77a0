"""The memory tier: verified blocks held in memory (bytes or whole buffers), within a byte budget."""
from __future__ import annotations

from ..stats import Stats
from .spec import TierSpec
from .tier import Slot, Tier

# Per-block bookkeeping beyond the payload (bytes object header, dict and OrderedDict entries,
# Slot): charged to the quota so that the budget is what the process really holds.
ENTRY_OVERHEAD = 512


def _owns_all(data: bytes | memoryview) -> bool:
    """Bytes, or a view of the whole of its buffer (a block received or read into a buffer of its
    own, cachefs.native.buffer): kept as it is. A view of part of something larger is copied, so
    that keeping it does not keep more memory than the quota is charged."""
    if isinstance(data, bytes):
        return True
    if not isinstance(data, memoryview) or not data.contiguous:
        return False
    try:
        return len(data.obj) == data.nbytes
    except TypeError:
        return False


class MemoryTier(Tier):
    def __init__(self, spec: TierSpec, stats: Stats) -> None:
        super().__init__(spec, stats)
        self._data: dict[bytes, bytes] = {}

    def charge(self, payload_len: int) -> int:
        return payload_len + ENTRY_OVERHEAD

    def _choose_place(self, key: bytes) -> int | None:
        return 0

    def _read(self, key: bytes, slot: Slot) -> memoryview | None:
        data = self._data.get(key)
        return memoryview(data) if data is not None else None

    def _write(self, key: bytes, data: bytes | memoryview, slot: Slot) -> bool:
        self._data[key] = data if _owns_all(data) else bytes(data)
        return True

    def _delete(self, key: bytes, slot: Slot) -> None:
        self._data.pop(key, None)

    def get_nowait(self, key: bytes) -> memoryview | None:
        """A dictionary lookup: cheap enough for the trio thread (no worker-thread hop)."""
        return self.get(key)
