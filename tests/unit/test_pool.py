"""Recycled block memory (native/blockread.c: buffer, set_pool, fill_pool, pool_stats) and the
places that keep such buffers whole (the memory tier) or skip memory (stream blocks)."""
from __future__ import annotations

import os
import random

import pytest

from cachefs import native
from cachefs.cache.disk import HEADER, encode_header
from cachefs.cache.memtier import MemoryTier
from cachefs.cache.spec import TierSpec
from cachefs.cache.tiered import TieredCache
from cachefs.stats import Stats

from .test_direct import direct_capable
from .tier_specs import disk_spec

try:
    from cachefs import _native as C
except ImportError:
    C = None

needs_c = pytest.mark.skipif(C is None, reason="extension not built")
CHUNK = 1 << 20


@pytest.fixture
def pool():
    C.set_pool(CHUNK, 4)
    yield C
    C.set_pool(0, 0)            # process-wide: leave it off for the other tests


@needs_c
def test_buffer_is_writable_and_keeps_its_bytes(pool):
    buf = pool.buffer(CHUNK)
    view = memoryview(buf)
    assert len(buf) == CHUNK and not view.readonly
    data = random.randbytes(CHUNK)
    view[:] = data
    assert bytes(memoryview(buf)) == data


@needs_c
def test_block_sized_buffers_reuse_their_memory(pool):
    before = pool.pool_stats()
    for _ in range(10):
        buf = pool.buffer(CHUNK - 100)      # a last, shorter block still fits a chunk
        memoryview(buf)[:4] = b"abcd"
        del buf
    after = pool.pool_stats()
    assert after["mapped"] - before["mapped"] == 1
    assert after["reused"] - before["reused"] == 9
    assert after["free"] == 1


@needs_c
def test_small_buffers_are_not_pooled(pool):
    before = pool.pool_stats()
    bufs = [pool.buffer(CHUNK // 2), pool.buffer(100), pool.buffer(0)]
    assert [len(b) for b in bufs] == [CHUNK // 2, 100, 0]
    del bufs
    after = pool.pool_stats()
    assert (after["mapped"], after["reused"], after["free"]) == (before["mapped"], before["reused"], before["free"])


@needs_c
def test_at_most_keep_free_chunks_stay(pool):
    bufs = [pool.buffer(CHUNK) for _ in range(7)]
    del bufs
    assert pool.pool_stats()["free"] == 4
    pool.set_pool(CHUNK, 2)                 # lowering keep unmaps the surplus now
    assert pool.pool_stats()["free"] == 2
    pool.set_pool(2 * CHUNK, 2)             # another chunk size: the old chunks all go
    assert pool.pool_stats()["free"] == 0
    big = pool.buffer(2 * CHUNK)
    assert len(big) == 2 * CHUNK


@needs_c
def test_fill_pool_maps_keep_chunks_up_front(pool):
    pool.fill_pool()
    stats = pool.pool_stats()
    assert stats["free"] == 4
    buf = pool.buffer(CHUNK)
    assert pool.pool_stats()["reused"] == stats["reused"] + 1 and pool.pool_stats()["free"] == 3
    del buf


@needs_c
@pytest.mark.parametrize("size", [CHUNK - 4096, CHUNK - 4096 - 32, CHUNK // 2 + 1])
def test_block_files_read_whole_come_from_the_pool_past_the_page_cache(pool, tmp_path, size):
    """A block-sized file (header + payload within a chunk) is read whole into a recycled chunk with
    O_DIRECT: right bytes, no page-cache copy of the block file left behind."""
    from .test_direct import direct_capable, resident_pages
    payload = random.randbytes(size)
    path = tmp_path / "blk"
    path.write_bytes(encode_header(payload) + payload)
    C.read_block(str(path))                  # maps the chunk, gives it back
    before = pool.pool_stats()
    for _ in range(3):
        got = C.read_block(str(path))
        assert bytes(got) == payload and len(got.obj) == size
        del got
    assert pool.pool_stats()["reused"] - before["reused"] == 3
    assert pool.pool_stats()["mapped"] == before["mapped"]
    if direct_capable(tmp_path):
        fd = os.open(str(path), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        assert C.read_block(str(path)) is not None
        assert resident_pages(str(path)) == 0
    bad = encode_header(payload) + payload[:-1] + bytes([payload[-1] ^ 1])
    path.write_bytes(bad)
    assert C.read_block(str(path)) is None   # the checksum still holds on this path
    assert C.read_block(str(path), verify=False) is not None


@needs_c
def test_bad_pool_settings_are_refused():
    with pytest.raises(ValueError):
        C.set_pool(-1, 2)
    with pytest.raises(ValueError):
        C.set_pool(CHUNK, 10_000)
    with pytest.raises(ValueError):
        C.buffer(-1)


def test_python_fallback_buffer_is_a_bytearray(monkeypatch):
    monkeypatch.setattr(native, "_native", None)
    native.set_pool(CHUNK, 4, fill=True)        # a no-op without the extension
    assert native.pool_stats()["chunk"] == 0


# -- what keeps such buffers -------------------------------------------------------------------------
def _mem_tier(size=10 * CHUNK):
    tier = MemoryTier(TierSpec("mem", (), size), Stats())
    tier.name = "mem"
    return tier


@pytest.mark.parametrize("make", [bytes, bytearray, native.buffer], ids=["bytes", "bytearray", "native"])
def test_memory_tier_keeps_a_whole_buffer_without_a_copy(make):
    tier = _mem_tier()
    data = make(1000)
    value = data if isinstance(data, bytes) else memoryview(data)
    assert tier.put(b"k" * 16, value, tier.quota)
    assert tier._data[b"k" * 16] is value


@needs_c
def test_memory_tier_copies_a_short_block_in_a_recycled_chunk(pool):
    """A 0.6-chunk block in a whole chunk would hold 1.7x the memory the quota is charged for."""
    tier = _mem_tier()
    buf = pool.buffer(CHUNK * 6 // 10)
    assert buf.capacity == CHUNK and len(buf) == CHUNK * 6 // 10
    view = memoryview(buf)
    view[:4] = b"abcd"
    assert tier.put(b"s" * 16, view, tier.quota)
    kept = tier._data[b"s" * 16]
    assert isinstance(kept, bytes) and kept[:4] == b"abcd" and len(kept) == len(buf)
    full = memoryview(pool.buffer(CHUNK - 100))
    assert tier.put(b"f" * 16, full, tier.quota) and tier._data[b"f" * 16] is full


def test_memory_tier_copies_a_view_of_part_of_a_larger_buffer():
    tier = _mem_tier()
    whole = bytearray(random.randbytes(4000))
    part = memoryview(whole)[1000:2000]
    assert tier.put(b"k" * 16, part, tier.quota)
    kept = tier._data[b"k" * 16]
    assert isinstance(kept, bytes) and kept == bytes(whole[1000:2000])
    whole[1000:1010] = bytes(10)                 # the larger buffer is not pinned or shared
    assert bytes(tier.get(b"k" * 16))[:10] == kept[:10] != bytes(10)


def test_stream_blocks_skip_memory_while_a_disk_tier_admits_them(tmp_path):
    disk_room = 2 * (1000 + HEADER.size)        # two blocks
    cache = TieredCache.build([TierSpec("mem", (), 10 * CHUNK), disk_spec("ssd", (str(tmp_path / "d"),), disk_room,
                                                                          high=1.0)], None, Stats(), max_block=1000)
    cache.open()
    mem, disk = cache.tiers
    assert cache.put(b"a" * 16, b"x" * 1000, memory=False)
    assert disk.contains(b"a" * 16) and not mem.contains(b"a" * 16)
    assert cache.put(b"b" * 16, b"y" * 1000)                    # the default: memory too
    assert disk.contains(b"b" * 16) and mem.contains(b"b" * 16)
    assert cache.put(b"c" * 16, b"z" * 1000, memory=False)      # the disk is full ...
    assert not disk.contains(b"c" * 16) and mem.contains(b"c" * 16)   # ... so memory keeps it after all


def test_a_sequential_reader_s_blocks_stay_out_of_the_memory_tier(tmp_path):
    """Read-ahead of a stream goes to disk only; a small file fetched whole on open goes to memory too."""
    import trio

    from cachefs.config import build_config
    from cachefs.meta.schema import ROOT_INO
    from cachefs.meta.store import MetaStore
    from cachefs.namespace.core import Namespace
    from cachefs.reader import BlockReader, ReadState
    from cachefs.store.memory import MemoryStore

    from .test_read_path import BS, run_blocking

    stats = Stats()
    store = MemoryStore("bkt", stats)
    cfg = build_config("s3://bkt/pre", "/mnt", {"block_size": str(BS)}, None, {})
    meta = MetaStore(str(tmp_path / "meta"), cfg.identity())
    cache = TieredCache.build([TierSpec("mem", (), 64 * BS), disk_spec("ssd", (str(tmp_path / "d"),), 64 * BS)],
                              meta, stats, max_block=BS)
    cache.open()
    mem = cache.tiers[0]
    ns = Namespace(meta, store, cfg, run_blocking)
    reader = BlockReader(store, cache, run_blocking, stats, bucket="bkt", block_size=BS, read_ahead=4 * BS,
                         prefetch_small_files=2 * BS)
    store.put("pre/shard", random.randbytes(16 * BS))
    store.put("pre/small", random.randbytes(BS + 10))

    async def main():
        import trio.testing
        shard = await ns.lookup(ROOT_INO, b"shard")
        small = await ns.lookup(ROOT_INO, b"small")
        async with trio.open_nursery() as nursery:
            reader.nursery = nursery
            state = ReadState()
            for off in range(0, 8 * BS, BS // 2):
                await reader.read(shard, "pre/shard", off, BS // 2, state)
                await trio.testing.wait_all_tasks_blocked()
            reader.prefetch_file(small, "pre/small")
            await trio.testing.wait_all_tasks_blocked()
            while reader._prefetching:
                await trio.sleep(0.001)
        reader.nursery = None
    try:
        trio.run(main)
        cache.drain()                      # the disk writer has written them (the reader's put_nowait)
        assert stats.get("readahead_blocks") >= 8
        in_memory = len(list(mem.keys()))
        assert in_memory == 2              # small's two blocks; none of the shard (read from its start: a stream)
        assert cache.block_count == stats.get("s3_get")    # every fetched block is cached (on disk)
    finally:
        meta.close()


# -- block files written from the receive buffer (write_framed) --------------------------------------
def _received(n: int, headroom: int = HEADER.size) -> memoryview:
    view = memoryview(native.buffer(n, headroom=headroom))
    view[:] = os.urandom(n)
    return view


@needs_c
@pytest.mark.parametrize("n", [CHUNK - 4096, CHUNK - 4096 - 1, CHUNK // 2 + 1, 16 * 4096, 110_000])
def test_a_received_block_is_written_from_its_own_chunk(pool, tmp_path, monkeypatch, n):
    """header + payload, exact length, from the chunk itself (or, small, the page-aligned memory
    buffer() gives a body with headroom): the copying path is never taken."""
    from cachefs.cache.direct import AlignedBuffers
    monkeypatch.setattr(AlignedBuffers, "_write_copied", lambda *a: pytest.fail("copied"))
    if not direct_capable(tmp_path):
        pytest.skip("no O_DIRECT under the test's temporary directory")
    data, stats = _received(n), Stats()
    header = encode_header(data)
    path = str(tmp_path / "blk")
    assert AlignedBuffers(CHUNK, stats=stats).write_file(path, [header, data]) == HEADER.size + n
    assert open(path, "rb").read() == header + bytes(data)
    assert stats.get("cache_writes_in_place") == 1
    assert native.read_block(path) == data                   # a valid block file: magic, length, xxh3


@needs_c
def test_buffers_that_cannot_be_written_in_place_are_copied(pool, tmp_path):
    """No headroom, a tiny buffer (malloc()ed: padding would be most of it), or part of a buffer:
    copied, same bytes on disk."""
    from cachefs.cache.direct import AlignedBuffers
    if not direct_capable(tmp_path):
        pytest.skip("no O_DIRECT under the test's temporary directory")
    stats = Stats()
    bufs = AlignedBuffers(CHUNK, stats=stats)
    for i, data in enumerate([_received(CHUNK - 4096, headroom=0), _received(1000),
                                  _received(CHUNK - 4096)[:-1]]):
        header = encode_header(data)
        with open(os.devnull, "wb") as null:
            assert native.write_framed(null.fileno(), data, header) is None
        path = str(tmp_path / f"blk{i}")
        assert bufs.write_file(path, [header, data]) == HEADER.size + len(data)
        assert open(path, "rb").read() == header + bytes(data)
    assert stats.get("cache_writes_in_place") == 0


@needs_c
def test_write_framed_reports_write_errors_and_refuses_other_objects(pool, tmp_path):
    data = _received(CHUNK - 4096)
    fd = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError):                           # EBADF: not open for writing
            C.write_framed(fd, data.obj, encode_header(data))
    finally:
        os.close(fd)
    with pytest.raises(TypeError):
        C.write_framed(1, bytearray(10), b"h")
    with pytest.raises(ValueError):
        C.buffer(10, 8192)                                     # headroom is for a header, not a block


def test_python_fallback_never_writes_in_place(monkeypatch):
    monkeypatch.setattr(native, "_native", None)
    assert isinstance(native.buffer(10, headroom=32), bytearray)
    assert native.write_framed(1, memoryview(bytearray(10)), b"h") is None

