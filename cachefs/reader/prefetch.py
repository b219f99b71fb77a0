"""Directory prefetch and the dataset walk: the small files of a directory (and of a dataset's
directories) fetched in the background once a loader is seen opening them (see DIR_PREFETCH_* and
DATASET_AFTER). A part of BlockReader (reader/blockreader.py), kept apart because it is a hint
layered on the read path: it fetches through the reader's single-flight map and cache, never past
its budgets.
"""
from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

import trio
from trio.lowlevel import ParkingLot

from cachefs import supervise
from cachefs.blocks import block_count, block_key, block_range
from cachefs.errors import StoreUnavailable
from cachefs.meta.schema import Inode

if TYPE_CHECKING:
    from cachefs.cache.base import BlockCache
    from cachefs.flight import Flight, Flights
    from cachefs.stats import Stats

log = logging.getLogger(__name__)

# Directory prefetch, for the image-folder loader (one small file per sample, opened in shuffled
# order from a path list): once DIR_PREFETCH_AFTER distinct small files of a directory have been
# opened, its other small files (from its LMDB listing, no S3 request) are fetched in the background,
# at most DIR_PREFETCH_BYTES of them, never more than half the free room of the disk tiers (so a
# dataset larger than the cache is not fetched ahead only to be evicted), DIR_PREFETCH_DIRS
# directories at a time, mount-wide. Two opens, not one: a single file read out of a directory
# (a config, a label map) does not drag its neighbours in.
# Its GETs have a budget of their own: at most --prefetch-concurrency at once (small GETs need many
# in flight against a remote store: a 110 KB GET is mostly round trip) and at most half of
# max_fetches blocks' worth of bytes. Those bytes count against the read-ahead's max_fetches in
# whole blocks, so demand reads and read-ahead keep at least the other half, and the memory bound
# (docs/CACHING.md) is what it was when the walk had half of max_fetches GETs.
DIR_PREFETCH_AFTER = 2
DIR_PREFETCH_BYTES = 64 << 20     # ~600 images of 110 KB: a class directory or a good part of it
# Listings at once: against a remote store a listing is a round trip, and a walk's directory holds
# only a few files, so the listings, not the GETs, would set the pace with two.
DIR_PREFETCH_DIRS = 8
DIR_PREFETCH_TRACKED = 4096       # directories whose opens are remembered (oldest forgotten first)
# Dataset walk: a loader drawing images in shuffled order from many class directories opens only a
# few files of each before the epoch is half over, so the two-opens rule comes late. Once small
# files have been opened in DATASET_AFTER distinct subdirectories of one directory (the dataset's
# root), every subdirectory of it is listed and prefetched the same way, DIR_PREFETCH_DIRS at a time,
# each within the same bounds (DIR_PREFETCH_BYTES, half the free cache room, the GET budget).
# Three, not one or two: a job reading a config from one directory and labels from another must not
# pull in the whole tree.
DATASET_AFTER = 3
_WALKED: frozenset[int] = frozenset()   # a directory whose neighbours were asked for already


class DirectoryPrefetch:
    """BlockReader's directory prefetch (a mixin: it uses the reader's `_inflight`, `_prefetched`,
    `_fetch`, `cache`, `stats`, `nursery` and budgets)."""

    if TYPE_CHECKING:   # BlockReader's, used here
        stats: Stats
        cache: BlockCache
        nursery: trio.Nursery | None
        bucket: str
        block_size: int
        prefetch_small_files: int
        _prefetching: int
        _prefetched: OrderedDict[bytes, memoryview]
        _inflight: Flights[bytes]

        async def _fetch(self, fetch: Flight, bkey: bytes, inode: Inode, key: str, index: int,
                         stream: bool = False) -> memoryview: ...

        def file_ready(self, inode: Inode, index: int, data: memoryview) -> None: ...

    def _init_directory_prefetch(self, max_fetches: int, concurrency: int) -> None:
        # dir -> small files opened (subdirs with opens), or _WALKED
        self._dir_opens: OrderedDict[int, set[int] | frozenset[int]] = OrderedDict()
        self._subdir_opens: OrderedDict[int, set[int] | frozenset[int]] = OrderedDict()
        self._dir_queue: deque[tuple[int, frozenset[int]]] = deque()   # directories waiting for a prefetch
        self._dir_walks = 0                                        # prefetch tasks running
        self._dir_workers = 0                                      # ... of which directory workers
        self._dir_gets = GetBudget(concurrency, max(1, max_fetches // 2) * self.block_size)
        self._dir_reserved = 0                                     # bytes listed for GETs not started yet
        self._dir_charged = 0                                      # blocks of _prefetching that are the walk's
        self._dir_unavailable = trio.Event()                       # set: S3 failed a prefetch GET

    def _note_open(self, inode: Inode, namespace) -> None:
        opened = self._dir_opens.get(inode.parent)
        if opened is None:
            opened = self._dir_opens[inode.parent] = set()
            _forget_oldest(self._dir_opens)
            self._note_subdir(inode.parent, namespace)
        elif isinstance(opened, frozenset):     # _WALKED, the only frozenset kept
            return
        opened.add(inode.ino)
        if len(opened) >= DIR_PREFETCH_AFTER:
            self._enqueue_directory(inode.parent, namespace, frozenset(opened))

    def _note_subdir(self, directory: int, namespace) -> None:
        """A first small-file open in `directory`: count it for the dataset walk of its parent."""
        try:
            parent = namespace.get(directory).parent
        except Exception:  # noqa: BLE001 - gone meanwhile: a hint only
            return
        if parent == directory:           # the root is its own parent
            return
        seen = self._subdir_opens.get(parent)
        if seen is None:
            seen = self._subdir_opens[parent] = set()
            _forget_oldest(self._subdir_opens)
        elif isinstance(seen, frozenset):       # _WALKED
            return
        seen.add(directory)
        if len(seen) >= DATASET_AFTER:
            self._subdir_opens[parent] = _WALKED
            self.stats.add("dataset_walks")
            self._dir_walks += 1
            assert self.nursery is not None, "opens are noted only once the daemon has set the nursery"
            supervise.start(self.nursery, "dataset_walk", self._walk_dataset, parent, namespace)

    async def _walk_dataset(self, root: int, namespace) -> None:
        """Queue every subdirectory of `root` for a directory prefetch (listing it first)."""
        try:
            for _, child in await namespace.entries(root):
                if child.is_dir and self._dir_opens.get(child.ino) is not _WALKED:
                    self._enqueue_directory(child.ino, namespace, frozenset(), front=False)
            self._start_walkers(namespace)
        except Exception as e:  # a hint only: the reads fetch what they need themselves
            log.debug("dataset walk of directory %d failed: %s", root, e)
        finally:
            self._dir_walks -= 1

    def _enqueue_directory(self, directory: int, namespace, opened: frozenset[int], front: bool = True) -> None:
        """Queue a directory's prefetch: one whose files are being opened goes first (`front`), a
        dataset walk's go last and are started by the walk once all are queued."""
        self._dir_opens[directory] = _WALKED
        _forget_oldest(self._dir_opens)
        if front:
            self._dir_queue.appendleft((directory, opened))
            self._start_walkers(namespace)
        else:
            self._dir_queue.append((directory, opened))

    def _start_walkers(self, namespace) -> None:
        if not self._dir_workers:
            self._dir_unavailable = trio.Event()      # an outage seen by one worker stops them all
        while self._dir_queue and self._dir_workers < DIR_PREFETCH_DIRS:
            self._dir_workers += 1
            self._dir_walks += 1
            assert self.nursery is not None, "opens are noted only once the daemon has set the nursery"
            supervise.start(self.nursery, "dir_prefetch", self._directory_worker, namespace, self._dir_unavailable)

    async def _directory_worker(self, namespace, unavailable: trio.Event) -> None:
        """Prefetch queued directories one after another, each directory's GETs left running while
        the next one is listed (a dataset walk's directories hold a few files each: waiting for them
        before listing the next would leave the fetch slots idle for a listing's round trip per
        directory). The GETs stay bounded by _dir_gets, listings by DIR_PREFETCH_DIRS."""
        try:
            async with trio.open_nursery() as fetches:
                while self._dir_queue:
                    directory, opened = self._dir_queue.popleft()
                    if not await self._prefetch_directory(directory, namespace, opened, fetches, unavailable):
                        log.info("directory prefetch stopped: S3 is unavailable (%d directories dropped)",
                                 len(self._dir_queue))
                        self._dir_queue.clear()      # hints only; opens queue them again
        finally:
            self._dir_workers -= 1
            self._dir_walks -= 1
        if self._dir_queue:     # queued while this worker waited for its last GETs: nobody took it
            self._start_walkers(namespace)

    async def _prefetch_directory(self, parent: int, namespace, opened: frozenset[int], fetches: trio.Nursery,
                                  unavailable: trio.Event) -> bool:
        """Start fetching the small files of a directory that were not opened yet (see DIR_PREFETCH_*)
        in `fetches`; a directory queued by a dataset walk is listed first if its listing is not
        fresh. Returns False once a block S3 could not serve was seen (an outage: every other block
        would fail too)."""
        try:
            files = await namespace.listed_files(parent)
            if files is None and not opened:
                files = [inode for _, inode in await namespace.entries(parent) if not inode.is_dir]
            # Bytes on their way, or listed by another worker and not asked for yet, count as taken:
            # the next directory is listed (by this worker or another) before they land.
            taken = self._dir_gets.bytes + self._dir_reserved
            budget = min(DIR_PREFETCH_BYTES, max(0, self._cache_room() - taken) // 2)
            wanted = []
            for inode in files or ():
                if inode.ino in opened or not 0 < inode.size <= self.prefetch_small_files or not inode.etag:
                    continue
                if inode.size > budget:
                    break
                budget -= inode.size
                wanted.append(inode)
            if wanted:
                self.stats.add("dir_prefetches")
            reserved = sum(inode.size for inode in wanted)
            self._dir_reserved += reserved
            try:
                for inode in wanted:
                    key = namespace.key_of(inode)
                    for i in range(block_count(inode.size, self.block_size)):
                        size = len(range(*block_range(i, self.block_size, inode.size)))
                        bkey = block_key(self.bucket, key, inode.etag, self.block_size, i)
                        if bkey in self._prefetched or bkey in self._inflight or self.cache.contains(bkey):
                            continue
                        await self._dir_gets.acquire(size)
                        if unavailable.is_set():
                            self._dir_gets.release(size)
                            return False
                        if bkey in self._inflight:          # a reader got there while we waited
                            self._dir_gets.release(size)
                            continue
                        reserved -= size
                        self._dir_reserved -= size
                        self._charge_read_ahead()
                        self.stats.add("readahead_blocks")
                        self._inflight.start(bkey)
                        fetches.start_soon(self._prefetch_neighbour, inode, key, i, bkey, size, unavailable)
            finally:
                self._dir_reserved -= reserved
        except Exception as e:  # a hint only: the reads fetch what they need themselves
            log.debug("prefetch of directory %d failed: %s", parent, e)
        return not unavailable.is_set()

    async def _prefetch_neighbour(self, inode: Inode, key: str, index: int, bkey: bytes, size: int,
                                  unavailable: trio.Event) -> None:
        """One block of a directory prefetch: into the cache tiers only (not the read-ahead buffer,
        which it would flush); a reader that waited for it gets it directly."""
        try:
            data = await self._fetch(self._inflight[bkey], bkey, inode, key, index)
            self.file_ready(inode, index, data)       # not opened yet: the fast path may answer it
        except StoreUnavailable as e:
            unavailable.set()
            log.debug("directory prefetch of %s failed: %s", key, e)
        except Exception as e:
            log.debug("directory prefetch of %s failed: %s", key, e)
        finally:
            self._dir_gets.release(size)
            self._charge_read_ahead()

    def _charge_read_ahead(self) -> None:
        """Count the walk's bytes in flight against max_fetches in whole blocks (_prefetching)."""
        blocks = -(-self._dir_gets.bytes // self.block_size)
        self._prefetching += blocks - self._dir_charged
        self._dir_charged = blocks

    def _cache_room(self) -> int:
        """What the cache takes before its high watermarks, less its disk writer's queue
        (BlockCache.ahead_room)."""
        return max(0, self.cache.ahead_room())


class GetBudget:
    """GETs in flight bounded by count and by bytes; one GET is always let through, however large."""

    def __init__(self, count: int, nbytes: int) -> None:
        self.max_count = count
        self.max_bytes = nbytes
        self.count = 0
        self.bytes = 0
        self._waiting = ParkingLot()

    def fits(self, size: int) -> bool:
        return self.count < self.max_count and (not self.count or self.bytes + size <= self.max_bytes)

    async def acquire(self, size: int) -> None:
        while not self.fits(size):
            await self._waiting.park()
        self.count += 1
        self.bytes += size

    def release(self, size: int) -> None:
        self.count -= 1
        self.bytes -= size
        self._waiting.unpark_all()


def _forget_oldest(tracked: OrderedDict) -> None:
    while len(tracked) > DIR_PREFETCH_TRACKED:
        tracked.popitem(last=False)
