"""The read path's ranged GET without botocore's per-call pipeline (store/fastget.py), against a real
S3 endpoint over HTTP: signed right (moto checking signatures), the same answers and errors as
boto3, and a switch to boto3 for good on an answer it does not handle."""
from __future__ import annotations

import pytest
from mount_helpers import REGION, fast_path_store, object_bytes, signed_store

from cachefs.devtools.faultproxy import Fault
from cachefs.errors import AccessDenied, ObjectChanged, ObjectNotFound, StoreUnavailable
from cachefs.store.s3 import S3Store

pytestmark = pytest.mark.timeout(120)

DATA = object_bytes("fastget", 200_000)
KEYS = {"plain": DATA, "dir/with space+plus%and~tilde/ünï.bin": DATA[:5000]}


@pytest.fixture(scope="module")
def fast_bucket(make_bucket):
    return make_bucket("fastget", KEYS)


def test_ranges_and_awkward_keys_come_back_exact_through_the_fast_path(aws_env, moto_server, fast_bucket):
    store = fast_path_store(moto_server.endpoint_url, fast_bucket)
    try:
        assert store._fast is not None
        etag = store.head("plain").etag
        assert store.get_range("plain", 0, len(DATA), etag) == DATA
        assert store.get_range("plain", 12_345, 67_890) == DATA[12_345:67_890]
        key = "dir/with space+plus%and~tilde/ünï.bin"
        assert store.get_range(key, 100, 4000) == DATA[100:4000]
        assert store._fast is not None, "fell back to boto3 on an ordinary GET"
    finally:
        store.close()


def test_a_block_sized_body_is_received_in_place_into_recycled_memory(aws_env, moto_server, fast_bucket):
    """docs/CACHING.md, "Recycled block memory": the body lands in a buffer of its own from the pool."""
    from cachefs import native
    if native.ACTIVE != "native":
        pytest.skip("the C extension is not active")
    native.set_pool(150_000, 2)
    store = fast_path_store(moto_server.endpoint_url, fast_bucket)
    try:
        before = native.pool_stats()
        for start in (0, 50_000, 0):
            got = store.get_range("plain", start, start + 100_000)
            assert isinstance(got, memoryview) and type(got.obj).__name__ == "Buffer"
            assert got == DATA[start:start + 100_000] and len(got.obj) == 100_000
            del got
        after = native.pool_stats()
        assert after["mapped"] - before["mapped"] <= 1 and after["reused"] - before["reused"] >= 2
        small = store.get_range("plain", 0, 1000)           # below half a chunk: plain memory
        assert small == DATA[:1000] and native.pool_stats()["reused"] == after["reused"]
    finally:
        store.close()
        native.set_pool(0, 0)


def test_errors_are_the_same_as_through_boto3(aws_env, moto_server, fast_bucket):
    for fast in (True, False):
        store = fast_path_store(moto_server.endpoint_url, fast_bucket, fast_get=fast)
        try:
            assert (store._fast is not None) == fast
            with pytest.raises(ObjectNotFound):
                store.get_range("no-such-key", 0, 10)
            with pytest.raises(ObjectChanged):
                store.get_range("plain", 0, 10, '"0123456789abcdef0123456789abcdef"')
            assert store._fast is not None or not fast
        finally:
            store.close()


def test_signature_is_checked_by_an_endpoint_that_enforces_credentials(monkeypatch, auth_moto):
    with signed_store(monkeypatch, auth_moto, auth_moto.secret) as store:
        assert store._fast is not None
        assert store.get_range("hello.txt", 0, 6) == b"hello\n"
        assert store._fast is not None, "the signed request was not accepted: fell back to boto3"
    with signed_store(monkeypatch, auth_moto, "not-the-secret") as store:
        with pytest.raises(AccessDenied):
            store.get_range("hello.txt", 0, 6)
        assert store._fast is not None


def test_an_answer_it_does_not_handle_switches_to_boto3_for_good(aws_env, fault_proxy, fast_bucket):
    """A 301 (a bucket in another region, on AWS) is boto3's to follow: the fast path hands over, and
    every later GET goes through boto3, whose answers are right."""
    store = fast_path_store(fault_proxy.url, fast_bucket)
    try:
        fault_proxy.add(Fault("error", ops="get", status=301, code="PermanentRedirect", count=1))
        assert store.get_range("plain", 0, 1000) == DATA[:1000]
        assert store._fast is None
        assert store.get_range("plain", 1000, 2000) == DATA[1000:2000]
    finally:
        store.close()
    assert [s.outcome for s in fault_proxy.seen("get", "plain")] == ["error", "forwarded", "forwarded"]


def test_retryable_errors_are_retried_on_the_fast_path(aws_env, fault_proxy, fast_bucket):
    store = S3Store(fast_bucket, endpoint_url=fault_proxy.url, region=REGION, addressing_style="path",
                    max_attempts=3, read_deadline=10.0)
    try:
        fault_proxy.add(Fault("error", ops="get", status=503, code="SlowDown", count=2))
        assert store.get_range("plain", 0, 1000) == DATA[:1000]
        assert store._fast is not None
        fault_proxy.add(Fault("error", ops="get", status=500, code="InternalError"))
        with pytest.raises(StoreUnavailable, match="after 3 attempts"):
            store.get_range("plain", 0, 1000)
    finally:
        store.close()
