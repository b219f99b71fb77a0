"""The bucket as a directory tree: names, listings and lookups, backed by MetaStore and S3.

Mapping (docs/SEMANTICS.md): every object is a file; '/' in keys makes directories, from common
prefixes and from zero-byte 'dir/' markers alike; a name that is both a file and a directory is a
directory; keys whose segments cannot be file names are not shown.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

import trio

from cachefs import supervise
from cachefs.config import Config
from cachefs.errors import ObjectNotFound
from cachefs.flight import Flight, Flights
from cachefs.meta.schema import KIND_DIR, KIND_FILE, ROOT_INO, Inode
from cachefs.meta.store import Entry, MetaStore
from cachefs.namespace.attrs import parse as parse_object_meta
from cachefs.namespace.listing import DirListing, split_flat, valid_name
from cachefs.store.base import ListPage, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

# After this many names looked up one by one (HEAD + LIST each) in a directory whose listing is not
# fresh, list the whole directory instead: a loader opening every file of a class directory from a
# file list then costs one paged LIST per 1,000 files, not two requests per file.
LIST_AFTER_LOOKUPS = 8
# The first lookup in a directory whose listing is not fresh lists the whole directory instead of
# asking for the one name (HEAD + LIST), so that the loader's next opens there are answered from
# LMDB (a loader opens paths from a file list and never lists): for a directory of up to 1,000
# names, one request instead of two per name. The listing runs as a background task; at most this
# many run at once, mount-wide: each is one paged LIST at a time, and 4 keep metadata traffic a
# small share of a backend that serves 16 block GETs at once. A directory met while all 4 run falls
# back to LIST_AFTER_LOOKUPS.
MAX_BACKGROUND_LISTINGS = 4
# A lookup waits this long for its directory's listing (a 1,000-key page takes ~10-100 ms), then
# asks S3 for its name itself while the listing goes on: a directory of 100k names (100 pages) must
# not stall its first opens for seconds.
LISTING_WAIT_S = 0.5
# HEADs in flight for one listing's small objects (--metadata-head-size): each is one small request,
# and 8 keep a cold directory's listing within a few round trips without crowding out block GETs.
LISTING_HEADS = 8
# A listing with more small objects of unknown metadata than this HEADs none of them (without
# --metadata-head-all): symlinks come a few at a time (a model snapshot links each of its dozen
# files); hundreds of tiny objects are a dataset's labels or shards, and a HEAD each would double
# the cost of a cold listing's first epoch.
SMALL_HEADS_MAX = 64
# Directories that a flat listing's keys showed to exist, remembered (with until when) so that a
# lookup of one is answered before its parent's own listing lands: at most this many (~100 bytes
# each); past it the memory is dropped and lookups wait for listings as before.
SHOWN_KEPT = 1 << 18
# (key, ETag) pairs whose metadata a GET told about, remembered so that the blocks read after the
# first cost one set lookup, not an LMDB walk of the path (64k pairs: ~10 MiB).
SEEN_IN_GET_KEPT = 65536

RunBlocking = Callable[..., Awaitable]


class Namespace:
    def __init__(self, meta: MetaStore, store: ObjectStore, cfg: Config, run_blocking: RunBlocking) -> None:
        self.meta = meta
        self.store = store
        self.cfg = cfg
        self.run_blocking = run_blocking
        self._listing: Flights[int] = Flights()      # one listing per directory at a time
        self._shown: dict[int, float] = {}            # directory -> until when keys below it vouch for it
        self._arrivals: dict[int, trio.Event] = {}    # directory -> wakes the lookups that wait for its names
        self._remote_lookups: dict[int, int] = {}   # directory -> names looked up one by one
        self._markers: dict[int, ObjectInfo] = {}    # directory -> its marker object, as a listing saw it
        self._seen_lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()   # (key, etag) a GET told about
        if hasattr(store, "watch_metadata"):
            store.watch_metadata(self._seen_in_get)
        self.background_listings = MAX_BACKGROUND_LISTINGS   # the bound (0: no background listing)
        self._background = 0                                 # background listings running now
        # Set by the write path: names in a directory that exist only locally (staged, not yet in
        # S3), and whether an inode is such a local file. A listing or lookup must not drop them.
        self.local_names: Callable[[int], set[bytes]] = lambda ino: set()
        self.is_local: Callable[[int], bool] = lambda ino: False

    def key_of(self, inode: Inode) -> str:
        return self.cfg.prefix + inode.path

    def dir_prefix(self, inode: Inode) -> str:
        return self.cfg.prefix + inode.path + "/" if inode.path else self.cfg.prefix

    def get(self, ino: int) -> Inode:
        inode = self.meta.get_inode(ino)
        if inode is None:
            raise ObjectNotFound(f"inode {ino} is gone (its object was removed from S3)")
        return inode

    # -- listing ----------------------------------------------------------------------------
    async def entries(self, ino: int) -> list[tuple[bytes, Inode]]:
        """A directory's entries, from LMDB while its listing is fresh, else listed anew."""
        while True:
            directory = self.get(ino)
            if self.meta.listing_expiry(ino) > time.time():
                return await self.run_blocking(self.meta.children, ino)
            pending = self._listing.get(ino)
            if pending is None:
                break
            await pending.wait()     # another request is listing it; use its result
        try:
            with self._listing.flying(ino):
                return await self.apply_listing(directory, await self._list_one(directory))
        finally:
            self._wake(ino)

    async def ensure_listed(self, ino: int) -> None:
        """List a directory unless its listing is fresh (one LIST per directory, single-flight with
        every other listing of it): for a caller about to resolve many names in it (the order
        prefetch), where lookups one by one would ask S3 a HEAD and a LIST per name."""
        if self.cfg.listing_ttl <= 0:
            return
        while self.meta.listing_expiry(ino) <= time.time():
            pending = self._listing.get(ino)
            if pending is None:
                await self.entries(ino)
                return
            # Another request lists it: wait, without reading its entries (64 prefetches resolving
            # names under one directory of 1,000 classes each read all 1,000 inodes: measured).
            await pending.wait()

    async def _list_one(self, directory: Inode) -> DirListing:
        """The directory as a delimited LIST shows it (the store's coroutine, on this trio thread)."""
        prefix = self.dir_prefix(directory)
        cut = len(prefix)
        listing = DirListing()
        token = None
        while True:
            page = await self.store.alist_page(prefix, token)
            for obj in page.objects:
                listing.add_file(obj.key[cut:], obj)
            for p in page.prefixes:
                listing.add_dir(p[cut:-1])
            token = page.next_token
            if token is None:
                return listing

    async def list_flat(self, prefix: str, max_pages: int) -> tuple[dict[str, DirListing], bool]:
        """Every directory wholly under the key prefix `prefix`, from one flat (undelimited) paged
        LIST of at most `max_pages` pages, and whether that listing was complete. Cut short, the
        directories the last key read is in are left out: their rest was not read."""
        objects: list[ObjectInfo] = []
        token = None
        for _ in range(max_pages):
            page = await self.store.alist_page(prefix, token, delimiter="")
            objects.extend(page.objects)
            token = page.next_token
            if token is None:
                break
        dirs = split_flat(prefix, objects)
        if token is not None and objects:
            last = objects[-1].key
            dirs = {path: listing for path, listing in dirs.items() if not last.startswith(path)}
        return dirs, token is None

    async def apply_listing(self, directory: Inode, listing: DirListing) -> list[tuple[bytes, Inode]]:
        """Make LMDB's entries of the directory exactly what the listing holds (one write transaction,
        in a worker thread; names staged here and not uploaded yet stay), then HEAD what a LIST does
        not tell: its marker's attributes, small files' metadata."""
        return (await self.apply_listings([(directory, listing)]))[0]

    async def add_dirs(self, parent: Inode, names: list[str]) -> dict[str, Inode]:
        """Directories that keys below them show to exist (a flat listing read them), recorded in
        `parent` without listing it (a name that is also a file is a directory: SEMANTICS.md);
        names that cannot be file names are left out."""
        valid = [name for name in names if valid_name(name.encode())]
        if not valid:
            return {}
        nodes = await self.run_blocking(self.meta.put_entries, parent, [Entry(name, KIND_DIR) for name in valid])
        return dict(zip(valid, nodes, strict=True))

    async def apply_listings(self, listings: list[tuple[Inode, DirListing]]) -> list[list[tuple[bytes, Inode]]]:
        """apply_listing of many directories, written in one transaction."""
        for directory, listing in listings:
            if listing.marker is not None:
                self._markers[directory.ino] = listing.marker
        written = await self.run_blocking(
            self.meta.replace_listings,
            [(directory, listing.found.values(), self.local_names(directory.ino)) for directory, listing in listings],
            time.time() + self.cfg.listing_ttl)
        out = []
        for (directory, _), entries in zip(listings, written, strict=True):
            await self._head_marker(directory)
            if await self._head_small(entries):
                entries = await self.run_blocking(self.meta.children, directory.ino)
            out.append(entries)
        return out

    async def _head_small(self, entries: list[tuple[bytes, Inode]]) -> int:
        """HEAD listed files whose metadata is not known for their current version (a LIST does not
        carry x-amz-meta-*): with --metadata-head-all every one; else those of at most
        --metadata-head-size, if the listing has at most SMALL_HEADS_MAX of them. s3fs's symlinks
        are such tiny objects and must be links before the kernel first sees them; a directory of
        many tiny objects holds data, not links, and is not made to pay a HEAD per file. Returns
        how many were asked."""
        every, limit = self.cfg.metadata_head_all, self.cfg.metadata_head_size
        todo = [node for _, node in entries if not node.is_dir and node.etag and (every or node.size <= limit)
                and not self.is_local(node.ino) and not self.metadata_known(node)]
        if not todo or (not every and len(todo) > SMALL_HEADS_MAX):
            return 0
        lanes = trio.Semaphore(LISTING_HEADS)

        async def head(node: Inode) -> None:
            async with lanes:
                try:
                    info = await self.store.ahead(self.key_of(node))
                except Exception as e:        # the file shows the mount's defaults until next time
                    log.debug("HEAD of %r for its metadata failed: %s", self.key_of(node), e)
                    return
            if info is not None and info.etag == node.etag:
                await self.run_blocking(self.meta.put_objmeta, node.ino, info.etag, parse_object_meta(info.meta))

        async with trio.open_nursery() as nursery:
            for node in todo:
                nursery.start_soon(head, node)
        return len(todo)

    async def _head_marker(self, directory: Inode) -> None:
        """A directory's attributes live on its `dir/` marker, when it has one (s3fs and mkdir
        make them): HEADed once per version of the marker, when the directory is listed."""
        marker = self._markers.pop(directory.ino, None)
        if marker is None or self.cfg.metadata_head_size == 0 and not self.cfg.metadata_head_all:
            return
        known = self.meta.get_objmeta(directory.ino)
        if known is not None and known[0] == marker.etag:
            return
        try:
            info = await self.store.ahead(marker.key)
        except Exception as e:        # the directory shows this node's or the mount's attributes
            log.debug("HEAD of marker %r failed: %s", marker.key, e)
            return
        if info is not None:
            await self.run_blocking(self.meta.put_objmeta, directory.ino, info.etag, parse_object_meta(info.meta))

    def _seen_in_get(self, key: str, etag: str, metadata: dict[str, str]) -> None:
        """A GET's answer carried the object's metadata (no extra request): record it for the
        version read, once per key and ETag. Called in the reading thread; never raises.
        A link is left to the HEAD paths: the kernel already holds the inode as a regular file
        (it was read), and a type changing under it would make the inode bad (EIO)."""
        if not metadata:
            return                   # nothing to learn (most datasets): not even an LMDB lookup
        try:
            with self._seen_lock:
                if (key, etag) in self._seen:
                    return
                self._seen[(key, etag)] = None
                if len(self._seen) > SEEN_IN_GET_KEPT:
                    self._seen.popitem(last=False)
            if not key.startswith(self.cfg.prefix) or not etag:
                return
            node = self.meta.get_inode(ROOT_INO)
            for name in key[len(self.cfg.prefix):].split("/"):
                node = self.meta.lookup(node.ino, name.encode()) if node is not None and node.is_dir else None
            if node is None or node.is_dir or node.etag != etag or self.metadata_known(node):
                return
            om = parse_object_meta(metadata)
            if not om.is_link:
                self.meta.put_objmeta(node.ino, etag, om)
        except Exception as e:       # a hint only: the read goes on
            log.debug("metadata of %r from a GET not recorded: %s", key, e)

    def metadata_known(self, inode: Inode) -> bool:
        known = self.meta.get_objmeta(inode.ino)
        return known is not None and known[0] == inode.etag

    async def learn(self, inode: Inode, info: ObjectInfo) -> None:
        """Record the attributes in a HEAD answer for the version it describes."""
        if info.meta is not None and info.etag == inode.etag:
            await self.run_blocking(self.meta.put_objmeta, inode.ino, info.etag, parse_object_meta(info.meta))

    async def listed_files(self, ino: int) -> list[Inode] | None:
        """The files of a directory from a fresh LMDB listing (never asks S3), or None without one."""
        if self.meta.listing_expiry(ino) <= time.time():
            return None
        return [inode for _, inode in await self.run_blocking(self.meta.children, ino) if not inode.is_dir]

    def note_shown(self, parent_ino: int, inos: Iterable[int]) -> None:
        """Directories in `parent_ino` that keys below them showed to exist just now (a flat
        listing read them): until the listing TTL, a lookup of one is answered from LMDB without
        the parent's own listing, and lookups waiting for that listing are woken to look. A
        hinted epoch's first open walks three or four directories whose delimited LISTs land
        after the flat one (~60 ms of a short epoch behind 20 ms: docs/BENCHMARKS.md)."""
        if self.cfg.listing_ttl <= 0:
            return
        if len(self._shown) > SHOWN_KEPT:
            self._shown.clear()
        until = time.time() + self.cfg.listing_ttl
        for ino in inos:
            self._shown[ino] = until
        self._wake(parent_ino)

    def _wake(self, ino: int) -> None:
        arrived = self._arrivals.pop(ino, None)
        if arrived is not None:
            arrived.set()

    def answers_until(self, node: Inode) -> float:
        """Until when (time.time()) a lookup of `node`'s name is answered from what is recorded,
        without S3: its directory's listing (or manifest). 0 for a file written here."""
        if self.is_local(node.ino):
            return 0.0
        return self.meta.listing_expiry(node.parent)

    def _vouched(self, known: Inode | None, now: float) -> bool:
        return known is not None and (self.is_local(known.ino) or self._shown.get(known.ino, 0.0) > now)

    # -- lookup -----------------------------------------------------------------------------
    async def lookup(self, parent_ino: int, name: bytes) -> Inode | None:
        if not valid_name(name):
            return None
        now = time.time()
        fresh = self.meta.listing_expiry(parent_ino) > now
        if fresh:
            found = self.meta.lookup(parent_ino, name)
            if found is not None:
                return found             # a listed directory exists: its inode need not be read
        parent = self.get(parent_ino)
        if not parent.is_dir:
            return None
        if fresh:
            if self.meta.manifest_expiry(parent_ino) <= now:
                return None
            # A manifest's listing is a snapshot: a name it lacks may have been added since, and is
            # asked of S3 (once per negative_ttl), never answered from the snapshot alone.
            if self.meta.negative_expiry(parent_ino, name) > now:
                return None
            return await self._lookup_remote(parent, name.decode())
        known = self.meta.lookup(parent_ino, name)
        if self._vouched(known, now):
            return known
        if self.meta.negative_expiry(parent_ino, name) > now:
            return None
        pending = self._listing.get(parent_ino)
        if pending is None and self._background < self.background_listings and self.cfg.listing_ttl > 0:
            pending = self._list_in_background(parent)
        if pending is not None:
            with trio.move_on_after(LISTING_WAIT_S):
                while True:     # until the listing lands, or a flat listing shows the name meanwhile
                    arrived = self._arrivals.get(parent_ino)
                    if arrived is None:
                        arrived = self._arrivals[parent_ino] = trio.Event()
                    await arrived.wait()
                    now = time.time()
                    known = self.meta.lookup(parent_ino, name)
                    if self.meta.listing_expiry(parent_ino) > now or self._vouched(known, now):
                        return known
                    if self._listing.get(parent_ino) is not pending:
                        break       # it landed without a listing (failed): ask for the name itself
            if self.meta.listing_expiry(parent_ino) > time.time():
                return self.meta.lookup(parent_ino, name)
        count = self._remote_lookups.get(parent_ino, 0) + 1
        if count >= LIST_AFTER_LOOKUPS:
            self._remote_lookups.pop(parent_ino, None)
            await self.entries(parent_ino)            # one listing answers this and later lookups
            return self.meta.lookup(parent_ino, name)
        self._remote_lookups[parent_ino] = count
        return await self._lookup_remote(parent, name.decode())

    def _list_in_background(self, directory: Inode) -> Flight:
        """Start listing a directory; the returned flight lands when the listing is done. Registered
        as this directory's listing at once, so that the lookups after this one wait for it instead
        of starting their own. A system task: the namespace has no nursery, and a listing that
        outlasts LISTING_WAIT_S must outlive the lookup that started it."""
        flight = self._listing.start(directory.ino)
        self._background += 1
        # A system task's exception would end trio.run itself: supervised, like all background work.
        trio.lowlevel.spawn_system_task(supervise.supervised, "listing", self._background_listing, directory,
                                        name=f"cachefs listing of directory {directory.ino}")
        return flight

    async def _background_listing(self, directory: Inode) -> None:
        try:
            await self.apply_listing(directory, await self._list_one(directory))
            self._remote_lookups.pop(directory.ino, None)
        except trio.Cancelled:
            raise
        except Exception as e:  # lookups go on one by one; the next first lookup tries again
            log.warning("background listing of %r failed: %s", self.dir_prefix(directory), e)
        finally:
            self._listing.land(directory.ino)
            self._wake(directory.ino)
            self._background -= 1

    async def _lookup_remote(self, parent: Inode, name: str) -> Inode | None:
        """Is `name` a directory (any key below it) or a file (a HEAD answers)? Asked in parallel."""
        key = self.dir_prefix(parent) + name
        listing: ListPage | None = None
        head: ObjectInfo | None = None

        async def ask_list() -> None:
            nonlocal listing
            listing = await self.store.alist_page(key + "/", None, 1)

        async def ask_head() -> None:
            nonlocal head
            head = await self.store.ahead(key)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_list)
            nursery.start_soon(ask_head)
        assert listing is not None      # the nursery ends when both have answered (or raises)
        if listing.objects or listing.prefixes:
            entry = Entry(name, KIND_DIR)
        elif head is not None:
            entry = Entry(name, KIND_FILE, head.size, head.mtime_ns, head.etag)
        else:
            await self.run_blocking(self.meta.put_negative, parent, name.encode(),
                                    time.time() + self.cfg.negative_ttl)
            return None
        inode = await self.run_blocking(self.meta.put_entry, parent, entry)
        if head is not None and entry.kind == KIND_FILE:
            await self.learn(inode, head)
        return inode

    async def refresh(self, inode: Inode) -> Inode | None:
        """Re-read one file's metadata from S3 (after its ETag stopped matching)."""
        parent = self.get(inode.parent)
        return await self._lookup_remote(parent, inode.path.rsplit("/", 1)[-1])
