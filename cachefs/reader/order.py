"""Order-aware prefetch: a job says in which order it will read files (the control socket's `order`
op, fed by `cachefs prefetch --order`, `cachefs.hints` or `cachefs.torch`), and the daemon fetches
ahead in that order within a byte window. A part of BlockReader (composed, not a mixin): it fetches
through the reader's single-flight map, so a read of a file being prefetched joins that GET.

Decisions (docs/CACHING.md "Order-aware prefetch"): the window is WINDOW_FRACTION of what the cache
holds (or --prefetch-window); a file is fetched only if its bytes fit the window and, under the
scan-resistant policy, the cache still admits them; files the reader has overtaken (orderlist.Progress)
are not fetched and their fetches in flight are cancelled unless a reader waits for them; an order
whose files the reader does not open (MISS_LIMIT opens in a row) stands down until it opens one again.
Each stream (one per rank of a distributed job) has its own order; a new order of a stream replaces
its previous one (an older epoch arriving late is ignored).
"""
from __future__ import annotations

import bisect
import functools
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import trio

from cachefs import supervise
from cachefs.blocks import block_count, block_key
from cachefs.errors import StoreError, StoreUnavailable
from cachefs.meta.schema import ROOT_INO, Inode
from cachefs.reader.dirgroups import DirGroup, DirGroups
from cachefs.reader.orderlist import UNTOUCHED, OrderList, Progress, default_window, normalize

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 64        # GETs of small files in flight: the endpoint's rate keeps rising past 16
MISS_LIMIT = 16                 # opens in a row not in any order: the order is wrong, stand down
MAX_STREAMS = 64                # orders kept at once (ranks on one node); the oldest goes first
ROOM_POLL_S = 0.5               # a fetch waiting for cache room looks again this often
OUTAGE_PAUSE_S = 1.0            # S3 unavailable: the next file waits this long (the breaker probes)
CLAIMED = 4096                  # recently opened inodes an order covers (directory prefetch skips them)
RESOLVED_DIRS = 4096            # directories of the orders' paths whose inodes are remembered
# Listings at once, as the dataset walk's (reader/prefetch.py): 64 fetches starting in 64 unlisted
# directories listed them all at once, and the endpoint's bucket index served them slower and at a
# higher CPU cost than 8 at a time (measured: the epoch's first 0.3 s fetched 100 files, not 240).
LISTINGS = 8
# Positions looked at ahead of the fetches (being resolved, or resolved and waiting for their turn)
# per GET slot. A position waiting for its directory's listing holds no GET slot: with the slots
# held through the listings, the first 0.2 s of a shuffled epoch over 100 directories behind 20 ms
# fetched 36-45 files against the walk's ~100 (docs/BENCHMARKS.md "Hints that list ahead").
RESOLVE_AHEAD = 4


class _Waiter:
    """A resolved position waiting for its turn: its wake-up, its file's size, whether it was
    given its turn (a GET slot and its bytes of the window taken for it)."""
    __slots__ = ("event", "size", "granted")

    def __init__(self, size: int) -> None:
        self.event = trio.Event()
        self.size = size
        self.granted = False


class Order:
    """One stream's order: its paths, the reader's progress through them, its fetches in flight."""

    def __init__(self, stream: str, epoch: int | None, window: int, ahead: int = 1) -> None:
        self.stream = stream
        self.epoch = epoch
        self.paths = OrderList()
        self.progress = Progress(window)
        self.complete = False
        self.cursor = 0                    # next position the runner looks at
        self.scope = trio.CancelScope()    # the whole order: cancelled when replaced
        self.fetching: dict[int, tuple[trio.CancelScope, list]] = {}   # position -> scope, its flights
        self.misses = 0
        # Positions resolved and not started yet; `queue`: those not given their turn, sorted.
        # Turns are given where things change (`grant`, OrderPrefetcher._grant), waking only the
        # positions given one (a wake-up of every waiter per change cost more daemon CPU per file
        # than the epoch could spare: docs/BENCHMARKS.md "Issue 18").
        self.waiting: dict[int, _Waiter] = {}
        self.queue: list[int] = []
        # Positions being resolved, sorted: `quick` (any moment now) and `slow` (waiting for S3: their
        # directory's listing, or a lookup of the name); the largest file resolved so far, what each
        # slow one is assumed to need of the window.
        self.quick: list[int] = []
        self.slow: list[int] = []
        self.typical = 0
        # Positions being resolved or waiting: per order, so that a stalled one starves no other.
        self.looking = trio.Semaphore(ahead)
        self.grant: Callable[[], None] = lambda: None
        self._changed = trio.Event()

    @property
    def on_track(self) -> bool:
        return self.misses < MISS_LIMIT

    def changed(self) -> None:
        """The window, the paths, the reader or the positions moved: wake the runner, give turns."""
        self._changed.set()
        self._changed = trio.Event()
        self.grant()

    async def wait_change(self, timeout: float = ROOM_POLL_S) -> None:
        with trio.move_on_after(timeout):
            await self._changed.wait()

    def wait_turn(self, pos: int, waiter: _Waiter) -> None:
        self.waiting[pos] = waiter
        bisect.insort(self.queue, pos)

    def leave(self, pos: int) -> None:
        del self.waiting[pos]
        _remove(self.queue, pos)

    def waits_for_s3(self, pos: int) -> None:
        if _remove(self.quick, pos):
            bisect.insort(self.slow, pos)
            self.changed()             # the positions behind it may go now

    def resolved(self, pos: int) -> None:
        if not _remove(self.quick, pos):
            _remove(self.slow, pos)


def _remove(positions: list[int], pos: int) -> bool:
    i = bisect.bisect_left(positions, pos)
    if i < len(positions) and positions[i] == pos:
        del positions[i]
        return True
    return False


class OrderPrefetcher:
    def __init__(self, reader: Any, window: int = 0, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.reader = reader
        self.stats = reader.stats
        self.window_option = window        # 0: WINDOW_FRACTION of the cache (default_window)
        self.slots = trio.Semaphore(concurrency)      # GETs in flight
        self.concurrency = concurrency
        self.orders: OrderedDict[str, Order] = OrderedDict()
        self.namespace: Any = None         # set by the first order
        self._claimed: OrderedDict[int, None] = OrderedDict()
        self._dirs: OrderedDict[str, int] = OrderedDict()   # directory path -> inode, for _resolve
        self._fresh: dict[int, float] = {}     # directory -> until when its listing was seen fresh
        self._listing_slots = trio.Semaphore(LISTINGS)
        self._listings: dict[int, trio.Event] = {}   # directories listed for the orders now -> done
        self._groups = DirGroups()         # the orders' directories, listed a group at a time
        self._inflight_bytes = 0

    # -- receiving an order ---------------------------------------------------------------------------
    def begin(self, stream: str, epoch: int | None, namespace) -> Order | None:
        """A new order for `stream`, replacing its previous one; None if that one is of a later epoch."""
        old = self.orders.get(stream)
        if old is not None and epoch is not None and old.epoch is not None and epoch < old.epoch:
            return None
        self.namespace = namespace
        self._dirs.clear()                 # a new epoch's paths are resolved afresh
        if old is not None:
            self._drop(stream)
            self._groups.forget_done()
        order = self.orders[stream] = Order(stream, epoch, 0, RESOLVE_AHEAD * self.concurrency)
        order.grant = functools.partial(self._grant, order)
        while len(self.orders) > MAX_STREAMS:
            self._drop(next(iter(self.orders)))
        self._share_window()
        self.reader._dir_queue.clear()     # heuristic directory prefetch waiting: the order knows better
        self.stats.add("orders_received")
        assert self.reader.nursery is not None, "orders arrive only once the daemon serves"
        supervise.start(self.reader.nursery, "order_prefetch", self._run, order, what=stream)
        return order

    def add(self, order: Order, paths: list[str]) -> None:
        if self.orders.get(order.stream) is not order:
            return                         # replaced while it streamed in: the rest is of no use
        prefix = self.namespace.cfg.prefix
        dirs: Counter[str] = Counter()
        for raw in paths:
            path = normalize(raw)
            if path is None:
                self.stats.add("order_not_found")
                continue
            order.paths.append(path)
            dirs[prefix + path[:path.rfind("/") + 1]] += 1
        self._groups.note(dirs)
        order.progress.grow(len(order.paths))
        self.stats.add("order_paths_received", len(paths))
        order.changed()

    def end(self, order: Order) -> None:
        order.complete = True
        order.changed()

    def _drop(self, stream: str) -> None:
        order = self.orders.pop(stream)
        for scope, flights in order.fetching.values():
            if any(f.shared for f in flights):
                scope.shield = True        # a reader waits for it: that GET goes on
        order.scope.cancel()
        order.complete = True

    def _share_window(self) -> None:
        total = self.window_option or default_window(self._capacity())
        for order in self.orders.values():
            order.progress.window = total // len(self.orders)
            order.changed()

    def _capacity(self) -> int:
        """What the cache holds below its high watermarks (BlockCache.ahead_capacity)."""
        capacity: int = self.reader.cache.ahead_capacity()
        return capacity

    def _admits(self, size: int) -> bool:
        """Under scan-resistant a tier at its high watermark admits nothing: fetching then would only
        lose the bytes. LRU makes room by evicting (the window keeps it off what is ahead)."""
        cache: Any = self.reader.cache
        if getattr(cache, "policy", "lru") != "scan-resistant":
            return True
        room: int = cache.ahead_room()
        return room - self._inflight_bytes >= size

    # -- the reader's progress ------------------------------------------------------------------------
    def opened(self, inode: Inode) -> None:
        """Every open of a file (fs.open): moves the window of the orders holding it."""
        if not self.orders or inode.is_dir:
            return
        hit = False
        for order in self.orders.values():
            progress = order.progress
            pos = order.paths.find(inode.path, progress.low)
            if pos is None:
                if order.paths.find(inode.path) is not None:
                    hit = True             # opened again: in the order, behind the reader
                continue
            hit = True
            order.misses = 0
            for overtaken in progress.opened(pos):
                self._cancel(order, overtaken)
            order.changed()
        if hit:
            self.stats.add("order_opens_matched")
            self._claimed[inode.ino] = None
            while len(self._claimed) > CLAIMED:
                self._claimed.popitem(last=False)
        else:
            for order in self.orders.values():
                order.misses += 1

    def claims(self, inode: Inode) -> bool:
        """An order on track covers this file: the directory heuristics stand down for it."""
        return inode.ino in self._claimed and any(o.on_track for o in self.orders.values())

    def _cancel(self, order: Order, pos: int) -> None:
        entry = order.fetching.get(pos)
        if entry is None:
            return
        scope, flights = entry
        if any(f.shared for f in flights):
            return                         # a reader waits for it: its GET goes on
        scope.cancel()
        self.stats.add("order_cancelled_overtaken")

    # -- fetching ahead -------------------------------------------------------------------------------
    async def _run(self, order: Order) -> None:
        """Start a fetch per position, in order, at most the concurrency at once."""
        with order.scope:
            async with trio.open_nursery() as fetches:
                supervise.start(fetches, "order_prefetch", self._poll_turns, order, what=order.stream)
                while True:
                    progress = order.progress
                    order.cursor = max(order.cursor, progress.low)
                    if order.cursor >= len(order.paths):
                        if order.complete:
                            break
                        await order.wait_change(timeout=60.0)
                        continue
                    if not order.on_track:
                        await order.wait_change()
                        continue
                    pos = order.cursor
                    order.cursor += 1
                    if progress.state[pos] != UNTOUCHED or progress.is_passed(pos):
                        continue
                    await order.looking.acquire()
                    order.quick.append(pos)        # in order: the list stays sorted
                    supervise.start(fetches, "order_prefetch", self._file, order, pos, what=order.stream)
        log.debug("order of stream %s: every position looked at", order.stream)

    async def _file(self, order: Order, pos: int) -> None:
        """One position: looked up (its directory listed if need be, no GET slot held meanwhile),
        then fetched in its turn."""
        looking = True
        try:
            try:
                target = await self._target(order, pos)
            finally:
                order.resolved(pos)
            if target is None:
                order.changed()                          # the positions behind it may go now
                return
            order.typical = max(order.typical, target[0].size)
            waiter = _Waiter(target[0].size)
            order.wait_turn(pos, waiter)
            started = False
            try:
                self._grant(order)
                started = await self._turn(order, pos, waiter)
            finally:
                order.leave(pos)
                order.looking.release()
                looking = False
                if waiter.granted and not started:      # cancelled just after its turn came
                    self._ungrant(order, pos, waiter.size)
                    order.changed()
            if started:
                try:
                    await self._fetch_file(order, pos, *target)
                finally:
                    self.slots.release()
                    for other in list(self.orders.values()):   # a slot is free: their next may start
                        other.grant()
        finally:
            if looking:
                order.looking.release()

    async def _target(self, order: Order, pos: int) -> tuple[Inode, str, list[tuple[int, bytes]]] | None:
        """The file at `pos` and its blocks to fetch; None when there is nothing to fetch."""
        progress = order.progress
        if progress.is_passed(pos):
            return None
        path = order.paths.path(pos)
        try:
            inode = await self._resolve(path, order, pos)
        except StoreError as e:
            log.debug("order prefetch: cannot look up %s: %s", path, e)
            progress.done(pos)
            return None
        if inode is None or inode.is_dir:
            self.stats.add("order_not_found")
            progress.done(pos)
            return None
        if progress.is_passed(pos):
            return None
        key = self.namespace.key_of(inode)
        wanted = self._missing_blocks(inode, key)
        if not wanted:
            self.stats.add("order_skipped_cached")
            progress.done(pos)
            return None
        if inode.size > progress.window:
            progress.done(pos)             # never fits: the reader fetches it itself
            return None
        return inode, key, wanted

    async def _turn(self, order: Order, pos: int, waiter: _Waiter) -> bool:
        """Until the position is given its turn (True: a GET slot and its window bytes are taken
        for it); False when the reader got past it first (_poll_turns wakes it then)."""
        progress = order.progress
        while not waiter.granted:
            if progress.is_passed(pos):
                return False
            await waiter.event.wait()
            waiter.event = trio.Event()
        return True

    async def _poll_turns(self, order: Order) -> None:
        """Every ROOM_POLL_S while positions are being looked at or wait for their turn: turns given
        again (the cache's room changes without a word), and the waiting positions the reader got
        past woken to drop out. One task per order, not a timeout per waiting position (that cost
        each file a cancel scope on the trio thread)."""
        while not (order.complete and order.cursor >= len(order.paths)
                   and not (order.waiting or order.quick or order.slow)):
            await trio.sleep(ROOM_POLL_S)
            self._grant(order)
            progress = order.progress
            for pos, waiter in order.waiting.items():
                if not waiter.granted and progress.is_passed(pos):
                    waiter.event.set()

    def _grant(self, order: Order) -> None:
        """Give their turn to the first waiting positions of the order, in order, as long as each
        fits the window and the cache and a GET slot is free: all of them wake at once (one at a
        time, a start per scheduler pass, kept 42 GETs in flight where the walk keeps 64, and the
        endpoint spent more CPU per GET: docs/BENCHMARKS.md "Hints that list ahead"). A later,
        smaller file does not go first, nor one behind a position being resolved; but one waiting
        for S3 to resolve (its directory's listing) holds back no file resolved already, which goes
        first if the window also has room for the waiting ones (each counted as the order's
        largest file so far; docs/CACHING.md "Order-aware prefetch"). Positions the reader got
        past are woken to drop out."""
        progress, queue, quick = order.progress, order.queue, order.quick
        while queue:
            pos = queue[0]
            waiter = order.waiting[pos]
            if progress.is_passed(pos):
                waiter.event.set()
                del queue[0]
                continue
            if quick and quick[0] < pos:
                return                     # resolved any moment now: it goes first
            need = waiter.size + order.typical * bisect.bisect_left(order.slow, pos)
            if not (self.slots.value and progress.fits(need) and self._admits(waiter.size)):
                return
            self.slots.acquire_nowait()
            progress.start(pos, waiter.size)
            self._inflight_bytes += waiter.size
            waiter.granted = True
            waiter.event.set()
            del queue[0]

    def _ungrant(self, order: Order, pos: int, size: int) -> None:
        self.slots.release()
        self._inflight_bytes -= size
        order.progress.release(pos)

    async def _fetch_file(self, order: Order, pos: int, inode: Inode, key: str, wanted: list[tuple[int, bytes]]):
        reader, progress = self.reader, order.progress
        flights: list = []
        fetched = 0
        with trio.CancelScope() as scope:
            order.fetching[pos] = (scope, flights)      # its bytes were counted in flight by _grant
            try:
                for index, bkey in wanted:
                    if bkey in reader._inflight or bkey in reader._prefetched or reader.cache.contains(bkey):
                        continue           # a reader or another prefetch got there meanwhile
                    flight = reader._inflight.start(bkey)
                    flights.append(flight)
                    data = await reader._fetch(flight, bkey, inode, key, index)
                    fetched += len(data)
                    if not flight.shared and not reader.cache.contains(bkey):
                        reader._keep_prefetched(bkey, data)   # the cache declined it: hold it for the reader
                    reader.file_ready(inode, index, data)
            except StoreUnavailable as e:
                log.debug("order prefetch of %s: %s", key, e)
                progress.release(pos)
                await trio.sleep(OUTAGE_PAUSE_S)
            except StoreError as e:
                log.debug("order prefetch of %s failed: %s", key, e)
                progress.release(pos)
            finally:
                self._inflight_bytes -= inode.size
                order.fetching.pop(pos, None)
        if scope.cancelled_caught:
            progress.release(pos)
        if fetched:
            self.stats.add("order_prefetched_files")
            self.stats.add("order_prefetched_bytes", fetched)

    def _missing_blocks(self, inode: Inode, key: str) -> list[tuple[int, bytes]]:
        """The blocks of the file neither cached, held for a reader nor being fetched."""
        reader = self.reader
        out = []
        busy = False
        for i in range(block_count(inode.size, reader.block_size)):
            bkey = block_key(reader.bucket, key, inode.etag, reader.block_size, i)
            if bkey in reader._inflight:
                busy = True
            elif not (bkey in reader._prefetched or reader.cache.contains(bkey)):
                out.append((i, bkey))
        return out if out or not busy else []

    async def _resolve(self, path: str, order: Order, pos: int) -> Inode | None:
        """The inode at a path relative to the mount root, looked up as FUSE would, each directory on
        the way listed whole first (once: an order names many files of a directory, and a lookup of
        a name in an unlisted directory costs a HEAD and a LIST; measured: epoch 1 with hints 0.64x
        of without before this, docs/BENCHMARKS.md "Issue 18"). A directory's inode is remembered
        (an order's paths share few directories: the walk from the root was ~0.14 ms of each file's
        ~0.2 ms here); a remembered one that is gone meanwhile is looked up again (a renamed one
        keeps its inode: the hint then fetches from its new place, a wasted GET at most)."""
        directory, _, name = path.rpartition("/")
        ino = self._dirs.get(directory)
        if ino is None:
            ino = self._known(directory)
            if ino is not None:
                self._remember(directory, ino)
            else:
                ino = await self._grouped(directory, order, pos)
        if ino is not None:
            try:
                return await self._lookup_in(ino, name, order, pos)
            except StoreError:
                self._dirs.pop(directory, None)      # removed meanwhile: from the root again
        ino = ROOT_INO
        for part in directory.split("/") if directory else ():
            found = await self._lookup_in(ino, part, order, pos)
            if found is None or not found.is_dir:
                return None
            ino = found.ino
        self._remember(directory, ino)
        return await self._lookup_in(ino, name, order, pos)

    def _remember(self, directory: str, ino: int) -> None:
        self._dirs[directory] = ino
        while len(self._dirs) > RESOLVED_DIRS:
            self._dirs.popitem(last=False)

    async def _lookup_in(self, ino: int, name: str, order: Order, pos: int) -> Inode | None:
        """A name in a directory, the directory listed first (at most LISTINGS at once)."""
        if not await self._listed(ino, order, pos):
            order.waits_for_s3(pos)      # not listed (listings off, or it failed): a HEAD, maybe a LIST
        return await self.namespace.lookup(ino, name.encode())

    async def _listed(self, ino: int, order: Order, pos: int) -> bool:
        """The directory listed unless its listing is fresh, at most LISTINGS directories at once:
        the positions under a directory being listed wait for that listing without a listing slot
        (eight positions of one directory would otherwise hold all eight). Whether its listing is
        fresh now (False with listings off, or when the listing failed)."""
        ns = self.namespace
        if ns.cfg.listing_ttl <= 0:
            return False
        now = time.time()
        if self._fresh.get(ino, 0.0) > now:
            return True                  # the common case: seen fresh before (the lookup checks again)
        expiry = ns.meta.listing_expiry(ino)
        if expiry > now:
            if len(self._fresh) >= RESOLVED_DIRS:
                self._fresh.clear()
            self._fresh[ino] = expiry
            return True
        order.waits_for_s3(pos)          # later positions may start before this one meanwhile
        group = self._groups.group_of(ns.dir_prefix(ns.get(ino)))
        if group is not None:
            await self._listed_with(group)
            if ns.meta.listing_expiry(ino) > time.time():
                return True
        await self._list_alone(ino)
        return ns.meta.listing_expiry(ino) > time.time()

    async def _list_alone(self, ino: int) -> None:
        """One directory listed (a delimited LIST), unless another position has it listed already."""
        listed = self._listings.get(ino)
        if listed is not None:
            await listed.wait()          # failed or cancelled: the lookup finds the name its own way
            return
        listed = self._listings[ino] = trio.Event()
        try:
            async with self._listing_slots:
                await self.namespace.ensure_listed(ino)
        finally:
            del self._listings[ino]
            listed.set()

    def _known(self, directory: str) -> int | None:
        """The inode of a directory (a path relative to the mount) that fresh listings of the
        directories on the way know, from LMDB alone; None when one of them is not listed."""
        meta, now = self.namespace.meta, time.time()
        ino = ROOT_INO
        for part in directory.split("/") if directory else ():
            if meta.listing_expiry(ino) <= now:
                return None
            node = meta.lookup(ino, part.encode())
            if node is None or not node.is_dir:
                return None
            ino = node.ino
        return ino

    async def _grouped(self, directory: str, order: Order, pos: int) -> int | None:
        """The inode of a directory (a path relative to the mount) of a group not listed yet, once its
        group is: the directories on the way are then known without a LIST each. None when it is
        in no such group (or the group did not find it)."""
        ns = self.namespace
        if ns.cfg.listing_ttl <= 0:
            return None
        group = self._groups.group_of(ns.cfg.prefix + directory + "/" if directory else ns.cfg.prefix)
        if group is None or group.done.is_set():
            return None
        order.waits_for_s3(pos)            # later positions may start before this one meanwhile
        await self._listed_with(group)
        return self._dirs.get(directory)

    async def _listed_with(self, group: DirGroup) -> None:
        if not group.started:
            group.started = True
            assert self.reader.nursery is not None
            supervise.start(self.reader.nursery, "order_listing", self._list_group, group, what=group.prefix)
        await group.done.wait()

    async def _list_group(self, group: DirGroup) -> None:
        """A group of the orders' directories listed by one flat LIST of their common prefix; each
        directory it read whole is written to LMDB as its own listing would leave it, and the
        directories on the way to them are recorded as the keys show them (no LIST of each). A
        failure leaves the group's directories to be listed one by one."""
        ns = self.namespace
        try:
            async with self._listing_slots:
                listings, _ = await ns.list_flat(group.prefix, group.max_pages)
            self.stats.add("order_group_listings")
            if listings:
                base = await self._shown_dir(group.base[len(ns.cfg.prefix):].rstrip("/"))
                if base is not None:
                    await self._apply_group(group.base, base, listings)
        except StoreError as e:
            log.debug("order prefetch: listing of %r failed: %s", group.prefix, e)
        finally:
            group.done.set()

    async def _list_on_the_way(self, ino: int) -> None:
        try:
            await self._list_alone(ino)
        except StoreError as e:          # the kernel's lookup lists it again and sees the error itself
            log.debug("order prefetch: listing directory %d on the way failed: %s", ino, e)

    async def _shown_dir(self, path: str) -> int | None:
        """The inode of a directory (a path relative to the mount) that keys below it show to exist:
        each directory on the way looked up in LMDB, recorded where it is not (yet) known. Those on
        the way and itself that are not listed yet are listed in the background, each once, while
        the group's files are fetched: the kernel walks them at the reader's first open, a LIST
        round trip each, one after another (~0.1 s of a short epoch behind 20 ms, docs/BENCHMARKS.md
        "The trio thread's work per file")."""
        ino = self._dirs.get(path)
        if ino is not None:
            return ino                     # resolved before: the way was listed, or is being listed
        ns, now = self.namespace, time.time()
        ino = ROOT_INO
        for part in path.split("/") if path else ():
            self._list_in_background(ino, now)
            node = ns.meta.lookup(ino, part.encode())
            if node is None or not node.is_dir:
                node = (await ns.add_dirs(ns.get(ino), [part])).get(part)
                if node is None:
                    return None
            ns.note_shown(ino, (node.ino,))     # the kernel's walk need not wait for the LIST
            ino = node.ino
        self._list_in_background(ino, now)
        self._remember(path, ino)
        return ino

    def _list_in_background(self, ino: int, now: float) -> None:
        if self.namespace.meta.listing_expiry(ino) <= now and ino not in self._listings:
            assert self.reader.nursery is not None
            supervise.start(self.reader.nursery, "order_listing", self._list_on_the_way, ino, what=str(ino))

    async def _apply_group(self, base_key: str, base: int, listings: dict) -> None:
        """The directories of a flat listing, written a level at a time (each level in one
        transaction: the next level's parents are then known), those listed meanwhile skipped."""
        ns = self.namespace
        inos = {base_key: base}
        cut = len(ns.cfg.prefix)
        todo = sorted(path for path in listings if path != base_key)
        while todo:
            level, later = [], []
            missing: dict[str, dict[str, str]] = {}      # parent -> name -> directory LMDB does not know yet
            now = time.time()
            shown: dict[int, list[int]] = {}               # parent -> its directories the keys show
            for path in todo:
                parent_key = path[:path.rfind("/", 0, len(path) - 1) + 1]
                if parent_key not in inos:
                    later.append(path)
                    continue
                name = path[len(parent_key):-1]
                node = ns.meta.lookup(inos[parent_key], name.encode())
                if node is None or not node.is_dir:
                    missing.setdefault(parent_key, {})[name] = path
                    continue
                shown.setdefault(inos[parent_key], []).append(node.ino)
                if ns.meta.listing_expiry(node.ino) <= now:
                    level.append((path, node))
                else:
                    inos[path] = node.ino                  # listed meanwhile: its names are known
                    self._remember(path[cut:-1], node.ino)
            for parent_key, names in missing.items():
                added = await ns.add_dirs(ns.get(inos[parent_key]), list(names))
                level += [(names[name], node) for name, node in added.items()]
                shown.setdefault(inos[parent_key], []).extend(node.ino for node in added.values())
            if level:
                await ns.apply_listings([(node, listings[path]) for path, node in level])
            for parent, children in shown.items():       # listed now: lookups of them need not wait
                ns.note_shown(parent, children)
            if not level:
                return
            for path, node in level:
                inos[path] = node.ino
                self._remember(path[cut:-1], node.ino)
            todo = later

    def summary(self) -> dict:
        """For `cachefs stats` and the control answer."""
        return {"order_streams": len(self.orders),
                "order_ahead_bytes": sum(o.progress.ahead for o in self.orders.values())}
