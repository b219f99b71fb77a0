"""TieredCache: MEM -> SSD -> HDD tiers behind the one BlockCache interface.

Placement: a new block goes to the fastest usable disk tier that admits it (policy below), and a
copy to the memory tier (memory is inclusive, so restarts lose nothing); if no tier admits it, it is
served but not cached. Eviction runs only in a background thread (never on the read path):
a tier past its high watermark is brought down to its low one, each victim demoted to the next
tier that admits it, or dropped from the last. Promotion of a block hit in a slower tier is a
policy: never (default), on the first hit, or after N hits.

Eviction policies (docs/CACHING.md has the measurements behind the default):
- "lru": admit while a tier is under its quota (else spill to a slower tier); past the high
  watermark the evictor demotes least recently used blocks until the low watermark.
- "scan-resistant": a tier at its high watermark admits nothing new and keeps what it has; only
  blocks unused for `stale_after` seconds are evicted. A dataset larger than the cache, read in
  cyclic epochs, then hits about high*capacity/dataset of its reads from the second epoch on,
  where LRU hits about none (every block is evicted just before its next use).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from cachefs import supervise
from cachefs.cache.base import BlockCache, BlockIndex
from cachefs.cache.disk import DiskTier
from cachefs.cache.memtier import MemoryTier
from cachefs.cache.spec import TierSpec
from cachefs.cache.tier import Slot, Tier
from cachefs.cache.writer import DiskWriter
from cachefs.stats import Stats

log = logging.getLogger(__name__)

EVICT_INTERVAL_S = 0.2       # background pass period when nothing wakes it sooner
EVICT_BATCH = 256            # victims looked at per snapshot of the recency order
INDEX_BATCH = 256            # block index entries buffered before a forced LMDB commit


class TieredCache(BlockCache):
    def __init__(self, tiers: list[Tier], meta: BlockIndex | None, stats: Stats, *, policy: str = "scan-resistant",
                 promote_after: int = 0, stale_after: float = 3600.0, max_block: int = 4 << 20) -> None:
        if policy not in ("lru", "scan-resistant"):
            raise ValueError(f"unknown eviction policy {policy!r}")
        self.tiers = tiers
        self.meta = meta
        self.stats = stats
        self.policy = policy
        self.promote_after = promote_after
        self.stale_after = stale_after
        self.max_block = max_block
        self.peak_ratio = {t.name: 0.0 for t in tiers}   # peak usage / quota, for the benchmark
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._disk_dirs = {d.id: (t, where) for t in tiers if isinstance(t, DiskTier)
                           for where, d in enumerate(t.dirs)}
        # The tier list is fixed: the put path uses these instead of filtering it each time.
        self._disk = [t for t in tiers if isinstance(t, DiskTier)]
        self._mem = [t for t in tiers if isinstance(t, MemoryTier)]
        self._writer: DiskWriter | None = None          # made at the first put_nowait

    @classmethod
    def build(cls, specs: Iterable[TierSpec], meta: BlockIndex | None, stats: Stats, *, pack_below: int = 0,
              **kwargs: Any) -> TieredCache:
        """Tiers from their specs, named by kind (ssd, ssd2, ... when a kind repeats); blocks shorter
        than `pack_below` go to the disk tiers' pack files (cache/packs.py)."""
        tiers: list[Tier] = []
        for spec in specs:
            tier = MemoryTier(spec, stats) if spec.kind == "mem" else DiskTier(spec, stats, pack_below=pack_below)
            same = sum(1 for t in tiers if t.spec.kind == spec.kind)
            tier.name = spec.kind if same == 0 else f"{spec.kind}{same + 1}"
            tiers.append(tier)
        return cls(tiers, meta, stats, **kwargs)

    def open(self) -> None:
        """Create and lock every disk directory (start-up; raises UserError)."""
        for tier in self.disk_tiers:
            tier.open()

    @property
    def disk_tiers(self) -> list[DiskTier]:
        return self._disk

    @property
    def mem_tiers(self) -> list[MemoryTier]:
        return self._mem

    def _ahead_tiers(self) -> Sequence[Tier]:
        """The tiers that bound prefetching: the disk tiers (memory holds copies of their blocks),
        or the memory tiers of a mount without disk (with the disk tiers alone such a mount never
        prefetched a directory)."""
        return self._disk or self._mem

    def ahead_capacity(self) -> int:
        return sum(t.high_bytes for t in self._ahead_tiers())

    def ahead_room(self) -> int:
        return sum(max(0, t.high_bytes - t.used) for t in self._ahead_tiers()) - self.queued_bytes

    # -- start-up ---------------------------------------------------------------------------
    def load(self) -> None:
        """Take the block index from LMDB, then repair it against the files (before serving)."""
        dropped = []
        if self.meta is not None:
            for key, size, stored_at, did, pack, offset in sorted(self.meta.block_index(), key=lambda e: e[2]):
                tier, where = self._disk_dirs.get(did, (None, 0))
                if tier is None or not tier.adopt_indexed(key, Slot(size, where, stored_at, pack=pack, offset=offset)):
                    dropped.append(key)      # a directory no longer configured, or over quota
            if dropped:
                self.meta.update_block_index([], dropped)
        for tier in self.disk_tiers:
            adopted, removed = tier.scan(self.contains)
            if adopted or removed:
                log.info("cache scan of %s: adopted %d block files, removed %d stray files",
                         tier.name, adopted, removed)
        self.flush()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._evict_loop, name="cachefs-evictor", daemon=True)
        self._thread.start()

    # -- BlockCache -------------------------------------------------------------------------
    def contains(self, key: bytes) -> bool:
        return any(t.contains(key) for t in self.tiers) or (self._writer is not None and key in self._writer)

    def in_memory(self, key: bytes) -> bool:
        return any(t.contains(key) for t in self._mem) or (self._writer is not None and key in self._writer)

    def cool(self, key: bytes) -> None:
        for tier in self._mem:
            tier.cool(key)

    @property
    def used_bytes(self) -> int:
        return sum(t.used for t in self.tiers)

    @property
    def block_count(self) -> int:
        """Distinct blocks cached (a memory copy of a disk block counts once; a block waiting for its
        disk copy counts too)."""
        disk = sum(t.count for t in self.disk_tiers)
        mem = {k for t in self.mem_tiers for k in t.keys() if not self._on_disk(k)}
        queued = {k for k in self._writer.keys() if not self._on_disk(k)} if self._writer is not None else set()
        return disk + len(mem | queued)

    def _on_disk(self, key: bytes) -> bool:
        return any(t.contains(key) for t in self.disk_tiers)

    def get_nowait(self, key: bytes) -> memoryview | None:
        """Memory tiers (and blocks queued for the disk writer) only: cheap enough to try on the trio
        thread before a worker-thread hop."""
        for tier in self._mem:
            if tier.contains(key):
                data = tier.get(key)
                if data is not None:
                    self.stats.add(f"cache_hits_{tier.name}")
                    self.stats.add(f"cache_hit_bytes_{tier.name}", len(data))
                    self.stats.add("cache_hits")
                    return data
        return self._queued(key)

    def _queued(self, key: bytes) -> memoryview | None:
        """A block waiting for its disk copy (put_nowait; memory=False, or memory did not keep it)."""
        data = self._writer.get(key) if self._writer is not None else None
        if data is None:
            return None
        self.stats.add("cache_hits")
        return memoryview(data)

    def get(self, key: bytes) -> memoryview | None:
        for i, tier in enumerate(self.tiers):
            if not tier.contains(key):
                continue
            data = tier.get(key)
            if data is None:
                continue
            self.stats.add(f"cache_hits_{tier.name}")
            self.stats.add(f"cache_hit_bytes_{tier.name}", len(data))
            self.stats.add("cache_hits")
            if i > 0 and self.promote_after:
                self._maybe_promote(i, key, data)
            return data
        return self._queued(key)

    def put(self, key: bytes, data: bytes | memoryview, memory: bool = True) -> bool:
        """Place a fetched block: in the fastest disk tier that admits it, and in memory too.

        Memory tiers are inclusive (a copy of what is also on disk, where there is room on disk):
        a restart or crash then loses nothing that was cached, and dropping a block from memory
        costs no write. A block no disk tier admits may still live in memory alone.

        memory=False (blocks of a sequential stream, which the kernel's page cache holds for the
        reader anyway) keeps it out of memory while a disk tier admits it: one large shard would
        otherwise fill the memory tier, and under the scan-resistant policy keep it for an hour,
        away from the small files and random reads it is for (docs/CACHING.md).
        """
        on_disk = self._place(key, data, self._disk)
        in_mem = (memory or not on_disk) and self._place(key, data, self._mem)
        if not (on_disk or in_mem):
            self.stats.add("cache_not_admitted")
            return False
        self.stats.add("cache_puts")
        return True

    def put_nowait(self, key: bytes, data: bytes | memoryview, memory: bool = True) -> bool:
        """put() for the trio thread: never waits for a disk. The memory copy is made now (unless
        memory=False), the disk copy by the disk writer thread (cache/writer.py) shortly after; the
        block is readable (get_nowait, get, contains) from now on. False, having done nothing, when
        the writer's queue is full (a slow disk): the caller then stores it with put() in a worker
        thread. A kill -9 may lose the disk copies still queued (at most writer.QUEUE_BYTES): they are
        fetched again, never served wrong. flush() and drain() wait for the queue."""
        if not self._disk:
            return self.put(key, data, memory)           # memory only: a dict insert
        if self._writer is None:
            self._writer = DiskWriter(self._store_queued)
        if not self._writer.offer(key, data):
            return False
        if memory:
            self._place(key, data, self._mem)
        return True

    @property
    def queued_bytes(self) -> int:
        """Bytes taken by put_nowait still waiting for their disk copy (not in any disk tier's `used` yet)."""
        return self._writer.queued_bytes if self._writer is not None else 0

    def _store_queued(self, items: list[tuple[bytes, bytes | memoryview]]) -> None:
        """The disk writer's half of put_nowait (its memory half is done already), for everything it
        took at once: small blocks go to a pack in one write (DiskTier.put_many)."""
        on_disk = self._place_many(items, self._disk)
        for (key, data), placed in zip(items, on_disk, strict=True):
            if placed or self._place(key, data, self._mem):
                self.stats.add("cache_puts")
            else:
                self.stats.add("cache_not_admitted")

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every block taken by put_nowait has its disk copy (or was declined by the
        tiers); False on timeout. Blocks: not for the trio thread."""
        return self._writer.drain(timeout) if self._writer is not None else True

    def _place(self, key: bytes, data: bytes | memoryview, tiers: Sequence[Tier]) -> bool:
        lru = self.policy == "lru"
        for tier in tiers:
            # LRU fills a tier up to its quota and lets the evictor make room from the high
            # watermark on; scan-resistant stops admitting at the high watermark.
            if tier.usable and tier.put(key, data, tier.quota if lru else tier.high_bytes):
                self._after_put(tier)
                return True
        return False

    def _place_many(self, items: list[tuple[bytes, bytes | memoryview]], tiers: Sequence[Tier]) -> list[bool]:
        """_place() of each item: each tier in turn takes what it admits of the rest in one call."""
        placed = [False] * len(items)
        lru = self.policy == "lru"
        for tier in tiers:
            left = [i for i, ok in enumerate(placed) if not ok]
            if not left:
                break
            if not tier.usable:
                continue
            taken = tier.put_many([items[i] for i in left], tier.quota if lru else tier.high_bytes)
            for i, ok in zip(left, taken, strict=True):
                placed[i] = ok
            if any(taken):
                self._after_put(tier)
        return placed

    def _after_put(self, tier: Tier) -> None:
        used = tier.used
        if tier.quota and used / tier.quota > self.peak_ratio[tier.name]:
            self.peak_ratio[tier.name] = used / tier.quota
        if used > tier.high_bytes - self.max_block:
            self._wake.set()
        if isinstance(tier, DiskTier) and tier.pending_index_changes() >= INDEX_BATCH:
            self._flush_index()

    def _maybe_promote(self, i: int, key: bytes, data: memoryview) -> None:
        slot = self.tiers[i]._slots.get(key)
        if slot is None or slot.hits < self.promote_after:
            return
        faster = self.tiers[:i]
        if self._place(key, data, [t for t in faster if isinstance(t, MemoryTier)]):
            self.stats.add("cache_promotions")       # a copy: the disk tier keeps it
        if self._place(key, data, [t for t in faster if isinstance(t, DiskTier)]):
            self.tiers[i].remove(key)
            self.stats.add("cache_promotions")

    # -- eviction (background thread only) --------------------------------------------------
    def _evict_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(EVICT_INTERVAL_S)
            self._wake.clear()
            try:
                self.evict_pass()
                for tier in self.disk_tiers:
                    tier.probe()
            except Exception as e:      # logged and counted; the next pass tries again
                supervise.record_failure("eviction", e, "pass")

    def evict_pass(self) -> int:
        """Bring every tier under its watermark; returns how many blocks moved or went."""
        moved = 0
        now = time.time()
        for i, tier in enumerate(self.tiers):
            pressured = tier.pressured_dirs() if isinstance(tier, DiskTier) else set()
            if pressured:
                moved += self._evict(i, tier, 0, now, only_dirs=pressured)
            # "At the high watermark": the next block would cross it (block-sized steps may never
            # land exactly above it).
            if tier.used > tier.high_bytes - self.max_block:
                moved += self._evict(i, tier, tier.low_bytes, now)
        return moved

    def _evict(self, i: int, tier: Tier, target: int, now: float, only_dirs: set[int] | None = None) -> int:
        moved = 0
        while tier.used > target:
            batch = tier.oldest(EVICT_BATCH if only_dirs is None else 1 << 30)
            progressed = False
            for key, slot in batch:
                if tier.used <= target:
                    break
                if only_dirs is not None:
                    if slot.where not in only_dirs:
                        continue
                    if not tier.pressure():
                        return moved
                elif self.policy == "scan-resistant" and now - slot.last_access < self.stale_after:
                    return moved             # recency order: nothing after this one is stale either
                self._demote(i, key)
                moved += 1
                progressed = True
            if not progressed:
                break
        return moved

    def _demote(self, i: int, key: bytes) -> None:
        tier = self.tiers[i]
        slower = [t for t in self.tiers[i + 1:] if not isinstance(t, MemoryTier)]
        if slower and not any(t.contains(key) for t in slower):
            data = tier.read_for_move(key)
            if data is not None and self._place(key, data, slower):
                self.stats.add("cache_demotions")
                tier.remove(key)
                return
        tier.remove(key)             # the last tier, or a memory copy of a block also on disk
        self.stats.add("cache_evictions")

    # -- persistence ------------------------------------------------------------------------
    def flush(self) -> None:
        """The queued disk copies written (drain), then the block index persisted."""
        self.drain()
        self._flush_index()

    def _flush_index(self) -> None:
        if self.meta is None:
            return
        added, removed = [], []
        for tier in self.disk_tiers:
            a, r = tier.take_index_changes()
            added += a
            removed += r
        if added or removed:
            self.meta.update_block_index(added, removed)

    def tier_stats(self) -> dict[str, dict[str, Any]]:
        out = {}
        for t in self.tiers:
            info: dict[str, Any] = {"kind": t.spec.kind, "used": t.used, "quota": t.quota, "blocks": t.count,
                    "high": t.high_bytes, "low": t.low_bytes, "peak_ratio": round(self.peak_ratio[t.name], 4)}
            if isinstance(t, DiskTier):
                info["dirs"] = {d.path: ("up" if d.healthy else "down") for d in t.dirs}
                info["packs"] = sum(d.packs.count for d in t.dirs)
            out[t.name] = info
        return out

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._writer is not None:
            self._writer.close()
        self.flush()
        for tier in self.tiers:
            tier.close()
