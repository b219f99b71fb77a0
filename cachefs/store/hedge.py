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
import heapq
import math
import threading
import time
from collections import deque

import trio

from cachefs import supervise
from cachefs.stats import Stats
from cachefs.store.base import DelegatingWrites, ListPage, ObjectInfo, ObjectStore

MIN_SAMPLES = 20        # no deadline until a size class has this many latencies to judge by
WINDOW = 200            # latencies remembered per size class: about the last few seconds of traffic
# At most this share of recent GETs get a duplicate. When the whole endpoint slows down (here: a
# CPU-bound machine that also runs Ceph), every GET runs past the p95 of quieter times, and without
# a cap each would add a duplicate and more load: a cold read measured 24 duplicates out of 88 GETs
# once. Stragglers are by definition few; a budget of 5% keeps hedging for them.
HEDGE_BUDGET = 0.05
HEDGE_TICK_S = 0.005    # deadlines in trio are looked at with this resolution (a wake-up per batch)
# A GET a reader has come to wait for (`hurry`: it joined a prefetch's fetch of the block) is
# duplicated once it has run this many times the median latency of its size class (and min_delay),
# from a budget of its own. Behind bench.run's remote-store model a prefetch GET that straggled
# (+500 ms) was met by the reader a few hundred ms after it left, and the p95 deadline (or the
# budget that busy moments had spent) left the reader to wait out the rest: the last straggler of a
# short epoch then set its end (docs/BENCHMARKS.md "A reader waiting for a straggler").
URGENT_FACTOR = 2.0


def size_class(nbytes: int) -> int:
    """Requests within a factor of two in size share latency statistics."""
    return max(nbytes, 64 * 1024).bit_length()


class LatencyTracker:
    """Recent latencies per size class; a percentile is worked out again after every
    RECOMPUTE_EVERY new ones (sorting the window for every GET cost ~10 us of the trio thread)."""

    RECOMPUTE_EVERY = 8

    def __init__(self, window: int = WINDOW) -> None:
        self._lock = threading.Lock()
        self._recent: dict[int, deque[float]] = {}
        self._added: dict[int, int] = {}                      # per class: latencies added so far
        self._known: dict[tuple[int, float], tuple[int, float]] = {}   # (class, q) -> (added then, value)
        self.window = window

    def add(self, cls: int, seconds: float) -> None:
        with self._lock:
            self._recent.setdefault(cls, deque(maxlen=self.window)).append(seconds)
            self._added[cls] = self._added.get(cls, 0) + 1

    def percentile(self, cls: int, q: float) -> float | None:
        with self._lock:
            recent = self._recent.get(cls)
            if recent is None or len(recent) < MIN_SAMPLES:
                return None
            added = self._added[cls]
            known = self._known.get((cls, q))
            if known is not None and added - known[0] < self.RECOMPUTE_EVERY:
                return known[1]
            ordered = sorted(recent)
            value = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
            self._known[(cls, q)] = (added, value)
        return value


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


class _Race:
    """One hedged GET in trio: its deadline, the first request's scope (cancelled when the duplicate
    wins) and whether its answer is arriving, the winner, the errors, and the duplicate's scope."""
    __slots__ = ("due", "wait", "request", "scope", "answered", "won", "errors", "decided", "second_scope",
                 "second_done", "started", "urgent")

    def __init__(self, due: float, wait: float, request: tuple[str, int, int, str | None],
                 started: float) -> None:
        self.started = started
        self.urgent = False              # a reader waits for it
        self.due = due
        self.wait = wait                 # the deadline's length: doubled each time the budget is full
        self.request = request
        self.scope = trio.CancelScope()
        self.answered = trio.Event()
        self.won: tuple[int, bytes | memoryview] | None = None
        self.errors: list[Exception] = []
        self.decided = False
        self.second_scope: trio.CancelScope | None = None
        self.second_done: trio.Event | None = None

    def win(self, which: int, data: bytes | memoryview) -> None:
        if self.won is None:
            self.won = (which, data)


class _Hedger:
    """The deadlines of one trio run's hedged GETs, looked at by one system task: it sleeps until the
    earliest (rounded up to HEDGE_TICK_S, so that GETs answered in time cost no wake-up each) and
    starts the duplicates of those still unanswered, within the budget."""

    def __init__(self, store: HedgedStore) -> None:
        self.store = store
        self._due: list[tuple[float, int, _Race]] = []     # heap: (deadline, sequence, race)
        # Per size class, the GETs in flight begun before it had latencies to judge by: race -> start.
        self.unjudged: dict[int, dict[_Race, float]] = {}
        self.requests: dict[tuple[str, int, int], _Race] = {}     # the GETs in flight, for `hurry`
        self._seq = 0
        self._wake = trio.Event()
        self._sleeping_until = math.inf

    def watch(self, race: _Race) -> None:
        self._seq += 1
        heapq.heappush(self._due, (race.due, self._seq, race))
        if race.due + HEDGE_TICK_S < self._sleeping_until:
            self._wake.set()

    def await_judgement(self, cls: int, started: float, race: _Race) -> None:
        self.unjudged.setdefault(cls, {})[race] = started

    def forget(self, cls: int, race: _Race) -> None:
        """The GET is decided: it no longer waits for a deadline (nor keeps its answer alive)."""
        waiting = self.unjudged.get(cls)
        if waiting is not None and waiting.pop(race, None) is not None and not waiting:
            del self.unjudged[cls]

    def judged(self, cls: int) -> None:
        """A latency of this class was just recorded. Once there are enough, the GETs begun before
        get the deadline they would have had: a mount's first GETs go out together (64 at the start
        of a hinted epoch), and one straggler among them otherwise held its reader for the whole
        straggle (+0.5 s of a 0.7 s epoch behind bench.run's model: docs/BENCHMARKS.md)."""
        deadline = self.store.class_deadline(cls)
        if deadline is None:
            return
        for race, started in self.unjudged.pop(cls, {}).items():
            race.due, race.wait = started + deadline, deadline
            self.watch(race)

    async def run(self) -> None:
        while True:
            if self._due:
                self._sleeping_until = self._due[0][0] + HEDGE_TICK_S
            with trio.move_on_at(self._sleeping_until):
                await self._wake.wait()
            self._wake = trio.Event()
            self._sleeping_until = math.inf
            now = trio.current_time()
            while self._due and self._due[0][0] <= now:
                race = heapq.heappop(self._due)[2]
                if not race.decided:
                    try:
                        self._consider(race)
                    except Exception as e:  # noqa: BLE001 - a system task: nothing may end the run
                        supervise.record_failure("hedging", e, "a duplicate GET")

    def hurry(self, race: _Race, wait: float) -> None:
        """A reader waits for this GET: its deadline is `wait` after it began, if that is sooner."""
        race.urgent = True
        due = race.started + wait
        if due < race.due:
            race.due, race.wait = due, wait
            self.watch(race)

    def _consider(self, race: _Race) -> None:
        store = self.store
        if race.second_scope is not None:
            return                                        # duplicated already (watched twice: hurried)
        if race.answered.is_set():
            store.stats.add("s3_hedge_skipped_answered")    # progress, not a straggler
        elif not (store.urgent_budget if race.urgent else store.budget).take():
            # Looked at again after twice the wait: the budget is spent on the GETs most overdue,
            # and a real straggler is not left to run its whole course because the p95 tail of
            # a busy moment took the budget when its deadline came (budget skips were 11-87 per
            # 512-file epoch behind bench.run's model, hedges 8-20: docs/BENCHMARKS.md).
            store.stats.add("s3_hedge_skipped_budget")
            race.wait *= 2
            race.due = trio.current_time() + race.wait
            self.watch(race)
        else:
            store.stats.add("s3_hedged")
            if race.urgent:
                store.stats.add("s3_hedged_urgent")
            race.second_scope, race.second_done = trio.CancelScope(), trio.Event()
            trio.lowlevel.spawn_system_task(self._second, race, name="cachefs-hedge")

    async def _second(self, race: _Race) -> None:
        """The duplicate: a system task, so nothing may escape it (it would end the trio run)."""
        assert race.second_scope is not None and race.second_done is not None
        try:
            with race.second_scope:
                data = await self.store._atimed_get(*race.request)
                if race.won is None:
                    race.win(1, data)
                    race.scope.cancel()          # the first request stops
        except Exception as e:  # noqa: BLE001 - the first request may still succeed
            race.errors.append(e)
        finally:
            race.second_done.set()


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
        self.urgent_budget = HedgeBudget()      # the duplicates of GETs a reader waits for
        self._pool = cf.ThreadPoolExecutor(max_workers, thread_name_prefix="cachefs-hedge")
        self._hedgers: dict[trio.lowlevel.TrioToken, _Hedger] = {}

    def deadline(self, nbytes: int) -> float | None:
        return self.class_deadline(size_class(nbytes))

    def class_deadline(self, cls: int) -> float | None:
        p = self.latency.percentile(cls, self.percentile)
        return None if p is None else max(self.min_delay, p)

    def hurry(self, key: str, start: int, end: int) -> None:
        """A reader waits for the GET of [start, end) of `key` in flight (from trio), if there is one:
        duplicated once it has run URGENT_FACTOR times its class's median (within its own budget)."""
        hedger = self._hedgers.get(trio.lowlevel.current_trio_token())
        if hedger is None:
            return
        race = hedger.requests.get((key, start, end))
        if race is None or race.decided or race.urgent or race.second_scope is not None:
            return
        median = self.latency.percentile(size_class(end - start), 0.5)
        if median is None:
            return                       # no latencies yet: the class's deadline comes when there are
        self.stats.add("s3_hedge_hurried")
        hedger.hurry(race, max(self.min_delay, URGENT_FACTOR * median))

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
        cls = size_class(end - start)
        self.latency.add(cls, time.monotonic() - t0)
        hedger = self._hedgers.get(trio.lowlevel.current_trio_token())
        if hedger is not None and hedger.unjudged.get(cls):
            hedger.judged(cls)
        return data

    async def aget_range(self, key: str, start: int, end: int, etag: str | None = None,
                         answered: trio.Event | None = None) -> bytes | memoryview:
        """get_range's hedging in trio. The first request runs in the caller's task; one timer task
        per trio run looks at the requests whose deadline passed and starts their duplicates (a
        nursery and a task per GET cost ~55 us of the trio thread, most GETs never being hedged).
        The first answer wins; the loser is cancelled (with the libcurl engine its transfer stops)."""
        cls = size_class(end - start)
        deadline = self.class_deadline(cls)
        self.budget.started()
        self.urgent_budget.started()
        now = trio.current_time()
        race = _Race(now + deadline if deadline is not None else math.inf, deadline or 0.0, (key, start, end, etag),
                     now)
        hedger = self._hedger()
        hedger.requests[(key, start, end)] = race
        if deadline is None:
            hedger.await_judgement(cls, now, race)      # judged once its class has latencies
        else:
            hedger.watch(race)
        try:
            with race.scope:
                try:
                    race.win(0, await self._atimed_get(key, start, end, etag, race.answered))
                except Exception as e:  # noqa: BLE001 - the duplicate may still succeed
                    race.errors.append(e)
            if race.won is None and race.second_done is not None:
                await race.second_done.wait()
        finally:
            race.decided = True          # from here on no duplicate starts
            if deadline is None:
                hedger.forget(cls, race)
            if hedger.requests.get((key, start, end)) is race:
                del hedger.requests[(key, start, end)]
            if race.second_scope is not None and (race.won is None or race.won[0] == 0):
                race.second_scope.cancel()                  # the duplicate stops
        if race.won is None:
            raise race.errors[-1]
        which, data = race.won
        if which == 1:
            self.stats.add("s3_hedge_wins")
        if answered is not None:
            answered.set()
        return data

    def _hedger(self) -> _Hedger:
        token = trio.lowlevel.current_trio_token()
        hedger = self._hedgers.get(token)
        if hedger is None:        # a store used from a later trio.run (tests) gets a new one
            self._hedgers.clear()
            hedger = self._hedgers[token] = _Hedger(self)
            trio.lowlevel.spawn_system_task(hedger.run, name="cachefs-hedge-timer")
        return hedger

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
