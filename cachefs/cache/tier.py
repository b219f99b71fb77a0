"""One cache tier: a quota, watermarks and the recency order of its blocks.

Subclasses say where bytes live (memory, or files in directories); this class does the accounting
that must never go wrong: space is reserved under the lock before bytes are written, so usage never
exceeds the limit asked for, and every block is counted exactly once. A block being written has its
space reserved but no slot yet: nobody reads, moves or evicts it before its bytes are all there.
"""
from __future__ import annotations

import abc
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cachefs.cache.spec import TierSpec
from cachefs.stats import Stats


@dataclass(slots=True)       # one per cached block: no __dict__ each
class Slot:
    size: int                 # bytes charged to the quota
    where: int = 0            # directory index within the tier
    last_access: float = 0.0  # wall clock, for the scan-resistant policy's staleness
    hits: int = 0             # hits in this tier, for promotion
    pack: int = -1            # disk tiers: the pack file holding the block (-1: a file of its own)
    offset: int = 0           # and the record's offset in it


class Tier(abc.ABC):
    def __init__(self, spec: TierSpec, stats: Stats) -> None:
        self.spec = spec
        self.name = spec.name
        self.quota = spec.quota
        self.high_bytes = int(spec.high * spec.quota)
        self.low_bytes = int(spec.low * spec.quota)
        self.stats = stats
        self._lock = threading.Lock()
        self._slots: OrderedDict[bytes, Slot] = OrderedDict()   # oldest access first
        self._writing: set[bytes] = set()    # space reserved, bytes being written, no slot yet
        self._used = 0

    # -- what subclasses provide -------------------------------------------------------------
    @abc.abstractmethod
    def charge(self, payload_len: int) -> int:
        """Bytes a payload of this length costs against the quota."""

    @abc.abstractmethod
    def _choose_place(self, key: bytes) -> int | None:
        """Which directory a new block goes to, or None if none can take it now."""

    @abc.abstractmethod
    def _read(self, key: bytes, slot: Slot) -> memoryview | None:
        ...

    @abc.abstractmethod
    def _write(self, key: bytes, data: bytes | memoryview, slot: Slot) -> bool:
        ...

    @abc.abstractmethod
    def _delete(self, key: bytes, slot: Slot) -> None:
        ...

    def _stored(self, key: bytes, slot: Slot) -> None:
        """Hook: a block was written (disk tiers queue an index entry)."""

    def _removed(self, key: bytes, slot: Slot) -> None:
        """Hook: a block is gone (disk tiers queue an index deletion)."""

    @property
    def usable(self) -> bool:
        """False while every directory of the tier is down."""
        return True

    def pressure(self) -> bool:
        """True when something other than usage asks for eviction (a filesystem short of space)."""
        return False

    # -- accounting -------------------------------------------------------------------------
    @property
    def used(self) -> int:
        return self._used

    @property
    def count(self) -> int:
        return len(self._slots)

    def contains(self, key: bytes) -> bool:
        return key in self._slots

    def get(self, key: bytes) -> memoryview | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        data = self._read(key, slot)
        if data is None:
            return None
        with self._lock:
            if key in self._slots:
                self._slots.move_to_end(key)
                slot.last_access = time.time()
                slot.hits += 1
        return data

    def cool(self, key: bytes) -> None:
        """The block goes first when room is made (least recently used, and stale for the
        scan-resistant policy)."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None:
                self._slots.move_to_end(key, last=False)
                slot.last_access = 0.0

    def put(self, key: bytes, data: bytes | memoryview, limit: int) -> bool:
        """Store a block if it fits under `limit` (<= quota) bytes of usage. Never raises for I/O.
        True also when the block is stored already or being stored by another thread."""
        slot = self._reserve(key, self.charge(len(data)), limit)
        if not isinstance(slot, Slot):
            return slot
        ok = False
        try:
            ok = self._write(key, data, slot)
        finally:                     # an unexpected error must not leave the key "being written" forever
            self._settle(key, slot, ok)
        return ok

    def put_many(self, items: Sequence[tuple[bytes, bytes | memoryview]], limit: int) -> list[bool]:
        """put() of each (key, data); a tier that can write several blocks at once overrides it."""
        return [self.put(key, data, limit) for key, data in items]

    def _reserve(self, key: bytes, size: int, limit: int) -> Slot | bool:
        """Space reserved and the key marked as being written: the new block's slot, to be written and
        then _settle()d. True: stored already or being stored; False: no room, or nowhere to put it."""
        with self._lock:
            if key in self._slots or key in self._writing:
                return True
            if self._used + size > min(limit, self.quota):
                return False
            where = self._choose_place(key)
            if where is None:
                return False
            self._writing.add(key)
            self._used += size
        return Slot(size, where, time.time())

    def _settle(self, key: bytes, slot: Slot, ok: bool) -> None:
        """A reserved block's write is over: its slot appears, or its space is given back."""
        with self._lock:
            self._writing.discard(key)
            if ok:
                self._slots[key] = slot
            else:
                self._used -= slot.size
        if ok:
            self._stored(key, slot)

    def adopt(self, key: bytes, slot: Slot, oldest: bool = False) -> bool:
        """Take over a block already stored (index load, start-up scan), within the quota."""
        with self._lock:
            if key in self._slots or key in self._writing:
                return True
            if self._used + slot.size > self.quota:
                return False
            self._slots[key] = slot
            if oldest:
                self._slots.move_to_end(key, last=False)
            self._used += slot.size
        return True

    def _forget(self, key: bytes) -> Slot | None:
        with self._lock:
            slot = self._slots.pop(key, None)
            if slot is not None:
                self._used -= slot.size
        return slot

    def remove(self, key: bytes) -> None:
        slot = self._forget(key)
        if slot is not None:
            self._delete(key, slot)
            self._removed(key, slot)

    def read_for_move(self, key: bytes) -> memoryview | None:
        """The block's bytes for demotion or promotion, without counting it as an access."""
        slot = self._slots.get(key)
        return self._read(key, slot) if slot is not None else None

    def oldest(self, limit: int) -> list[tuple[bytes, Slot]]:
        """Up to `limit` blocks, least recently used first (a snapshot: the order moves on)."""
        with self._lock:
            out = []
            for item in self._slots.items():
                out.append(item)
                if len(out) >= limit:
                    break
            return out

    def keys(self) -> Iterator[bytes]:
        with self._lock:
            return iter(list(self._slots))

    def close(self) -> None:
        pass
