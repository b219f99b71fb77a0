"""Daemon counters: one thread-safe bag of named integers, read by `stats` and the metrics exporter."""
from __future__ import annotations

import threading
from collections import Counter

# Every counter the daemon keeps, so a reader sees zeros rather than missing keys.
NAMES = (
    "s3_get", "s3_get_bytes", "s3_get_errors", "s3_list", "s3_head", "s3_errors", "s3_hedged", "s3_hedge_wins",
    "s3_hedge_skipped_answered", "s3_hedge_skipped_budget",
    "cache_hits", "cache_misses", "cache_puts", "cache_evictions", "cache_demotions", "cache_promotions",
    "cache_not_admitted", "cache_corrupt", "cache_errors", "cache_writes_in_place",
    "fuse_reads", "fuse_read_bytes", "readahead_blocks", "readahead_disk_blocks", "fetch_shared",
    "fuse_writes", "write_bytes", "uploads", "upload_bytes", "upload_parts", "upload_copies", "upload_failures", "staging_full",
    "metadata_copies",
)


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Counter[str] = Counter({n: 0 for n in NAMES})
        self._gauges: list = []      # functions returning current values (pending uploads ...)

    def add_gauges(self, fn) -> None:
        """`fn()` -> {name: value}, merged into every snapshot (it must be safe from any thread)."""
        self._gauges.append(fn)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def get(self, name: str) -> int:
        return self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            values = dict(self._values)
        for fn in self._gauges:
            values.update(fn())
        return values
