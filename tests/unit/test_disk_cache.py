import os

import pytest

from cachefs.cache.disk import HEADER, DiskCache
from cachefs.meta.store import MetaStore
from cachefs.stats import Stats

KEY = [bytes([i]) * 16 for i in range(10)]


@pytest.fixture
def env(tmp_path):
    meta = MetaStore(str(tmp_path / "meta"), "id")
    yield tmp_path, meta
    meta.close()


def make(tmp_path, meta, capacity=10_000):
    return DiskCache(str(tmp_path), capacity, meta, Stats())


def test_put_get_and_files_are_private(env):
    tmp, meta = env
    c = make(tmp, meta)
    c.put(KEY[0], b"hello")
    assert bytes(c.get(KEY[0])) == b"hello"
    assert c.get(KEY[1]) is None
    assert os.stat(c.path(KEY[0])).st_mode & 0o077 == 0
    assert c.used_bytes == HEADER.size + 5


def test_eviction_keeps_usage_under_capacity_lru_order(env):
    tmp, meta = env
    block = 1000
    c = make(tmp, meta, capacity=3 * (block + HEADER.size))
    for k in KEY[:3]:
        c.put(k, b"x" * block)
    c.get(KEY[0])                      # KEY[0] becomes most recent
    c.put(KEY[3], b"y" * block)
    assert c.used_bytes <= c.capacity
    assert not c.contains(KEY[1])      # least recently used went first
    assert c.contains(KEY[0]) and c.contains(KEY[3])
    assert not os.path.exists(c.path(KEY[1]))
    assert c.stats.get("cache_evictions") == 1


def test_corrupt_and_truncated_blocks_are_dropped(env):
    tmp, meta = env
    c = make(tmp, meta)
    c.put(KEY[0], b"a" * 100)
    c.put(KEY[1], b"b" * 100)
    raw = bytearray(open(c.path(KEY[0]), "rb").read())
    raw[-1] ^= 0xFF
    open(c.path(KEY[0]), "wb").write(raw)
    with open(c.path(KEY[1]), "r+b") as f:
        f.truncate(HEADER.size + 50)
    assert c.get(KEY[0]) is None and c.get(KEY[1]) is None
    assert c.stats.get("cache_corrupt") == 2
    assert not c.contains(KEY[0]) and not os.path.exists(c.path(KEY[0]))


def test_missing_file_is_a_miss(env):
    tmp, meta = env
    c = make(tmp, meta)
    c.put(KEY[0], b"a")
    os.unlink(c.path(KEY[0]))
    assert c.get(KEY[0]) is None and not c.contains(KEY[0])


def test_index_survives_restart(env):
    tmp, meta = env
    c = make(tmp, meta)
    c.put(KEY[0], b"persist")
    c.close()
    again = make(tmp, meta)
    assert again.contains(KEY[0]) and bytes(again.get(KEY[0])) == b"persist"


def test_scan_adopts_unindexed_blocks_and_removes_junk(env):
    """A crash between the block file and its (batched) index entry loses nothing."""
    tmp, meta = env
    c = make(tmp, meta)
    c.put(KEY[0], b"orphan")           # never flushed to the index
    junk = c.path(KEY[1]) + ".tmp.123"
    open(junk, "wb").write(b"partial")
    torn = c.path(KEY[2])
    open(torn, "wb").write(b"short")
    again = make(tmp, meta)
    assert not again.contains(KEY[0])
    adopted, removed = again.scan()
    assert (adopted, removed) == (1, 2)
    assert bytes(again.get(KEY[0])) == b"orphan"
    assert not os.path.exists(junk) and not os.path.exists(torn)


def test_unwritable_directory_is_not_an_error(env):
    tmp, meta = env
    c = make(tmp, meta)
    sub = os.path.dirname(c.path(KEY[0]))
    os.rename(sub, sub + ".away")
    open(sub, "w").close()             # a file where the directory was: writes fail
    c.put(KEY[0], b"data")
    assert not c.contains(KEY[0]) and c.used_bytes == 0
    assert c.stats.get("cache_errors") == 1
