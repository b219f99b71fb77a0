"""The shared cache tier (cache/shared.py) over the in-memory store: naming, framing and verification,
the best-effort read (misses, corruption, errors, deadline, breaker), the bounded write queue and
conditional writes. The real-mount tests with two daemons: tests/test_mount_shared_cache.py."""
from __future__ import annotations

import time

import trio
import trio.testing

from cachefs.cache.shared import HEADER, BlockId, SharedTier, frame, framed_size, object_name, unframe
from cachefs.cache.shared_claims import CLAIM_SUFFIX, Claim, claim_body, claim_time
from cachefs.errors import StoreUnavailable
from cachefs.stats import Stats
from cachefs.store.faults import FaultyStore
from cachefs.store.memory import MemoryStore

BLOCK = BlockId("http://origin:9000", "data", "train/shard-0", '"etag-1"', 4 << 20, 3)
BODY = bytes(range(256)) * 1000


def tier(store=None, **kw) -> tuple[SharedTier, MemoryStore, Stats]:
    mem = MemoryStore("shared")
    stats = Stats()
    return SharedTier(store or mem, "cache/", "http://origin:9000", stats, **kw), mem, stats


def name_of(block: BlockId) -> str:
    return object_name("cache/", block.encode())


def test_identity_names_and_frames():
    ident = BLOCK.encode()
    assert name_of(BLOCK).startswith("cache/v1/")
    for field in ("origin", "bucket", "key", "etag", "block_size", "index"):
        other = BlockId(**{**BLOCK.__dict__, field: getattr(BLOCK, field) * 2 if field != "index" else 4})
        assert name_of(other) != name_of(BLOCK), field
    raw = frame(ident, BODY)
    assert len(raw) == framed_size(ident, len(BODY)) == HEADER.size + len(ident) + len(BODY)
    assert bytes(unframe(ident, raw, len(BODY))) == BODY
    assert unframe(ident, raw[:-1], len(BODY)) == "truncated (255999 of 256000 body bytes)"
    assert unframe(ident, raw[:10], len(BODY)).startswith("truncated")
    assert unframe(BlockId(**{**BLOCK.__dict__, "index": 4}).encode(), raw, len(BODY)) == "another block's identity"
    flipped = bytearray(raw)
    flipped[-1] ^= 1
    assert unframe(ident, flipped, len(BODY)) == "checksum mismatch"
    assert unframe(ident, b"x" * len(raw), len(BODY)) == "not a cachefs shared block"


def test_miss_then_write_then_hit():
    shared, mem, stats = tier()

    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(shared.run)
            await trio.testing.wait_all_tasks_blocked()
            assert await shared.get(BLOCK, len(BODY)) is None
            assert shared.offer(BLOCK, BODY)
            while shared.queued:
                await trio.sleep(0.01)
            got = await shared.get(BLOCK, len(BODY))
            assert got is not None and bytes(got) == BODY
            n.cancel_scope.cancel()
    trio.run(main)
    s = stats.snapshot()
    assert (s["shared_cache_misses"], s["shared_cache_hits"], s["shared_cache_bytes"]) == (1, 1, len(BODY))
    assert s["shared_cache_writes"] == 1 and s["shared_cache_write_bytes"] == len(BODY)
    assert mem.keys("cache/v1/") == [name_of(BLOCK)]


def test_a_second_writer_of_the_same_block_writes_nothing():
    shared, mem, stats = tier()
    ident = BLOCK.encode()

    async def main():
        assert await shared.write(name_of(BLOCK), ident, BODY) is True
        assert await shared.write(name_of(BLOCK), ident, b"other bytes" * 10) is False
    trio.run(main)
    assert stats.get("shared_cache_write_conflicts") == 1
    assert bytes(unframe(ident, mem.body(name_of(BLOCK)), len(BODY))) == BODY


def _bad_object_is_a_miss_and_deleted(raw: bytes, length: int = len(BODY)) -> None:
    shared, mem, stats = tier()
    mem.put(name_of(BLOCK), raw)

    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(shared.run)
            await trio.testing.wait_all_tasks_blocked()
            assert await shared.get(BLOCK, length) is None
            while shared.queued:
                await trio.sleep(0.01)
            n.cancel_scope.cancel()
    trio.run(main)
    assert stats.get("shared_cache_corrupt") == 1 and stats.get("shared_cache_misses") == 1
    assert stats.get("shared_cache_hits") == 0
    assert mem.body(name_of(BLOCK)) is None, "the bad object is deleted"


def test_corrupt_object_is_a_miss_and_deleted():
    raw = bytearray(frame(BLOCK.encode(), BODY))
    raw[len(raw) // 2] ^= 0xFF
    _bad_object_is_a_miss_and_deleted(bytes(raw))


def test_truncated_object_is_a_miss_and_deleted():
    _bad_object_is_a_miss_and_deleted(frame(BLOCK.encode(), BODY)[:-1000])


def test_foreign_block_under_the_name_is_a_miss_and_deleted():
    other = BlockId(**{**BLOCK.__dict__, "etag": '"etag-2"'})
    _bad_object_is_a_miss_and_deleted(frame(other.encode(), BODY))


def test_errors_are_misses_and_three_in_a_row_make_the_tier_down():
    sent = []

    def rule(op, key, n):
        sent.append(op)
        return StoreUnavailable("boom") if op == "get" else None
    failing = FaultyStore(MemoryStore("shared"), rule)
    shared, _, stats = tier(failing)

    async def main():
        for i in range(5):      # other blocks: the same one is refused for a second after it failed
            assert await shared.get(BlockId(**{**BLOCK.__dict__, "index": i}), len(BODY)) is None
    trio.run(main)
    assert stats.get("shared_cache_errors") == 5
    assert sent.count("get") == 3, "down after three: the others are not sent"
    assert shared.breaker.down and shared.summary()["shared_cache_down"] == 1


def test_a_slow_tier_is_given_up_at_the_deadline():
    slow = FaultyStore(MemoryStore("shared"), lambda op, key, n: 5.0 if op == "get" else None)
    shared, _, stats = tier(slow, deadline=0.2)

    async def main():
        t0 = trio.current_time()
        assert await shared.get(BLOCK, len(BODY)) is None
        return trio.current_time() - t0
    took = trio.run(main)
    assert took < 1.0, took
    assert stats.get("shared_cache_errors") == 1


def test_a_full_queue_skips_and_counts():
    shared, _, stats = tier(queue_bytes=len(BODY) * 2)

    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(shared.run)
            await trio.testing.wait_all_tasks_blocked()
            offered = [shared.offer(BlockId(**{**BLOCK.__dict__, "index": i}), BODY) for i in range(5)]
            assert offered == [True, True, False, False, False]
            assert shared.summary()["shared_cache_queue_depth"] == 2
            n.cancel_scope.cancel()
    trio.run(main)
    assert stats.get("shared_cache_write_skipped") == 3


def test_fill_writes_once():
    shared, mem, stats = tier()
    fetched = []

    async def fetch():
        fetched.append(1)
        return BODY

    async def main():
        assert await shared.fill(BLOCK, len(BODY), fetch) is True
        assert await shared.fill(BLOCK, len(BODY), fetch) is False
    trio.run(main)
    assert len(fetched) == 1 and stats.get("shared_cache_writes") == 1


# -- claims: nodes missing a block at once fetch it from the origin once ----------------------------
def two_nodes(store, **kw) -> list[tuple[SharedTier, Stats]]:
    nodes = []
    for _ in range(2):
        stats = Stats()
        nodes.append((SharedTier(store, "cache/", "http://origin:9000", stats, **kw), stats))
    return nodes


async def _running(nursery, *tiers: SharedTier) -> None:
    for t in tiers:
        nursery.start_soon(t.run)
    await trio.testing.wait_all_tasks_blocked()


def test_the_claim_winner_fetches_and_the_loser_is_served_its_block():
    mem = MemoryStore("shared")
    (a, sa), (b, sb) = two_nodes(mem, claim_wait=5.0)
    a.claim_linger = 0.0
    got = {}

    async def loser():
        got["b"] = await b.acquire(BLOCK, len(BODY))

    async def main():
        async with trio.open_nursery() as n:
            await _running(n, a, b)
            claim = await a.acquire(BLOCK, len(BODY))
            assert isinstance(claim, Claim)
            assert mem.body(name_of(BLOCK) + CLAIM_SUFFIX) is not None
            async with trio.open_nursery() as waiting:
                waiting.start_soon(loser)
                await trio.sleep(0.1)           # b lost the claim and polls
                assert "b" not in got
                a.publish(claim, BODY)           # "fetched from the origin"
            with trio.move_on_after(5):
                while mem.body(name_of(BLOCK) + CLAIM_SUFFIX) is not None:
                    await trio.sleep(0.01)
            n.cancel_scope.cancel()
    trio.run(main)
    assert isinstance(got["b"], memoryview) and bytes(got["b"]) == BODY
    assert mem.keys("cache/v1/") == [name_of(BLOCK)], "the claim is deleted once the block is written"
    assert (sa.get("shared_cache_claims_won"), sa.get("shared_cache_misses")) == (1, 1)
    assert sa.get("shared_cache_writes") == 1
    assert (sb.get("shared_cache_claims_lost"), sb.get("shared_cache_claim_waits_served")) == (1, 1)
    assert (sb.get("shared_cache_hits"), sb.get("shared_cache_misses")) == (1, 0)


def test_a_loser_fetches_itself_when_the_claimant_never_writes():
    mem = MemoryStore("shared")
    (a, _), (b, sb) = two_nodes(mem, claim_wait=0.4)

    async def main():
        async with trio.open_nursery() as n:
            await _running(n, a, b)
            assert isinstance(await a.acquire(BLOCK, len(BODY)), Claim)     # ... and never published
            t0 = trio.current_time()
            assert await b.acquire(BLOCK, len(BODY)) is None
            took = trio.current_time() - t0
            n.cancel_scope.cancel()
        return took
    took = trio.run(main)
    assert 0.35 < took < 1.0, took
    assert (sb.get("shared_cache_claim_timeouts"), sb.get("shared_cache_misses")) == (1, 1)
    assert sb.get("shared_cache_claims_stale") == 0, "a fresh claim is waited for, not taken over"


def test_a_stale_claim_is_taken_over_within_the_wait():
    mem = MemoryStore("shared")
    mem.put(name_of(BLOCK) + CLAIM_SUFFIX, claim_body(now=time.time() - 3600))
    (a, sa), _ = two_nodes(mem, claim_wait=2.0)

    async def main():
        async with trio.open_nursery() as n:
            await _running(n, a)
            t0 = trio.current_time()
            claim = await a.acquire(BLOCK, len(BODY))
            took = trio.current_time() - t0
            n.cancel_scope.cancel()
        return claim, took
    claim, took = trio.run(main)
    assert isinstance(claim, Claim) and took < 1.0, took
    assert (sa.get("shared_cache_claims_lost"), sa.get("shared_cache_claims_stale"),
            sa.get("shared_cache_claims_won")) == (1, 1, 1)
    assert claim_time(mem.body(name_of(BLOCK) + CLAIM_SUFFIX)) > time.time() - 60, "the claim is this node's now"


def test_a_failing_claim_goes_to_the_origin_and_a_released_claim_is_deleted():
    mem = MemoryStore("shared")
    failing = FaultyStore(mem, lambda op, key, n: StoreUnavailable("boom") if key.endswith(CLAIM_SUFFIX) else None)
    shared, _, stats = tier(failing, claim_wait=1.0)
    ok, _, _ = tier(mem, claim_wait=1.0)

    async def main():
        async with trio.open_nursery() as n:
            await _running(n, shared, ok)
            assert await shared.acquire(BLOCK, len(BODY)) is None
            claim = await ok.acquire(BLOCK, len(BODY))
            assert isinstance(claim, Claim)
            ok.release(claim)
            # the delete runs in a thread: wait for it, not for the tasks to block
            with trio.fail_after(5):
                while mem.body(name_of(BLOCK) + CLAIM_SUFFIX) is not None:
                    await trio.sleep(0.01)
            n.cancel_scope.cancel()
    trio.run(main)
    assert (stats.get("shared_cache_errors"), stats.get("shared_cache_misses")) == (1, 1)
    assert mem.body(name_of(BLOCK) + CLAIM_SUFFIX) is None


def test_no_claims_when_off_or_when_the_block_could_not_be_written():
    for kw in ({"claim_wait": 0}, {"queue_bytes": 0}):
        shared, mem, stats = tier(**kw)

        async def main(shared=shared):
            async with trio.open_nursery() as n:
                await _running(n, shared)
                assert await shared.acquire(BLOCK, len(BODY)) is None
                n.cancel_scope.cancel()
        trio.run(main)
        assert stats.get("shared_cache_misses") == 1 and stats.get("shared_cache_claims_won") == 0, kw
        assert mem.keys("cache/") == []
