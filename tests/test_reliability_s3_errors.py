"""S3 errors, injected by a real HTTP fault proxy in front of moto: the S3 client path as it runs.

First the store on its own (exact attempt counts and backoff gaps, as the proxy saw them), then a real
mount whose every byte must come out right while a quarter of its GETs fail.
"""
from __future__ import annotations

import itertools
import time

import pytest
from mount_helpers import BLOCK_SIZE, REGION, first_difference, object_bytes, read_all, run_threads

from cachefs.devtools.faultproxy import Fault
from cachefs.errors import StoreUnavailable
from cachefs.store.retry import RETRY_BASE_S, THROTTLE_BASE_S
from cachefs.store.s3 import S3Store

pytestmark = pytest.mark.timeout(120)

OBJ = object_bytes("errors-obj", 300_000)
N = 100_000       # the range the store tests read


@pytest.fixture(scope="module")
def errors_bucket(make_bucket):
    return make_bucket("errors", {"obj": OBJ})


def make_store(proxy, bucket, **kw) -> S3Store:
    args = dict(endpoint_url=proxy.url, region=REGION, addressing_style="path", max_attempts=4,
                connect_timeout=1.0, read_timeout=1.0, read_deadline=10.0)
    args.update(kw)
    return S3Store(bucket, **args)


def gaps(seen) -> list[float]:
    return [b.t - a.t for a, b in itertools.pairwise(seen)]


@pytest.mark.parametrize("fault, min_gap", [
    (Fault("error", ops="get", status=500, code="InternalError"), RETRY_BASE_S / 2),
    (Fault("error", ops="get", status=503, code="SlowDown"), THROTTLE_BASE_S / 2),
    (Fault("reset", ops="get"), RETRY_BASE_S / 2),
    (Fault("truncate", ops="get"), RETRY_BASE_S / 2),
    (Fault("delay", ops="get", seconds=2.5), 1.0 + RETRY_BASE_S / 2),   # past the 1 s read timeout
], ids=["500", "503-slowdown", "reset", "truncated-body", "timeout"])
def test_transient_errors_are_retried_with_backoff(aws_env, fault_proxy, errors_bucket, fault, min_gap):
    """Two failures then success: the bytes are right, exactly 3 GETs reached the proxy, and each retry
    waited at least half its backoff (equal jitter) after the previous attempt began."""
    store = make_store(fault_proxy, errors_bucket)
    fault.count = 2
    fault_proxy.add(fault)
    try:
        data = store.get_range("obj", 1000, 1000 + N)
    finally:
        store.close()
    assert data == OBJ[1000:1000 + N], first_difference(data, OBJ[1000:1000 + N])
    seen = fault_proxy.seen("get", "obj")
    assert len(seen) == 3, [(s.outcome, s.status) for s in seen]
    assert [s.outcome for s in seen[:2]] == [fault.action] * 2 and seen[2].outcome == "forwarded"
    assert all(g >= min_gap for g in gaps(seen)), f"retries not backed off: gaps {gaps(seen)}, floor {min_gap}"
    assert store.stats.snapshot()["s3_retries"] == 2


def test_retries_are_bounded_by_max_attempts(aws_env, fault_proxy, errors_bucket):
    store = make_store(fault_proxy, errors_bucket, max_attempts=5)
    fault_proxy.add(Fault("error", ops="get", status=500))
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match="after 5 attempts"):
        store.get_range("obj", 0, N)
    elapsed = time.monotonic() - t0
    store.close()
    seen = fault_proxy.seen("get", "obj")
    assert len(seen) == 5
    g = gaps(seen)
    # backoff doubles: 0.05-0.1, 0.1-0.2, 0.2-0.4, 0.4-0.8 s (plus the request itself)
    floors = [RETRY_BASE_S * 2 ** i / 2 for i in range(4)]
    assert all(gap >= floor for gap, floor in zip(g, floors, strict=False)), (g, floors)
    assert elapsed < sum(RETRY_BASE_S * 2 ** i for i in range(4)) + 2.0, elapsed


def test_definite_answers_are_not_retried(aws_env, fault_proxy, errors_bucket):
    store = make_store(fault_proxy, errors_bucket)
    try:
        assert store.head("no-such-key") is None
        fault_proxy.add(Fault("error", ops="get", status=403, code="AccessDenied"))
        with pytest.raises(Exception, match="access denied"):
            store.get_range("obj", 0, 10)
    finally:
        store.close()
    assert len(fault_proxy.seen("head", "no-such-key")) == 1
    assert len(fault_proxy.seen("get", "obj")) == 1
    assert not store.breaker.down


@pytest.mark.parametrize("action", ["blackhole", "drip"])
def test_deadline_bounds_a_stalled_or_trickling_read(aws_env, fault_proxy, errors_bucket, action):
    """A response that never comes (blackhole: read timeouts, retries) or trickles in (drip: no socket
    timeout ever fires) still ends at the deadline; the abandoned attempt's connection is closed."""
    store = make_store(fault_proxy, errors_bucket, read_timeout=5.0, read_deadline=2.0)
    fault_proxy.add(Fault(action, ops="get", seconds=30.0))
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match="deadline"):
        store.get_range("obj", 0, N)
    elapsed = time.monotonic() - t0
    assert 1.9 <= elapsed < 2.6, elapsed
    with pytest.raises(StoreUnavailable, match="ago"):     # the same range, just failed: not asked again yet
        store.get_range("obj", 0, N)
    if action == "drip":     # the reader's thread stopped reading: the proxy sees the client go
        from mount_helpers import wait_until
        assert wait_until(lambda: any(s.outcome == "drip (client gone)" for s in fault_proxy.seen("get")), 5), \
            fault_proxy.seen("get")
    fault_proxy.clear()
    time.sleep(1.0)
    assert store.get_range("obj", 0, N) == OBJ[:N]
    store.close()


def test_outage_trips_the_breaker_and_recovers_by_itself(aws_env, fault_proxy, errors_bucket):
    """Three reads fail their whole deadline, then reads fail at once; when S3 is back, a probe
    (at most one per second) notices and reads work again."""
    store = make_store(fault_proxy, errors_bucket, read_timeout=0.5, read_deadline=1.0)
    timings = []
    with fault_proxy.outage("blackhole"):
        for i in range(5):                   # other ranges each time: a range that just failed fails at once
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.get_range("obj", i, N)
            timings.append(time.monotonic() - t0)
        assert store.breaker.down
    assert all(t >= 0.9 for t in timings[:3]), timings
    assert all(t < 0.1 for t in timings[3:]), f"reads during a known outage must fail at once: {timings}"
    t0 = time.monotonic()
    while True:
        try:
            data = store.get_range("obj", 0, N)
            break
        except StoreUnavailable:
            assert time.monotonic() - t0 < 5, "no recovery within 5 s of S3 coming back"
            time.sleep(0.1)
    assert data == OBJ[:N] and not store.breaker.down
    store.close()


MOUNT_OBJECTS = {f"f{i}.bin": object_bytes(f"mount-errors-{i}", 3 * BLOCK_SIZE + 1234 * i) for i in range(6)}


def test_mount_reads_are_exact_while_a_quarter_of_gets_fail(mounter, make_bucket, fault_proxy):
    """500s, 503 SlowDown, resets and cut bodies on 25% of GETs: every byte read through the mount is
    right, every failed GET was retried, and the attempts the proxy saw match the daemon's counters."""
    name = make_bucket("errors-mount", MOUNT_OBJECTS)
    for spec in ("error:ops=get,status=500,p=0.25", "error:ops=get,status=503,code=SlowDown,p=0.05",
                 "reset:ops=get,p=0.05", "truncate:ops=get,p=0.05"):
        fault_proxy.add(spec)
    m = mounter.mount(name, "--s3-max-attempts", "10", "--hedging", "false", endpoint_url=fault_proxy.url)
    errors: list[str] = []

    def read(key: str) -> None:
        got = read_all(m / key)
        if got != MOUNT_OBJECTS[key]:
            errors.append(f"{key}: {first_difference(got, MOUNT_OBJECTS[key])}")

    run_threads(read, [(k,) for k in MOUNT_OBJECTS], timeout_s=90)
    assert errors == []
    gets = fault_proxy.seen("get")
    failed = [g for g in gets if g.outcome != "forwarded"]
    stats = m.stats()
    assert len(failed) >= 3, f"the faults did not fire: {fault_proxy.counts()}"
    # libcurl resends a request once by itself when a reused connection dies before any answer (a
    # reset the proxy injects on a kept-alive connection): that attempt is the engine's, not a retry.
    resets = sum(1 for g in failed if g.outcome == "reset")
    assert len(failed) - resets <= stats["s3_retries"] <= len(failed), (stats["s3_retries"], fault_proxy.counts())
    assert len(gets) - resets <= stats["s3_get"] + stats["s3_retries"] <= len(gets)
    assert stats["s3_get_errors"] == 0
    per_range: dict[tuple[str, str], int] = {}
    for g in gets:
        per_range[(g.key, g.range)] = per_range.get((g.key, g.range), 0) + 1
    assert max(per_range.values()) <= 10
