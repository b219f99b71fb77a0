"""The read path: bytes of a file range from the open file's own block buffer, the cache tiers, or
S3 — with single-flight fetches and a fixed sequential read-ahead.

The kernel asks for 128 KiB-1 MiB at a time while a block is 4 MiB, so each open file keeps the last
HANDLE_BLOCKS blocks it read, verified once, and slices them: without that every request would
re-read and re-hash a block. The buffer belongs to the open file (a new open goes to the cache
tiers, so hit ratios mean what they say) and goes away when the file is closed.
"""
from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import trio

from . import metrics
from .blocks import block_count, block_key, block_range, blocks_for
from .cache.base import BlockCache
from .meta.schema import Inode
from .stats import Stats
from .store.base import ObjectStore

log = logging.getLogger(__name__)

RunBlocking = Callable[..., Awaitable]

# Two blocks per open file: the one being read and the next (the kernel's read-ahead runs into it).
HANDLE_BLOCKS = 2
# ... and at most this many across all open files, oldest dropped first (a dropped block is read
# again from the cache tiers): with thousands of open files, memory stays bounded. 32 blocks (128 MiB
# at 4 MiB) keep two each for 16 files read at once (max_idle_threads). Together with the read-ahead
# buffer (max_fetches + max_idle_threads blocks) and max_fetches GETs in flight, this is the
# mount's global read-ahead memory budget: (32 + 16 + 16 + 16) x 4 MiB = 320 MiB by default.
HANDLE_BUDGET_BLOCKS = 32
# A read this far past the previous one's end still counts as sequential: record readers skip
# headers and padding, and the kernel's own read-ahead may leave small holes.
SKIP_TOLERANCE = 1 << 20


@dataclass
class ReadState:
    """Per open file: where the next sequential read would start, its last blocks, and its
    read-ahead window (blocks; doubles per sequential block, 0 after a random read)."""
    next_offset: int = 0
    blocks: OrderedDict = field(default_factory=OrderedDict)   # block index -> memoryview
    window: int = 0
    ahead_until: int = 0        # blocks below this index were already asked for


@dataclass
class _Fetch:
    done: trio.Event = field(default_factory=trio.Event)
    value: memoryview | None = None
    error: BaseException | None = None
    shared: bool = False            # a reader waited for this fetch (a read-ahead need not keep it)


class BlockReader:
    def __init__(self, store: ObjectStore, cache: BlockCache, run_blocking: RunBlocking, stats: Stats, *,
                 bucket: str, block_size: int, read_ahead: int, prefetch_small_files: int = 0,
                 max_fetches: int = 16, prefetch_buffer_blocks: int = 32,
                 handle_budget_blocks: int = HANDLE_BUDGET_BLOCKS) -> None:
        self.store = store
        self.cache = cache
        self.run_blocking = run_blocking
        self.stats = stats
        self.bucket = bucket
        self.block_size = block_size
        self.read_ahead = read_ahead                   # the largest window, bytes (--read-ahead)
        self.prefetch_small_files = prefetch_small_files   # whole-file prefetch on open up to this size
        self.max_fetches = max_fetches                 # read-ahead GETs in flight, whole mount
        self._prefetching = 0
        # Read-ahead results wait here until a reader takes them, so that a block no cache tier
        # admitted (a full scan-resistant cache) is not fetched twice. Bounded: oldest go first.
        self.prefetch_buffer_blocks = prefetch_buffer_blocks
        self._prefetched: OrderedDict[bytes, memoryview] = OrderedDict()
        self._inflight: dict[bytes, _Fetch] = {}
        # Blocks kept by open files, oldest first: (id of the ReadState, block index) -> the state.
        self.handle_budget_blocks = handle_budget_blocks
        self._held: OrderedDict[tuple[int, int], weakref.ref[ReadState]] = OrderedDict()
        self.nursery: trio.Nursery | None = None   # set by the daemon; read-ahead runs there

    @property
    def read_ahead_blocks(self) -> int:
        """The largest window in whole blocks."""
        return self.read_ahead // self.block_size

    async def read(self, inode: Inode, key: str, offset: int, size: int, state: ReadState) -> bytes | memoryview:
        indexes = blocks_for(offset, size, self.block_size, inode.size)
        if not indexes:
            return b""
        sequential = 0 <= offset - state.next_offset <= SKIP_TOLERANCE
        end = min(offset + size, inode.size)
        state.next_offset = end
        if not sequential:
            state.window = 0                 # random access: no read amplification
        elif indexes[-1] not in state.blocks and self.nursery is not None and self.read_ahead_blocks:
            # Decided once per block entered, not on each of its kernel requests.
            state.window = min(max(1, 2 * state.window), self.read_ahead_blocks)
            metrics.READAHEAD_WINDOW.observe(state.window)
            self._read_ahead(state, inode, key, indexes[-1] + 1)
        if len(indexes) == 1:
            block = await self._handle_block(state, inode, key, indexes[0])
            base = indexes[0] * self.block_size
            return block[offset - base:end - base]
        blocks: dict[int, memoryview] = {}

        async def load(i: int) -> None:
            blocks[i] = await self._handle_block(state, inode, key, i)

        async with trio.open_nursery() as nursery:
            for i in indexes:
                nursery.start_soon(load, i)
        parts = []
        for i in indexes:
            start, stop = block_range(i, self.block_size, inode.size)
            lo, hi = max(offset, start), min(end, stop)
            parts.append(blocks[i][lo - start:hi - start])
        return b"".join(parts)

    def forget(self, keys) -> None:
        """Drop waiting read-ahead results of these blocks (their cached copies are being dropped)."""
        for k in keys:
            self._prefetched.pop(k, None)

    async def _handle_block(self, state: ReadState, inode: Inode, key: str, index: int) -> memoryview:
        data = state.blocks.get(index)
        if data is None:
            data = await self._block(inode, key, index)
            state.blocks[index] = data
            while len(state.blocks) > HANDLE_BLOCKS:
                self._held.pop((id(state), state.blocks.popitem(last=False)[0]), None)
            self._held[(id(state), index)] = weakref.ref(state)
            while len(self._held) > self.handle_budget_blocks:
                (_, old), ref = self._held.popitem(last=False)
                holder = ref()           # None: that file was closed and its blocks are gone
                if holder is not None:
                    holder.blocks.pop(old, None)
        return data

    def prefetch_file(self, inode: Inode, key: str) -> None:
        """On open: a file no larger than --prefetch-small-files has all its blocks asked for now,
        in the background and within the mount-wide max_fetches budget (blocks the budget cuts off
        are fetched by the reads themselves). Blocks cached, buffered or in flight cost nothing."""
        if (self.nursery is None or not 0 < inode.size <= self.prefetch_small_files or not inode.etag
                or self._prefetching >= self.max_fetches):
            return
        for i in range(block_count(inode.size, self.block_size)):
            if not self._start_prefetch(inode, key, i):
                break

    def _read_ahead(self, state: ReadState, inode: Inode, key: str, first: int) -> None:
        last = min(first + state.window, block_count(inode.size, self.block_size))
        i = max(first, state.ahead_until)
        while i < last and self._start_prefetch(inode, key, i):
            i += 1
        state.ahead_until = i       # what the mount-wide limit cut off is asked for at the next block

    def _start_prefetch(self, inode: Inode, key: str, index: int) -> bool:
        """Fetch one block in the background unless it is at hand already; False when the
        mount-wide budget (max_fetches GETs in flight) is spent."""
        if self._prefetching >= self.max_fetches:
            return False
        bkey = block_key(self.bucket, key, inode.etag, self.block_size, index)
        if not (bkey in self._prefetched or bkey in self._inflight or self.cache.contains(bkey)):
            self.stats.add("readahead_blocks")
            self._prefetching += 1
            self._inflight[bkey] = _Fetch()
            self.nursery.start_soon(self._prefetch, inode, key, index, bkey)
        return True

    async def _prefetch(self, inode: Inode, key: str, index: int, bkey: bytes) -> None:
        fetch = self._inflight[bkey]     # registered by _start_prefetch, so a read arriving first waits
        try:
            data = await self._fetch(fetch, bkey, inode, key, index)
        except Exception as e:  # the reader will ask again and see the error itself
            log.debug("read-ahead of %s block %d failed: %s", key, index, e)
            return
        finally:
            self._prefetching -= 1
        if fetch.shared:
            return                       # a reader waited for it and has it
        self._prefetched[bkey] = data
        while len(self._prefetched) > self.prefetch_buffer_blocks:
            self._prefetched.popitem(last=False)

    async def _block(self, inode: Inode, key: str, index: int) -> memoryview:
        bkey = block_key(self.bucket, key, inode.etag, self.block_size, index)
        while True:
            data = self._prefetched.pop(bkey, None)
            if data is not None:
                return data
            data = self.cache.get_nowait(bkey)
            if data is not None:
                return data
            fetch = self._inflight.get(bkey)
            if fetch is None:
                break
            self.stats.add("fetch_shared")
            fetch.shared = True
            await fetch.done.wait()
            if fetch.value is not None:
                return fetch.value
            if fetch.error is not None:
                raise fetch.error
            # the fetching request was cancelled before it started: try ourselves
        fetch = self._inflight[bkey] = _Fetch()
        return await self._fetch(fetch, bkey, inode, key, index)

    async def _fetch(self, fetch: _Fetch, bkey: bytes, inode: Inode, key: str, index: int) -> memoryview:
        """Load a block registered in _inflight; whoever waits on `fetch` gets the outcome."""
        try:
            fetch.value = await self.run_blocking(self._load, bkey, inode, key, index)
            return fetch.value
        except trio.Cancelled:
            raise
        except Exception as e:
            fetch.error = e
            raise
        finally:
            del self._inflight[bkey]
            fetch.done.set()

    def _load(self, bkey: bytes, inode: Inode, key: str, index: int) -> memoryview:
        """In a worker thread: the cache tiers (they count their hits), else a ranged GET."""
        data = self.cache.get(bkey)
        if data is not None:
            return data
        self.stats.add("cache_misses")
        start, end = block_range(index, self.block_size, inode.size)
        fetched = self.store.get_range(key, start, end, inode.etag or None)
        self.cache.put(bkey, fetched)
        return memoryview(fetched)
