"""Namespace and BlockReader over the in-memory store (the fake for the layers above the store)."""
import random

import pytest
import trio

from cachefs.cache.tiered import TieredCache
from cachefs.config import build_config
from cachefs.errors import ObjectChanged
from cachefs.meta.schema import ROOT_INO
from cachefs.meta.store import MetaStore
from cachefs.namespace.core import Namespace, valid_name
from cachefs.reader import BlockReader, ReadState
from cachefs.stats import Stats
from cachefs.store.memory import MemoryStore

from .tier_specs import disk_spec

BS = 64 * 1024


async def run_blocking(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)


def make_world(tmp_path, cache_blocks: int = 64, **reader_options):
    """A MemoryStore under s3://bkt/pre, a disk tier of `cache_blocks` blocks, and the namespace and
    reader over them; also the MetaStore, to close."""
    stats = Stats()
    store = MemoryStore("bkt", stats)
    cfg = build_config("s3://bkt/pre", "/mnt", {"block_size": str(BS), "metadata_head_size": "0"}, None, {})
    meta = MetaStore(str(tmp_path / "meta"), cfg.identity())
    cache = TieredCache.build([disk_spec("ssd", (str(tmp_path / "blocks"),), cache_blocks * BS)], meta, stats)
    cache.open()
    ns = Namespace(meta, store, cfg, run_blocking)
    reader = BlockReader(store, cache, run_blocking, stats, bucket="bkt", block_size=BS,
                         **{"read_ahead": 0, **reader_options})
    return (store, ns, reader, stats), meta


@pytest.fixture
def world(tmp_path):
    parts, meta = make_world(tmp_path)
    yield parts
    meta.close()


def test_valid_name():
    assert valid_name("ü.txt".encode())
    for bad in (b"", b".", b"..", b"a/b", b"\xff\xfe", b"x" * 256, b"a\0b"):
        assert not valid_name(bad)


def test_mapping_rules(world):
    store, ns, _, _ = world
    for key in ("pre/file", "pre/dir/a", "pre/marker/", "pre/both", "pre/both/inner", "pre/bad//x",
                "pre/" + "y" * 300, "other/outside"):
        store.put(key, b"data")

    async def main():
        entries = await ns.entries(ROOT_INO)
        return {name.decode(): inode for name, inode in entries}
    got = trio.run(main)
    assert sorted(got) == ["bad", "both", "dir", "file", "marker"]
    assert got["both"].is_dir and got["marker"].is_dir and got["dir"].is_dir
    assert not got["file"].is_dir and got["file"].size == 4


def test_lookup_without_listing_uses_head_and_list(world):
    store, ns, _, stats = world
    ns.background_listings = 0          # one by one (tests/unit/test_prefetch.py: with listings)
    store.put("pre/d/x", b"1")
    store.put("pre/f", b"22")

    async def main():
        d = await ns.lookup(ROOT_INO, b"d")
        f = await ns.lookup(ROOT_INO, b"f")
        missing = await ns.lookup(ROOT_INO, b"nope")
        again = await ns.lookup(ROOT_INO, b"nope")      # negative entry: no new requests
        return d, f, missing, again
    lists_before = stats.get("s3_list")
    d, f, missing, again = trio.run(main)
    assert d.is_dir and f.size == 2 and missing is None and again is None
    assert stats.get("s3_list") - lists_before == 3


def test_reads_are_byte_exact_across_blocks(world):
    store, ns, reader, stats = world
    data = random.Random(1).randbytes(5 * BS + 123)
    store.put("pre/big", data)

    async def main():
        inode = await ns.lookup(ROOT_INO, b"big")
        rng = random.Random(2)
        for _ in range(200):
            off = rng.randrange(0, len(data) + 10)
            size = rng.randrange(0, 3 * BS)
            got = await reader.read(inode, "pre/big", off, size, ReadState())
            assert bytes(got) == data[off:off + size]
    trio.run(main)
    assert stats.get("s3_get") == 6          # each block fetched once


def test_concurrent_misses_share_one_fetch(world):
    store, ns, reader, stats = world
    store.put("pre/f", b"z" * BS)

    async def main():
        inode = await ns.lookup(ROOT_INO, b"f")
        async with trio.open_nursery() as n:
            for _ in range(8):
                n.start_soon(reader.read, inode, "pre/f", 0, 100, ReadState())
    trio.run(main)
    assert stats.get("s3_get") == 1 and stats.get("fetch_shared") >= 1


def test_changed_object_is_never_served_stale(world):
    store, ns, reader, _ = world
    store.put("pre/f", b"old" * 10)

    async def main():
        inode = await ns.lookup(ROOT_INO, b"f")
        store.put("pre/f", b"new" * 10)
        with pytest.raises(ObjectChanged):
            await reader.read(inode, "pre/f", 0, 10, ReadState())
        fresh = await ns.refresh(inode)
        assert bytes(await reader.read(fresh, "pre/f", 0, 30, ReadState())) == b"new" * 10
    trio.run(main)


def _reader_with_readahead(world, window, max_fetches=16):
    store, ns, reader, stats = world
    reader.read_ahead, reader.max_fetches = window * BS, max_fetches
    return store, ns, reader, stats


async def _read_pattern(reader, ns, name, offsets, size=BS // 4):
    import trio.testing
    inode = await ns.lookup(ROOT_INO, name.encode())
    state = ReadState()
    async with trio.open_nursery() as nursery:
        reader.nursery = nursery
        for off in offsets:
            await reader.read(inode, "pre/" + name, off, size, state)
            await trio.testing.wait_all_tasks_blocked()
    reader.nursery = None
    return state


def test_sequential_reader_window_doubles_up_to_the_limit(world):
    store, ns, reader, stats = _reader_with_readahead(world, window=4)
    store.put("pre/seq", bytes(32 * BS))
    offsets = list(range(0, 8 * BS, BS // 4))        # 8 blocks read in quarter-block pieces
    state = trio.run(_read_pattern, reader, ns, "seq", offsets)
    assert state.window == 4
    assert stats.get("readahead_blocks") == 8 + 3     # blocks 1..11: windows 1, 2, 4, 4, ...
    assert stats.get("s3_get") == 12                  # nothing fetched twice


def test_random_reads_cause_no_read_ahead(world):
    store, ns, reader, stats = _reader_with_readahead(world, window=8)
    store.put("pre/rnd", bytes(32 * BS))
    offsets = [17 * BS, 3 * BS, 25 * BS, 9 * BS, 30 * BS]
    state = trio.run(_read_pattern, reader, ns, "rnd", offsets)
    assert state.window == 0 and stats.get("readahead_blocks") == 0
    assert stats.get("s3_get") == 5                   # exactly the blocks asked for


def test_small_forward_skips_stay_sequential(world):
    store, ns, reader, stats = _reader_with_readahead(world, window=8)
    store.put("pre/skip", bytes(16 * BS))
    offsets = [0, BS // 4 + 1000, BS + 100, 2 * BS + 5000]
    state = trio.run(_read_pattern, reader, ns, "skip", offsets)
    assert state.window >= 2 and stats.get("readahead_blocks") > 0


def test_mount_wide_fetch_limit(world):
    store, ns, reader, stats = _reader_with_readahead(world, window=64, max_fetches=2)
    store.put("pre/lim", bytes(64 * BS))

    async def main():
        import trio.testing
        inode = await ns.lookup(ROOT_INO, b"lim")
        state = ReadState(window=32)
        async with trio.open_nursery() as nursery:
            reader.nursery = nursery
            reader._read_ahead(state, inode, "pre/lim", 1)
            assert reader._prefetching == 2 and state.ahead_until == 3
            await trio.testing.wait_all_tasks_blocked()
        reader.nursery = None
        assert reader._prefetching == 0
    trio.run(main)


def test_many_lookups_in_one_directory_turn_into_one_listing(world):
    from cachefs.namespace.core import LIST_AFTER_LOOKUPS
    store, ns, _, stats = world
    ns.background_listings = 0          # the fallback when every background listing slot is taken
    for i in range(50):
        store.put(f"pre/cls/{i:03d}.jpg", b"img")

    async def main():
        cls = await ns.lookup(ROOT_INO, b"cls")
        before = (stats.get("s3_head"), stats.get("s3_list"))
        found = [await ns.lookup(cls.ino, f"{i:03d}.jpg".encode()) for i in range(50)]
        assert all(f is not None and f.size == 3 for f in found)
        assert await ns.lookup(cls.ino, b"missing.jpg") is None
        return stats.get("s3_head") - before[0], stats.get("s3_list") - before[1]
    heads, lists = trio.run(main)
    assert heads == LIST_AFTER_LOOKUPS - 1                  # one by one at first ...
    assert lists == LIST_AFTER_LOOKUPS - 1 + 1              # ... then one listing answers the rest


def test_a_stream_reaches_the_full_window_within_its_first_block(world, tmp_path):
    """After RAMP_BYTES in one sequential run the window doubles per read, not only per block entered."""
    from cachefs.reader.blockreader import RAMP_BYTES
    store, ns, _, stats = world
    big = 4 << 20                                       # the default block size: 4 x RAMP_BYTES
    cache = TieredCache.build([disk_spec("ssd", (str(tmp_path / "big"),), 16 * big)], None, stats, max_block=big)
    cache.open()
    reader = BlockReader(store, cache, run_blocking, stats, bucket="bkt", block_size=big, read_ahead=5 * big)
    store.put("pre/stream", bytes(6 * big))
    request = RAMP_BYTES // 4
    offsets = list(range(0, RAMP_BYTES + 4 * request, request))
    state = trio.run(_read_pattern, reader, ns, "stream", offsets, request)
    assert offsets[-1] + request < big                  # all in the first block ...
    assert state.window == 5                            # ... and the whole window asked for
    assert stats.get("readahead_blocks") == 5


@pytest.mark.parametrize("request_size,window", [(1 << 20, 4), (64 << 10, 1)], ids=["stream", "header"])
def test_a_file_streamed_from_its_start_begins_with_a_wider_window(world, tmp_path, request_size, window):
    """The first request at offset 0 of RAMP_BYTES or more (a streaming reader's kernel read-ahead)
    starts START_WINDOW_BLOCKS ahead; a smaller one (a header) starts one block ahead."""
    from cachefs.reader.blockreader import START_WINDOW_BLOCKS
    store, ns, _, stats = world
    big = 4 << 20
    cache = TieredCache.build([disk_spec("ssd", (str(tmp_path / "w"),), 16 * big)], None, stats, max_block=big)
    cache.open()
    reader = BlockReader(store, cache, run_blocking, stats, bucket="bkt", block_size=big, read_ahead=16 * big)
    store.put("pre/shard0", bytes(12 * big))
    state = trio.run(_read_pattern, reader, ns, "shard0", [0], request_size)
    assert window in (START_WINDOW_BLOCKS, 1) and state.window == window
    assert stats.get("readahead_blocks") == window


def test_a_record_reader_fetches_nothing_it_does_not_read(world):
    """One record out of a large shard: a few sequential reads well under RAMP_BYTES within a block."""
    store, ns, reader, stats = _reader_with_readahead(world, window=16)
    store.put("pre/shard", bytes(64 * BS))
    base = 37 * BS + 100
    state = trio.run(_read_pattern, reader, ns, "shard", [base, base + 12, base + 12 + 4000], 4000)
    assert state.window == 0 and stats.get("readahead_blocks") == 0 and stats.get("s3_get") == 1


def test_a_warm_stream_reads_its_disk_blocks_ahead_and_fetches_nothing(world):
    """Read-ahead also loads blocks that are on disk (into the read-ahead buffer), so a warm
    sequential read keeps several disk reads in flight; nothing is fetched from S3 again."""
    store, ns, reader, stats = _reader_with_readahead(world, window=4)
    data = random.Random(7).randbytes(12 * BS)
    store.put("pre/warm", data)
    offsets = list(range(0, 12 * BS, BS // 4))
    trio.run(_read_pattern, reader, ns, "warm", offsets)
    gets = stats.get("s3_get")
    assert gets == 12 and stats.get("readahead_disk_blocks") == 0
    reader.cache.drain()                             # the disk writer has written them (put_nowait)
    reader._prefetched.clear()                       # what a new open finds: blocks on disk only

    async def again():
        import trio.testing
        inode = await ns.lookup(ROOT_INO, b"warm")
        state, got = ReadState(), []
        async with trio.open_nursery() as nursery:
            reader.nursery = nursery
            for off in offsets:
                got.append(bytes(await reader.read(inode, "pre/warm", off, BS // 4, state)))
                await trio.testing.wait_all_tasks_blocked()
        reader.nursery = None
        return b"".join(got)
    assert trio.run(again) == data
    assert stats.get("s3_get") == gets
    assert stats.get("readahead_disk_blocks") == 11      # every block after the first, read ahead
