"""Whole-file prefetch on open, background directory listings, and the global bounds on both
(BlockReader and Namespace over the in-memory store)."""
import logging

import pytest
import trio
import trio.testing

from cachefs.errors import StoreUnavailable
from cachefs.meta.schema import ROOT_INO
from cachefs.namespace.core import MAX_BACKGROUND_LISTINGS
from cachefs.reader import ReadState
from cachefs.reader.order import Order
from cachefs.reader.prefetch import DIR_PREFETCH_DIRS, GetBudget

from .test_read_path import BS, make_world


@pytest.fixture
def world(tmp_path):
    parts, meta = make_world(tmp_path, cache_blocks=256, prefetch_small_files=4 * BS, max_fetches=16)
    yield parts
    meta.close()


async def settle(ns=None, reader=None):
    """Wait until background work (threads included, which wait_all_tasks_blocked does not see) is done."""
    while (ns is not None and ns._background) or (reader is not None and (reader._prefetching or reader._dir_walks)):
        await trio.sleep(0.001)
    await trio.testing.wait_all_tasks_blocked()


async def _open_and_read(ns, reader, name: str, reads=((0, 1 << 30),)):
    """What fs.open then fs.read do: prefetch on open, then read; returns the bytes read."""
    inode = await ns.lookup(ROOT_INO, name.encode())
    got = []
    async with trio.open_nursery() as nursery:
        reader.nursery = nursery
        reader.prefetch_file(inode, "pre/" + name)
        state = ReadState()
        for off, size in reads:
            got.append(bytes(await reader.read(inode, "pre/" + name, off, size, state)))
        await trio.testing.wait_all_tasks_blocked()
    reader.nursery = None
    return b"".join(got)


def test_small_file_is_fetched_whole_on_open_and_each_block_once(world):
    store, ns, reader, stats = world
    data = bytes(range(256)) * (3 * BS // 256 + 7)          # 4 blocks, the last one partial
    store.put("pre/small", data)
    got = trio.run(_open_and_read, ns, reader, "small")
    assert got == data
    assert stats.get("readahead_blocks") == 4              # all blocks asked for at open
    assert stats.get("s3_get") == 4                        # ... and none fetched twice by the read
    assert not reader._prefetched                          # the read took them all


def test_prefetch_on_open_starts_before_the_first_read(world):
    store, ns, reader, stats = world
    store.put("pre/one", b"x" * 1000)

    async def main():
        inode = await ns.lookup(ROOT_INO, b"one")
        async with trio.open_nursery() as nursery:
            reader.nursery = nursery
            reader.prefetch_file(inode, "pre/one")
            await settle(reader=reader)
            gets = stats.get("s3_get")                      # fetched with no read at all
            assert bytes(await reader.read(inode, "pre/one", 0, 4096, ReadState())) == b"x" * 1000
        reader.nursery = None
        return gets
    assert trio.run(main) == 1 and stats.get("s3_get") == 1


def test_file_above_the_threshold_is_not_prefetched(world):
    store, ns, reader, stats = world
    store.put("pre/big", bytes(4 * BS + 1))
    got = trio.run(_open_and_read, ns, reader, "big", ((0, 100),))
    assert got == bytes(100)
    assert stats.get("readahead_blocks") == 0 and stats.get("s3_get") == 1   # only the block read


def test_threshold_zero_turns_it_off(world):
    store, ns, reader, stats = world
    reader.prefetch_small_files = 0
    store.put("pre/small", bytes(2 * BS))
    trio.run(_open_and_read, ns, reader, "small", ((0, 100),))
    assert stats.get("readahead_blocks") == 0 and stats.get("s3_get") == 1


def test_many_opens_at_once_stay_within_the_fetch_budget(world):
    store, ns, reader, stats = world
    reader.max_fetches = 3
    for i in range(10):
        store.put(f"pre/f{i}", bytes(2 * BS))

    async def main():
        inodes = [await ns.lookup(ROOT_INO, f"f{i}".encode()) for i in range(10)]
        async with trio.open_nursery() as nursery:
            reader.nursery = nursery
            for i, inode in enumerate(inodes):
                reader.prefetch_file(inode, f"pre/f{i}")
                assert reader._prefetching <= 3
            assert reader._prefetching == 3
            await trio.testing.wait_all_tasks_blocked()
        reader.nursery = None
        assert reader._prefetching == 0
    trio.run(main)
    assert stats.get("readahead_blocks") == 3


def test_cached_small_file_costs_no_get_on_open(world):
    store, ns, reader, stats = world
    store.put("pre/warm", bytes(2 * BS))
    trio.run(_open_and_read, ns, reader, "warm")
    gets = stats.get("s3_get")
    trio.run(_open_and_read, ns, reader, "warm")
    assert stats.get("s3_get") == gets


def test_blocks_held_by_open_files_are_bounded_mount_wide(world):
    store, ns, reader, stats = world
    reader.handle_budget_blocks = 6
    reader.prefetch_small_files = 0
    for i in range(20):
        store.put(f"pre/h{i}", bytes([i]) * (2 * BS))

    async def main():
        states = []
        for i in range(20):                                 # 20 files open at once, each read whole
            inode = await ns.lookup(ROOT_INO, f"h{i}".encode())
            state = ReadState()
            states.append(state)
            assert bytes(await reader.read(inode, f"pre/h{i}", 0, 2 * BS, state)) == bytes([i]) * (2 * BS)
            assert sum(len(s.blocks) for s in states) <= 6
        # the first file's blocks were dropped: reading it again comes from the cache tier, correct
        inode = await ns.lookup(ROOT_INO, b"h0")
        assert not states[0].blocks
        assert bytes(await reader.read(inode, "pre/h0", BS, 10, states[0])) == bytes(10)
        return states
    states = trio.run(main)
    assert sum(len(s.blocks) for s in states) <= 6
    assert stats.get("s3_get") == 40                        # every block fetched once


# -- directory listings in the background ------------------------------------------------------
def _populate(store, dirs=3, files=40):
    for d in range(dirs):
        for i in range(files):
            store.put(f"pre/c{d}/{i:03d}.jpg", b"img%d" % i)


def test_first_lookup_lists_the_directory(world):
    store, ns, _, stats = world
    _populate(store, dirs=1)

    async def main():
        cls = await ns.lookup(ROOT_INO, b"c0")
        await settle(ns)
        before = (stats.get("s3_head"), stats.get("s3_list"))
        first = await ns.lookup(cls.ino, b"000.jpg")        # remote, and starts the listing
        await settle(ns)
        middle = (stats.get("s3_head"), stats.get("s3_list"))
        found = [await ns.lookup(cls.ino, f"{i:03d}.jpg".encode()) for i in range(1, 40)]
        missing = await ns.lookup(cls.ino, b"nope.jpg")
        after = (stats.get("s3_head"), stats.get("s3_list"))
        return first, found, missing, before, middle, after
    first, found, missing, before, middle, after = trio.run(main)
    assert first.size == 4 and all(f is not None for f in found) and missing is None
    assert middle[0] - before[0] == 0                # no HEAD even for the first name ...
    assert middle[1] - before[1] == 1                # ... the directory's listing answered it
    assert after == middle                           # and every later lookup (and the miss)


def test_lookups_during_the_listing_wait_for_it(world):
    store, ns, _, stats = world
    _populate(store, dirs=1)

    async def main():
        cls = await ns.lookup(ROOT_INO, b"c0")
        await settle(ns)
        heads = stats.get("s3_head")
        results = {}

        async def one(i):
            results[i] = await ns.lookup(cls.ino, f"{i:03d}.jpg".encode())
        async with trio.open_nursery() as nursery:      # 40 concurrent lookups, the loader's pattern
            for i in range(40):
                nursery.start_soon(one, i)
        return results, stats.get("s3_head") - heads
    results, heads = trio.run(main)
    assert all(r is not None for r in results.values())
    assert heads == 0                               # every one answered by the one listing


def test_a_slow_listing_does_not_hold_lookups_back(world, monkeypatch):
    import cachefs.namespace.core
    monkeypatch.setattr(cachefs.namespace.core, "LISTING_WAIT_S", 0.05)
    store, ns, _, stats = world
    _populate(store, dirs=1)
    gate = trio.Event()

    async def main():
        cls = await ns.lookup(ROOT_INO, b"c0")
        await settle(ns)
        orig = ns.run_blocking

        async def gated(fn, *args):
            if getattr(fn, "__name__", "") == "replace_listings":  # the listing's LMDB write
                await gate.wait()                       # a listing of very many pages
            return await orig(fn, *args)
        ns.run_blocking = gated
        heads = stats.get("s3_head")
        with trio.fail_after(5):
            found = [await ns.lookup(cls.ino, f"{i:03d}.jpg".encode()) for i in range(3)]
        assert all(f is not None and f.size == 4 for f in found)
        assert stats.get("s3_head") - heads == 3        # asked one by one while the listing runs
        gate.set()
        await settle(ns)
        assert ns.meta.listing_expiry(cls.ino) > 0      # and the listing still landed
        ns.run_blocking = orig
    trio.run(main)


def test_background_listings_are_bounded_mount_wide(world):
    store, ns, _, stats = world
    n = MAX_BACKGROUND_LISTINGS + 3
    _populate(store, dirs=n, files=3)
    started = []
    relist = ns._list_one
    gate: list[trio.Event] = []

    async def held_relist(directory):
        started.append(directory.path)
        assert ns._background <= MAX_BACKGROUND_LISTINGS
        if gate:
            await gate[0].wait()                        # hold every listing open
        return await relist(directory)
    ns._list_one = held_relist

    async def main():
        dirs = [await ns.lookup(ROOT_INO, f"c{d}".encode()) for d in range(n)]
        await settle(ns)
        started.clear()
        gate.append(trio.Event())
        async with trio.open_nursery() as nursery:
            for d in dirs:
                nursery.start_soon(ns.lookup, d.ino, b"000.jpg")
            # a task waiting for a worker thread counts as blocked: wait until the held listings
            # are all there, then for everything else to settle, and check none went past the bound
            with trio.fail_after(10):
                while len(started) < MAX_BACKGROUND_LISTINGS:
                    await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert ns._background == MAX_BACKGROUND_LISTINGS
            gate[0].set()
        await settle(ns)
        assert ns._background == 0 and not ns._listing
    trio.run(main)
    assert len(started) == MAX_BACKGROUND_LISTINGS


def test_failed_background_listing_falls_back_to_lookups_one_by_one(world, caplog):
    store, ns, _, stats = world
    _populate(store, dirs=1, files=5)

    def broken(directory):
        raise OSError("listing refused")

    async def main():
        cls = await ns.lookup(ROOT_INO, b"c0")
        await settle(ns)
        ns._list_one = broken
        found = [await ns.lookup(cls.ino, f"{i:03d}.jpg".encode()) for i in range(5)]
        await settle(ns)
        return found
    found = trio.run(main)
    assert all(f is not None and f.size == 4 for f in found)
    assert ns._background == 0 and not ns._listing
    assert "background listing" in caplog.text


# -- a directory's small files after two of them were opened -------------------------------------
def _class_dir(store, n=10, size=1000, name="cls"):
    for i in range(n):
        store.put(f"pre/{name}/{i:03d}.jpg", bytes([i]) * size)


async def _open(ns, reader, parent, name):
    """fs.open's hook: prefetch on open, with the namespace (directory prefetch)."""
    inode = await ns.lookup(parent.ino, name.encode())
    reader.prefetch_file(inode, ns.key_of(inode), ns)
    return inode


async def _open_in_cls(ns, reader, names):
    """Open these files of cls/ one after the other, then let the background work finish."""
    cls = await ns.lookup(ROOT_INO, b"cls")
    async with trio.open_nursery() as nursery:
        reader.nursery = nursery
        for name in names:
            await _open(ns, reader, cls, name)
        await settle(ns, reader)
    reader.nursery = None


def test_second_open_in_a_directory_prefetches_its_other_small_files(world):
    store, ns, reader, stats = world
    _class_dir(store)

    async def main():
        cls = await ns.lookup(ROOT_INO, b"cls")
        async with trio.open_nursery() as nursery:
            reader.nursery = nursery
            await _open(ns, reader, cls, "003.jpg")
            await settle(ns, reader)
            assert stats.get("s3_get") == 1                 # one open: only that file
            await _open(ns, reader, cls, "007.jpg")
            await settle(ns, reader)
            assert stats.get("dir_prefetches") == 1
            gets = stats.get("s3_get")
            for i in range(10):                             # every other file is at hand now
                inode = await ns.lookup(cls.ino, f"{i:03d}.jpg".encode())
                got = await reader.read(inode, ns.key_of(inode), 0, 4096, ReadState())
                assert bytes(got) == bytes([i]) * 1000
            assert stats.get("s3_get") == gets == 10        # each file fetched once, all before its read
        reader.nursery = None
    trio.run(main)


def test_directory_prefetch_is_bounded_by_the_cache_room(world):
    store, ns, reader, stats = world
    _class_dir(store, n=10, size=BS)                        # 10 blocks; the tier has room for 256
    for tier in reader.cache.disk_tiers:
        tier.high_bytes = tier.used + 8 * BS                # room for 8: at most 4 may be prefetched

    trio.run(_open_in_cls, ns, reader, ("000.jpg", "001.jpg"))
    assert stats.get("s3_get") - 2 <= 4


def _count_loads(reader):
    """Record how many of the walk's GETs are in flight at each load (and the read-ahead charge)."""
    seen = []
    load = reader._load

    def counting_load(*args):
        seen.append((reader._dir_gets.count, reader._prefetching))
        return load(*args)
    reader._load = counting_load
    return seen


def test_directory_prefetch_keeps_its_get_count(world):
    store, ns, reader, stats = world
    reader._dir_gets = GetBudget(3, 1 << 30)                # --prefetch-concurrency 3, bytes no limit
    _class_dir(store, n=20)
    seen = _count_loads(reader)
    trio.run(_open_in_cls, ns, reader, ("000.jpg", "001.jpg"))
    assert stats.get("s3_get") == 20 and max(n for n, _ in seen) == 3


def test_directory_prefetch_bytes_count_against_read_ahead_in_whole_blocks(world):
    """Many small GETs at once, but their bytes bounded by half of max_fetches blocks, and charged to
    the read-ahead's max_fetches in whole blocks: read-ahead and demand reads keep the other half."""
    import threading
    store, ns, reader, stats = world
    reader.max_fetches = 4
    reader._dir_gets = GetBudget(64, 2 * BS)                # what the constructor makes of 4 and 64
    _class_dir(store, n=40, size=BS // 8)                   # 8 fit in a block's worth of bytes
    gate, get_range = threading.Event(), store.get_range

    def held(key, *args, **kw):
        if not key.endswith(("/000.jpg", "/001.jpg")):
            gate.wait(10)
        return get_range(key, *args, **kw)
    store.get_range = held
    charged = []

    async def main():
        cls = await ns.lookup(ROOT_INO, b"cls")
        async with trio.open_nursery() as nursery:
            reader.nursery = nursery
            for name in ("000.jpg", "001.jpg"):
                await _open(ns, reader, cls, name)
            with trio.fail_after(5):
                while reader._dir_gets.fits(BS // 8):      # the walk's bytes budget spent on held GETs
                    await trio.sleep(0.001)
                while reader._prefetching > 2:             # the two opens' own GETs are done
                    await trio.sleep(0.001)
            charged.append((reader._dir_gets.count, reader._prefetching))
            gate.set()
            await settle(ns, reader)
        reader.nursery = None
    trio.run(main)
    assert charged == [(16, 2)]                             # 16 GETs of BS/8 in flight: 2 blocks of 4
    assert stats.get("s3_get") == 40
    assert reader._prefetching == reader._dir_charged == reader._dir_gets.bytes == 0


def test_one_large_file_still_goes_through_a_small_byte_budget():
    budget = GetBudget(8, 100)

    async def main():
        await budget.acquire(1000)            # nothing in flight: let through
        assert not budget.fits(1)
        with trio.move_on_after(0.05) as waited:
            await budget.acquire(1)
        assert waited.cancelled_caught and budget.count == 1
        budget.release(1000)
        await budget.acquire(60)
        await budget.acquire(40)
        assert (budget.count, budget.bytes, budget.fits(1)) == (2, 100, False)
    trio.run(main)


def test_one_open_or_a_stale_listing_prefetches_no_neighbours(world):
    store, ns, reader, stats = world
    ns.background_listings = 0                              # lookups one by one: no listing in LMDB
    _class_dir(store)
    trio.run(_open_in_cls, ns, reader, ("000.jpg", "001.jpg", "002.jpg"))
    assert stats.get("s3_get") == 3                         # only the opened files


def test_no_listing_when_listings_expire_at_once(world):
    store, ns, _, stats = world
    ns.cfg.listing_ttl = 0                  # a listing would be stale when it lands: ask by name
    _populate(store, dirs=1, files=3)

    async def main():
        cls = await ns.lookup(ROOT_INO, b"c0")
        lists = stats.get("s3_list")
        found = [await ns.lookup(cls.ino, f"{i:03d}.jpg".encode()) for i in range(3)]
        await settle(ns)
        return found, stats.get("s3_list") - lists
    found, lists = trio.run(main)
    assert all(f is not None for f in found) and lists == 3 and stats.get("s3_head") == 4


def test_read_ahead_results_waiting_for_readers_are_bounded(world):
    """Read-ahead and small-file prefetch results nobody reads stay within prefetch_buffer_blocks:
    many files opened (or read ahead) and never read cannot grow memory."""
    store, ns, reader, stats = world
    reader.prefetch_buffer_blocks = 5
    for i in range(12):
        store.put(f"pre/p{i}", bytes([i]) * (3 * BS))

    async def main():
        async with trio.open_nursery() as nursery:
            reader.nursery = nursery
            for i in range(12):                         # opened, never read: 36 blocks fetched
                inode = await ns.lookup(ROOT_INO, f"p{i}".encode())
                reader.prefetch_file(inode, f"pre/p{i}")
                await settle(ns, reader)
                assert len(reader._prefetched) <= 5
        reader.nursery = None
        inode = await ns.lookup(ROOT_INO, b"p11")     # the newest are kept, and correct
        return bytes(await reader.read(inode, "pre/p11", 2 * BS, 10, ReadState()))
    assert trio.run(main) == bytes([11]) * 10
    assert stats.get("readahead_blocks") == 36 and len(reader._prefetched) <= 5


# -- the dataset walk: small files opened in several sibling directories ----------------------------
def _dataset(store, classes=6, n=5, size=1000):
    for c in range(classes):
        _class_dir(store, n=n, size=size, name=f"train/c{c}")
    store.put("pre/train/labels.txt", b"labels")


async def _open_one_per_class(ns, reader, classes):
    """Open file 000.jpg of each of these classes (one open per directory: the two-opens rule never
    fires), then let the background work finish."""
    train = await ns.lookup(ROOT_INO, b"train")
    async with trio.open_nursery() as nursery:
        reader.nursery = nursery
        for c in classes:
            cls = await ns.lookup(train.ino, f"c{c}".encode())
            await _open(ns, reader, cls, "000.jpg")
        await settle(ns, reader)
    reader.nursery = None


def test_opens_in_three_sibling_directories_prefetch_the_whole_dataset(world):
    store, ns, reader, stats = world
    _dataset(store)
    trio.run(_open_one_per_class, ns, reader, (4, 0, 2))
    assert stats.get("dataset_walks") == 1
    assert stats.get("s3_get") == 6 * 5                 # every image of every class, each once

    async def read_all():
        train = await ns.lookup(ROOT_INO, b"train")
        for c in range(6):
            cls = await ns.lookup(train.ino, f"c{c}".encode())
            for i in range(5):
                inode = await ns.lookup(cls.ino, f"{i:03d}.jpg".encode())
                assert bytes(await reader.read(inode, ns.key_of(inode), 0, 4096, ReadState())) == bytes([i]) * 1000
    trio.run(read_all)
    assert stats.get("s3_get") == 30                    # the reads found them all cached


def test_opens_in_two_directories_walk_nothing(world):
    store, ns, reader, stats = world
    _dataset(store)
    trio.run(_open_one_per_class, ns, reader, (1, 3))
    assert stats.get("dataset_walks") == 0 and stats.get("s3_get") == 2


def test_dataset_walk_stays_within_the_cache_room(world):
    store, ns, reader, stats = world
    _dataset(store, classes=8, n=10, size=BS)           # 80 files of one block each
    for tier in reader.cache.disk_tiers:
        tier.high_bytes = tier.used + 40 * BS           # room for 40; each directory takes <= half
    trio.run(_open_one_per_class, ns, reader, (0, 1, 2))
    assert stats.get("dataset_walks") == 1
    assert stats.get("s3_get") < 40


def test_dataset_walk_stops_when_s3_is_unavailable(world, caplog):
    """An outage during a walk: the first block S3 cannot serve ends it, rather than every other
    block of the dataset failing in turn (each a request to the breaker, a line in the log)."""
    store, ns, reader, stats = world
    reader._dir_gets = GetBudget(4, 1 << 30)            # --prefetch-concurrency 4
    _dataset(store, classes=6, n=10)                    # 54 files beyond the three opened
    get_range = store.get_range
    refused = []

    def down_but_for_the_opened(key, *args, **kw):
        if key.endswith("/000.jpg"):
            return get_range(key, *args, **kw)
        refused.append(key)
        raise StoreUnavailable("S3 endpoint unreachable")
    store.get_range = down_but_for_the_opened
    with caplog.at_level(logging.INFO, logger="cachefs.reader.prefetch"):
        trio.run(_open_one_per_class, ns, reader, (4, 0, 2))
    assert stats.get("dataset_walks") == 1
    slots = reader._dir_gets.max_count
    assert 1 <= len(refused) <= slots < 54, len(refused)     # what was in flight (slots are mount-wide)
    assert "directory prefetch stopped: S3 is unavailable" in caplog.text


def test_dataset_walk_takes_the_next_directory_while_gets_are_in_flight(world):
    """A walk worker goes on to the next directory (its listing) once it has started the GETs of the
    previous one, not when they have landed: GETs stay bounded by the slots, not by a listing's
    round trip per directory of a few files."""
    import threading
    store, ns, reader, stats = world
    classes = 2 * DIR_PREFETCH_DIRS
    reader._dir_gets = GetBudget(12, 1 << 30)          # --prefetch-concurrency 12: 2-3 directories' GETs
    _dataset(store, classes=classes, n=5)
    gate = threading.Event()
    get_range = store.get_range

    lock, waiting, most = threading.Lock(), [0], [0]

    def held(key, *args, **kw):
        if not key.endswith("/000.jpg"):
            with lock:
                waiting[0] += 1
                most[0] = max(most[0], waiting[0])
            gate.wait(10)
            with lock:
                waiting[0] -= 1
        return get_range(key, *args, **kw)
    store.get_range = held
    taken = []

    async def main():
        train = await ns.lookup(ROOT_INO, b"train")
        async with trio.open_nursery() as nursery:
            reader.nursery = nursery
            for c in (4, 0, 2):
                cls = await ns.lookup(train.ino, f"c{c}".encode())
                await _open(ns, reader, cls, "000.jpg")
            with trio.fail_after(5):
                while reader._dir_gets.fits(1):          # every GET slot taken by a held GET
                    await trio.sleep(0.001)
            with trio.move_on_after(1):
                while classes - len(reader._dir_queue) <= DIR_PREFETCH_DIRS:
                    await trio.sleep(0.001)
            taken.append(classes - len(reader._dir_queue))
            gate.set()
            await settle(ns, reader)
        reader.nursery = None
    trio.run(main)
    assert taken[0] > DIR_PREFETCH_DIRS
    assert 1 <= most[0] <= 12                           # no more GETs at once than the budget
    assert stats.get("s3_get") == classes * 5                 # every image once, none lost to the gate


def test_many_callers_of_ensure_listed_share_one_listing_and_read_no_entries(world):
    """The order prefetch resolves 64 names at once, many under one directory: one LIST, and the
    callers that waited for it do not each read the directory's entries from LMDB (1,000 inodes a
    caller under an ImageNet-like root, measured in a profile)."""
    store, ns, reader, stats = world
    _dataset(store, classes=20, n=2)
    reads = []
    children = ns.meta.children

    def counting_children(ino):
        reads.append(ino)
        return children(ino)
    ns.meta.children = counting_children

    async def main():
        train = await ns.lookup(ROOT_INO, b"train")
        before = stats.get("s3_list")
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(ns.ensure_listed, train.ino)
        assert ns.meta.listing_expiry(train.ino) > 0
        return train.ino, stats.get("s3_list") - before
    train_ino, lists = trio.run(main)
    assert lists == 1
    assert reads.count(train_ino) <= 1, reads


def test_order_resolve_remembers_directories_and_looks_a_gone_one_up_again(world):
    store, ns, reader, stats = world
    _dataset(store, classes=3, n=2)
    orders = reader.orders
    orders.namespace = ns

    order = Order("s", None, 1 << 30)

    async def main():
        got = {p: await orders._resolve(p, order, i) for i, p in enumerate(
            ("train/c1/001.jpg", "train/c1/000.jpg", "train/labels.txt", "train/c9/000.jpg", "nowhere/x"))}
        assert {p: i and i.path for p, i in got.items()} == {
            "train/c1/001.jpg": "train/c1/001.jpg", "train/c1/000.jpg": "train/c1/000.jpg",
            "train/labels.txt": "train/labels.txt", "train/c9/000.jpg": None, "nowhere/x": None}
        assert set(orders._dirs) == {"train/c1", "train"}
        orders._dirs["train/c1"] = 987654321              # an inode that is gone (directory removed)
        again = await orders._resolve("train/c1/000.jpg", order, 5)
        assert again is not None and again.path == "train/c1/000.jpg"
        assert orders._dirs["train/c1"] == again.parent
    trio.run(main)
