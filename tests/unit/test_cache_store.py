"""The store per object (issue 17): block files written in place by native.write_block (no temp
file, rename or ftruncate; O_DIRECT files padded to 4096), a block invisible until written, torn or
corrupt files never served, and put_nowait (memory now, disk by the writer thread)."""
import os
import random
import threading

import pytest

from cachefs import native
from cachefs.cache import disk as disk_mod
from cachefs.cache.disk import HEADER, encode_header
from cachefs.cache.spec import TierSpec
from cachefs.cache.tiered import TieredCache
from cachefs.stats import Stats

from .tier_specs import disk_spec

ALIGN = native.ALIGN
needs_c = pytest.mark.skipif(native.ACTIVE != "native", reason="the C extension is not built")
READERS = [native.py_read_block] + ([native._native.read_block] if native._native is not None else [])
WRITERS = [native.py_write_block] + ([native._native.write_block] if native._native is not None else [])


def key(i: int) -> bytes:
    return i.to_bytes(4, "big") * 4


def body(n: int, seed: int = 0, headroom: bool = True) -> memoryview:
    """A body as the S3 fast path receives it: native.buffer with header room."""
    view = memoryview(native.buffer(n, headroom=HEADER.size if headroom else 0))
    view[:] = random.Random(seed).randbytes(n)
    return view


def make(tmp_path, meta, mem=True, disk_quota=1 << 30):
    specs = ([TierSpec("mem", (), 64 << 20)] if mem else []) + [disk_spec("ssd", (str(tmp_path / "ssd"),), disk_quota)]
    cache = TieredCache.build(specs, meta, Stats(), max_block=4 << 20)
    cache.open()
    cache.load()
    return cache


# -- the file format: exact or padded, both readers agree ------------------------------------------
@pytest.mark.parametrize("n", [0, 1, ALIGN - 32, ALIGN, 110_000, (1 << 20) + 7])
@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("write", WRITERS, ids=lambda f: f.__module__)
def test_written_files_read_back_with_both_readers(tmp_path, n, direct, write):
    data = body(n, n)
    path = str(tmp_path / "blk")
    try:
        written, _ = write(path, data, direct)
    except OSError as e:                      # no O_DIRECT where the tests run (tmpfs)
        pytest.skip(f"O_DIRECT refused: {e}")
    assert written == HEADER.size + n
    size = os.path.getsize(path)
    assert size in (HEADER.size + n, -(-(HEADER.size + n) // ALIGN) * ALIGN)
    raw = open(path, "rb").read()
    assert raw[:HEADER.size] == encode_header(data) and raw[HEADER.size:HEADER.size + n] == bytes(data)
    assert not raw[HEADER.size + n:].strip(b"\0")                     # padding is zeros
    for read in READERS:
        assert bytes(read(path)) == bytes(data)
    assert disk_mod._intact_size(path) == HEADER.size + n             # the charge, not the file size


@needs_c
def test_a_small_received_body_is_written_in_place():
    data = body(110_000)
    assert data.obj.capacity >= 110_000 + HEADER.size                  # aligned, with room for padding
    assert data.obj.capacity <= 110_000 + HEADER.size + ALIGN


@pytest.mark.parametrize("write", WRITERS, ids=lambda f: f.__module__)
def test_write_block_never_replaces_a_file(tmp_path, write):
    path = tmp_path / "blk"
    path.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        write(str(path), b"x" * 100, False)
    assert path.read_bytes() == b"someone else's"


@pytest.mark.parametrize("read", READERS, ids=lambda f: f.__module__)
def test_torn_and_corrupt_files_are_never_served(tmp_path, read):
    payload = random.Random(1).randbytes(10_000)
    whole = encode_header(payload) + payload
    padded_len = -(-len(whole) // ALIGN) * ALIGN
    cases = {
        "cut short": whole[:-1],
        "cut mid-header": whole[:20],
        "empty": b"",
        "padding cut short": whole + bytes(padded_len - len(whole) - 1),
        "too long": whole + bytes(padded_len - len(whole) + 1),
        "payload never written (zeros)": whole[:HEADER.size] + bytes(len(payload)),
        "padded, one byte flipped": whole[:-1] + bytes([whole[-1] ^ 1]) + bytes(padded_len - len(whole)),
        "payload flipped": whole[:100] + bytes([whole[100] ^ 4]) + whole[101:],
    }
    for name, raw in cases.items():
        path = tmp_path / name.replace(" ", "_")
        path.write_bytes(raw)
        assert read(str(path)) is None, name
    for name in cases:
        if "flipped" not in name and "zeros" not in name:                # the scan checks sizes only
            assert disk_mod._intact_size(str(tmp_path / name.replace(" ", "_"))) is None, name


# -- the tier: invisible until written, stale files replaced, torn files dropped ----------------------
def test_a_block_is_invisible_while_its_file_is_written(tmp_path, meta, monkeypatch):
    cache = make(tmp_path, meta, mem=False)
    real = native.write_block
    seen = []

    def watching(path, data, direct):
        seen.append((cache.contains(key(1)), cache.get(key(1)), cache.tiers[0].count, cache.tiers[0].used))
        return real(path, data, direct)

    monkeypatch.setattr(native, "write_block", watching)
    data = body(50_000)
    assert cache.put(key(1), data)
    assert seen == [(False, None, 0, HEADER.size + 50_000)]    # space reserved, nothing visible
    assert cache.contains(key(1)) and bytes(cache.get(key(1))) == bytes(data)


def test_a_stale_file_at_the_name_is_replaced(tmp_path, meta):
    cache = make(tmp_path, meta, mem=False)
    path = cache.tiers[0].dirs[0].block_path(key(2))
    open(path, "wb").write(b"left by a removal whose unlink did not happen")
    data = body(3000)
    assert cache.put(key(2), data)
    assert bytes(cache.get(key(2))) == bytes(data)


def test_a_failed_write_leaves_no_file_and_no_slot(tmp_path, meta, monkeypatch):
    cache = make(tmp_path, meta, mem=False)
    tier = cache.tiers[0]

    def full(path, data, direct):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(native, "write_block", full)
    assert not cache.put(key(3), body(1000))
    assert not cache.contains(key(3)) and tier.used == 0 and tier.count == 0
    assert not os.path.exists(tier.dirs[0].block_path(key(3)))
    assert tier.dirs[0].healthy                                 # full, not broken


def test_crash_mid_write_a_torn_file_at_the_final_name_is_dropped_never_served(tmp_path, meta):
    cache = make(tmp_path, meta, mem=False)
    for i in range(3):
        cache.put(key(i), body(20_000, i))
    paths = [cache.tiers[0].dirs[0].block_path(key(i)) for i in range(3)]
    # "kill -9" with no index flush: block 0 whole, block 1 cut short (the scan deletes it), block 2
    # of the right size with its payload never written (only the checksum can tell)
    raw = open(paths[1], "rb").read()
    open(paths[1], "wb").write(raw[:5000])
    raw = open(paths[2], "rb").read()
    open(paths[2], "wb").write(raw[:HEADER.size] + bytes(len(raw) - HEADER.size))
    for d in cache.tiers[0].dirs:
        d.close()
    again = make(tmp_path, meta, mem=False)
    assert not os.path.exists(paths[1]) and not again.contains(key(1))
    assert bytes(again.get(key(0))) == bytes(body(20_000, 0))
    assert again.get(key(2)) is None and not again.contains(key(2)) and not os.path.exists(paths[2])
    assert again.stats.get("cache_corrupt") == 1


# -- put_nowait: memory now, disk by the writer thread ---------------------------------------------
def test_put_nowait_is_in_memory_at_once_and_on_disk_after_drain(tmp_path, meta):
    cache = make(tmp_path, meta)
    data = body(110_000)
    assert cache.put_nowait(key(1), data)
    assert bytes(cache.get_nowait(key(1))) == bytes(data) and cache.in_memory(key(1))
    assert cache.drain(10)
    assert cache.disk_tiers[0].contains(key(1)) and cache.mem_tiers[0].contains(key(1))
    cache.flush()
    assert key(1) in {k for k, *_ in meta.block_index()}
    cache.close()


def test_a_queued_stream_block_is_readable_before_its_disk_copy(tmp_path, meta, monkeypatch):
    cache = make(tmp_path, meta)
    gate = threading.Event()
    real = native.write_block

    def slow(path, data, direct):
        gate.wait(10)
        return real(path, data, direct)

    monkeypatch.setattr(native, "write_block", slow)
    data = body(4000)
    assert cache.put_nowait(key(5), data, memory=False)
    assert not cache.mem_tiers[0].contains(key(5))              # a stream's block skips memory ...
    assert cache.contains(key(5)) and cache.in_memory(key(5))   # ... but is found while queued
    assert bytes(cache.get_nowait(key(5))) == bytes(data) and bytes(cache.get(key(5))) == bytes(data)
    gate.set()
    assert cache.drain(10)
    assert cache.disk_tiers[0].contains(key(5)) and not cache.mem_tiers[0].contains(key(5))
    assert bytes(cache.get(key(5))) == bytes(data)
    cache.close()


def test_a_full_writer_queue_declines_and_does_nothing(tmp_path, meta, monkeypatch):
    monkeypatch.setattr("cachefs.cache.writer.QUEUE_BYTES", 10_000)
    cache = make(tmp_path, meta)
    gate = threading.Event()
    real = native.write_block
    monkeypatch.setattr(native, "write_block", lambda *a: (gate.wait(10), real(*a))[1])
    assert cache.put_nowait(key(1), body(6000, 1))
    assert not cache.put_nowait(key(2), body(6000, 2))          # over the queue's bytes
    assert not cache.contains(key(2))                            # nothing done: the caller puts it
    gate.set()
    assert cache.drain(10) and cache.disk_tiers[0].contains(key(1))
    assert cache.put(key(2), body(6000, 2)) and cache.disk_tiers[0].contains(key(2))
    cache.close()


def test_close_writes_what_is_queued(tmp_path, meta):
    cache = make(tmp_path, meta)
    for i in range(20):
        assert cache.put_nowait(key(i), body(30_000, i))
    cache.close()
    assert {key(i) for i in range(20)} <= {k for k, *_ in meta.block_index()}
    again = make(tmp_path, meta)
    assert all(bytes(again.get(key(i))) == bytes(body(30_000, i)) for i in range(20))


def test_put_nowait_without_disk_tiers_is_a_memory_put(tmp_path):
    cache = TieredCache.build([TierSpec("mem", (), 1 << 20)], None, Stats())
    assert cache.put_nowait(key(1), b"x" * 100)
    assert cache._writer is None and bytes(cache.get_nowait(key(1))) == b"x" * 100


@needs_c
def test_the_memory_tier_charges_what_a_kept_buffer_holds(tmp_path):
    cache = TieredCache.build([TierSpec("mem", (), 1 << 20)], None, Stats())
    data = body(110_000)                        # page-aligned, padded to 4096: held as it is
    assert cache.put(key(1), data)
    tier = cache.mem_tiers[0]
    assert tier.used == data.obj.capacity + 512 and data.obj.capacity > 110_000
    assert cache.put(key(2), b"y" * 1000) and tier.used == data.obj.capacity + 512 + 1000 + 512
