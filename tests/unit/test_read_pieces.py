"""Random cold reads (reader/pieces.py): a random reader fetches the pieces it reads, not whole blocks;
pieces are cached, checksummed and served warm; hot blocks are filled; an interrupted fetch never
leaves its waiters hanging. BlockReader over the in-memory store, with 256 KiB blocks of 16 KiB pieces
(the 4 MiB / 64 KiB of a mount, scaled down)."""
import os
import random

import pytest
import trio
import trio.testing

from cachefs.blocks import block_key, piece_key
from cachefs.cache.tiered import TieredCache
from cachefs.config import build_config
from cachefs.meta.schema import ROOT_INO
from cachefs.meta.store import MetaStore
from cachefs.namespace.core import Namespace
from cachefs.reader import BlockReader, ReadState
from cachefs.stats import Stats
from cachefs.store.memory import MemoryStore

from .tier_specs import disk_spec

BS = 256 * 1024
PS = 16 * 1024
SIZE = 32 * BS + 12345          # 8 MiB and a short last block
FIRST = 20 * BS + 5             # a first read this far into a fresh open is random


async def run_blocking(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)


@pytest.fixture
def world(tmp_path):
    stats = Stats()
    store = MemoryStore("bkt", stats)
    cfg = build_config("s3://bkt/pre", "/mnt", {"block_size": str(BS), "metadata_head_size": "0"}, None, {})
    meta = MetaStore(str(tmp_path / "meta"), cfg.identity())
    cache = TieredCache.build([disk_spec("ssd", (str(tmp_path / "blocks"),), 256 * BS)], meta, stats)
    cache.open()
    ns = Namespace(meta, store, cfg, run_blocking)
    reader = BlockReader(store, cache, run_blocking, stats, bucket="bkt", block_size=BS, read_ahead=4 * BS,
                         piece_size=PS)
    data = random.Random(7).randbytes(SIZE)
    store.put("pre/f", data)
    yield store, ns, reader, stats, data
    meta.close()


async def _inode(ns):
    return await ns.lookup(ROOT_INO, b"f")


async def _read_at(reader, inode, reads, state=None):
    """Reads [(offset, size)] in one open file (a nursery for read-ahead and fills); the bytes of each."""
    state = state or ReadState()
    out = []
    async with trio.open_nursery() as nursery:
        reader.nursery = nursery
        for off, size in reads:
            out.append(bytes(await reader.read(inode, "pre/f", off, size, state)))
        await trio.testing.wait_all_tasks_blocked()
    reader.nursery = None
    return out


def _random_reads(n, size, seed=1, aligned=True):
    rng = random.Random(seed)
    reads = []
    for _ in range(n):
        off = rng.randrange(2 * BS, SIZE - size)     # past SKIP_TOLERANCE... of a fresh open: random
        reads.append((off - off % size if aligned else off, size))
    return reads


def test_random_reads_are_byte_exact_and_fetch_only_pieces(world):
    store, ns, reader, stats, data = world
    rng = random.Random(3)
    reads = [(rng.randrange(0, SIZE), rng.choice((1, 100, PS - 1, PS, PS + 1, 3 * PS + 7, BS + 5)))
             for _ in range(300)]

    async def main():
        return await _read_at(reader, await _inode(ns), [(2 * BS, 10)] + reads)
    got = trio.run(main)
    for (off, size), chunk in zip([(2 * BS, 10)] + reads, got, strict=True):
        assert chunk == data[off:off + size], (off, size)
    assert stats.get("piece_reads") > 0 and stats.get("piece_fetches") > 0


def test_aligned_random_reads_fetch_what_they_read(world):
    """Amplification (bytes fetched / bytes read) of a random piece-sized pattern: <= 1.5 (here 1.0: no
    block gets half its pieces read, so nothing is filled)."""
    store, ns, reader, stats, data = world
    reads = _random_reads(60, PS)

    async def main():
        return await _read_at(reader, await _inode(ns), [(FIRST, 1)] + reads)
    trio.run(main)
    distinct = len(set(reads)) + 1
    assert stats.get("s3_get_bytes") <= 1.5 * PS * distinct
    assert stats.get("piece_fills") == 0 and stats.get("cache_misses") == 0   # no whole block fetched


def test_pieces_are_served_warm_by_a_later_open(world):
    store, ns, reader, stats, data = world
    reads = _random_reads(40, PS, seed=5)

    async def main():
        inode = await _inode(ns)
        await _read_at(reader, inode, [(FIRST, 1)] + reads)
        gets = stats.get("s3_get")
        again = await _read_at(reader, inode, [(FIRST, 1)] + reads)
        return gets, again
    gets, again = trio.run(main)
    assert stats.get("s3_get") == gets                      # all hits
    assert [bytes(c) for c in again[1:]] == [data[o:o + s] for o, s in reads]


def test_a_corrupt_piece_is_never_served(world):
    store, ns, reader, stats, data = world
    off = 5 * BS + 3 * PS

    async def main():
        inode = await _inode(ns)
        await _read_at(reader, inode, [(FIRST, 1), (off, PS)])
        reader.cache.drain()                                # the disk writer has written them (put_nowait)
        reader.cache.mem_tiers and [t.remove(k) for t in reader.cache.mem_tiers for k in list(t.keys())]
        bkey = block_key("bkt", "pre/f", inode.etag, BS, 5)
        path = reader.cache.disk_tiers[0].path_of(piece_key(bkey, PS, 3))
        raw = bytearray(open(path, "rb").read())
        raw[32 + 1000] ^= 0xFF                              # a flipped byte in the payload (after the header)
        with open(path, "wb") as f:
            f.write(raw)
        gets = stats.get("s3_get")
        got = await _read_at(reader, inode, [(FIRST, 1), (off, PS)])
        return got[1], stats.get("s3_get") - gets
    got, refetched = trio.run(main)
    assert got == data[off:off + PS]
    assert stats.get("cache_corrupt") == 1 and refetched == 1


def test_a_hot_block_is_filled_and_then_read_whole_from_its_pieces(world):
    store, ns, reader, stats, data = world
    pieces = BS // PS
    order = list(range(pieces))
    random.Random(2).shuffle(order)
    reads = [(6 * BS + p * PS, PS) for p in order[:pieces // 2]]      # half the pieces: hot

    async def main():
        inode = await _inode(ns)
        await _read_at(reader, inode, [(FIRST, 1)] + reads)
        fetched = stats.get("s3_get_bytes")
        reader.read_ahead = 0
        whole = await _read_at(reader, inode, [(6 * BS, BS)], ReadState(next_offset=6 * BS))   # sequential
        return fetched, whole[0]
    fetched, whole = trio.run(main)
    assert stats.get("piece_fills") == 1
    assert whole == data[6 * BS:7 * BS]
    # the fill fetched exactly the missing half; the whole-block read then needed no GET
    assert fetched == PS * (1 + pieces)     # the first 1-byte read's piece + the block
    assert stats.get("s3_get_bytes") == fetched and stats.get("blocks_from_pieces") == 1


def test_a_random_reader_turning_sequential_reads_whole_blocks(world):
    store, ns, reader, stats, data = world
    start = 9 * BS + 2 * PS
    reads = [(start, PS)] + [(start + PS + i * 64 * 1024, 64 * 1024) for i in range(40)]

    async def main():
        return await _read_at(reader, await _inode(ns), [(FIRST, 1)] + reads)
    got = trio.run(main)
    assert b"".join(got[1:]) == data[start:start + PS + 40 * 64 * 1024]
    assert stats.get("cache_misses") >= 5                   # whole blocks (and read-ahead) once sequential
    assert stats.get("piece_fetches") <= 1 + 1024 * 1024 // PS + 1


class GatedStore:
    """The memory store, with every aget_range held until `gate` is set (or cancelled)."""

    def __init__(self, inner):
        self.inner, self.gate, self.started = inner, trio.Event(), 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def aget_range(self, key, start, end, etag=None, answered=None):
        self.started += 1
        await self.gate.wait()
        return await self.inner.aget_range(key, start, end, etag)


@pytest.mark.parametrize("offset", [5 * BS + 3 * PS, 0], ids=["piece", "block"])
def test_an_interrupted_fetch_leaves_no_waiter_hanging(world, offset):
    """The reader whose fetch others joined is interrupted (its GET is dropped): a waiter fetches itself."""
    store, ns, reader, stats, data = world
    reader.store = gated = GatedStore(store)

    async def main():
        inode = await _inode(ns)
        got = {}
        interrupted = trio.CancelScope()

        async def owner():
            with interrupted:
                await reader.read(inode, "pre/f", offset, PS, ReadState(random=bool(offset)))

        async def waiter():
            got["data"] = bytes(await reader.read(inode, "pre/f", offset, PS, ReadState(random=bool(offset))))
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(owner)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                assert gated.started == 1                   # the waiter joined the owner's fetch
                interrupted.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert gated.started == 2                   # ... and fetches itself once it is dropped
                gated.gate.set()
        return got

    got = trio.run(main)
    assert got["data"] == data[offset:offset + PS]
    assert not reader._inflight


def test_a_failed_piece_fetch_reaches_its_waiters(world):
    store, ns, reader, stats, data = world

    class Failing(GatedStore):
        async def aget_range(self, key, start, end, etag=None, answered=None):
            self.started += 1
            await self.gate.wait()
            raise OSError("boom")

    reader.store = failing = Failing(store)

    async def main():
        inode = await _inode(ns)
        errors = []

        async def one():
            state = ReadState(random=True)
            try:
                await reader.read(inode, "pre/f", 7 * BS, PS, state)
            except OSError as e:
                errors.append(e)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            failing.gate.set()
        return errors, failing.started
    errors, started = trio.run(main)
    assert len(errors) == 2 and started == 1
    assert not reader._inflight


def test_the_piece_key_differs_from_the_block_and_other_piece_sizes():
    b = os.urandom(16)
    keys = {b, piece_key(b, PS, 0), piece_key(b, PS, 1), piece_key(b, 2 * PS, 0)}
    assert len(keys) == 4 and all(len(k) == 16 for k in keys)


def test_cached_pieces_lists_what_the_tiers_hold(world):
    store, ns, reader, stats, data = world

    async def main():
        inode = await _inode(ns)
        await _read_at(reader, inode, [(FIRST, 1), (5 * BS + 3 * PS, 2 * PS)])
        return inode
    inode = trio.run(main)
    bkey5, bkey20 = (block_key("bkt", "pre/f", inode.etag, BS, i) for i in (5, 20))
    assert set(reader.cached_pieces(inode, "pre/f", "bkt")) == {
        piece_key(bkey20, PS, 0), piece_key(bkey5, PS, 3), piece_key(bkey5, PS, 4)}


@pytest.mark.parametrize("offset", [0, 9 * BS], ids=["stream", "random"])
def test_a_failed_request_asked_again_asks_the_store_for_the_same_range(world, offset):
    """The kernel asks again for the page it needed right after a read failed: the reader asks the
    store for the very range that failed (its breaker answers that at once during an outage), rather
    than taking the re-read for a random seek and asking for a piece."""
    store, ns, reader, stats, data = world
    ranges = []

    class Failing:
        def __getattr__(self, name):
            return getattr(store, name)

        async def aget_range(self, key, start, end, etag=None, answered=None):
            ranges.append((start, end))
            raise OSError("down")
    reader.store = Failing()

    async def main():
        inode = await _inode(ns)
        state = ReadState()
        if offset:
            with pytest.raises(OSError):
                await reader.read(inode, "pre/f", 20 * BS, 1, state)    # a random reader
        for size in (128 * 1024, 4096):
            with pytest.raises(OSError):
                await reader.read(inode, "pre/f", offset, size, state)
    trio.run(main)
    assert ranges[-1] == ranges[-2]
    assert ranges[-1] == ((0, BS) if offset == 0 else (9 * BS, 9 * BS + 128 * 1024))   # the pieces asked first
