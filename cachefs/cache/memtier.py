"""The memory tier: verified blocks held as bytes, within a byte budget."""
from __future__ import annotations

from ..stats import Stats
from .spec import TierSpec
from .tier import Slot, Tier

# Per-block bookkeeping beyond the payload (bytes object header, dict and OrderedDict entries,
# Slot): charged to the quota so that the budget is what the process really holds.
ENTRY_OVERHEAD = 512


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
        self._data[key] = data if isinstance(data, bytes) else bytes(data)
        return True

    def _delete(self, key: bytes, slot: Slot) -> None:
        self._data.pop(key, None)

    def get_nowait(self, key: bytes) -> memoryview | None:
        """A dictionary lookup: cheap enough for the trio thread (no worker-thread hop)."""
        return self.get(key)
