"""The disk writer: one thread that writes the disk copies of blocks stored from the trio thread
(TieredCache.put_nowait), so that the trio thread never waits for a disk.

Why a thread of its own and not trio.to_thread: a hand-off here is a dict insert and a condition
notify (~µs), where a trio worker-thread round trip costs ~0.1-0.3 ms of CPU (docs/BENCHMARKS.md,
"thread hops"); and the writer takes whatever has queued up while it wrote, so under load one wake-up
serves many blocks, stored in one call (the small ones go to a pack in one write). A queued block
stays readable (TieredCache.get/get_nowait/contains look here) until its disk copy is in place.
The queue is bounded in bytes: when it is full, offer() declines and the caller stores the block
itself (TieredCache.put in a worker thread).
"""
from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from cachefs import supervise

# Bytes of blocks waiting for their disk copy, at most: what a kill -9 can lose of the disk copies
# (they are fetched again, never served wrong) and what they may hold in memory beyond the tiers.
QUEUE_BYTES = 64 << 20
BATCH = 64                   # blocks stored per call: the batch's last block waits for the other 63


class DiskWriter:
    def __init__(self, store: Callable[[list[tuple[bytes, bytes | memoryview]]], None],
                 max_bytes: int | None = None) -> None:
        self._store = store          # stores blocks in the disk tiers (TieredCache._store_queued)
        self.max_bytes = QUEUE_BYTES if max_bytes is None else max_bytes
        self._queued: dict[bytes, bytes | memoryview] = {}
        self._bytes = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def offer(self, key: bytes, data: bytes | memoryview) -> bool:
        """Queue a block for its disk copy; False (nothing done) when the queue is full or closed."""
        with self._cond:
            if key in self._queued:
                return True
            if self._closed or self._bytes + len(data) > self.max_bytes:
                return False
            self._queued[key] = data
            self._bytes += len(data)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cachefs-diskwriter", daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def get(self, key: bytes) -> bytes | memoryview | None:
        return self._queued.get(key)     # one dict lookup: atomic under the GIL

    def __contains__(self, key: bytes) -> bool:
        return key in self._queued

    def __len__(self) -> int:
        return len(self._queued)

    @property
    def queued_bytes(self) -> int:
        """Bytes taken and not yet written: space the disk tiers are about to fill."""
        return self._bytes

    def keys(self) -> list[bytes]:
        with self._cond:
            return list(self._queued)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued block has been written (or declined by the tiers); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queued, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queued and not self._closed:
                    self._cond.wait()
                if not self._queued:
                    return
                batch = list(itertools.islice(self._queued.items(), BATCH))   # queued (readable) until written
            try:
                self._store(batch)
            except Exception as e:     # logged and counted; those blocks are simply not cached
                supervise.record_failure("cache disk writer", e, "batch")
            with self._cond:
                for key, data in batch:
                    del self._queued[key]
                    self._bytes -= len(data)
                if not self._queued:
                    self._cond.notify_all()
