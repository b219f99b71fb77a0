"""The read path's S3 engine on libcurl (store/curlengine.py, curlmulti.py, s3trio.py), awaited from trio
against moto's server over HTTP, with the fault proxy in front for errors, resets, truncated and slow
bodies: the same bytes, pages and errors as boto3, signatures checked by an endpoint that enforces
credentials (session tokens too), a TLS endpoint with a private CA, real cancellation, hedging.
Each test runs over both of the engine's GET paths (the `fetch` fixture): the C fetcher
(store/curlfetch.py, when it is built) and pycurl's multi; HEAD and LIST are on pycurl either way."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time

import pytest
import trio
from mount_fixtures import unique_bucket_name
from mount_helpers import REGION, fast_path_store, object_bytes, s3_client, signed_store

from cachefs.devtools.faultproxy import Fault
from cachefs.errors import AccessDenied, ObjectChanged, ObjectNotFound, StoreUnavailable
from cachefs.stats import Stats
from cachefs.store import curlfetch
from cachefs.store.hedge import HedgedStore, size_class
from cachefs.store.s3 import S3Store

pytestmark = pytest.mark.timeout(120)

DATA = object_bytes("curl", 300_000)
AWKWARD = ["dir/with space+plus%and~tilde/ünï.bin", "dir/q?x#y", "dir/a//b", "dir/a/../b", "dir/./c", "dir/p%2Fq",
           "dir/ctrl\x01char", "dir/amp&lt<gt>.bin", "dir/a'b\"c", "dir/日本語 ☃.txt", "dir/end."]
KEYS = {"plain": DATA, **{k: DATA[:5000] for k in AWKWARD},
        **{f"many/{i:03d}.bin": b"x" * i for i in range(25)}, "many/sub/one": b"1", "top": b"t"}


@pytest.fixture(scope="module")
def curl_bucket(make_bucket):
    return make_bucket("curl", KEYS)


def run(fn, *args):
    """One trio run of `fn(*args)` (each test's store lives across runs: the engine rebinds)."""
    return trio.run(fn, *args)


@pytest.fixture(params=["native", "pycurl"])
def fetch(request):
    """The engine's GET path: "native" (the C fetcher, skipped when it is not built) or "pycurl"."""
    if request.param == "native" and not curlfetch.available():
        pytest.skip(curlfetch.WHY_NOT)
    return request.param


def on_path(store, fetch):
    """`store` with its engine's GETs on the `fetch` path."""
    assert store.engine is not None, "libcurl engine unavailable"
    if fetch == "pycurl":
        store.engine.fetch_native = False
    assert store.engine.fetch_native is (fetch == "native")
    return store


@pytest.fixture
def store_at(fetch):
    """store_at(url, bucket, **S3Store arguments): a store of the fast path's settings on `fetch`'s GETs."""
    def make(url, bucket, **kw):
        kw.setdefault("max_attempts", 2)
        store = S3Store(bucket, endpoint_url=url, region=REGION, addressing_style="path",
                        read_deadline=kw.pop("read_deadline", 10.0), **kw)
        return on_path(store, fetch)
    return make


@pytest.fixture
def store(aws_env, moto_server, curl_bucket, store_at):
    s = store_at(moto_server.endpoint_url, curl_bucket)
    yield s
    s.close()


@pytest.fixture
def proxied(aws_env, fault_proxy, curl_bucket, store_at):
    s = store_at(fault_proxy.url, curl_bucket)
    yield s
    s.close()


def gets_in_flight(engine) -> int:
    """The engine's GETs libcurl still has (0 before the first one)."""
    if engine.fetch_native:
        return 0 if engine._fetcher is None else engine._fetcher.pending
    return 0 if engine._multi is None else len(engine._multi._transfers)


async def no_gets_in_flight(engine):
    """Nothing is left of a stopped GET. The C fetcher's thread reports a stopped transfer
    asynchronously (it counts as pending until the drain task took it back): allow it a moment."""
    assert (engine._fetcher if engine.fetch_native else engine._multi) is not None, "no GET went that way"
    with trio.move_on_after(1.0):
        while gets_in_flight(engine):
            await trio.sleep(0.01)
    assert gets_in_flight(engine) == 0
    assert engine._multi is None or engine._multi._transfers == {}


def test_ranges_and_awkward_keys_come_back_exact_into_block_buffers(store):
    async def main():
        etag = (await store.ahead("plain")).etag
        whole = await store.aget_range("plain", 0, len(DATA), etag)
        assert whole == DATA and isinstance(whole, memoryview) and type(whole.obj).__name__ == "Buffer"
        assert await store.aget_range("plain", 12_345, 67_890) == DATA[12_345:67_890]
        for key in AWKWARD:
            assert await store.aget_range(key, 100, 4000) == DATA[100:4000], key
            info = await store.ahead(key)
            assert info is not None and info.key == key and info.size == 5000, key
    run(main)
    assert store.engine is not None, "fell back to boto3 on an ordinary GET"
    assert store.stats.get("s3_get") == 2 + len(AWKWARD)


def test_head_and_metadata_are_the_same_as_through_boto3(store, s3, curl_bucket):
    s3.put_object(Bucket=curl_bucket, Key="meta.bin", Body=b"m" * 10, Metadata={"mode": "0640", "uid": "7"})
    seen = []
    store.watch_metadata(lambda *a: seen.append(a))

    async def main():
        return await store.ahead("meta.bin"), await store.ahead("no-such-key"), \
            await store.aget_range("meta.bin", 0, 10)
    got, missing, data = run(main)
    want = store.head("meta.bin")          # the boto3 path
    assert got == want and got.meta == {"mode": "0640", "uid": "7"} and missing is None and data == b"m" * 10
    assert seen == [("meta.bin", want.etag, {"mode": "0640", "uid": "7"})]


def all_pages(lister, prefix, max_keys, delimiter):
    pages, token = [], None
    while True:
        page = lister(prefix, token, max_keys, delimiter)
        pages.append(page)
        if page.next_token is None:
            return pages
        token = page.next_token


@pytest.mark.parametrize("prefix,max_keys,delimiter", [("dir/", 1000, "/"), ("many/", 7, "/"), ("", 1000, ""),
                                                       ("", 4, "/"), ("nothing-here/", 1000, "/")])
def test_pages_are_the_same_as_through_boto3(store, prefix, max_keys, delimiter):
    async def main():
        pages, token = [], None
        while True:
            page = await store.alist_page(prefix, token, max_keys, delimiter)
            pages.append(page)
            if page.next_token is None:
                return pages
            token = page.next_token
    got = run(main)
    want = all_pages(store.list_page, prefix, max_keys, delimiter)
    assert [(p.objects, p.prefixes) for p in got] == [(p.objects, p.prefixes) for p in want]
    if prefix == "dir/":
        keys = {o.key for p in got for o in p.objects}
        assert {k for k in AWKWARD if "/" not in k[len("dir/"):]} <= keys
    assert store.engine is not None


def test_definite_errors_are_not_retried(proxied, fault_proxy):
    async def main():
        with pytest.raises(ObjectNotFound):
            await proxied.aget_range("no-such-key", 0, 10)
        with pytest.raises(ObjectChanged):
            await proxied.aget_range("plain", 0, 10, '"0123456789abcdef0123456789abcdef"')
        with pytest.raises(StoreUnavailable, match="InvalidRange"):
            await proxied.aget_range("plain", len(DATA) + 10, len(DATA) + 20)
        fault_proxy.add(Fault("error", ops="get", key="plain", status=403, code="AccessDenied", count=1))
        with pytest.raises(AccessDenied):
            await proxied.aget_range("plain", 0, 10)
        fault_proxy.add(Fault("error", ops="head", status=403, code="AccessDenied", count=1))
        with pytest.raises(AccessDenied):
            await proxied.ahead("plain")
    run(main)
    assert [s.outcome for s in fault_proxy.seen("get", "plain")] == ["forwarded", "forwarded", "error"]
    assert proxied.stats.get("s3_retries") == 0


@pytest.mark.parametrize("fault", [Fault("error", ops="get", status=500, code="InternalError", count=1),
                                   Fault("error", ops="get", status=503, code="SlowDown", count=1),
                                   Fault("reset", ops="get", count=1),
                                   Fault("truncate", ops="get", count=1)],
                         ids=["500", "503", "reset", "truncated"])
def test_failures_worth_another_attempt_are_retried(proxied, fault_proxy, fault):
    fault_proxy.add(dataclasses.replace(fault, fired=0, matched=0))     # a fresh one per GET path
    assert run(proxied.aget_range, "plain", 1000, 201_000) == DATA[1000:201_000]
    assert proxied.stats.get("s3_retries") == 1
    assert [s.outcome for s in fault_proxy.seen("get", "plain")][-1] == "forwarded"


def test_lists_and_heads_are_retried_too(proxied, fault_proxy):
    fault_proxy.add(Fault("error", ops="list", status=500, count=1))
    fault_proxy.add(Fault("reset", ops="head", count=1))

    async def main():
        return await proxied.alist_page("many/"), await proxied.ahead("plain")
    page, info = run(main)
    assert len(page.objects) == 25 and info.size == len(DATA)
    # libcurl itself sends a request again once on a fresh connection when a reused one was closed
    # before any answer came: a reset may cost no retry of ours
    assert proxied.stats.get("s3_retries") >= 1
    assert [s.outcome for s in fault_proxy.seen("head")][:1] == ["reset"]


def test_a_persistent_failure_gives_up_after_the_attempts(proxied, fault_proxy):
    fault_proxy.add(Fault("error", ops="get", status=500, code="InternalError"))
    with pytest.raises(StoreUnavailable, match="after 2 attempts"):
        run(proxied.aget_range, "plain", 0, 1000)
    assert proxied.stats.get("s3_get_errors") == 1


def test_a_body_trickling_past_the_deadline_is_ended_there(aws_env, fault_proxy, curl_bucket, store_at):
    s = store_at(fault_proxy.url, curl_bucket, read_deadline=1.5, max_attempts=4)
    try:
        fault_proxy.add(Fault("drip", ops="get", seconds=30))
        t0 = time.monotonic()

        async def main():
            with pytest.raises(StoreUnavailable, match="deadline"):
                await s.aget_range("plain", 0, 200_000)
            assert time.monotonic() - t0 < 4
            # checked in the run: the C fetcher's stopped transfer is taken back by its drain task
            await no_gets_in_flight(s.engine)
        run(main)
        assert s.stats.get("s3_read_deadline_exceeded") == 1
    finally:
        s.close()


def test_a_cancelled_request_is_removed_from_the_multi_and_its_connection_closed(proxied, fault_proxy):
    engine = proxied.engine

    def connections():
        return proxied.stats.snapshot()["s3_connections"]

    async def main():
        assert await proxied.ahead("plain") is not None
        assert await proxied.aget_range("plain", 0, 10) == DATA[:10]
        # the C fetcher has connections of its own (HEAD is on pycurl): one each
        assert connections() == (2 if engine.fetch_native else 1)
        opened = connections()
        assert await proxied.ahead("plain") is not None
        assert await proxied.aget_range("plain", 10, 20) == DATA[10:20]
        assert connections() == opened                                # kept open: reused
        fault_proxy.add(Fault("blackhole", ops="get", key="plain", seconds=30))
        multi = engine._multi
        idle = set(multi._watches)         # libcurl's own (its wake-up pair), if any
        with trio.move_on_after(0.5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(proxied.aget_range, "plain", 0, 1000)
                await trio.sleep(0.3)
                assert gets_in_flight(engine) == 1
                if not engine.fetch_native:
                    assert set(multi._watches) - idle
                nursery.cancel_scope.cancel()
        await no_gets_in_flight(engine)
        assert set(multi._watches) <= idle
        fault_proxy.clear()
        # the same handles, another request: the engine is fine
        assert await proxied.aget_range("plain", 0, 1000) == DATA[:1000]
        assert connections() == opened + 1                            # the cancelled one was closed
    t0 = time.monotonic()
    run(main)
    assert time.monotonic() - t0 < 5


def test_hedging_takes_the_faster_duplicate_and_cancels_the_straggler(aws_env, fault_proxy, curl_bucket, store_at):
    inner = store_at(fault_proxy.url, curl_bucket)
    stats = Stats()
    hedged = HedgedStore(inner, stats, min_delay=0.05)
    for _ in range(30):
        hedged.latency.add(size_class(100_000), 0.01)
    try:
        fault_proxy.add(Fault("delay", ops="get", key="plain", seconds=20, count=1))
        t0 = time.monotonic()

        async def main():
            data = await hedged.aget_range("plain", 0, 100_000)
            await no_gets_in_flight(inner.engine)       # the straggler was stopped
            return data
        assert run(main) == DATA[:100_000]
        assert time.monotonic() - t0 < 5
        assert stats.get("s3_hedged") == 1 and stats.get("s3_hedge_wins") == 1
    finally:
        hedged.close()


def test_an_answer_it_does_not_handle_switches_to_boto3_for_good(proxied, fault_proxy):
    fault_proxy.add(Fault("error", ops="get", status=301, code="PermanentRedirect", count=1))

    async def main():
        assert await proxied.aget_range("plain", 0, 1000) == DATA[:1000]
        assert proxied.engine is None
        assert await proxied.aget_range("plain", 1000, 2000) == DATA[1000:2000]
    run(main)
    assert [s.outcome for s in fault_proxy.seen("get", "plain")] == ["error", "forwarded", "forwarded"]


def test_the_outage_breaker_fails_fast_in_trio(aws_env, fault_proxy, curl_bucket, store_at):
    s = store_at(fault_proxy.url, curl_bucket, max_attempts=1, read_deadline=2.0)
    try:
        async def main():
            with fault_proxy.outage("reset"):
                for i in range(3):
                    with pytest.raises(StoreUnavailable):
                        await s.aget_range("plain", i, i + 10)
                assert s.breaker.down
                t0 = trio.current_time()
                with pytest.raises(StoreUnavailable, match="unreachable"):
                    await s.aget_range("plain", 100, 110)
                assert trio.current_time() - t0 < 0.5
            await trio.sleep(s.breaker.probe_interval)
            assert await s.aget_range("plain", 200, 210) == DATA[200:210]
            assert not s.breaker.down
        run(main)
    finally:
        s.close()


def test_signature_is_checked_by_an_endpoint_that_enforces_credentials(monkeypatch, auth_moto, fetch):
    with signed_store(monkeypatch, auth_moto, auth_moto.secret) as store:
        on_path(store, fetch)
        assert run(store.aget_range, "hello.txt", 0, 6) == b"hello\n"
        assert "hello.txt" in [o.key for o in run(store.alist_page, "").objects]
        assert run(store.ahead, "hello.txt").size == 6
        # awkward keys, signed by libcurl (its canonical path) or, with dot segments, by botocore
        bucket = unique_bucket_name(f"awkward-{fetch}")
        good = s3_client(auth_moto.endpoint_url, auth_moto.key_id, auth_moto.secret)
        good.create_bucket(Bucket=bucket)
        for key in AWKWARD:
            good.put_object(Bucket=bucket, Key=key, Body=DATA[:5000])
        with contextlib.closing(on_path(fast_path_store(auth_moto.endpoint_url, bucket), fetch)) as awkward:
            for key in AWKWARD:
                assert run(awkward.aget_range, key, 100, 4000) == DATA[100:4000], key
    with signed_store(monkeypatch, auth_moto, "not-the-secret") as store:
        on_path(store, fetch)
        with pytest.raises(AccessDenied):
            run(store.aget_range, "hello.txt", 0, 6)
        with pytest.raises(AccessDenied):
            run(store.alist_page, "")
        assert store.engine is not None


def test_session_credentials_are_signed_with_their_token(monkeypatch, tmp_path, fetch):
    """A moto that checks credentials and an assumed role's token: right, the requests pass; wrong,
    they are refused (libcurl signs the x-amz-security-token header it is given)."""
    from cachefs.devtools.devserver import MotoServer
    with MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "5"}) as server:
        iam = s3_client(server.endpoint_url, service="iam")
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        admin = (server.endpoint_url, key["AccessKeyId"], key["SecretAccessKey"])
        role = s3_client(*admin, service="iam").create_role(RoleName="reader", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"},
                                                    "Action": "sts:AssumeRole"}]}))["Role"]
        s3_client(*admin, service="iam").put_role_policy(RoleName="reader", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        s3_client(*admin).create_bucket(Bucket="tokens")
        s3_client(*admin).put_object(Bucket="tokens", Key="hello.txt", Body=b"hello\n")
        creds = s3_client(*admin, service="sts").assume_role(RoleArn=role["Arn"],
                                                             RoleSessionName="cachefs-tests")["Credentials"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["SecretAccessKey"])
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        for token, ok in ((creds["SessionToken"], True), ("bogus-token", False)):
            monkeypatch.setenv("AWS_SESSION_TOKEN", token)
            with contextlib.closing(fast_path_store(server.endpoint_url, "tokens")) as store:
                on_path(store, fetch)
                if ok:
                    assert run(store.aget_range, "hello.txt", 0, 6) == b"hello\n"
                    assert run(store.ahead, "hello.txt").size == 6
                    assert [o.key for o in run(store.alist_page, "").objects] == ["hello.txt"]
                else:       # 400 InvalidToken: a definite answer, as through boto3
                    with pytest.raises(StoreUnavailable, match="InvalidToken"):
                        run(store.aget_range, "hello.txt", 0, 6)
                    assert store.engine is not None and store.stats.get("s3_retries") == 0


def test_tls_endpoint_with_a_private_ca(aws_env, monkeypatch, moto_server, curl_bucket, tmp_path, store_at):
    from tls_helpers import TLSProxy, make_ca_and_cert
    ca, cert, key = make_ca_and_cert(tmp_path)
    with TLSProxy(moto_server.endpoint_url, cert, key) as proxy:
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))
        s = store_at(proxy.url, curl_bucket)
        try:
            assert s.engine.cainfo == str(ca)
            assert run(s.aget_range, "plain", 0, 100_000) == DATA[:100_000]
        finally:
            s.close()
        monkeypatch.delenv("AWS_CA_BUNDLE")       # the system's bundle does not know this CA
        s = store_at(proxy.url, curl_bucket, max_attempts=1)
        try:
            with pytest.raises(StoreUnavailable, match="(?i)certificate|SSL"):
                run(s.aget_range, "plain", 0, 1000)
        finally:
            s.close()


def test_the_boto3_engine_serves_the_coroutines_through_threads(aws_env, moto_server, curl_bucket):
    s = fast_path_store(moto_server.endpoint_url, curl_bucket, engine="boto3")
    try:
        assert s.engine is None
        assert run(s.aget_range, "plain", 0, 1000) == DATA[:1000]
        assert run(s.ahead, "plain").size == len(DATA)
    finally:
        s.close()
