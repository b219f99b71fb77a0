"""Random cold reads: the pieces of a block. A read that is part of a random pattern (ReadState.random)
and finds its block nowhere at hand fetches only the PIECE_SIZE-aligned pieces it touches, not the
whole block, and caches each piece under its own key (blocks.piece_key: checksummed by the tiers like
a block, so a corrupt piece is a miss, never served). A later random read of the same piece is a hit;
a later whole-block read looks for the block, then for all its pieces, then fetches. A block becomes
hot when HOT_PIECES distinct pieces of it were read at random: its missing pieces are then fetched in
the background. A part of BlockReader (reader/blockreader.py), as DirectoryPrefetch is.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from cachefs import supervise
from cachefs.blocks import block_key, block_range, piece_key
from cachefs.meta.schema import Inode

if TYPE_CHECKING:
    from cachefs.cache.base import BlockCache
    from cachefs.flight import Flight, Flights
    from cachefs.stats import Stats
    from cachefs.store.base import ObjectStore

log = logging.getLogger(__name__)

# 64 KiB: what random readers ask for (fio's unit, most record formats'; the kernel passes a random
# read through at its size, it does not read ahead on one), so an aligned 64 KiB read costs exactly
# its bytes (amplification 1.0; 128 KiB pieces would make it 2.0). A larger piece buys no latency:
# single GETs on Ceph took 1.76 ms for 64 KiB, 1.79 for 128 KiB, 1.97 for 256 KiB, 9.2 for 4 MiB
# (docs/BENCHMARKS.md, "Cold random reads and the read path in trio"). A read of several pieces
# fetches them in one GET.
PIECE_SIZE = 64 << 10
# Half the block's pieces (32 of a 4 MiB block): a random reader that has touched half of a block is
# covering it, and the fill then fetches only the missing half, so a full random pass costs exactly the
# file's bytes (amplification 1.0) and a block read only half-way at worst twice its bytes read. A
# smaller N fills blocks a sparse random reader never comes back to (at N=8 of 64, a reader touching
# 15% of each block fetched 5x what it read).
HOT_FRACTION = 2
PIECES_TRACKED = 4096          # blocks whose pieces read are remembered for the hot rule (oldest go first)
# Objects up to this size (small files, pieces) are stored through the cache's writer thread.
SMALL_PUT_BYTES = 256 << 10
# A disk read of a piece brings at most this many of the block's other cached pieces along (the open
# file holds them; a random reader re-reading a block then slices memory), and only as many as the
# file's held pieces have room for: a reader spread over more blocks than that would otherwise read
# siblings from disk only to drop them (measured: 300 us per warm read instead of 110).
MAX_SIBLINGS = 32
# The open file's blocks held (reader/blockreader.py's HANDLE_BLOCKS): its pieces are held up to as many bytes.
HANDLE_BLOCKS = 2
_FILLED: frozenset[int] = frozenset()   # a block whose missing pieces were asked for already


class BlockPieces:
    """BlockReader's pieces (a mixin: it uses the reader's `_inflight`, `cache`, `store`, `stats`,
    `nursery`, `run_blocking` and the read-ahead budget)."""

    if TYPE_CHECKING:   # BlockReader's, used here
        store: ObjectStore
        stats: Stats
        cache: BlockCache
        nursery: trio.Nursery | None
        run_blocking: Callable[..., Awaitable]
        block_size: int
        max_fetches: int
        _prefetching: int
        _inflight: Flights[bytes]

        _held: OrderedDict

        def _hold(self, state, held: OrderedDict, index: int, keep: int = ...) -> None: ...

    def _init_pieces(self, piece_size: int) -> None:
        # Pieces only where a block holds several of them (a block of a small file is fetched whole).
        self.piece_size = piece_size if piece_size and self.block_size >= 4 * piece_size else 0
        self.hot_pieces = max(1, self.block_size // max(1, piece_size) // HOT_FRACTION)
        self._piece_reads: OrderedDict[bytes, set[int] | frozenset[int]] = OrderedDict()
        self._held_piece_limit = HANDLE_BLOCKS * (self.block_size // max(1, piece_size))

    def _pieces_of(self, inode: Inode, index: int) -> int:
        """How many pieces block `index` has; 0 if it is to be read whole (pieces off, or a short block)."""
        if not self.piece_size:
            return 0
        start, stop = block_range(index, self.block_size, inode.size)
        return -(-(stop - start) // self.piece_size) if stop - start >= 4 * self.piece_size else 0

    async def _put(self, key: bytes, data: bytes | memoryview, memory: bool = True) -> None:
        """Store a fetched object without a disk write on the trio thread. A small one (a file, a
        piece) goes through put_nowait: memory now, the disk copy by the cache's writer thread (~5 us
        here, where an inline put() held the trio thread for a disk write, 0.2-0.7 ms and at times
        5-50 ms: docs/CACHING.md). A block, or a small object the writer has no room for (its queue
        full: the back-pressure of a slow disk), is put() in a worker thread: a block's disk copy
        then exists when the read returns (a kill -9 right after keeps it), one hop per 4 MiB."""
        if len(data) > SMALL_PUT_BYTES or not self.cache.put_nowait(key, data, memory):
            await self.run_blocking(self.cache.put, key, data, memory)

    def cached_pieces(self, inode: Inode, key: str, bucket: str) -> list[bytes]:
        """The keys of the pieces of this version of a file that some tier holds (`cachefs drop`)."""
        out = []
        for index in range(-(-inode.size // self.block_size)):
            bkey = block_key(bucket, key, inode.etag, self.block_size, index)
            for p in range(self._pieces_of(inode, index)):
                pk = piece_key(bkey, self.piece_size, p)
                if self.cache.contains(pk):
                    out.append(pk)
        return out

    async def _piece_range(self, state, inode: Inode, key: str, index: int, bkey: bytes, lo: int,
                           hi: int) -> memoryview:
        """Bytes [lo, hi) (of the file, within block `index`) from the block's pieces: those the open
        file (`state`, blockreader.ReadState) holds, else the cache's or S3's, then held by the file
        with any cached siblings that came along (_pieces)."""
        start = index * self.block_size
        ps = self.piece_size
        first, last = (lo - start) // ps, (hi - 1 - start) // ps + 1
        self.stats.add("piece_reads")
        held = state.pieces.get(index)
        if held is not None and all(p in held for p in range(first, last)):
            state.pieces.move_to_end(index)
            self.stats.add("piece_held_reads")
            parts = [held[p] for p in range(first, last)]
        else:
            if held is None:
                held = state.pieces[index] = {}
            else:
                state.pieces.move_to_end(index)
            room = self._held_piece_limit - sum(map(len, state.pieces.values())) - (last - first)
            await self._pieces(inode, key, index, bkey, first, last, held, min(MAX_SIBLINGS, room))
            self._hold_pieces(state, index)
            parts = [held[p] for p in range(first, last)]
        self._note_pieces(inode, key, index, bkey, first, last)
        base = start + first * ps
        joined = memoryview(parts[0]) if len(parts) == 1 else memoryview(b"".join(parts))   # a slice, no copy
        return joined[lo - base:hi - base]

    async def _pieces(self, inode: Inode, key: str, index: int, bkey: bytes, first: int, last: int,
                      held: dict[int, memoryview] | None = None, siblings_room: int = 0) -> list[memoryview]:
        """Pieces [first, last) of block `index`: from memory, in flight, on disk, else fetched (each
        contiguous run of missing pieces in one GET, single-flight with other readers). `held` (the
        open file's pieces of this block) gets them, and also the block's other pieces known to be on
        disk when a wanted one is read from disk (up to `siblings_room` of them): one worker-thread hop
        for what a random reader re-reads."""
        keys = {p: piece_key(bkey, self.piece_size, p) for p in range(first, last)}
        got = held if held is not None else {}
        not_on_disk: set[int] = set()          # read from disk and missed: fetch it next round
        errors: list[Exception] = []
        while not errors and any(p not in got for p in keys):
            waits: list[tuple[int, Flight]] = []
            disk: list[int] = []
            missing: list[int] = []
            for p, pk in keys.items():
                if p in got:
                    continue
                data = self.cache.get_nowait(pk)
                if data is not None:
                    got[p] = data
                elif (flight := self._inflight.get(pk)) is not None:
                    waits.append((p, flight))
                elif p not in not_on_disk and self.cache.contains(pk):
                    disk.append(p)
                else:
                    missing.append(p)
            if not (missing or disk or waits):
                break                               # all in memory (or held): no nursery, no await
            flights = {p: self._inflight.start(keys[p]) for p in missing}   # before any await
            async with trio.open_nursery() as nursery:
                for a, b in _runs(missing):
                    nursery.start_soon(self._fetch_pieces, inode, key, index, keys, flights, a, b, got, errors)
                if disk:
                    siblings = self._siblings_on_disk(bkey, keys, got, siblings_room) if siblings_room > 0 else {}
                    nursery.start_soon(self._disk_pieces, keys | siblings, disk + list(siblings), got,
                                       not_on_disk)
                for p, flight in waits:
                    nursery.start_soon(_wait_piece, p, flight, got, errors)
        if errors:
            raise errors[0]
        return [got[p] for p in range(first, last)]

    async def _fetch_pieces(self, inode: Inode, key: str, index: int, keys: dict[int, bytes],
                            flights: dict[int, Flight], a: int, b: int, got: dict[int, memoryview],
                            errors: list[Exception]) -> None:
        """One GET for pieces [a, b), each cached under its own key before anyone gets it (a read that
        returned has its pieces cached, as a block read has its blocks)."""
        ps = self.piece_size
        start, stop = block_range(index, self.block_size, inode.size)
        try:
            self.stats.add("piece_fetches")
            data = memoryview(await self.store.aget_range(key, start + a * ps, min(start + b * ps, stop),
                                                          inode.etag or None))
            for p in range(a, b):
                piece = data[(p - a) * ps:(p - a + 1) * ps]
                await self._put(keys[p], piece)
                flights[p].value = got[p] = piece
        except Exception as e:   # noqa: BLE001 - handed to the caller and to whoever waits
            for p in range(a, b):
                flights[p].error = e
            errors.append(e)
        finally:
            for p in range(a, b):
                self._inflight.land(keys[p])

    def _hold_pieces(self, state, index: int) -> None:
        """Keep at most HANDLE_BLOCKS blocks' worth of pieces per open file (across any number of
        blocks: a random reader's are spread), the oldest block's dropped first."""
        while len(state.pieces) > 1 and sum(map(len, state.pieces.values())) > self._held_piece_limit:
            old = next(iter(state.pieces))
            if old == index:
                break
            del state.pieces[old]
            self._held.pop((id(state), old), None)
        self._hold(state, state.pieces, index, keep=len(state.pieces))

    def _siblings_on_disk(self, bkey: bytes, keys: dict[int, bytes], got: dict[int, memoryview], room: int
                          ) -> dict[int, bytes]:
        """The block's other pieces this mount read at random before (all of a filled block's) that
        the cache holds: read in the same hop as the wanted ones. Only those known here, so that a
        sparse random reader does not hash and look up every piece of every block it touches."""
        seen = self._piece_reads.get(bkey)
        if seen is None:
            return {}
        candidates = range(self.block_size // self.piece_size) if seen is _FILLED else seen
        out: dict[int, bytes] = {}
        for p in candidates:
            if len(out) >= room:
                break
            if p not in keys and p not in got:
                pk = piece_key(bkey, self.piece_size, p)
                if self.cache.contains(pk):
                    out[p] = pk
        return out

    async def _disk_pieces(self, keys: dict[int, bytes], wanted: list[int], got: dict[int, memoryview],
                           not_on_disk: set[int]) -> None:
        found = await self.run_blocking(_get_all, self.cache, [keys[p] for p in wanted])
        for p, data in zip(wanted, found, strict=True):
            if data is None:          # evicted meanwhile, unreadable or corrupt (dropped): fetch it
                not_on_disk.add(p)
            else:
                got[p] = memoryview(data)

    def _note_pieces(self, inode: Inode, key: str, index: int, bkey: bytes, first: int, last: int) -> None:
        """Count the distinct pieces of a block read at random; fill the block once it is hot."""
        seen = self._piece_reads.get(bkey)
        if seen is None:
            seen = self._piece_reads[bkey] = set()
            while len(self._piece_reads) > PIECES_TRACKED:
                self._piece_reads.popitem(last=False)
        elif isinstance(seen, frozenset):      # _FILLED
            return
        seen.update(range(first, last))
        if len(seen) < self.hot_pieces or self.nursery is None or self._prefetching >= self.max_fetches:
            return
        self._piece_reads[bkey] = _FILLED
        self._prefetching += 1
        self.stats.add("piece_fills")
        supervise.start(self.nursery, "readahead", self._fill_block, inode, key, index, bkey)

    async def _fill_block(self, inode: Inode, key: str, index: int, bkey: bytes) -> None:
        """The missing pieces of a hot block, one run at a time (a fill holds one read-ahead slot)."""
        try:
            n = self._pieces_of(inode, index)
            missing = [p for p in range(n) if not self.cache.contains(piece_key(bkey, self.piece_size, p))]
            for a, b in _runs(missing):
                await self._pieces(inode, key, index, bkey, a, b)
        except Exception as e:  # a hint only: the reads fetch what they need themselves
            log.debug("filling block %d of %s failed: %s", index, key, e)
        finally:
            self._prefetching -= 1

    async def _block_from_pieces(self, inode: Inode, index: int, bkey: bytes) -> memoryview | None:
        """The whole block put together from its cached pieces, if all of them are cached."""
        keys = []
        for p in range(self._pieces_of(inode, index)):
            keys.append(piece_key(bkey, self.piece_size, p))
            if not self.cache.contains(keys[-1]):
                return None          # a cold block costs one hash here
        if not keys:
            return None
        found = await self.run_blocking(_get_all, self.cache, keys)
        if any(data is None for data in found):
            return None
        self.stats.add("blocks_from_pieces")
        return memoryview(b"".join(found))


async def _wait_piece(p: int, flight: Flight, got: dict[int, memoryview], errors: list[Exception]) -> None:
    await flight.wait()
    if flight.value is not None:
        got[p] = flight.value
    elif isinstance(flight.error, Exception):
        errors.append(flight.error)
    # else: its fetch was cancelled (an interrupted read): the next round fetches it


def _get_all(cache: BlockCache, keys: list[bytes]) -> list[bytes | memoryview | None]:
    """In a worker thread: several cached pieces in one hop."""
    return [cache.get(k) for k in keys]


def _runs(indexes: list[int]) -> list[tuple[int, int]]:
    """Sorted indexes as [start, end) runs of consecutive ones: [1, 2, 3, 7] -> [(1, 4), (7, 8)]."""
    runs: list[tuple[int, int]] = []
    for i in indexes:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
