"""The libcurl engine's parts without an S3 server: the trio-driven multi against a loopback socket
server (sockets closed while watched, cancellation, reuse), answer parsing, keys in URLs, listings,
and the trio paths of the breaker, hedging and fault injection."""
from __future__ import annotations

import time

import pycurl
import pytest
import trio

from cachefs.errors import StoreUnavailable
from cachefs.stats import Stats
from cachefs.store.curlengine import _dot_segments, _Exchange, quote_key
from cachefs.store.curlmulti import TrioMulti
from cachefs.store.faults import FaultyStore
from cachefs.store.health import OutageBreaker
from cachefs.store.hedge import MIN_SAMPLES, HedgedStore, size_class
from cachefs.store.memory import MemoryStore
from cachefs.store.s3list import FallBack, parse_page

from .loopback_http import Server

pytestmark = pytest.mark.timeout(60)


async def fetch(multi, url, **opts):
    c = pycurl.Curl()
    ex = _Exchange(0, None)
    c.setopt(pycurl.URL, url)
    c.setopt(pycurl.HEADERFUNCTION, ex.header)
    c.setopt(pycurl.WRITEFUNCTION, ex.write)
    for k, v in opts.items():
        c.setopt(getattr(pycurl, k), v)
    code, message = await multi.perform(c)
    return code, ex


def test_many_transfers_share_kept_alive_connections():
    server = Server(lambda path: "ok")

    async def main():
        multi = TrioMulti()
        assert multi.bound_to_current_run()
        results = []

        async def one(i):
            results.append((i, await fetch(multi, f"{server.url}/{i}")))
        for _ in range(3):
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(one, i)
        assert len(results) == 24
        assert all(code == 0 and ex.status == 200 and ex.body() == f"/{i}".encode() * 100
                   for i, (code, ex) in results)
        multi.close()
    trio.run(main)
    assert server.connections <= 8       # kept alive and reused (libcurl's connection cache)
    server.close()


def test_a_connection_closed_by_the_server_and_libcurl_while_watched_is_no_error():
    """The server closes some connections without answering; libcurl closes those sockets while
    their watcher tasks wait on them (notify_closing), then opens new ones with the same numbers."""
    state = {"n": 0}

    def behaviour(path):
        state["n"] += 1
        return "close" if state["n"] % 3 == 0 else "ok"
    server = Server(behaviour)

    async def main():
        multi = TrioMulti()
        multi.bound_to_current_run()
        codes = []
        for i in range(30):
            code, ex = await fetch(multi, f"{server.url}/{i}")
            codes.append(code)
        # the closed ones: an error (or libcurl's own retry on a fresh connection), never a hang
        assert codes.count(0) >= 20 and all(c in (0, pycurl.E_GOT_NOTHING, pycurl.E_RECV_ERROR) for c in codes)
        await trio.sleep(0.1)
        multi.close()
    trio.run(main)
    server.close()


def test_a_cancelled_transfer_is_removed_and_its_socket_closed():
    server = Server(lambda path: "stall" if path == "/stall" else "ok")

    async def main():
        multi = TrioMulti()
        multi.bound_to_current_run()
        with trio.move_on_after(0.3):
            await fetch(multi, f"{server.url}/stall")
        assert multi._transfers == {} and multi.watched_sockets == 0
        code, ex = await fetch(multi, f"{server.url}/after")
        assert code == 0 and ex.body() == b"/after" * 100
        multi.close()
    trio.run(main)
    assert server.closed.wait(5), "the server never saw the connection close"
    server.close()


def test_a_multi_belongs_to_one_trio_run():
    multi = TrioMulti()
    trio.run(lambda: _bound(multi, True))
    trio.run(lambda: _bound(multi, False))


async def _bound(multi, expected):
    assert multi.bound_to_current_run() is expected


def test_an_answer_is_parsed_and_a_matching_body_lands_in_a_block_buffer():
    answered = trio.Event()
    ex = _Exchange(10, answered)
    for line in (b"HTTP/1.1 100 Continue\r\n", b"\r\n", b"HTTP/1.1 206 Partial Content\r\n",
                 b"Content-Length: 10\r\n", b"ETag: \"abc\"\r\n", b"x-amz-meta-Mode: 0644\r\n"):
        ex.header(line)
    assert not answered.is_set()
    ex.header(b"\r\n")
    assert answered.is_set() and ex.status == 206
    assert ex.headers == {"content-length": "10", "etag": '"abc"', "x-amz-meta-mode": "0644"}
    assert ex.write(b"01234") is None and ex.write(b"56789") is None
    body = ex.body()
    assert body == b"0123456789" and isinstance(body, memoryview)
    assert ex.write(b"more") == 0           # past the announced length: libcurl aborts


def test_other_answers_are_bytes_and_error_bodies_are_capped():
    ex = _Exchange(10, None)
    ex.header(b"HTTP/1.1 200 OK\r\n")
    ex.header(b"Content-Length: 12\r\n")
    ex.write(b"0123456789ab")
    assert ex.body() == b"0123456789ab" and isinstance(ex.body(), bytes)
    err = _Exchange(10, None)
    err.header(b"HTTP/1.1 500 Internal\r\n")
    for _ in range(100):
        err.write(b"e" * 4096)
    assert 64 * 1024 <= len(err.body()) < 70 * 1024


@pytest.mark.parametrize("key,want", [("a b+c%d~e/ü", "a%20b%2Bc%25d~e/%C3%BC"), ("q?x#y", "q%3Fx%23y"),
                                      ("a//b", "a//b"), ("it's(1)*!", "it%27s%281%29%2A%21")])
def test_keys_are_percent_encoded_like_botocore(key, want):
    from botocore.utils import percent_encode
    assert quote_key(key) == want == percent_encode(key, safe="/~")


def test_dot_segments_are_found():
    assert _dot_segments("a/../b") and _dot_segments("./x") and _dot_segments("a/.")
    assert not _dot_segments("a/.b") and not _dot_segments("a..b/c") and not _dot_segments("plain")


def test_a_url_encoded_listing_is_decoded():
    page = parse_page(b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>d%2F</Prefix>
<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated><NextContinuationToken>tok</NextContinuationToken>
<Contents><Key>d/a+b%2Bc%C3%BC</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified><ETag>"e"</ETag>
<Size>12</Size></Contents><CommonPrefixes><Prefix>d/sub%20dir/</Prefix></CommonPrefixes></ListBucketResult>""")
    assert [(o.key, o.size, o.etag) for o in page.objects] == [("d/a b+cü", 12, '"e"')]
    assert page.prefixes == ["d/sub dir/"] and page.next_token == "tok"
    assert page.objects[0].mtime_ns == 1704164645 * 10**9
    with pytest.raises(FallBack):
        parse_page(b"<Error><Code>x</Code></Error>")


def test_the_breaker_waits_for_the_probe_in_trio_without_blocking_the_thread():
    b = OutageBreaker("ep", threshold=1, probe_interval=0.0, probe_wait=10.0)
    b.failed("refused")
    assert b.admit(("get", "k", 0)) is True          # the probe is out

    async def main():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                ticks += 1
                await trio.sleep(0.01)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            async def end_probe():
                await trio.sleep(0.2)
                b.succeeded()
            nursery.start_soon(end_probe)
            t0 = trio.current_time()
            assert await b.aadmit(("get", "k", 1)) is False
            assert 0.15 < trio.current_time() - t0 < 2 and ticks >= 5       # the loop ran meanwhile
            nursery.cancel_scope.cancel()
    trio.run(main)
    b.failed("refused")
    b.admit(("get", "k", 2))
    b._next_probe = time.monotonic() + 60
    b.probe_wait = 0.2

    async def fails():
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await b.aadmit(("get", "k", 3))
    trio.run(fails)


def _hedged(rule):
    stats = Stats()
    mem = MemoryStore("bkt", stats)
    mem.put("k", b"x" * 100_000)
    faulty = FaultyStore(mem, rule)
    store = HedgedStore(faulty, stats, min_delay=0.02)
    for _ in range(MIN_SAMPLES):
        store.latency.add(size_class(100_000), 0.001)
    return store, stats


def test_hedging_in_trio_takes_the_faster_duplicate_and_cancels_the_other():
    store, stats = _hedged(lambda op, key, n: 5.0 if n == 0 else None)

    async def main():
        t0 = trio.current_time()
        assert await store.aget_range("k", 0, 100_000) == b"x" * 100_000
        assert trio.current_time() - t0 < 1
    trio.run(main)
    assert stats.get("s3_hedged") == 1 and stats.get("s3_hedge_wins") == 1


def test_hedging_in_trio_passes_on_errors():
    store, stats = _hedged(lambda op, key, n: StoreUnavailable("boom") if n == 0 else None)
    with pytest.raises(StoreUnavailable, match="boom"):
        trio.run(store.aget_range, "k", 0, 100_000)
    assert stats.get("s3_hedged") == 0
    # the duplicate fails at once: the straggler's answer is still taken
    store, stats = _hedged(lambda op, key, n: 0.3 if n == 0 else StoreUnavailable(f"boom {n}"))
    assert trio.run(store.aget_range, "k", 0, 100_000) == b"x" * 100_000
    assert stats.get("s3_hedged") == 1 and stats.get("s3_hedge_wins") == 0


def test_fault_injection_delays_in_trio():
    stats = Stats()
    mem = MemoryStore("bkt", stats)
    mem.put("k", b"abc")
    faulty = FaultyStore(mem, lambda op, key, n: 0.2 if op == "head" else None)

    async def main():
        t0 = trio.current_time()
        assert (await faulty.ahead("k")).size == 3
        assert trio.current_time() - t0 >= 0.2
        assert await faulty.aget_range("k", 0, 2) == b"ab"
        assert [o.key for o in (await faulty.alist_page("")).objects] == ["k"]
    trio.run(main)
