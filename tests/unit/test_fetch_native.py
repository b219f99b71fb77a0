"""The C fetcher (native/fetch.c, cachefs._fetch) and its trio adapter (store/curlfetch.py) against a
loopback HTTP server: bodies straight into the caller's buffers, error answers, bodies longer than
the buffer, cancellation, the early "answered" signal, header parsing, close, refused connections,
and the engine's GETs on it across trio runs."""
from __future__ import annotations

import select
import socket
import threading
import time

import pytest
import trio

_fetch = pytest.importorskip("cachefs._fetch")

from cachefs.store import curlfetch  # noqa: E402
from cachefs.store.curlfetch import Answer, TrioFetcher  # noqa: E402

from .loopback_http import Reply, serving  # noqa: E402

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not curlfetch.available(), reason=curlfetch.WHY_NOT or "the C fetcher is off"),
]

CURLE_COULDNT_CONNECT = 7
CURLE_WRITE_ERROR = 23
ERROR_XML = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
             b"<Message>The specified key does not exist.</Message></Error>")


def body_of(path: str) -> bytes:
    """A distinct body per path, its length from the path's number: some span several receive buffers."""
    n = int(path.rsplit("/", 1)[1])
    unit = path.encode() + b"|"
    size = 1000 + n * 97_003
    return (unit * (size // len(unit) + 1))[:size]


def trio_fetcher(max_connections: int = 8, connect_timeout: float = 5.0, read_timeout: float = 10.0) -> TrioFetcher:
    return TrioFetcher(max_connections=max_connections, connect_timeout=connect_timeout, read_timeout=read_timeout,
                       cainfo=None, useragent="cachefs-tests")


async def bound(max_connections: int = 8, **kw) -> TrioFetcher:
    f = trio_fetcher(max_connections, **kw)
    assert f.bound_to_current_run()
    return f


async def wait_pending_zero(f: TrioFetcher, seconds: float = 1.0) -> None:
    """The worker reports a stopped transfer asynchronously: `pending` drops once drained."""
    with trio.move_on_after(seconds):
        while f.pending:
            await trio.sleep(0.01)
    assert f.pending == 0


def raw_wait(fetcher, seconds: float = 5.0) -> list:
    """Without trio: drain the C fetcher until it reports something (or `seconds` pass)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ready, _, _ = select.select([fetcher.fileno()], [], [], max(0.0, end - time.monotonic()))
        if ready:
            records = fetcher.drain()
            if records:
                return records
    return []


# -- bodies ---------------------------------------------------------------------------------------

def test_concurrent_gets_land_exact_bodies_in_their_buffers_over_reused_connections():
    with serving(lambda path: Reply(body=body_of(path))) as server:
        async def main():
            f = await bound(max_connections=4)
            results = {}

            async def one(i):
                path = f"/obj/{i}"
                buf = bytearray(len(body_of(path)))
                results[path] = (await f.get(server.url + path, [], buf, None, None, False, None), buf)
            for _ in range(3):
                async with trio.open_nursery() as nursery:
                    for i in range(16):
                        nursery.start_soon(one, i)
                assert len(results) == 16
                for path, (answer, buf) in results.items():
                    want = body_of(path)
                    assert (answer.code, answer.status, answer.body_len) == (0, 200, len(want)), path
                    assert buf == want, path
                    assert answer.error_body == b""
                results.clear()
            assert f.pending == 0
            f.close()
        trio.run(main)
        # at most max_connections at a time, kept alive and reused across the rounds
        assert 1 <= server.connections <= 4
        assert len(server.requests) == 48


def test_connections_opened_are_reported_per_transfer():
    with serving(lambda path: Reply(body=b"x" * 10)) as server:
        async def main():
            f = await bound(max_connections=2)
            opened = 0

            async def one(i):
                nonlocal opened
                answer = await f.get(f"{server.url}/{i}", [], bytearray(10), None, None, False, None)
                assert answer.code == 0
                opened += answer.connects
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i)
            f.close()
            return opened
        assert trio.run(main) == server.connections >= 1


def test_idle_connections_are_kept_when_few_transfers_run():
    """libcurl's default pool is 4x the transfers in flight: 16 connections opened by 16 GETs at
    once were closed down to 4 as soon as one GET ran alone, and the next burst opened them again
    (a tenth of a hinted epoch's GETs opened a connection: docs/BENCHMARKS.md). The pool is the
    fetcher's connection limit."""
    with serving(lambda path: Reply(body=b"y" * 100)) as server:
        async def main():
            f = await bound(max_connections=16)

            async def one(i):
                answer = await f.get(f"{server.url}/{i}", [], bytearray(100), None, None, False, None)
                assert answer.code == 0
            for _ in range(3):
                async with trio.open_nursery() as nursery:       # a burst: 16 in flight
                    for i in range(16):
                        nursery.start_soon(one, i)
                for i in range(4):                               # then one at a time
                    await one(100 + i)
            f.close()
        trio.run(main)
        assert server.connections <= 16
        assert len(server.requests) == 60


def test_the_buffer_is_held_while_the_transfer_runs_and_released_after():
    hold = threading.Event()
    with serving(lambda path: Reply(body=b"y" * 1000, hold=hold)) as server:
        async def main():
            f = await bound()
            buf = bytearray(1000)
            async with trio.open_nursery() as nursery:
                async def get():
                    answer = await f.get(f"{server.url}/k", [], buf, None, None, False, None)
                    assert answer.body_len == 1000
                nursery.start_soon(get)
                await trio.sleep(0.2)
                with pytest.raises(BufferError):        # exported to the worker: cannot move
                    buf.extend(b"!")
                hold.set()
            assert buf == b"y" * 1000
            buf.extend(b"!")                            # given back by drain()
            f.close()
        trio.run(main)


def test_request_headers_path_as_is_and_sigv4_reach_the_server():
    with serving(lambda path: Reply(body=b"z" * 5)) as server:
        async def main():
            f = await bound()
            for path, as_is in (("/a/../b", True), ("/c/../d", False)):
                answer = await f.get(server.url + path, ["Range: bytes=0-4", "If-Match: \"e1\""], bytearray(5),
                                     "aws:amz:us-east-1:s3", "AKIDTEST:secret", as_is, None)
                assert answer.code == 0 and answer.status == 200
            answer = await f.get(server.url + "/plain", [], bytearray(5), None, None, False, None)
            assert answer.code == 0
            f.close()
        trio.run(main)
        (p1, h1), (p2, h2), (p3, h3) = server.requests
        assert (p1, p2, p3) == ("/a/../b", "/d", "/plain")     # libcurl tidies the path unless as_is
        for h in (h1, h2):
            assert h["range"] == "bytes=0-4" and h["if-match"] == '"e1"'
            assert h["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
            assert "/us-east-1/s3/aws4_request" in h["authorization"] and "x-amz-date" in h
        assert "authorization" not in h3 and h3["user-agent"] == "cachefs-tests"


# -- answers other than the body asked for ---------------------------------------------------------

def test_an_error_answer_gives_its_status_and_body_and_leaves_the_buffer_alone():
    def behaviour(path):
        if path == "/missing":
            return Reply(status=404, body=ERROR_XML, headers=[("Content-Type", "application/xml")])
        if path == "/big-error":
            return Reply(status=500, body=b"e" * 200_000)
        return Reply(body=b"s" * 10)           # a 200 shorter than the buffer
    with serving(behaviour) as server:
        async def main():
            f = await bound()
            # the buffer as long as the error body: still not written into
            buf = bytearray(b"\xaa" * len(ERROR_XML))
            answer = await f.get(server.url + "/missing", [], buf, None, None, False, None)
            assert (answer.code, answer.status, answer.body_len) == (0, 404, 0)
            assert answer.error_body == ERROR_XML
            assert answer.headers()["content-type"] == "application/xml"
            assert buf == b"\xaa" * len(ERROR_XML)
            buf = bytearray(b"\xbb" * 100)
            answer = await f.get(server.url + "/big-error", [], buf, None, None, False, None)
            assert (answer.code, answer.status, answer.body_len) == (0, 500, 0)
            assert answer.error_body == b"e" * (64 * 1024)      # capped
            assert buf == b"\xbb" * 100
            # a 200 whose Content-Length is not the buffer's: the body is kept aside, not in the buffer
            buf = bytearray(b"\xcc" * 100)
            answer = await f.get(server.url + "/short", [], buf, None, None, False, None)
            assert (answer.code, answer.status, answer.body_len, answer.error_body) == (0, 200, 0, b"s" * 10)
            assert buf == b"\xcc" * 100
            assert f.pending == 0
            f.close()
        trio.run(main)


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_a_body_longer_than_the_buffer_ends_with_a_write_error(framing):
    with serving(lambda path: Reply(body=b"L" * (int(path[1:])), framing=framing)) as server:
        async def main():
            f = await bound()
            buf = bytearray(50_000)
            answer = await f.get(f"{server.url}/80000", [], buf, None, None, False, None)
            assert answer.code == CURLE_WRITE_ERROR and answer.message
            assert answer.status == 200 and answer.error_body == b""
            # no length announced and the body fits: into the buffer, exact or short
            buf = bytearray(50_000)
            answer = await f.get(f"{server.url}/50000", [], buf, None, None, False, None)
            assert (answer.code, answer.status, answer.body_len) == (0, 200, 50_000) and buf == b"L" * 50_000
            buf = bytearray(50_000)
            answer = await f.get(f"{server.url}/30000", [], buf, None, None, False, None)
            assert (answer.code, answer.body_len) == (0, 30_000) and buf[:30_000] == b"L" * 30_000
            assert f.pending == 0
            f.close()
        trio.run(main)


def test_a_body_announced_longer_than_the_buffer_is_not_written_into_it():
    with serving(lambda path: Reply(body=b"M" * 80_000)) as server:
        async def main():
            f = await bound()
            buf = bytearray(50_000)
            answer = await f.get(f"{server.url}/x", [], buf, None, None, False, None)
            assert answer.code == 0 and answer.status == 200 and answer.body_len == 0
            assert buf == bytes(50_000)
            f.close()
        trio.run(main)


# -- cancellation, the answered signal, headers ------------------------------------------------------

def test_a_cancelled_waiter_stops_its_transfer_and_closes_the_connection():
    with serving(lambda path: "stall" if path == "/stall" else Reply(body=b"after" * 100)) as server:
        async def main():
            f = await bound()
            buf = bytearray(1000)
            t0 = trio.current_time()
            with trio.move_on_after(0.5) as scope:
                await f.get(server.url + "/stall", [], buf, None, None, False, None)
            assert scope.cancelled_caught and trio.current_time() - t0 < 1.5
            assert server.stalled.is_set()
            await wait_pending_zero(f)
            buf.extend(b"!")                # the buffer is given back too
            answer = await f.get(server.url + "/after", [], bytearray(500), None, None, False, None)
            assert answer.code == 0 and answer.status == 200 and answer.body_len == 500
            assert answer.connects == 1        # the stalled connection could not be reused
            f.close()
        trio.run(main)
        assert server.closed.wait(5), "the server never saw the connection close"


def test_many_cancelled_waiters_all_stop():
    with serving(lambda path: "stall") as server:
        async def main():
            f = await bound(max_connections=100)
            with trio.move_on_after(0.5):
                async with trio.open_nursery() as nursery:
                    for i in range(100):
                        nursery.start_soon(f.get, f"{server.url}/{i}", [], bytearray(10), None, None, False, None)
            await wait_pending_zero(f, 2.0)
            f.close()
        trio.run(main)


def test_a_waiter_cancelled_while_queued_for_a_connection_leaves_the_fetcher_usable():
    with serving(lambda path: "stall" if path == "/stall" else Reply(body=b"k" * 100)) as server:
        async def main():
            f = await bound(max_connections=1)
            with trio.move_on_after(5):
                async with trio.open_nursery() as nursery:
                    # the one connection stalls; the second GET waits for it in libcurl's queue
                    nursery.start_soon(f.get, server.url + "/stall", [], bytearray(10), None, None, False, None)
                    await trio.to_thread.run_sync(server.stalled.wait, 5)
                    nursery.start_soon(f.get, server.url + "/queued", [], bytearray(100), None, None, False, None)
                    await trio.sleep(0.2)
                    nursery.cancel_scope.cancel()
            await wait_pending_zero(f)
            # more at once than there are recycled handles: every one of them is used again
            answers, errors = [], []

            async def get(i):
                try:
                    answers.append(await f.get(f"{server.url}/{i}", [], bytearray(100), None, None, False, None))
                except ValueError as e:         # submit refused (not wrapped in the nursery's group)
                    errors.append(e)
            for _ in range(2):
                async with trio.open_nursery() as nursery:
                    for i in range(4):
                        nursery.start_soon(get, i)
            if errors:
                raise errors[0]
            assert [(a.code, a.status, a.body_len) for a in answers] == [(0, 200, 100)] * 8
            f.close()
        trio.run(main)


def test_answered_is_set_when_the_headers_are_in_before_the_body():
    hold = threading.Event()

    def behaviour(path):
        if path == "/missing":
            return Reply(status=404, body=ERROR_XML, hold=hold)
        return Reply(body=b"B" * 100_000, hold=hold)
    with serving(behaviour) as server:
        async def main():
            f = await bound()
            buf = bytearray(100_000)
            answered = trio.Event()
            done = trio.Event()
            got = []

            async def get(path, event):
                got.append(await f.get(server.url + path, [], buf, None, None, False, event))
                done.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(get, "/obj", answered)
                with trio.fail_after(3):
                    await answered.wait()
                assert not done.is_set() and not got
                await trio.sleep(0.2)
                assert not done.is_set()          # the body is still held back
                hold.set()
            assert got[0].code == 0 and got[0].body_len == 100_000 and buf == b"B" * 100_000
            # an error answer is no answer to wait for
            hold.clear()
            not_ok = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(get, "/missing", not_ok)
                await trio.sleep(0.5)
                assert len(server.requests) == 2 and not not_ok.is_set()
                hold.set()
            assert got[1].status == 404 and not not_ok.is_set()
            f.close()
        trio.run(main)


def test_answer_headers_are_parsed():
    reply = Reply(status=206, body=b"0123456789", headers=[
        ("ETag", '"0123abcd"'), ("x-amz-meta-Mode", "0644"), ("X-Amz-Meta-uid", " 1000 "),
        ("Last-Modified", "Tue, 02 Jan 2024 03:04:05 GMT"), ("Content-Range", "bytes 0-9/300")])
    with serving(lambda path: reply) as server:
        async def main():
            f = await bound()
            t0 = time.perf_counter()
            answer = await f.get(f"{server.url}/k", [], bytearray(10), None, None, False, None)
            t1 = time.perf_counter()
            f.close()
            return answer, t0, t1
        answer, t0, t1 = trio.run(main)
    assert answer.code == 0 and answer.status == 206 and answer.body_len == 10
    h = answer.headers()
    assert h["etag"] == '"0123abcd"' and h["x-amz-meta-mode"] == "0644" and h["x-amz-meta-uid"] == "1000"
    assert h["last-modified"] == "Tue, 02 Jan 2024 03:04:05 GMT" and h["content-range"] == "bytes 0-9/300"
    assert h["content-length"] == "10"
    assert not any(k.startswith("http/") for k in h)
    assert t0 <= answer.headers_at <= t1           # time.perf_counter's clock


def test_the_answer_record_shape():
    record = (7, 0, "", 206, b"HTTP/1.1 206\r\nETag: \"x\"\r\nbad line\r\n\r\n", 3, b"", 1, 2_500_000_000)
    answer = Answer(record)
    assert (answer.code, answer.status, answer.body_len, answer.connects, answer.headers_at) == (0, 206, 3, 1, 2.5)
    assert answer.headers() == {"etag": '"x"'}


# -- the C fetcher without trio -----------------------------------------------------------------------

def test_the_raw_fetcher_reports_through_its_eventfd_and_drops_cancelled_transfers():
    with serving(lambda path: "stall" if path == "/stall" else Reply(body=b"r" * 64)) as server:
        f = _fetch.Fetcher(4, 5000, 10, None, "cachefs-tests")
        try:
            buf = bytearray(64)
            ident = f.submit(server.url + "/r", [], buf, None, None, False, True)
            assert f.pending == 1
            records = raw_wait(f)
            while records and records[0][1] == _fetch.ANSWERED:
                assert records[0] == (ident, _fetch.ANSWERED, "")
                records = records[1:] or raw_wait(f)
            assert len(records) == 1
            rid, code, message, status, raw_headers, body_len, error_body, connects, headers_at_ns = records[0]
            assert (rid, code, message, status, body_len, error_body, connects) == (ident, 0, "", 200, 64, b"", 1)
            assert b"Content-Length: 64" in raw_headers and headers_at_ns > 0
            assert buf == b"r" * 64 and f.pending == 0
            # a cancelled transfer is stopped and given back, not reported
            stalled = f.submit(server.url + "/stall", [], bytearray(8), None, None, False, False)
            assert server.stalled.wait(5)
            f.cancel(stalled)
            assert raw_wait(f, 1.0) == []
            assert f.pending == 0
            assert server.closed.wait(5)
            f.cancel(12345)                     # unknown: ignored
            with pytest.raises(TypeError):
                f.submit(server.url + "/r", ("not", "a", "list"), None, None, None, False, False)
            with pytest.raises(BufferError):
                f.submit(server.url + "/r", [], b"read-only", None, None, False, False)
            assert f.pending == 0
        finally:
            f.close()
        f.close()
        with pytest.raises(RuntimeError):
            f.submit(server.url + "/r", [], None, None, None, False, False)
        f.cancel(1)                             # after close: nothing to do


# -- close, runs, refused ---------------------------------------------------------------------------

def test_close_with_a_transfer_in_flight_returns_at_once_and_fails_the_waiter():
    with serving(lambda path: "stall") as server:
        async def main():
            f = await bound()
            errors = []

            async def get():
                try:
                    await f.get(f"{server.url}/s", [], bytearray(10), None, None, False, None)
                except ConnectionError as e:
                    errors.append(e)
            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(get)
                    await trio.to_thread.run_sync(server.stalled.wait, 5)
                    t0 = time.monotonic()
                    f.close()
                    assert time.monotonic() - t0 < 0.5      # the worker is woken, not waited for
            assert len(errors) == 1 and "closed" in str(errors[0])
            assert f.pending == 0 and f.closed
            f.close()                           # twice: fine
            with pytest.raises(RuntimeError):
                await f.get(f"{server.url}/s", [], bytearray(10), None, None, False, None)
            await trio.sleep(0.05)              # the drain task ended quietly
        trio.run(main)
        assert server.closed.wait(5)


def test_a_fetcher_belongs_to_one_trio_run():
    with serving(lambda path: Reply(body=b"q" * 20)) as server:
        f = trio_fetcher()

        async def first():
            assert f.bound_to_current_run()
            return await f.get(f"{server.url}/1", [], bytearray(20), None, None, False, None)

        async def second():
            return f.bound_to_current_run()
        assert trio.run(first).body_len == 20
        assert trio.run(second) is False
        f.close()                                # outside any run: fine
        f.close()


def test_the_engine_replaces_a_fetcher_from_an_earlier_run_and_can_go_back_to_pycurl():
    import boto3
    from botocore.config import Config

    from cachefs.store.curlengine import CurlEngine

    def behaviour(path):
        return Reply(status=206, body=b"0123456789", headers=[("ETag", '"e"')])
    with serving(behaviour) as server:
        client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="AK",
                              aws_secret_access_key="SK", config=Config(s3={"addressing_style": "path"}))
        engine = CurlEngine(client, "bkt", connect_timeout=5.0, read_timeout=10.0, max_connections=4)
        try:
            assert engine.fetch_native
            assert bytes(trio.run(engine.get, "k", 0, 10, None)) == b"0123456789"
            first = engine._fetcher
            assert first is not None and not first.closed
            assert bytes(trio.run(engine.get, "k", 0, 10, None)) == b"0123456789"
            assert engine._fetcher is not first and first.closed
            assert server.requests[-1][0] == "/bkt/k"
            assert server.requests[-1][1]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AK/")
            engine.fetch_native = False
            engine.close()
            assert engine._fetcher is None
            assert bytes(trio.run(engine.get, "k", 0, 10, None)) == b"0123456789"
            assert engine._fetcher is None and engine._multi is not None       # on pycurl
            assert len(server.requests) == 3
        finally:
            engine.close()


def test_a_refused_connection_fails_at_once():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    async def main():
        f = await bound(connect_timeout=10.0)
        t0 = trio.current_time()
        answer = await f.get(f"http://127.0.0.1:{port}/x", [], bytearray(10), None, None, False, None)
        assert trio.current_time() - t0 < 2
        f.close()
        return answer
    answer = trio.run(main)
    assert answer.code == CURLE_COULDNT_CONNECT and answer.status == 0 and answer.message
    assert answer.body_len == 0 and answer.error_body == b""
