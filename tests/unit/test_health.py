"""OutageBreaker with a fake clock: when reads fail at once, when S3 is probed, when it is back."""
from __future__ import annotations

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
    b = OutageBreaker("ep", threshold=1, probe_interval=1.0, clock=clock)
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
