"""Straggler hedging over the in-memory store with an injected slow request."""
import time

import pytest
import trio

from cachefs import supervise
from cachefs.errors import StoreUnavailable
from cachefs.stats import Stats
from cachefs.store.faults import FaultyStore
from cachefs.store.hedge import MIN_SAMPLES, HedgedStore, LatencyTracker, size_class
from cachefs.store.memory import MemoryStore


def make(rule, **kw):
    stats = Stats()
    mem = MemoryStore("bkt", stats)
    mem.put("k", b"x" * 100_000)
    return HedgedStore(FaultyStore(mem, rule), stats, min_delay=0.02, **kw), stats


def warm_up(store, n=MIN_SAMPLES):
    for _ in range(n):
        store.get_range("k", 0, 100_000)


def test_no_hedging_without_history():
    store, stats = make(lambda op, key, n: 0.2 if n == 0 else None)
    t0 = time.monotonic()
    assert store.get_range("k", 0, 10) == b"x" * 10
    assert time.monotonic() - t0 >= 0.2 and stats.get("s3_hedged") == 0


def test_a_straggler_gets_a_duplicate_that_wins():
    slow_call = MIN_SAMPLES          # the first call after the warm-up hangs for 3 s
    store, stats = make(lambda op, key, n: 3.0 if n == slow_call else None)
    warm_up(store)
    t0 = time.monotonic()
    assert store.get_range("k", 0, 100_000) == b"x" * 100_000
    assert time.monotonic() - t0 < 1.0
    assert stats.get("s3_hedged") == 1 and stats.get("s3_hedge_wins") == 1
    assert stats.get("s3_get") >= MIN_SAMPLES + 1     # the abandoned one may still be sleeping


def test_fast_requests_are_not_duplicated():
    store, stats = make(lambda op, key, n: None)
    warm_up(store, 100)
    assert stats.get("s3_hedged") == 0 and stats.get("s3_get") == 100


def test_error_of_one_attempt_waits_for_the_other():
    slow_call = MIN_SAMPLES

    def rule(op, key, n):
        if n == slow_call:
            return 0.3                  # the original is slow but succeeds
        if n == slow_call + 1:
            return StoreUnavailable("duplicate failed")
        return None
    store, stats = make(rule)
    warm_up(store)
    assert store.get_range("k", 0, 100_000) == b"x" * 100_000
    assert stats.get("s3_hedged") == 1 and stats.get("s3_hedge_wins") == 0


def test_both_attempts_failing_raise():
    slow_call = MIN_SAMPLES

    def rule(op, key, n):
        if n == slow_call:
            time.sleep(0.1)
            return StoreUnavailable("slow and broken")
        if n == slow_call + 1:
            return StoreUnavailable("broken")
        return None
    store, _ = make(rule)
    warm_up(store)
    with pytest.raises(StoreUnavailable):
        store.get_range("k", 0, 100_000)


def test_percentile_per_size_class():
    t = LatencyTracker()
    for i in range(100):
        t.add(size_class(4 << 20), i / 100)
    assert t.percentile(size_class(4 << 20), 0.95) == pytest.approx(0.95)
    assert t.percentile(size_class(100_000), 0.95) is None
    assert size_class(1) == size_class(64 * 1024) != size_class(4 << 20)


def test_a_request_whose_body_is_arriving_is_not_duplicated():
    """Past the deadline but answered (the body is streaming in): progress, not a straggler. On a
    busy machine every body is slower than the p95 of quieter times; duplicates would only add load."""
    class SlowBody(MemoryStore):
        slow = False

        def get_range(self, key, start, end, etag=None, answered=None):
            data = super().get_range(key, start, end, etag, answered)   # sets `answered`
            if self.slow:
                time.sleep(0.5)                                         # then the body trickles
            return data
    stats = Stats()
    mem = SlowBody("bkt", stats)
    mem.put("k", b"x" * 100_000)
    store = HedgedStore(mem, stats, min_delay=0.02)
    warm_up(store)
    mem.slow = True
    assert store.get_range("k", 0, 100_000) == b"x" * 100_000
    assert stats.get("s3_hedged") == 0 and stats.get("s3_hedge_skipped_answered") == 1
    assert stats.get("s3_get") == MIN_SAMPLES + 1


def test_duplicates_stay_within_five_percent_of_recent_gets():
    """When every GET is slow (the endpoint, not a straggler), only HEDGE_BUDGET of them are duplicated."""
    from cachefs.store.hedge import HEDGE_BUDGET, WINDOW, HedgeBudget
    budget = HedgeBudget()
    took = 0
    for _ in range(3 * WINDOW):
        budget.started()
        took += budget.take()
    assert took <= 3 * int(HEDGE_BUDGET * WINDOW) + 1
    assert took >= 2 * int(HEDGE_BUDGET * WINDOW)          # ... and the budget refills as GETs go by

    # Through the store: with a budget of one duplicate in the window, the second straggler is not hedged.
    slow = {MIN_SAMPLES, 2 * MIN_SAMPLES + 2}     # the first GET after each warm-up hangs (call 21 is a duplicate)
    store, stats = make(lambda op, key, n: 1.0 if n in slow else None)
    store.budget = HedgeBudget(share=0.0)
    warm_up(store)
    assert store.get_range("k", 0, 100_000) == b"x" * 100_000
    assert stats.get("s3_hedged") == 1 and stats.get("s3_hedge_wins") == 1
    warm_up(store)
    t0 = time.monotonic()
    assert store.get_range("k", 0, 100_000) == b"x" * 100_000
    assert time.monotonic() - t0 >= 1.0                     # waited for the straggler itself
    assert stats.get("s3_hedged") == 1 and stats.get("s3_hedge_skipped_budget") == 1


class Gated(MemoryStore):
    """aget_range of call n waits while gate(n) says so (trio.sleep in the trio thread, so that a
    cancelled request really stops), and counts the requests running."""
    def __init__(self, gate):
        super().__init__("bkt", Stats())
        self.gate, self.calls, self.running = gate, 0, 0
        self.put("k", b"x" * 100_000)

    async def aget_range(self, key, start, end, etag=None, answered=None):
        n, self.calls = self.calls, self.calls + 1
        self.running += 1
        try:
            await trio.sleep(self.gate(n))
            return self.get_range(key, start, end, etag)
        finally:
            self.running -= 1


def gated_store(gate):
    inner = Gated(gate)
    store = HedgedStore(inner, inner.stats, min_delay=0.02)
    for _ in range(MIN_SAMPLES):
        store.latency.add(size_class(100_000), 0.001)
    return store, inner


def test_in_trio_a_cancelled_caller_stops_its_duplicate_too():
    store, inner = gated_store(lambda n: 30.0)          # the first and its duplicate both hang

    async def main():
        with trio.move_on_after(0.3):
            await store.aget_range("k", 0, 100_000)
        await trio.sleep(0.01)
        assert inner.calls == 2 and inner.running == 0
    trio.run(main)
    assert inner.stats.get("s3_hedged") == 1 and inner.stats.get("s3_hedge_wins") == 0


def test_in_trio_gets_answered_in_time_are_not_duplicated_and_leave_nothing_behind():
    store, inner = gated_store(lambda n: 0.001)

    async def main():
        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(store.aget_range, "k", 0, 100_000)
        await trio.sleep(0.1)                          # past every deadline
        hedger = store._hedger()
        assert hedger._due == [] and inner.running == 0
    trio.run(main)
    assert inner.stats.get("s3_hedged") == 0 and inner.calls == 200


def test_in_trio_a_straggler_that_answers_first_cancels_the_duplicate():
    store, inner = gated_store(lambda n: 0.2 if n == 0 else 30.0)

    async def main():
        assert await store.aget_range("k", 0, 100_000) == b"x" * 100_000
        await trio.sleep(0.01)
        assert inner.calls == 2 and inner.running == 0
    trio.run(main)
    assert inner.stats.get("s3_hedged") == 1 and inner.stats.get("s3_hedge_wins") == 0


def test_in_trio_a_straggler_begun_before_any_latency_is_hedged_once_there_are_enough():
    """A mount's first GETs all start with no latency to judge them by (a hinted epoch sends 64 at
    once): a straggler among them gets its duplicate when MIN_SAMPLES of the others have answered,
    not never."""
    inner = Gated(lambda n: 30.0 if n == 0 else 0.001)
    store = HedgedStore(inner, inner.stats, min_delay=0.02)          # no history at all
    got = []

    async def one():
        got.append(await store.aget_range("k", 0, 100_000))

    async def main():
        with trio.move_on_after(5) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one)                          # call 0: the straggler
                await trio.sleep(0.01)
                for _ in range(MIN_SAMPLES):
                    nursery.start_soon(one)
        assert not scope.cancelled_caught, "the straggler was not hedged"
        assert store._hedger().unjudged == {}
    trio.run(main)
    assert got == [b"x" * 100_000] * (MIN_SAMPLES + 1)
    assert inner.stats.get("s3_hedged") == 1 and inner.stats.get("s3_hedge_wins") == 1


def test_in_trio_a_straggler_met_by_a_full_budget_is_hedged_when_it_has_room():
    """The budget is spent when the straggler's deadline comes: it is looked at again (after twice
    the wait) and hedged once later GETs have made room, not left to run its whole course."""
    store, inner = gated_store(lambda n: 30.0 if n == 0 else 0.001)
    while store.budget.take():
        pass                                                 # spent by earlier duplicates

    async def main():
        with trio.move_on_after(5) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.aget_range, "k", 0, 100_000)      # call 0: the straggler
                await trio.sleep(0.03)                       # past its deadline: no room then
                for _ in range(40):                          # 40 GETs started: 5% of them is room
                    nursery.start_soon(store.aget_range, "k", 0, 100_000)
        assert not scope.cancelled_caught, "the straggler was never hedged"
    trio.run(main)
    assert inner.stats.get("s3_hedge_skipped_budget") >= 1
    assert inner.stats.get("s3_hedged") == 1 and inner.stats.get("s3_hedge_wins") == 1


def test_in_trio_an_error_deciding_on_a_duplicate_ends_nothing():
    """The hedger is a system task: an exception escaping it would end the whole trio run (the
    mount). It is recorded, and the GET gets its own answer."""
    store, inner = gated_store(lambda n: 0.2)

    def broken():
        raise RuntimeError("budget broke")
    store.budget.take = broken

    async def main():
        assert await store.aget_range("k", 0, 100_000) == b"x" * 100_000
        assert await store.aget_range("k", 0, 100_000) == b"x" * 100_000     # the hedger still runs
    failures = supervise.failures().get("hedging", 0)
    trio.run(main)
    assert supervise.failures().get("hedging", 0) == failures + 2 and inner.calls == 2


def test_in_trio_a_get_a_reader_waits_for_is_hedged_at_twice_the_median_from_a_budget_of_its_own():
    """The class's p95 is far off (a slow tail: no deadline comes within the test) and the shared
    budget is spent; once a reader waits for the straggling GET (`hurry`), it is duplicated at twice
    the median latency of its class, and the duplicate's answer is the reader's."""
    inner = Gated(lambda n: 30.0 if n == 0 else 0.001)
    store = HedgedStore(inner, inner.stats, min_delay=0.02)
    cls = size_class(100_000)
    for _ in range(MIN_SAMPLES - 1):
        store.latency.add(cls, 0.02)                     # median 20 ms
    store.latency.add(cls, 60.0)                         # p95 a minute
    while store.budget.take():
        pass
    took = []

    async def main():
        with trio.fail_after(5):
            await race()

    async def race():
        async with trio.open_nursery() as nursery:
            async def one():
                t0 = trio.current_time()
                assert await store.aget_range("k", 0, 100_000) == b"x" * 100_000
                took.append(trio.current_time() - t0)
            nursery.start_soon(one)
            await trio.sleep(0.3)
            assert inner.stats.get("s3_hedged") == 0, "hedged before anyone waited"
            store.hurry("k", 0, 100_000)
            store.hurry("k", 0, 50)                      # no such GET in flight: nothing
    trio.run(main)
    assert took and took[0] < 1.0, took
    stats = inner.stats
    assert (stats.get("s3_hedge_hurried"), stats.get("s3_hedged_urgent"), stats.get("s3_hedge_wins")) == (1, 1, 1)
    assert inner.calls == 2
