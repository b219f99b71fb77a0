"""Straggler hedging: a ranged GET that runs past an adaptive deadline with no answer from S3 yet
gets a duplicate request; the first answer wins and the other is abandoned.

Object stores have slow outliers (a request lands on a busy disk or a slow gateway thread); with
many parallel block fetches a few stragglers set the pace of a whole epoch. The deadline is a high
percentile of recent GET latencies for requests of the same size class, so it adapts to the
endpoint and to block versus small-file sizes, and it never goes below `min_delay`, so that a fast,
steady endpoint is not sent duplicates for noise. A hedge costs one extra GET. From trio
(aget_range) the loser is cancelled, and on the libcurl engine its transfer stops; through the
synchronous get_range (boto3 has no cancel) it runs to its end unseen. At most HEDGE_BUDGET of recent
GETs are duplicated.
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections import deque

import trio

from cachefs.stats import Stats
from cachefs.store.base import DelegatingWrites, ListPage, ObjectInfo, ObjectStore

MIN_SAMPLES = 20        # no hedging until a size class has this many latencies to judge by
WINDOW = 200            # latencies remembered per size class: about the last few seconds of traffic
# At most this share of recent GETs get a duplicate. When the whole endpoint slows down (here: a
# CPU-bound machine that also runs Ceph), every GET runs past the p95 of quieter times, and without
# a cap each would add a duplicate and more load: a cold read measured 24 duplicates out of 88 GETs
# once. Stragglers are by definition few; a budget of 5% keeps hedging for them.
HEDGE_BUDGET = 0.05


def size_class(nbytes: int) -> int:
    """Requests within a factor of two in size share latency statistics."""
    return max(nbytes, 64 * 1024).bit_length()


class LatencyTracker:
    def __init__(self, window: int = WINDOW) -> None:
        self._lock = threading.Lock()
        self._recent: dict[int, deque[float]] = {}
        self.window = window

    def add(self, cls: int, seconds: float) -> None:
        with self._lock:
            self._recent.setdefault(cls, deque(maxlen=self.window)).append(seconds)

    def percentile(self, cls: int, q: float) -> float | None:
        with self._lock:
            recent = self._recent.get(cls)
            if recent is None or len(recent) < MIN_SAMPLES:
                return None
            ordered = sorted(recent)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class HedgeBudget:
    """Whether another duplicate fits in HEDGE_BUDGET of the last WINDOW GETs (one always does)."""

    def __init__(self, share: float = HEDGE_BUDGET, window: int = WINDOW) -> None:
        self._lock = threading.Lock()
        self._recent: deque[bool] = deque(maxlen=window)     # per GET: was it hedged
        self._hedged = 0
        self.share = share

    def started(self) -> None:
        with self._lock:
            self._push(False)

    def take(self) -> bool:
        with self._lock:
            if self._hedged >= max(1, int(self.share * len(self._recent))):
                return False
            self._push(True)
            return True

    def _push(self, hedged: bool) -> None:
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._hedged -= 1
        self._recent.append(hedged)
        self._hedged += hedged


class HedgedStore(DelegatingWrites, ObjectStore):
    def __init__(self, inner: ObjectStore, stats: Stats, *, percentile: float = 0.95,
                 min_delay: float = 0.05, max_workers: int = 32) -> None:
        self.inner = inner
        self.bucket = inner.bucket
        self.stats = stats
        self.percentile = percentile
        self.min_delay = min_delay
        self.latency = LatencyTracker()
        self.budget = HedgeBudget()
        self._pool = cf.ThreadPoolExecutor(max_workers, thread_name_prefix="cachefs-hedge")

    def deadline(self, nbytes: int) -> float | None:
        p = self.latency.percentile(size_class(nbytes), self.percentile)
        return None if p is None else max(self.min_delay, p)

    def _timed_get(self, key: str, start: int, end: int, etag: str | None,
                   answered: threading.Event | None = None) -> bytes:
        t0 = time.monotonic()
        data = self.inner.get_range(key, start, end, etag, answered)
        self.latency.add(size_class(end - start), time.monotonic() - t0)
        return data

    def get_range(self, key: str, start: int, end: int, etag: str | None = None,
                  answered: threading.Event | None = None) -> bytes:
        deadline = self.deadline(end - start)
        self.budget.started()
        if deadline is None:
            return self._timed_get(key, start, end, etag, answered)
        first_answered = threading.Event()
        first = self._pool.submit(self._timed_get, key, start, end, etag, first_answered)
        try:
            return first.result(timeout=deadline)
        except cf.TimeoutError:
            pass
        if first_answered.is_set():
            # Its body is arriving: progress, not a straggler. A duplicate would only compete for
            # the same bandwidth and CPU (on a busy machine every body is slower than the p95 of
            # quieter times); a body that stalls is the read deadline's business.
            self.stats.add("s3_hedge_skipped_answered")
            return first.result()
        if not self.budget.take():
            self.stats.add("s3_hedge_skipped_budget")      # too many duplicates lately: load, not stragglers
            return first.result()
        self.stats.add("s3_hedged")
        second = self._pool.submit(self._timed_get, key, start, end, etag)
        pending = {first, second}
        error: BaseException | None = None
        while pending:
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                if fut.exception() is None:
                    if fut is second:
                        self.stats.add("s3_hedge_wins")
                    for other in pending:
                        other.cancel()        # abandoned: a running request finishes unseen
                    return fut.result()
                error = fut.exception()
        assert error is not None        # both requests failed
        raise error

    async def _atimed_get(self, key: str, start: int, end: int, etag: str | None,
                          answered: trio.Event | None = None) -> bytes | memoryview:
        t0 = time.monotonic()
        data = await self.inner.aget_range(key, start, end, etag, answered)
        self.latency.add(size_class(end - start), time.monotonic() - t0)
        return data

    async def aget_range(self, key: str, start: int, end: int, etag: str | None = None,
                         answered: trio.Event | None = None) -> bytes | memoryview:
        """get_range's hedging in trio: the duplicate is a second task, and the loser is cancelled
        (with the libcurl engine its transfer really stops)."""
        deadline = self.deadline(end - start)
        self.budget.started()
        if deadline is None:
            return await self._atimed_get(key, start, end, etag, answered)
        first_answered, first_done = trio.Event(), trio.Event()
        won: list[tuple[int, bytes | memoryview]] = []
        errors: list[Exception] = []

        async def run(which: int, told: trio.Event | None, nursery: trio.Nursery) -> None:
            try:
                data = await self._atimed_get(key, start, end, etag, told)
            except Exception as e:  # noqa: BLE001 - the other request may still succeed
                errors.append(e)
            else:
                if not won:
                    won.append((which, data))
                    nursery.cancel_scope.cancel()      # the other request stops
            finally:
                if which == 0:
                    first_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, 0, first_answered, nursery)
            with trio.move_on_after(deadline):
                await first_done.wait()
            if not first_done.is_set():
                if first_answered.is_set():
                    self.stats.add("s3_hedge_skipped_answered")    # progress, not a straggler
                elif not self.budget.take():
                    self.stats.add("s3_hedge_skipped_budget")
                else:
                    self.stats.add("s3_hedged")
                    nursery.start_soon(run, 1, None, nursery)
        if won:
            which, data = won[0]
            if which == 1:
                self.stats.add("s3_hedge_wins")
            if answered is not None:
                answered.set()
            return data
        raise errors[-1]

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    async def ahead(self, key: str) -> ObjectInfo | None:
        return await self.inner.ahead(key)

    async def alist_page(self, prefix: str, token: str | None = None, max_keys: int = 1000,
                         delimiter: str = "/") -> ListPage:
        return await self.inner.alist_page(prefix, token, max_keys, delimiter)

    def list_page(self, prefix: str, token: str | None = None, max_keys: int = 1000,
                  delimiter: str = "/") -> ListPage:
        return self.inner.list_page(prefix, token, max_keys, delimiter)

    def check_bucket(self, prefix: str = "") -> None:
        self.inner.check_bucket(prefix)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.inner.close()
