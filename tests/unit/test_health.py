"""OutageBreaker with a fake clock: when reads fail at once, when S3 is probed, when it is back."""
from __future__ import annotations

import threading
import time

import pytest

from cachefs.errors import StoreUnavailable
from cachefs.store.health import OutageBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trips_after_threshold_failures_in_a_row_only():
    b = OutageBreaker("ep", threshold=3, clock=Clock())
    b.failed("x")
    b.failed("x")
    b.succeeded()                  # a success between failures: not an outage
    b.failed("x")
    b.failed("x")
    assert not b.down and b.admit() is False
    b.failed("timeout")
    assert b.down
    with pytest.raises(StoreUnavailable, match="unreachable.*timeout"):
        b.admit()


def test_one_probe_per_interval_and_recovery():
    clock = Clock()
    b = OutageBreaker("ep", threshold=1, probe_interval=1.0, clock=clock, probe_wait=0.0)
    b.failed("x")
    with pytest.raises(StoreUnavailable):
        b.admit()
    clock.now += 1.0
    assert b.admit() is True       # the probe
    with pytest.raises(StoreUnavailable):
        b.admit()                  # only one probe at a time
    b.failed("still down")
    clock.now += 0.5
    with pytest.raises(StoreUnavailable):
        b.admit()
    clock.now += 0.5
    assert b.admit() is True
    b.succeeded()
    assert not b.down and b.admit() is False
    assert b.outages == 1


def test_a_range_that_just_failed_fails_at_once_for_a_moment():
    clock = Clock()
    b = OutageBreaker("ep", threshold=3, clock=clock)
    b.failed("deadline", ident=("get", "k", 0))
    with pytest.raises(StoreUnavailable, match="ago.*deadline"):
        b.admit(("get", "k", 0))
    assert b.admit(("get", "k", 1)) is False      # another range is asked for
    clock.now += 1.0
    assert b.admit(("get", "k", 0)) is False


def _admit_in_thread(b: OutageBreaker) -> dict:
    """admit() in another thread; the dict gets its result (or error) and how long it took."""
    out: dict = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            out["result"] = b.admit(("get", "k", 1))
        except StoreUnavailable as e:
            out["error"] = str(e)
        out["waited"] = time.monotonic() - t0

    out["thread"] = threading.Thread(target=run)
    out["thread"].start()
    return out


def _down_and_probing(probe_wait: float) -> OutageBreaker:
    b = OutageBreaker("ep", threshold=1, probe_interval=0.0, probe_wait=probe_wait)
    b.failed("refused")
    assert b.admit(("get", "k", 0)) is True        # the probe is out
    return b


def test_a_request_beside_the_probe_goes_through_when_the_probe_succeeds():
    b = _down_and_probing(probe_wait=10.0)
    waiter = _admit_in_thread(b)
    time.sleep(0.2)
    assert waiter["thread"].is_alive(), "it did not wait for the probe"
    b.succeeded()
    waiter["thread"].join(5)
    assert waiter["result"] is False and waiter["waited"] < 5, waiter


def test_a_request_beside_the_probe_fails_when_the_probe_fails():
    b = _down_and_probing(probe_wait=10.0)
    b._next_probe = time.monotonic() + 60          # the next probe is not due yet
    waiter = _admit_in_thread(b)
    time.sleep(0.2)
    b.failed("still refused")
    waiter["thread"].join(5)
    assert "unreachable" in waiter["error"] and waiter["waited"] < 5, waiter


def test_a_request_beside_the_probe_waits_at_most_probe_wait():
    b = _down_and_probing(probe_wait=0.3)
    waiter = _admit_in_thread(b)
    waiter["thread"].join(5)
    assert "unreachable" in waiter["error"] and 0.25 < waiter["waited"] < 2, waiter


def test_recovery_forgets_the_ranges_that_failed_during_the_outage():
    clock = Clock()
    b = OutageBreaker("ep", threshold=1, probe_interval=0.5, clock=clock)
    b.failed("refused", ident=("get", "k", 1))
    clock.now += 0.5                                # within FAILED_RANGE_MEMORY_S
    assert b.admit(("get", "k", 0)) is True
    b.succeeded()
    assert b.admit(("get", "k", 1)) is False       # not "failed 1.0 s ago" any more
