"""The verdicts of NodeGetVolumeStats's volume condition (cachefs.csi.health) from the daemon's
stats, and the daemon's s3_down gauge read from its store's outage breaker."""
from __future__ import annotations

import functools
from types import SimpleNamespace

from cachefs.csi.health import UPLOAD_STUCK_S, condition, problems_in_stats
from cachefs.csi.mounter import ABSENT, ALIVE, DEAD
from cachefs.metrics import under_wrappers
from cachefs.store.health import OutageBreaker

_outage_breaker = functools.partial(under_wrappers, attr="breaker")    # what the daemon reads its gauge from

HEALTHY = {"s3_down": 0, "uploads_pending": 0, "uploads_oldest_age_s": 0.0, "upload_failures": 0,
           "source": "s3://data", "tiers": {"mem": {"used": 1}, "ssd": {"dirs": {"/nvme/a": "up", "/nvme/b": "up"}}}}


def test_healthy_stats_are_normal():
    assert problems_in_stats(HEALTHY) == []
    abnormal, message = condition(ALIVE, lambda: HEALTHY)
    assert not abnormal and message


def test_dead_and_absent_mounts_are_abnormal_without_asking_the_daemon():
    def never():
        raise AssertionError("a dead mount has no daemon to ask")
    abnormal, message = condition(DEAD, never)
    assert abnormal and "Transport endpoint is not connected" in message
    assert condition(ABSENT, never)[0]


def test_a_daemon_that_does_not_answer_is_abnormal():
    def fails():
        raise OSError("connection refused")
    abnormal, message = condition(ALIVE, fails)
    assert abnormal and "control socket" in message and "connection refused" in message


def test_s3_down_is_named():
    [msg] = problems_in_stats({**HEALTHY, "s3_down": 1})
    assert "S3 is unreachable" in msg and "s3://data" in msg


def test_uploads_failing_for_longer_than_the_threshold():
    late = {**HEALTHY, "uploads_pending": 2, "uploads_oldest_age_s": UPLOAD_STUCK_S + 1, "upload_failures": 5}
    [msg] = problems_in_stats(late)
    assert "uploads are failing" in msg and "2 file(s)" in msg
    # old but never failed: a large file waiting for its schedule, not a problem
    assert problems_in_stats({**late, "upload_failures": 0}) == []
    # failed, but younger than the threshold: retries may still get it through
    assert problems_in_stats({**late, "uploads_oldest_age_s": 60}) == []
    assert problems_in_stats(late, upload_stuck_s=UPLOAD_STUCK_S * 2) == []


def test_a_cache_tier_down_and_a_directory_down():
    one = {**HEALTHY, "tiers": {"ssd": {"dirs": {"/nvme/a": "down", "/nvme/b": "up"}}}}
    [msg] = problems_in_stats(one)
    assert "cache tier ssd has a directory down (/nvme/a)" in msg
    both = {**HEALTHY, "tiers": {"ssd": {"dirs": {"/nvme/a": "down", "/nvme/b": "down"}}}}
    [msg] = problems_in_stats(both)
    assert msg.startswith("cache tier ssd is down")
    abnormal, message = condition(ALIVE, lambda: {**both, "s3_down": 1})
    assert abnormal and "S3 is unreachable" in message and "cache tier ssd is down" in message


def test_the_daemon_finds_the_outage_breaker_under_store_wrappers():
    breaker = OutageBreaker("http://s3", threshold=3)
    store = SimpleNamespace(inner=SimpleNamespace(inner=SimpleNamespace(breaker=breaker)))
    assert _outage_breaker(store) is breaker
    assert _outage_breaker(SimpleNamespace()) is None            # mem://: no breaker, no gauge
    assert not breaker.down
    for _ in range(3):
        breaker.failed("connection refused")
    assert breaker.down
