"""The read path: bytes of a file range from the open file's own block buffer, the cache tiers, or
S3 — with single-flight fetches and an adaptive sequential read-ahead (directory prefetch and the
dataset walk: reader/prefetch.py; the partial blocks of random reads: reader/pieces.py). It runs on
the trio thread: S3 through the store's coroutines, memory hits inline, puts through the cache's
disk writer thread (put_nowait), disk reads in a worker thread.

The kernel asks for 128 KiB-1 MiB at a time while a block is 4 MiB, so each open file keeps the last
HANDLE_BLOCKS blocks it read, verified once, and slices them: without that every request would
re-read and re-hash a block. The buffer belongs to the open file (a new open goes to the cache
tiers, so hit ratios mean what they say) and goes away when the file is closed.
"""
from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from cachefs import metrics, supervise
from cachefs.blocks import block_count, block_key, block_range, blocks_for
from cachefs.cache.base import BlockCache
from cachefs.cache.shared import SharedTier
from cachefs.cache.shared_claims import Claim
from cachefs.flight import Flight, Flights
from cachefs.meta.schema import Inode
from cachefs.reader import pieces
from cachefs.reader.order import DEFAULT_CONCURRENCY, OrderPrefetcher
from cachefs.reader.pieces import PIECE_SIZE, BlockPieces
from cachefs.reader.prefetch import DirectoryPrefetch
from cachefs.stats import Stats
from cachefs.store.base import ObjectStore

log = logging.getLogger(__name__)

RunBlocking = Callable[..., Awaitable]

# Two blocks per open file: the one being read and the next (the kernel's read-ahead runs into it).
HANDLE_BLOCKS = pieces.HANDLE_BLOCKS
# ... and at most this many across all open files, oldest dropped first (a dropped block is read
# again from the cache tiers): with thousands of open files, memory stays bounded. 32 blocks (128 MiB
# at 4 MiB) keep two each for 16 files read at once (max_idle_threads). Together with the read-ahead
# buffer (max_fetches + max_idle_threads blocks) and max_fetches GETs in flight, this is the
# mount's global read-ahead memory budget: (32 + 16 + 16 + 16) x 4 MiB = 320 MiB by default.
HANDLE_BUDGET_BLOCKS = 32
# A read this far past the previous one's end still counts as sequential: record readers skip
# headers and padding, and the kernel's own read-ahead may leave small holes.
SKIP_TOLERANCE = 1 << 20
# The window doubles with every block a sequential reader enters, and also with every read once the
# reader has read this much in one sequential run: a stream then reaches the full window within its
# first block or two (the backend's parallelism from the start, which is what a 64 MiB file needs),
# while a random reader taking one record (a few sequential requests, well under 1 MiB) out of a
# large shard still fetches nothing it does not read unless it crosses into a new block.
RAMP_BYTES = 1 << 20
# A file read from its start in requests of RAMP_BYTES or more (the kernel's read-ahead of a
# streaming reader: a reader of a header or of one record asks for less) starts with this window,
# not one block: the kernel has only two requests out before the first block arrives, so a window
# that grows per read would leave the backend two GETs to work on for a whole first-block latency.
# Measured on 64 MiB objects (docs/BENCHMARKS.md): 0.67-0.74 of the backend starting at one block,
# 0.74-0.82 starting at four.
START_WINDOW_BLOCKS = 4


@dataclass
class ReadState:
    """Per open file: where the next sequential read would start, its last blocks, and its
    read-ahead window (blocks; doubles per sequential block, 0 after a random read)."""
    next_offset: int = 0
    blocks: OrderedDict = field(default_factory=OrderedDict)   # block index -> memoryview
    window: int = 0
    ahead_until: int = 0        # blocks below this index were already asked for
    run: int = 0                # bytes read sequentially since the last random read
    # Random pattern: set by a non-sequential read, cleared once RAMP_BYTES were read sequentially
    # after it. Meanwhile a block not at hand is read in pieces (reader/pieces.py), not fetched whole.
    random: bool = False
    # The pieces of a block this file read at random, and their cached siblings loaded with them
    # (block index -> piece index -> memoryview): as `blocks`, so that a random reader re-reading a
    # block's pieces slices memory instead of a worker-thread hop and a file read per read.
    pieces: OrderedDict = field(default_factory=OrderedDict)
    last_index: int = -1        # the block the previous read ended in
    prev_offset: int = 0        # where the previous read started


class BlockReader(DirectoryPrefetch, BlockPieces):
    """Bytes of a file range: the open file's own blocks, the read-ahead buffer, the cache tiers or S3."""

    def __init__(self, store: ObjectStore, cache: BlockCache, run_blocking: RunBlocking, stats: Stats, *,
                 bucket: str, block_size: int, read_ahead: int, prefetch_small_files: int = 0,
                 max_fetches: int = 16, prefetch_buffer_blocks: int = 32,
                 handle_budget_blocks: int = HANDLE_BUDGET_BLOCKS, piece_size: int = PIECE_SIZE,
                 prefetch_window: int = 0, prefetch_concurrency: int = DEFAULT_CONCURRENCY) -> None:
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
        self._inflight: Flights[bytes] = Flights()   # one fetch per block at a time
        # Blocks kept by open files, oldest first: (id of the ReadState, block index) -> the state.
        self.handle_budget_blocks = handle_budget_blocks
        self._held: OrderedDict[tuple[int, int], weakref.ref[ReadState]] = OrderedDict()
        self._init_directory_prefetch(max_fetches, prefetch_concurrency)
        self._init_pieces(piece_size)
        # The order a job said it will read in (reader/order.py); 0 window: a share of the cache.
        self.orders = OrderPrefetcher(self, prefetch_window, prefetch_concurrency)
        self.nursery: trio.Nursery | None = None   # set by the daemon; read-ahead runs there
        # The shared tier below this node's tiers (--shared-cache; cache/shared.py), set by the daemon.
        self.shared: SharedTier | None = None
        # Told of a small file the order prefetch has whole in memory (inode, its one block): fs.py
        # answers its FUSE requests in C from then on (cachefs/fastpath.py). Must not raise.
        self.on_file_ready: Callable[[Inode, memoryview], None] | None = None

    @property
    def read_ahead_blocks(self) -> int:
        """The largest window in whole blocks."""
        return self.read_ahead // self.block_size

    async def read(self, inode: Inode, key: str, offset: int, size: int, state: ReadState) -> bytes | memoryview:
        indexes = blocks_for(offset, size, self.block_size, inode.size)
        if not indexes:
            return b""
        sequential = 0 <= offset - state.next_offset <= SKIP_TOLERANCE
        # Part of the previous request asked for again (the kernel asks for the page it needed right
        # after a read-ahead request failed): no new pattern, and the same range to fetch, so that
        # the store's memory of a range that just failed answers it at once.
        again = state.prev_offset <= offset < state.next_offset
        end = min(offset + size, inode.size)
        if not again:
            state.prev_offset, state.next_offset = offset, end
        if not (sequential or again):
            state.window = state.run = 0     # random access: no read amplification
            state.random = True
        else:
            state.run += end - offset
            if state.run >= RAMP_BYTES:
                state.random = False         # turned sequential: whole blocks again
        if sequential and not state.random and self.nursery is not None and self.read_ahead_blocks:
            entered = indexes[-1] not in state.blocks and indexes[-1] != state.last_index
            if entered or (state.run >= RAMP_BYTES and state.window < self.read_ahead_blocks):
                start = START_WINDOW_BLOCKS if offset == 0 and size >= RAMP_BYTES else 1
                state.window = min(max(start, 2 * state.window), self.read_ahead_blocks)
                metrics.READAHEAD_WINDOW.observe(state.window)
                self._read_ahead(state, inode, key, indexes[-1] + 1)
        state.last_index = indexes[-1]
        if again and state.random:
            # read what the previous request asked for (its pieces, so the very range that failed)
            lo, hi = state.prev_offset, max(end, state.next_offset)
            span = await self._span(state, inode, key, lo, hi)
            return memoryview(span)[offset - lo:end - lo]
        return await self._span(state, inode, key, offset, end)

    async def _span(self, state: ReadState, inode: Inode, key: str, offset: int, end: int) -> bytes | memoryview:
        """Bytes [offset, end) of the file, its blocks read concurrently."""
        indexes = blocks_for(offset, end - offset, self.block_size, inode.size)
        if len(indexes) == 1:
            return await self._range(state, inode, key, indexes[0], offset, end)
        parts: dict[int, memoryview] = {}
        errors: list[Exception] = []

        async def load(i: int) -> None:
            start, stop = block_range(i, self.block_size, inode.size)
            try:
                parts[i] = await self._range(state, inode, key, i, max(offset, start), min(end, stop))
            except Exception as e:  # noqa: BLE001 - raised below as itself, not in an ExceptionGroup
                errors.append(e)

        async with trio.open_nursery() as nursery:
            for i in indexes:
                nursery.start_soon(load, i)
        if errors:
            raise errors[0]
        return b"".join(parts[i] for i in indexes)

    async def _range(self, state: ReadState, inode: Inode, key: str, index: int, lo: int, hi: int) -> memoryview:
        """Bytes [lo, hi) of the file, all within block `index`: from the whole block, or, for a random
        reader whose block is nowhere at hand (not held, buffered, in memory, on disk or in flight),
        from its pieces."""
        start = index * self.block_size
        if state.random and index not in state.blocks and self._pieces_of(inode, index):
            bkey = block_key(self.bucket, key, inode.etag, self.block_size, index)
            if not (bkey in self._prefetched or bkey in self._inflight or self.cache.contains(bkey)):
                return await self._piece_range(state, inode, key, index, bkey, lo, hi)
        block = await self._handle_block(state, inode, key, index)
        return block[lo - start:hi - start]

    def forget(self, keys) -> None:
        """Drop waiting read-ahead results of these blocks (their cached copies are being dropped)."""
        for k in keys:
            self._prefetched.pop(k, None)

    async def _handle_block(self, state: ReadState, inode: Inode, key: str, index: int) -> memoryview:
        data = state.blocks.get(index)
        if data is None:
            data = await self._block(inode, key, index, stream=state.window > 0)
            state.blocks[index] = data
            self._hold(state, state.blocks, index)
        return data

    def _hold(self, state: ReadState, held: OrderedDict, index: int, keep: int = HANDLE_BLOCKS) -> None:
        """`held` (state.blocks or state.pieces) just got block `index`: keep `keep` per open file and
        handle_budget_blocks across all of them, the oldest dropped first."""
        while len(held) > keep:
            self._held.pop((id(state), held.popitem(last=False)[0]), None)
        self._held[(id(state), index)] = weakref.ref(state)
        while len(self._held) > self.handle_budget_blocks:
            (_, old), ref = self._held.popitem(last=False)
            holder = ref()           # None: that file was closed and its blocks are gone
            if holder is not None:
                holder.blocks.pop(old, None)
                holder.pieces.pop(old, None)

    def prefetch_file(self, inode: Inode, key: str, namespace=None) -> None:
        """On open: a file no larger than --prefetch-small-files has all its blocks asked for now,
        in the background and within the mount-wide max_fetches budget (blocks the budget cuts off
        are fetched by the reads themselves). Blocks cached, buffered or in flight cost nothing.
        With the namespace, the open also counts towards prefetching its directory's small files."""
        if self.nursery is None or not 0 < inode.size <= self.prefetch_small_files or not inode.etag:
            return
        if namespace is not None and not self.orders.claims(inode):
            self._note_open(inode, namespace)     # an order covering the file knows better
        for i in range(block_count(inode.size, self.block_size)):
            if not self._start_prefetch(inode, key, i, stream=False):
                break


    def file_ready(self, inode: Inode, index: int, data) -> None:
        """A prefetch fetched block `index` of a file: told on if that is the whole file."""
        if self.on_file_ready is not None and index == 0 and len(data) == inode.size:
            self.on_file_ready(inode, data)

    def note_served(self, inode: Inode, key: str) -> None:
        """A one-block file was opened and read whole without this reader (the fast path): what an
        open and a read of it here would have noted."""
        self.orders.opened(inode)
        if self.orders.claims(inode):
            self.cache.cool(block_key(self.bucket, key, inode.etag, self.block_size, 0))

    def note_open(self, inode: Inode) -> None:
        """Every open of a file, the kernel's page cache kept or not: the reader's place in an order."""
        self.orders.opened(inode)

    def _read_ahead(self, state: ReadState, inode: Inode, key: str, first: int) -> None:
        last = min(first + state.window, block_count(inode.size, self.block_size))
        i = max(first, state.ahead_until)
        while i < last and self._start_prefetch(inode, key, i, stream=True):
            i += 1
        state.ahead_until = i       # what the mount-wide limit cut off is asked for at the next block

    def _start_prefetch(self, inode: Inode, key: str, index: int, stream: bool) -> bool:
        """Load one block in the background unless it is at hand already: from S3, or from a disk
        tier into the read-ahead buffer (a warm stream then reads its blocks from disk in parallel,
        ahead of the reader, as a cold one fetches them). False when the mount-wide budget
        (max_fetches loads in flight) is spent. `stream`: read-ahead of a sequential reader (its
        fetched blocks skip the memory tier: TieredCache.put)."""
        if self._prefetching >= self.max_fetches:
            return False
        bkey = block_key(self.bucket, key, inode.etag, self.block_size, index)
        if not (bkey in self._prefetched or bkey in self._inflight or self.cache.in_memory(bkey)):
            self.stats.add("readahead_disk_blocks" if self.cache.contains(bkey) else "readahead_blocks")
            self._prefetching += 1
            self._inflight.start(bkey)
            assert self.nursery is not None, "prefetches start only once the daemon has set the nursery"
            supervise.start(self.nursery, "readahead", self._prefetch, inode, key, index, bkey, stream)
        return True

    async def _prefetch(self, inode: Inode, key: str, index: int, bkey: bytes, stream: bool) -> None:
        fetch = self._inflight[bkey]     # registered by _start_prefetch, so a read arriving first waits
        try:
            data = await self._fetch(fetch, bkey, inode, key, index, stream)
        except Exception as e:  # the reader will ask again and see the error itself
            log.debug("read-ahead of %s block %d failed: %s", key, index, e)
            return
        finally:
            self._prefetching -= 1
        if fetch.shared:
            return                       # a reader waited for it and has it
        self._keep_prefetched(bkey, data)

    def _keep_prefetched(self, bkey: bytes, data: memoryview) -> None:
        self._prefetched[bkey] = data
        while len(self._prefetched) > self.prefetch_buffer_blocks:
            self._prefetched.popitem(last=False)

    async def _block(self, inode: Inode, key: str, index: int, stream: bool = False) -> memoryview:
        bkey = block_key(self.bucket, key, inode.etag, self.block_size, index)
        data = await self._find_block(bkey, inode, key, index, stream)
        if self.orders.claims(inode):
            # Read in its order's epoch: room in memory goes to blocks still ahead of the reader (an
            # order prefetch ahead of a memory tier smaller than the window had the reader's next
            # blocks evicted first, and read back from disk: docs/CACHING.md "Order-aware prefetch").
            self.cache.cool(bkey)
        return data

    async def _find_block(self, bkey: bytes, inode: Inode, key: str, index: int, stream: bool) -> memoryview:
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
            self.store.hurry(key, *block_range(index, self.block_size, inode.size))
            await fetch.wait()
            if fetch.value is not None:
                return fetch.value
            if fetch.error is not None:
                raise fetch.error
            # the fetching request was cancelled before it started: try ourselves
        fetch = self._inflight.start(bkey)
        return await self._fetch(fetch, bkey, inode, key, index, stream)

    async def _fetch(self, fetch: Flight, bkey: bytes, inode: Inode, key: str, index: int,
                     stream: bool = False) -> memoryview:
        """Load a block registered in _inflight; whoever waits on `fetch` gets the outcome. A block
        fetched from S3 is in the cache before anyone gets it: a block on disk, a small object in
        memory (or the disk writer's queue) at once and on disk shortly after (a kill -9 in between
        loses only those disk copies: fetched again, never served wrong; docs/CACHING.md,
        put_nowait). Cancelled (an interrupted read, a
        cancelled read-ahead: the GET is dropped), it lands with no outcome and a waiter fetches
        the block itself (_block)."""
        try:
            fetch.value = await self._load(bkey, inode, key, index, stream)
            return fetch.value
        except Exception as e:
            fetch.error = e
            raise
        finally:
            self._inflight.land(bkey)

    async def _load(self, bkey: bytes, inode: Inode, key: str, index: int, stream: bool = False) -> memoryview:
        """The cache tiers (they count their hits: memory on this thread, disk in a worker thread),
        the block's cached pieces, the shared tier, else a ranged GET (a sequential stream's block is
        cached on disk only: TieredCache.put), which the shared tier is then offered in the background,
        or, when this node claimed the block (other nodes may be waiting for it), written at once."""
        data = self.cache.get_nowait(bkey)
        if data is not None:
            return data
        if self.cache.contains(bkey):
            found = await self.run_blocking(self.cache.get, bkey)
            if found is not None:
                return memoryview(found)
        assembled = await self._block_from_pieces(inode, index, bkey) if self.piece_size else None
        shared = self.shared.block_id(self.bucket, key, inode.etag, self.block_size, index) \
            if self.shared is not None and inode.etag else None
        if assembled is not None:
            await self._put(bkey, assembled, memory=not stream)
            self._offer_shared(shared, assembled)
            return assembled
        self.stats.add("cache_misses")
        start, end = block_range(index, self.block_size, inode.size)
        claim: Claim | None = None
        tier = self.shared
        if shared is not None and tier is not None:
            # the block, possibly after another node that claimed it fetched it; a Claim: this
            # node fetches it for all; None: a miss, or the tier failed
            found = await tier.acquire(shared, end - start)
            if isinstance(found, Claim):
                claim = found
            elif found is not None:
                await self._put(bkey, found, memory=not stream)
                return found
        try:
            fetched = await self._get(key, start, end, inode.etag or None)
        except BaseException:
            if claim is not None and tier is not None:   # failed or cancelled: nobody should wait for it
                tier.release(claim)
            raise
        if claim is not None and tier is not None:
            tier.publish(claim, fetched)
        await self._put(bkey, fetched, memory=not stream)
        if claim is None:
            self._offer_shared(shared, fetched)
        return memoryview(fetched)

    def _offer_shared(self, block, data: bytes | memoryview) -> None:
        """A block this node got from the origin goes to the shared tier, queued (never waited for)."""
        if block is not None and self.shared is not None:
            self.shared.offer(block, data)

    async def _get(self, key: str, start: int, end: int, etag: str | None) -> bytes | memoryview:
        """A whole block's GET (a seam for tests counting fetches)."""
        return await self.store.aget_range(key, start, end, etag)
