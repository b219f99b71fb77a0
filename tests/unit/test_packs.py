"""Pack files (cache/packs.py): small blocks appended as records, read back only when whole and
theirs, holes punched on removal, emptied packs deleted, and the start-up repair after a crash."""
import os
import random
import threading

import pytest

from cachefs import native
from cachefs.cache.disk import HEADER
from cachefs.cache.packs import Packs
from cachefs.cache.tiered import TieredCache
from cachefs.meta.store import MetaStore
from cachefs.stats import Stats

from .tier_specs import disk_spec

SMALL = 110_000          # an image
FULL = 256 << 10         # the block size: full-sized blocks stay files


def key(i: int) -> bytes:
    return i.to_bytes(4, "big") * 4


def payload(i: int, n: int = SMALL) -> bytes:
    return random.Random(i).randbytes(n)


IMPLS = [pytest.param((native.append_blocks, native.read_packed, native.punch_hole), id=native.ACTIVE),
         pytest.param((native.py_append_blocks, native.py_read_packed, native.py_punch_hole), id="python")]


@pytest.mark.parametrize("impl", IMPLS)
def test_a_record_reads_back_only_whole_and_with_its_own_tag(tmp_path, impl):
    append, read, punch = impl
    path = str(tmp_path / "p.pack")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        second = native.record_size(SMALL)
        written, _ = append(fd, 0, [(payload(1), key(1)), (payload(2, 5000), key(2))], False)
        assert written == second + native.record_size(5000)
        with pytest.raises(ValueError):
            append(fd, 100, [(b"x", key(3))], False)     # records start on ALIGN
        with pytest.raises(ValueError):
            append(fd, 0, [(b"x", b"short")], False)     # a key is 16 bytes
        with pytest.raises(ValueError):
            append(fd, 0, [(b"x", key(3))] * (native.BATCH_MAX + 1), False)
    finally:
        os.close(fd)
    assert os.path.getsize(path) == second + native.record_size(5000)   # padded
    assert bytes(read(path, 0, SMALL, key(1))) == payload(1)
    assert bytes(read(path, second, 5000, key(2))) == payload(2, 5000)
    assert read(path, 0, SMALL, key(2)) is None                 # another block's record
    assert read(path, 0, SMALL - 1, key(1)) is None             # wrong length
    assert read(path, second, SMALL, key(2)) is None            # runs past the end
    raw = bytearray(open(path, "rb").read())
    raw[HEADER.size + 7] ^= 1
    open(path, "wb").write(bytes(raw))
    assert read(path, 0, SMALL, key(1)) is None                 # checksum
    assert read(path, 0, SMALL, key(1), verify=False) is not None
    punch(path, second, native.record_size(5000))
    assert read(path, second, 5000, key(2)) is None             # a hole reads as zeros


def test_both_implementations_write_the_same_bytes(tmp_path):
    paths = []
    for name, append in (("c", native.append_blocks), ("py", native.py_append_blocks)):
        path = str(tmp_path / name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        append(fd, 4096, [(payload(3, 777), key(3)), (payload(4, 9000), key(4))], False)
        os.close(fd)
        paths.append(open(path, "rb").read())
    assert paths[0] == paths[1]


def make(tmp_path, meta, quota_blocks=64, pack_bytes=None, **kw):
    cache = TieredCache.build([disk_spec("ssd", (str(tmp_path / "ssd"),), quota_blocks * (SMALL + 4096))], meta,
                              Stats(), max_block=FULL, pack_below=FULL, **kw)
    if pack_bytes:
        for d in cache.disk_tiers[0].dirs:
            d.packs.pack_bytes = pack_bytes
    cache.open()
    cache.load()
    return cache


def block_files(tmp_path):
    root = tmp_path / "ssd" / "blocks" / "v1"
    return sorted(p for p in root.glob("??/*"))


def packs(tmp_path):
    return sorted((tmp_path / "ssd" / "blocks" / "v1" / "packs").iterdir())


def allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def test_small_blocks_are_packed_and_full_ones_are_files(tmp_path, meta):
    c = make(tmp_path, meta)
    for i in range(5):
        assert c.put(key(i), payload(i))
    c.put(key(99), payload(99, FULL))
    assert [p.name for p in block_files(tmp_path)] == [key(99).hex()]
    assert len(packs(tmp_path)) == 1
    assert all(bytes(c.get(key(i))) == payload(i) for i in range(5))
    assert bytes(c.get(key(99))) == payload(99, FULL)
    tier = c.disk_tiers[0]
    assert tier.used == 5 * (HEADER.size + SMALL) + HEADER.size + FULL
    c.close()


def test_a_removed_record_gives_its_space_back_and_an_emptied_pack_goes(tmp_path, meta):
    c = make(tmp_path, meta, pack_bytes=4 * native.record_size(SMALL))
    tier = c.disk_tiers[0]
    for i in range(6):                                 # 4 in the first pack, 2 in the second
        c.put(key(i), payload(i))
    first, second = packs(tmp_path)
    before = allocated(first)
    tier.remove(key(0))
    assert allocated(first) <= before - SMALL          # punched
    assert c.get(key(0)) is None and bytes(c.get(key(1))) == payload(1)
    for i in (1, 2, 3):
        tier.remove(key(i))
    assert packs(tmp_path) == [second]                 # the first had no record left
    for i in (4, 5):
        tier.remove(key(i))
    assert packs(tmp_path) == [second]                 # the one appended to stays
    c.close()
    assert packs(tmp_path) == []                       # closed empty: gone


def test_restart_reads_packed_blocks_and_takes_back_records_a_crash_left_unindexed(tmp_path, meta):
    c = make(tmp_path, meta)
    for i in range(4):
        c.put(key(i), payload(i))
    c.flush()                                          # indexed
    for i in range(4, 6):
        c.put(key(i), payload(i))                      # written, not indexed: the "crash" comes now
    (pack,) = packs(tmp_path)
    with open(pack, "ab") as f:                        # and a torn record after them
        f.write(b"CFP1" + bytes(4000))
    stray = pack.parent / f"{99:016x}.pack"
    stray.write_bytes(b"a pack with no record")
    junk = pack.parent / "not-a-pack"
    junk.write_bytes(b"junk")
    for d in c.disk_tiers[0].dirs:
        d.close()
    again = make(tmp_path, meta)
    assert [bytes(again.get(key(i))) for i in range(6)] == [payload(i) for i in range(6)]
    assert not stray.exists() and not junk.exists()
    assert allocated(pack) <= 6 * native.record_size(SMALL)            # the torn tail punched out
    again.put(key(7), payload(7))
    assert len(packs(tmp_path)) == 2                   # a new pack each start, numbered after the last
    assert bytes(again.get(key(7))) == payload(7)
    again.flush()
    assert len(meta.block_index()) == 7
    again.close()


def test_a_lost_index_takes_every_packed_block_back_but_not_removed_ones(tmp_path):
    first = MetaStore(str(tmp_path / "meta"), "id")
    c = make(tmp_path, first, pack_bytes=4 * native.record_size(SMALL))
    for i in range(6):
        c.put(key(i), payload(i))
    c.disk_tiers[0].remove(key(2))                     # punched: not taken back
    c.close()
    first.close()
    fresh = MetaStore(str(tmp_path / "meta2"), "id")   # the store rebuilt after corruption
    try:
        again = make(tmp_path, fresh)
        assert {i for i in range(6) if again.contains(key(i))} == {0, 1, 3, 4, 5}
        assert all(bytes(again.get(key(i))) == payload(i) for i in (0, 1, 3, 4, 5))
        assert again.disk_tiers[0].used == 5 * (HEADER.size + SMALL)
        again.close()
    finally:
        fresh.close()


def test_a_stale_entry_into_a_reused_pack_number_is_a_miss_not_another_blocks_bytes(tmp_path, meta):
    c = make(tmp_path, meta)
    c.put(key(1), payload(1))
    c.flush()
    tier = c.disk_tiers[0]
    (pack,) = packs(tmp_path)
    slot = tier._slots[key(1)]
    # as if the pack had been emptied and deleted, and its number used again for another block
    os.unlink(pack)
    fd = os.open(pack, os.O_RDWR | os.O_CREAT, 0o600)
    native.append_blocks(fd, slot.offset, [(payload(2), key(2))], False)
    os.close(fd)
    assert c.get(key(1)) is None
    assert c.stats.get("cache_corrupt") == 1 and not c.contains(key(1))
    c.close()


def test_a_record_removed_while_read_is_a_quiet_miss(tmp_path, meta):
    c = make(tmp_path, meta)
    c.put(key(1), payload(1))
    tier = c.disk_tiers[0]
    slot = tier._slots[key(1)]
    tier.remove(key(1))                                # the evictor, between the lookup and the read
    assert tier._read(key(1), slot) is None
    assert c.stats.get("cache_corrupt") == 0
    c.close()


def test_a_flipped_byte_in_a_packed_block_is_caught_and_the_block_dropped(tmp_path, meta):
    c = make(tmp_path, meta)
    c.put(key(1), payload(1))
    c.put(key(2), payload(2))
    slot = c.disk_tiers[0]._slots[key(1)]
    (pack,) = packs(tmp_path)
    with open(pack, "r+b") as f:
        f.seek(slot.offset + HEADER.size + 500)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert c.get(key(1)) is None
    assert c.stats.get("cache_corrupt") == 1 and not c.contains(key(1))
    assert bytes(c.get(key(2))) == payload(2)
    c.close()


def test_a_directory_that_failed_starts_a_new_pack(tmp_path, meta):
    c = make(tmp_path, meta)
    c.put(key(1), payload(1))
    d = c.disk_tiers[0].dirs[0]
    d.mark_down(OSError(5, "EIO"))
    d.healthy = True
    c.put(key(2), payload(2))
    assert len(packs(tmp_path)) == 2
    assert bytes(c.get(key(1))) == payload(1) and bytes(c.get(key(2))) == payload(2)
    c.close()


def test_packing_off_writes_a_file_per_block(tmp_path, meta):
    c = make(tmp_path, meta, pack_bytes=None)
    c.disk_tiers[0].pack_below = 0
    c.put(key(1), payload(1))
    assert [p.name for p in block_files(tmp_path)] == [key(1).hex()]
    assert packs(tmp_path) == []
    c.close()


def test_packs_numbering_goes_on_after_the_highest(tmp_path):
    p = Packs(str(tmp_path))
    p.open()
    for n in (3, 10):
        open(p.path(n), "wb").close()
    p.open()
    places, _, err = p.append([(key(1), payload(1, 100))], direct=False)
    assert places == [(11, 0)] and err is None
    p.close()


def test_a_pack_the_index_names_but_that_is_gone_is_forgotten_and_its_number_never_used_again(tmp_path, meta):
    c = make(tmp_path, meta)
    c.put(key(1), payload(1))
    c.put(key(2), payload(2))
    c.flush()
    (pack,) = packs(tmp_path)
    for d in c.disk_tiers[0].dirs:
        d.close()
    os.unlink(pack)              # emptied and deleted, its index entries' removal never flushed (a crash)
    again = make(tmp_path, meta)
    assert not again.contains(key(1)) and not again.contains(key(2))
    again.put(key(3), payload(3))
    (new,) = packs(tmp_path)
    assert new.name > pack.name                        # not the number the old entries named
    again.flush()
    assert [k for k, *_ in meta.block_index()] == [key(3)]
    assert bytes(again.get(key(3))) == payload(3)
    again.close()


def test_a_pack_removed_behind_the_daemons_back_is_a_miss_and_appending_moves_on(tmp_path, meta):
    c = make(tmp_path, meta)
    c.put(key(1), payload(1))
    (pack,) = packs(tmp_path)
    os.unlink(pack)
    assert c.get(key(1)) is None and not c.contains(key(1))
    assert c.stats.get("cache_corrupt") == 0
    c.put(key(2), payload(2))
    assert len(packs(tmp_path)) == 1 and bytes(c.get(key(2))) == payload(2)
    c.close()


def test_a_batch_is_split_where_a_pack_fills_and_every_record_reads_back(tmp_path, meta):
    c = make(tmp_path, meta, pack_bytes=5 * native.record_size(SMALL))
    tier = c.disk_tiers[0]
    items = [(key(i), payload(i)) for i in range(12)] + [(key(99), payload(99, FULL))]
    assert tier.put_many(items, tier.quota) == [True] * 13
    assert len(packs(tmp_path)) == 3                   # 5 + 5 + 2 records; the full block a file
    assert [p.name for p in block_files(tmp_path)] == [key(99).hex()]
    assert all(bytes(c.get(k)) == v for k, v in items)
    assert tier.put_many(items[:2], tier.quota) == [True, True]      # stored already: nothing written
    assert len(packs(tmp_path)) == 3
    c.close()


def test_a_batch_that_does_not_fit_the_quota_stores_what_fits(tmp_path, meta):
    c = make(tmp_path, meta, quota_blocks=3)
    tier = c.disk_tiers[0]
    done = tier.put_many([(key(i), payload(i)) for i in range(5)], tier.quota)
    assert done == [True, True, True, False, False]
    assert tier.used == 3 * (HEADER.size + SMALL)
    assert [bytes(c.get(key(i))) for i in range(3)] == [payload(i) for i in range(3)]
    c.close()


def test_a_failing_batch_write_stores_nothing_and_marks_the_directory_down(tmp_path, meta, monkeypatch):
    c = make(tmp_path, meta)
    tier = c.disk_tiers[0]

    def broken(*args):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(native, "append_blocks", broken)
    assert tier.put_many([(key(i), payload(i)) for i in range(3)], tier.quota) == [False] * 3
    assert tier.used == 0 and tier.count == 0 and not tier.dirs[0].healthy
    assert c.stats.get("cache_errors") == 1
    c.close()


def test_the_disk_writer_stores_what_it_took_in_one_pack_write(tmp_path, meta, monkeypatch):
    c = make(tmp_path, meta)
    calls = []
    real = native.append_blocks
    monkeypatch.setattr(native, "append_blocks", lambda fd, off, items, direct: calls.append(len(items))
                        or real(fd, off, items, direct))
    c._writer = None
    from cachefs.cache.writer import DiskWriter
    gate = threading.Event()
    c._writer = DiskWriter(lambda items: (gate.wait(5), c._store_queued(items)))
    for i in range(20):
        assert c.put_nowait(key(i), payload(i))
    gate.set()
    assert c.drain(10)
    assert sum(calls) == 20 and len(calls) <= 3, calls   # the first block alone, then the rest at once
    assert all(bytes(c.get(key(i))) == payload(i) for i in range(20))
    c.close()


def test_one_receive_buffer_under_two_keys_in_one_batch_gives_each_record_its_own_header(tmp_path, meta):
    c = make(tmp_path, meta)
    tier = c.disk_tiers[0]
    body = memoryview(native.buffer(SMALL, headroom=HEADER.size))
    body[:] = payload(5)
    assert tier.put_many([(key(5), body), (key(6), body)], tier.quota) == [True, True]
    assert bytes(tier.get(key(5))) == bytes(tier.get(key(6))) == payload(5)
    c.close()


def test_an_unexpected_error_in_a_batch_leaves_no_key_being_written(tmp_path, meta, monkeypatch):
    c = make(tmp_path, meta)
    tier = c.disk_tiers[0]

    def bug(*args):
        raise RuntimeError("a bug")
    monkeypatch.setattr(native, "append_blocks", bug)
    with pytest.raises(RuntimeError):
        tier.put_many([(key(1), payload(1))], tier.quota)
    monkeypatch.undo()
    assert tier.used == 0 and tier.put(key(1), payload(1), tier.quota) and bytes(tier.get(key(1))) == payload(1)
    c.close()
