"""The write path: staging files, the small/large upload schedule, multipart uploads, crash replay.

A file being written lives whole in a staging file, STAGING/<ino>, until S3 holds its newest
bytes; reads through the mount come from there (read-your-writes). Before a write is acknowledged,
the file's pending record is committed in LMDB, so after a crash the next mount with the same cache
directory finds every staged file and uploads it (docs/SEMANTICS.md "Writes", "Crash safety").

Schedule (docs/SEMANTICS.md "When data reaches S3"): a file up to --small-file-threshold is uploaded
after --small-sync-interval of quiet, or every interval while it keeps growing, or when its last
writer closes it; a larger one after --large-sync-interval or on close, as a multipart upload with
parallel parts. A failed upload is retried with backoff for ever; staged data is never dropped.

Ownership (docs/ARCHITECTURE.md "Write path state"): a `Staged` and its descriptor belong to this
class; the descriptor is closed only by `_drop`, and only when nobody can use it any more (no open
handle, no upload or eager part in flight, nothing left to upload). Every background unit (an
upload, an eager part batch, an abort, a delete) runs under the supervisor (supervise.py): a
failure ends that unit alone and is retried or abandoned, never the daemon.

Concurrency: everything here runs on the trio thread except the blocking calls passed to
`run_blocking` (S3 requests, fsync, copies). pwrite/pread to the staging file run inline: they hit
the page cache and take microseconds, less than a thread hop.
"""
from __future__ import annotations

import errno
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import trio

from cachefs import supervise
from cachefs.errors import FsError, ObjectNotFound, StoreError, StoreUnavailable
from cachefs.meta.schema import ROOT_INO, Inode
from cachefs.meta.store import MetaStore
from cachefs.writeback.parts import PartSession
from cachefs.stats import Stats
from cachefs.store.base import ObjectStore

log = logging.getLogger(__name__)

RunBlocking = Callable[..., Awaitable]

MAX_PARTS = 10_000            # S3's limit on parts per multipart upload
RETRY_FIRST_S = 1.0           # backoff after a failed upload: 1, 2, 4 ... seconds
RETRY_MAX_S = 60.0            # ... capped, so uploads resume within a minute of S3 coming back
FSYNC_FAILURES = 3            # --fsync-upload: failed attempts before fsync gives up with EIO
TICK_S = 0.25                 # how often the scheduler looks for due uploads
COPY_CHUNK = 4 << 20          # bytes per read when a file is copied into staging
# Uploaded files nobody has open keep their staging copy (reads after the write and a reopen for
# writing stay local) until the room is needed; at most this many, each holding an open fd.
RETAIN_FILES = 128
SESSION_FAILURES = 2          # a multipart session that failed this often in a row is given up (lost)
CLEANUP_WAIT_S = 10.0         # a flush waits at most this long, after the uploads, for retried deletes and aborts
CLAIM_WAIT_S = 30.0           # a rename waits at most this long for an upload or delete of its target name
ABORT_ON_STOP_S = 5.0         # how long a stopping daemon spends aborting the session it was sending


class SessionAbandoned(StoreError):
    """The multipart session an upload was completing was abandoned meanwhile (the file was renamed
    or unlinked): the upload starts again, which is not a failure."""


class StagingFull(FsError):
    """The staging area has no room for this write (its limit or its disk): ENOSPC to the writer."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


def part_size(size: int, configured: int) -> int:
    """`configured`, or larger when the file would need more than S3's 10,000 parts."""
    need = -(-size // MAX_PARTS)
    return max(configured, -(-need // (1 << 20)) << 20)


@dataclass
class Staged:
    """A file whose bytes live in staging. `generation` counts changes; S3 holds generation
    `synced` at `remote` (a path relative to the mount's prefix, None: nowhere yet)."""
    ino: int
    path: str
    fd: int
    size: int
    mtime_ns: int
    generation: int = 1
    synced: int = 0
    remote: str | None = None
    first_dirty: float = 0.0       # monotonic time of the oldest change not in S3
    last_write: float = 0.0
    writers: int = 0               # open handles that may write
    opens: int = 0                 # open handles of any kind
    closed_dirty: bool = False     # the last writer closed it: upload now
    forced: bool = False           # flush / fsync --fsync-upload / unmount: upload now
    uploading: bool = False
    deleted: bool = False          # unlinked: upload nothing, remove what was uploaded
    retry_at: float = 0.0
    failures: int = 0
    upload_id: tuple[str, str] | None = None   # (key, multipart id) of an unfinished upload
    etag: str = ""                 # of the version S3 holds, once uploaded from here
    write_end: int = 0             # where the latest write ended (== size: a sequential writer)
    session: PartSession | None = None   # eager multipart upload of a large file being written
    eager: bool = False            # an eager part task runs for this file
    replaced: bool = False         # it replaced a file at `path` whose object S3 may still hold there
    maybe_at: set[str] = field(default_factory=set)   # names a failed upload may have reached all the same
    sending: str | None = None     # the name an upload (or copy) in flight is writing to

    @property
    def dirty(self) -> bool:
        return not self.deleted and (self.generation != self.synced or self.path != self.remote)

    def record(self) -> dict:
        rec = {"path": None if self.deleted else self.path, "remote": self.remote,
               "upload": list(self.upload_id) if self.upload_id else None}
        if self.sending is not None and self.sending != rec["path"]:
            # Renamed or unlinked while a request to the old name was in flight: if this daemon
            # dies, that request may still land, and the next one deletes what it made.
            rec["sending"] = self.sending
        return rec


class Writeback:
    def __init__(self, meta: MetaStore, store: ObjectStore, run_blocking: RunBlocking, stats: Stats, *,
                 prefix: str, staging_dir: str, staging_size: int, small_file_threshold: int,
                 small_sync_interval: float, large_sync_interval: float, part_size: int,
                 upload_concurrency: int, eager: bool = True, answer_grace: float = 35.0) -> None:
        self.meta = meta
        self.store = store
        self.run_blocking = run_blocking
        self.stats = stats
        self.prefix = prefix
        self.staging_dir = staging_dir
        self.staging_size = staging_size
        self.small_file_threshold = small_file_threshold
        self.small_sync_interval = small_sync_interval
        self.large_sync_interval = large_sync_interval
        self.part_size = part_size
        self.eager = eager
        self.limiter = trio.CapacityLimiter(upload_concurrency)
        self.files: dict[int, Staged] = {}
        self.staged_bytes = 0
        self._changed = trio.Event()        # set (and replaced) whenever an upload finishes
        self._inflight: set[str] = set()    # paths an upload is writing to right now
        self._vacating: set[str] = set()    # names whose object is being deleted from S3 (or will be, retried)
        self._held: set[str] = set()        # directories being renamed: nothing below starts uploading
        self._retained: OrderedDict[int, Staged] = OrderedDict()   # clean, closed; oldest first
        self._orphan_uploads: list[tuple[str, str]] = []   # left by a dead daemon, no file to upload
        self._to_abort: list[tuple[str, str]] = []         # abandoned eager sessions
        self._wake = trio.Event()           # something became due: run the scheduler now
        self._copies = 0                    # names staging copies in progress uniquely
        self._to_delete: list[str] = []     # keys whose delete failed: retried by the scheduler
        self._delete_retry_at = 0.0
        self._abort_later: list[tuple[str, str]] = []      # aborts S3 refused: retried like deletes
        # A request whose answer was lost may still be acted on by S3 later (its client gave up at
        # the read timeout, the server had not): what it may have made is checked again after this.
        self.answer_grace = answer_grace
        self._orphan_keys: dict[str, float] = {}  # key -> when: a create got no answer; list, abort strays
        self._strays: dict[str, float] = {}       # key -> when: an object that may have landed unwanted
        self._claimed: list[tuple[str, bool]] = []   # names (or directories) a rename is copying to
        self._deleting: set[str] = set()          # names whose DeleteObject is in flight now
        # The object user metadata (x-amz-meta-*) an upload of this inode carries (posixmeta.py);
        # set by whoever shows the attributes (fs.py).
        self.metadata_for: Callable[[int], dict[str, str]] = lambda ino: {}
        # Called (in a worker thread) once S3 holds the file's current version under `etag`: what
        # shows the attributes records the metadata that version carries (an equal ETag, say of an
        # empty file, must not bring back an older version's metadata).
        self.on_uploaded: Callable[[int, str], None] = lambda ino, etag: None

    # -- start-up ---------------------------------------------------------------------------
    def open(self) -> None:
        """Create the staging directory and adopt what a previous run left (before serving). The
        multipart uploads that run left unfinished are aborted when the scheduler starts; until
        then their ids stay in the records."""
        os.makedirs(self.staging_dir, mode=0o700, exist_ok=True)
        os.chmod(self.staging_dir, 0o700)
        for ino, rec in self.meta.pending().items():
            upload = tuple(rec["upload"]) if rec.get("upload") else None
            if rec.get("sending"):
                self.stray(self.prefix + rec["sending"])
            if rec["path"] is None:
                # Unlinked while its upload was in flight: only that trace was kept.
                if upload:
                    self._orphan_uploads.append(upload)
                self.meta.delete_pending(ino)
                continue
            try:
                fd = os.open(self._staging_path(ino), os.O_RDWR)
            except FileNotFoundError:
                # Unlinked, or its record was committed before its first byte: nothing to lose.
                log.warning("pending upload of %r has no staging file; dropping the record", rec["path"])
                if upload:
                    self._orphan_uploads.append(upload)
                self.meta.delete_pending(ino)
                continue
            size = os.fstat(fd).st_size
            st = Staged(ino, rec["path"], fd, size, time.time_ns(), generation=1, synced=0, remote=rec.get("remote"),
                        upload_id=upload)
            st.closed_dirty = True         # nobody has it open: upload at once
            self.files[ino] = st
            self.staged_bytes += size
        for name in os.listdir(self.staging_dir):
            if not name.isdigit() or int(name) not in self.files:
                os.unlink(os.path.join(self.staging_dir, name))     # a clean file's leftover
        if self.files:
            log.info("%d file(s) written before the last stop are pending upload (%d bytes)",
                     len(self.files), self.staged_bytes)

    async def _abort_stale(self) -> None:
        """Abort what a dead daemon left: recorded upload ids, and for a create that was in flight
        (id "": the daemon died before S3 answered), whatever S3 lists for exactly that key."""
        left = [(None, u) for u in self._orphan_uploads]
        left += [(st, st.upload_id) for st in self.files.values() if st.upload_id]
        self._orphan_uploads = []
        for st, (key, upload_id) in left:
            try:
                ids = [upload_id] if upload_id else [u for k, u in await self.run_blocking(
                    self.store.list_multipart, key) if k == key]
                for uid in ids:
                    await self.run_blocking(self.store.abort_multipart, key, uid)
                    log.info("aborted the unfinished multipart upload of %s", key)
            except StoreError as e:
                log.warning("could not abort the multipart upload of %s: %s", key, e)
                continue
            if st is not None:
                st.upload_id = None
                await self.run_blocking(self.meta.put_pending, st.ino, st.record())

    def _staging_path(self, ino: int) -> str:
        return os.path.join(self.staging_dir, str(ino))

    # -- queries ----------------------------------------------------------------------------
    def get(self, ino: int) -> Staged | None:
        st = self.files.get(ino)
        if st is None or st.deleted:
            return None
        if ino in self._retained:
            # A retained copy is only good while S3 still holds the version uploaded from it.
            inode = self.meta.get_inode(ino)
            if inode is None or inode.etag != st.etag:
                self._drop(st)
                return None if self.files.get(ino) is not st else st
        return st

    def is_local(self, ino: int) -> bool:
        """Written here and not yet in S3 at its current path: S3's listings do not show it."""
        st = self.get(ino)
        return st is not None and st.path != st.remote

    def local_names(self, parent: Inode) -> set[bytes]:
        want = parent.path + "/" if parent.path else ""
        return {st.path[len(want):].encode() for st in self.files.values()
                if not st.deleted and st.path != st.remote and st.path.startswith(want)
                and "/" not in st.path[len(want):]}

    def overlay(self, inode: Inode, st: Staged | None = None) -> Inode:
        """The inode as the mount shows it: staged size and time win over the recorded ones
        (`st`: the staging copy of an unlinked file still open)."""
        st = st or self.get(inode.ino)
        if st is None:
            return inode
        return Inode(inode.ino, inode.kind, st.size, st.mtime_ns, inode.parent, inode.etag, inode.path)

    def summary(self) -> dict:
        """Gauges for stats and metrics; called from the exporter's thread too (list() of a
        dict's values is one step under the GIL, so no iteration races with the trio thread)."""
        now = time.monotonic()
        dirty = [st for st in list(self.files.values()) if st.dirty]
        return {"uploads_pending": len(dirty),
                "uploads_pending_bytes": sum(st.size for st in dirty),
                "uploads_oldest_age_s": round(max((now - st.first_dirty for st in dirty), default=0.0), 3),
                "staging_bytes": self.staged_bytes,
                "staging_retained_bytes": sum(st.size for st in list(self._retained.values()))}

    def pending_paths(self) -> list[str]:
        return sorted(st.path for st in list(self.files.values()) if st.dirty or st.uploading)

    # -- staging ----------------------------------------------------------------------------
    def stage_new(self, inode: Inode) -> Staged:
        """A file created here: empty, dirty, recorded before the create is acknowledged."""
        fd = os.open(self._staging_path(inode.ino), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        st = Staged(inode.ino, inode.path, fd, 0, time.time_ns())
        st.first_dirty = st.last_write = time.monotonic()
        self.meta.put_pending(st.ino, st.record())
        self.files[inode.ino] = st
        return st

    async def stage_existing(self, inode: Inode, read_range, truncate: bool) -> Staged:
        """Bring a file from S3 into staging before it is changed (all of it, unless it is being
        truncated to zero). `read_range(offset, size)` reads it through the cache."""
        st = self.get(inode.ino)
        if st is not None:
            return st
        self._reserve(0 if truncate else inode.size)
        # Copied under a name of its own and renamed into place: two stagings of one file at once
        # (an open and a truncate) must not write into each other's copy.
        self._copies += 1
        tmp = f"{self._staging_path(inode.ino)}.copy{self._copies}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if not truncate:
                for offset in range(0, inode.size, COPY_CHUNK):
                    data = await read_range(offset, min(COPY_CHUNK, inode.size - offset))
                    os.pwrite(fd, data, offset)
        except BaseException:
            self.staged_bytes -= 0 if truncate else inode.size
            os.close(fd)
            os.unlink(tmp)
            raise
        if self.get(inode.ino) is not None:     # staged by a concurrent open while we copied
            self.staged_bytes -= 0 if truncate else inode.size
            os.close(fd)
            os.unlink(tmp)
            return self.files[inode.ino]
        os.rename(tmp, self._staging_path(inode.ino))
        size = 0 if truncate else inode.size
        st = Staged(inode.ino, inode.path, fd, size, inode.mtime_ns, generation=0, synced=0, remote=inode.path,
                    etag=inode.etag)
        self.files[inode.ino] = st
        return st

    def _reserve(self, nbytes: int) -> None:
        while nbytes > 0 and self.staged_bytes + nbytes > self.staging_size and self._retained:
            self._drop(next(iter(self._retained.values())))     # uploaded copies make room first
        if nbytes > 0 and self.staged_bytes + nbytes > self.staging_size:
            self.stats.add("staging_full")
            raise StagingFull(f"staging area full ({self.staged_bytes} of {self.staging_size} bytes "
                              "waiting for upload)")
        self.staged_bytes += nbytes

    def _touch(self, st: Staged) -> None:
        """Record a change. The first change since S3 was current commits the pending record
        before the change is acknowledged: that is what a restart after a crash replays."""
        was_dirty = st.dirty
        self._retained.pop(st.ino, None)      # changed: it has something to upload again
        st.generation += 1
        st.last_write = time.monotonic()
        st.mtime_ns = time.time_ns()
        if not was_dirty and not st.deleted:      # an unlinked file is never uploaded: no record
            st.first_dirty = st.last_write
            self.meta.put_pending(st.ino, st.record())

    def write(self, st: Staged, offset: int, data: bytes) -> int:
        end = offset + len(data)
        self._reserve(max(0, end - st.size))
        try:
            n = os.pwrite(st.fd, data, offset)
        except OSError as e:
            self.staged_bytes -= max(0, end - st.size)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):        # ENOSPC, EDQUOT: the staging disk itself is full
                self.stats.add("staging_full")
                raise StagingFull(f"staging disk full: {e.strerror}") from None
            raise
        st.size = max(st.size, end)
        st.write_end = end
        if st.session is not None:
            st.session.changed(offset, end)
        self._touch(st)
        self.stats.add("write_bytes", n)
        return n

    def truncate(self, st: Staged, size: int) -> None:
        if size > st.size:
            self._reserve(size - st.size)
        else:
            self.staged_bytes -= st.size - size
        os.ftruncate(st.fd, size)
        if st.session is not None:        # the parts from the new end on change, like a write's
            st.session.changed(min(size, st.size), max(size, st.size, 1))
        st.size = size
        st.write_end = min(st.write_end, size)
        self._touch(st)
        if st.writers == 0:          # truncate(2) of a file nobody has open: upload now
            st.closed_dirty = True
            self._wake.set()

    def read(self, st: Staged, offset: int, size: int) -> bytes:
        return os.pread(st.fd, size, offset)

    async def fsync(self, st: Staged, upload: bool) -> bool:
        """Durable on the node: the staging file and the pending record on disk. With `upload`,
        also wait until S3 holds what was written so far (False: it could not be uploaded)."""
        await self.run_blocking(os.fsync, st.fd)
        await self.run_blocking(self.meta.sync)
        if upload and st.dirty:
            return await self.wait_uploaded(st, float("inf"))
        return True

    # -- open/close bookkeeping -------------------------------------------------------------
    def opened(self, st: Staged, writable: bool) -> None:
        self._retained.pop(st.ino, None)
        if writable and not st.writers:
            st.write_end = -1        # a sequential writer is one whose writes since this open end the file
        st.opens += 1
        st.writers += writable

    def closed(self, st: Staged, writable: bool) -> None:
        st.opens -= 1
        st.writers -= writable
        if writable and st.writers == 0 and st.dirty:
            st.closed_dirty = True
            self._wake.set()
        elif writable and st.writers == 0 and st.session is not None and not st.uploading:
            self._abandon_session(st)     # opened for writing, nothing changed: its early parts go
        self._maybe_drop(st)

    def _in_use(self, st: Staged) -> bool:
        """Someone may still use its descriptor or needs its bytes: an open handle, an upload or
        eager parts in flight, changes not yet in S3."""
        return bool(st.opens or st.uploading or st.eager or st.dirty)

    def _maybe_drop(self, st: Staged) -> None:
        """A closed file whose bytes S3 holds is retained (up to RETAIN_FILES, while its room is not
        needed); an unlinked one leaves staging."""
        if self._in_use(st):
            return
        if st.deleted or not st.etag:
            self._drop(st)
            return
        self._retained[st.ino] = st
        self._retained.move_to_end(st.ino)
        while len(self._retained) > RETAIN_FILES:
            self._drop(next(iter(self._retained.values())))

    def _abandon_session(self, st: Staged) -> None:
        """Its parts no longer describe the file (renamed, unlinked, too many parts): it is aborted,
        by the task that owns it if one does (parts.py), else by the scheduler."""
        session, st.session = st.session, None
        if session is None:
            return
        session.abandoned = True
        if not session.owned:
            self._to_abort.append((session.key, session.upload_id))
            self._wake.set()

    def _drop(self, st: Staged) -> None:
        """Close and remove the staging copy. Never while it is in use: the descriptor has one owner,
        and a descriptor number closed under a user can be reused by another file (issue 15)."""
        self._retained.pop(st.ino, None)
        if self._in_use(st):
            return          # dropped by _maybe_drop when its last user is done
        self._abandon_session(st)
        if self.files.get(st.ino) is st:
            del self.files[st.ino]
        os.close(st.fd)
        try:
            os.unlink(self._staging_path(st.ino))
        except FileNotFoundError:
            pass
        self.staged_bytes -= st.size
        if st.deleted or st.generation == st.synced:
            self.meta.delete_pending(st.ino)

    # -- namespace changes ------------------------------------------------------------------
    def renamed(self, ino: int, new_path: str, replaced: bool = False) -> None:
        """`replaced`: it took the name of a file whose object S3 may hold until this one's upload."""
        st = self.get(ino)
        if st is not None:
            self._retained.pop(ino, None)       # it has a copy to make now
            if not st.dirty:
                st.first_dirty = time.monotonic()
            old = st.path
            if (st.replaced and old != new_path and st.remote != old and old not in self._inflight
                    and old not in self.moving_out()):
                # It took that name from a file whose object still sits there (its own upload never
                # came): that object goes, as the name now has no file (bench/stress.py found it).
                self.stray(self.prefix + old)
            st.replaced = replaced and st.remote != new_path
            st.path = new_path
            self._record(st)

    async def hold_below(self, directory: str) -> None:
        """Before a directory's objects are copied: no upload below it may start, and those in
        flight finish first (one landing after the copy would stay behind under the old name
        while its record says the new one). `release_below` ends it. An upload counts if its name
        or its source object (a renamed file's copy from below the directory) is there: a copy
        racing the directory's copy left an object behind under the new name (bench/stress.py)."""
        self._held.add(directory)
        below = directory + "/"
        while any(st.uploading and (st.path.startswith(below) or (st.remote or "").startswith(below))
                  for st in self.files.values()) or any(p.startswith(below) for p in self._inflight):
            changed = self._changed
            await changed.wait()

    def doomed(self, path: str) -> bool:
        """S3 holds an object there that the mount no longer shows and that is being deleted."""
        return path in self._vacating

    def release_below(self, directory: str) -> None:
        self._held.discard(directory)
        self._wake.set()

    def renamed_dir(self, old: str, new: str) -> None:
        """Staged files below a renamed directory: their paths, and where S3 holds them (the
        directory's objects were copied there)."""
        for st in self.files.values():
            moved = False
            if st.path.startswith(old + "/"):
                st.path, moved = new + st.path[len(old):], True
            if st.remote is not None and st.remote.startswith(old + "/"):
                st.remote, moved = new + st.remote[len(old):], True
            if moved:
                self._record(st)

    def _record(self, st: Staged) -> None:
        """The pending record says what a restart must upload: only a file with changes S3 lacks
        has one, at its current path. A record left at an old path (a clean file moved with its
        directory) made a restart upload it there again, and an unlinked file kept for its open
        handles must not get one back (bench/stress.py found both)."""
        if st.dirty:
            self.meta.put_pending(st.ino, st.record())
        else:
            self.meta.delete_pending(st.ino)

    async def claim(self, path: str, below: bool = False, wait: bool = True, timeout: float = CLAIM_WAIT_S) -> None:
        """Before a rename copies objects to `path` (`below`: to the keys below directory `path`):
        an upload still landing there (a file that had the name and was replaced) or a delete of
        it must finish first, or it would delete or overwrite the copy; deletes only waiting for
        their retry are dropped (the copy overwrites those objects anyway), and no late clean-up
        touches the name until `release`. StoreUnavailable if it stays busy past `timeout`.
        `wait=False`: no copy is made now (a staged file's upload goes there later, in turn)."""
        def covered(p: str) -> bool:
            return p == path or (below and p.startswith(path + "/"))
        if wait and not below and self.prefix + path in self._to_delete and path not in self._deleting:
            # One copy to exactly this name, now: it overwrites the object the delete was for.
            self._to_delete = [k for k in self._to_delete if k != self.prefix + path]
            self._vacating.discard(path)
        self._claimed.append((path, below))
        deadline = time.monotonic() + timeout
        while wait and any(covered(p) for p in self._inflight | self._vacating):
            left = deadline - time.monotonic()
            if left <= 0:
                self.release(path, below)
                raise StoreUnavailable(f"{self.prefix}{path} is still being uploaded or deleted; try again")
            changed = self._changed
            with trio.move_on_after(left):
                await changed.wait()

    def release(self, path: str, below: bool = False) -> None:
        if (path, below) in self._claimed:
            self._claimed.remove((path, below))

    def _is_claimed(self, path: str) -> bool:
        return any(path == p or (below and path.startswith(p + "/")) for p, below in self._claimed)

    def stray(self, key: str) -> None:
        """An object that may have landed although the mount does not show it (a request whose answer
        was lost): deleted now and once more after `answer_grace`, unless a file has the name then."""
        if key[len(self.prefix):] not in self._vacating:
            self.delete_later(key)
        self._strays[key] = time.monotonic() + self.answer_grace
        self._wake.set()

    async def _delete_stray(self, key: str) -> None:
        path = key[len(self.prefix):]
        if self._shown(path):
            return                       # a file has the name now: its object is no stray
        if path in self._inflight or path in self.moving_out() or self._is_claimed(path):
            self._strays[key] = time.monotonic() + RETRY_FIRST_S
            return
        await self._delete_quietly(key)

    def delete_later(self, key: str) -> None:
        """An object the mount no longer shows whose delete S3 refused: the scheduler retries it,
        and no upload to that name starts before it is gone."""
        self._vacating.add(key[len(self.prefix):])
        self._to_delete.append(key)
        self._wake.set()

    def unlinked(self, ino: int) -> list[str]:
        """The file is gone from the namespace: stop uploading it. Returns the paths whose objects
        are to be deleted now: where S3 holds it, and its own name if an object it replaced may
        still sit there (its upload never came to overwrite it). An upload in flight deletes its own
        result when it finishes."""
        st = self.files.get(ino)
        if st is None:
            return []
        st.deleted = True
        remote, st.remote = st.remote, None
        gone = [remote] if remote is not None else []
        if ((st.replaced or st.path in st.maybe_at) and st.path != remote and st.path not in self._inflight
                and st.path not in self.moving_out()):
            gone.append(st.path)
        gone += [p for p in self._stray_names(st) if p not in gone]
        st.maybe_at.clear()
        # Nothing of it is to be uploaded any more; while an upload to its name is in flight the
        # record keeps just that name, so that a restart deletes what it may leave.
        if st.sending is not None:
            self.meta.put_pending(ino, st.record())
        else:
            self.meta.delete_pending(ino)
        self._maybe_drop(st)
        return gone

    # -- waiting ----------------------------------------------------------------------------
    async def wait_uploaded(self, st: Staged, deadline: float) -> bool:
        """Until the changes made so far are in S3 (or the file was deleted). False when the
        deadline passes or the upload failed FSYNC_FAILURES times in a row (S3 is down)."""
        target, failures = st.generation, st.failures
        st.forced = True
        st.retry_at = 0.0
        self._wake.set()
        while not st.deleted and (st.synced < target or st.path != st.remote):
            left = deadline - time.monotonic()
            if left <= 0 or st.failures - failures >= FSYNC_FAILURES:
                return False
            changed = self._changed
            with trio.move_on_after(left):
                await changed.wait()
            st.forced = True
        return True

    async def flush_all(self, timeout: float) -> list[str]:
        """Upload everything pending now; wait up to `timeout` s. Returns the paths still pending."""
        deadline = time.monotonic() + timeout
        for st in list(self.files.values()):
            if st.dirty:
                st.forced = True
                st.retry_at = 0.0
        self._wake.set()
        cleanup_until = None
        cleanup_s = max(CLEANUP_WAIT_S, self.answer_grace + 2 * TICK_S)
        while True:
            left = [st for st in self.files.values() if st.dirty or st.uploading]
            if not left and self._cleaning():
                # Uploads done: deletes and aborts S3 refused are retried for a little longer, so
                # that S3 holds what the mount shows when flush returns (they go on after it too).
                cleanup_until = cleanup_until or min(deadline, time.monotonic() + cleanup_s)
                if time.monotonic() < cleanup_until:
                    with trio.move_on_after(min(TICK_S, cleanup_until - time.monotonic())):
                        await self._changed.wait()
                    continue
            if not left or time.monotonic() >= deadline:
                return sorted(st.path for st in left)
            changed = self._changed
            with trio.move_on_after(deadline - time.monotonic()):
                await changed.wait()

    def _cleaning(self) -> bool:
        """Deletes or aborts still to be done (refused by S3, or in flight)."""
        return bool(self._to_delete or self._abort_later or self._orphan_keys or self._strays or self._vacating
                    or self._to_abort)

    def _shown(self, path: str) -> bool:
        """Whether the mount shows a file or directory at `path` (from LMDB)."""
        node = self.meta.get_inode(ROOT_INO)
        for part in path.split("/"):
            if node is None:
                return False
            node = self.meta.lookup(node.ino, part.encode())
        return node is not None

    def _stray_names(self, st: Staged) -> list[str]:
        """Names a failed upload of `st` may have reached that no file of the mount has now."""
        return [p for p in st.maybe_at if p != st.path and not self._shown(p)]

    # -- the scheduler ----------------------------------------------------------------------
    def moving_out(self) -> set[str]:
        """Names where S3 holds a file that has been renamed since (it is copied away later)."""
        return {st.remote for st in self.files.values() if st.remote is not None and st.remote != st.path}

    def due(self, st: Staged, now: float, moving_out: set[str] | None = None) -> bool:
        if not st.dirty or st.uploading or now < st.retry_at:
            return False
        if st.path in self._inflight or st.path in self._vacating:
            # Another inode's upload to this name is in flight (the file it replaced, unlinked
            # or renamed over): it finishes, and deletes its result, before ours may start.
            return False
        if st.path in (self.moving_out() if moving_out is None else moving_out):
            # A file renamed away from this name while its upload here was in flight still sits
            # here in S3 until its copy to the new name: ours would be copied there instead.
            return False
        if any(st.path.startswith(d + "/") or (st.remote or "").startswith(d + "/") for d in self._held):
            return False
        if st.forced or st.closed_dirty:
            return True
        interval = self.small_sync_interval if st.size <= self.small_file_threshold else self.large_sync_interval
        # Quiet for an interval, or changing for longer than one (a log reaches S3 while it grows).
        return now - st.last_write >= interval or now - st.first_dirty >= interval

    async def run(self) -> None:
        """The scheduler: starts every due upload; runs until cancelled. Each upload, eager part
        batch, abort and delete is one supervised unit; the loop itself restarts if it fails."""
        await supervise.supervised("replay", self._abort_stale)
        async with trio.open_nursery() as nursery:
            await supervise.supervised_forever("scheduler", lambda: self._schedule(nursery))

    async def _schedule(self, nursery: trio.Nursery) -> None:
        while True:
            now = time.monotonic()
            moving_out = self.moving_out()
            for st in list(self.files.values()):
                if not st.eager and self.due(st, now, moving_out):
                    st.uploading = True
                    supervise.start(nursery, "upload", self._upload, st, what=st.path)
                elif self._eager_due(st):
                    st.eager = True
                    supervise.start(nursery, "part", self._eager_parts, st, what=st.path)
            while self._to_abort:
                key, upload_id = self._to_abort.pop()
                supervise.start(nursery, "abort", self._abort_quietly, key, upload_id, what=key)
            if (self._to_delete or self._abort_later or self._orphan_keys or self._strays) \
                    and now >= self._delete_retry_at:
                # What S3 refused or may have done unseen, retried at most once a second.
                self._delete_retry_at = now + RETRY_FIRST_S
                keys, self._to_delete = self._to_delete, []
                for key in keys:
                    supervise.start(nursery, "delete", self._delete_quietly, key, what=key)
                aborts, self._abort_later = self._abort_later, []
                for key, upload_id in aborts:
                    supervise.start(nursery, "abort", self._abort_quietly, key, upload_id, what=key)
                for key, when in list(self._orphan_keys.items()):
                    if now >= when:
                        supervise.start(nursery, "abort", self._abort_orphans, key, what=key)
                for key, when in list(self._strays.items()):
                    if now >= when:
                        del self._strays[key]
                        supervise.start(nursery, "delete", self._delete_stray, key, what=key)
            with trio.move_on_after(TICK_S):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _upload(self, st: Staged) -> None:
        """One upload of `st` as it is now. `st.uploading` stays set until the result is recorded,
        so that flush_all and unmount wait for the bookkeeping too, not just the transfer. Any
        failure leaves the data staged and the file due again after a backoff."""
        gen, path, size = st.generation, st.path, st.size
        started = time.monotonic()
        st.forced = st.closed_dirty = False
        key = self.prefix + path
        self._inflight.add(path)
        st.sending = path
        try:
            try:
                etag = await self._transfer(st, key, size, gen)
            except SessionAbandoned:
                st.forced = True            # changed under us (renamed ...): again at once, no backoff
                return
            except Exception as e:
                st.maybe_at.add(path)       # the request may have landed with its answer lost
                self._failed(st, key, e)
                return
            with trio.CancelScope(shield=True):     # S3 has it: the record must say so
                await self._uploaded(st, key, path, size, gen, etag, started)
        finally:
            st.uploading = False
            st.sending = None
            self._inflight.discard(path)
            self._maybe_drop(st)
            self._notify()

    def _failed(self, st: Staged, key: str, e: BaseException) -> None:
        st.failures += 1
        self.stats.add("upload_failures")
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (st.failures - 1))
        st.retry_at = time.monotonic() + delay
        st.forced = True          # due again once the backoff has passed, whatever its schedule
        supervise.record_failure("upload", e, f"of {key} (attempt {st.failures}, next in {delay:.1f} s; "
                                              "the data stays staged)")

    async def _transfer(self, st: Staged, key: str, size: int, gen: int) -> str:
        if gen == st.synced and st.remote is not None and st.remote != st.path:
            try:
                meta = self.metadata_for(st.ino)
                etag = await self.run_blocking(self.store.copy, self.prefix + st.remote, key, *([meta] if meta else []))
                self.stats.add("upload_copies")
                return etag
            except ObjectNotFound:          # its old object is gone: upload the staged bytes instead
                log.info("copy source %s%s is gone; uploading %s from staging", self.prefix, st.remote, key)
        if size <= self.part_size:
            self._abandon_session(st)        # truncated below one part: a single PUT now
            async with self.limiter:
                data = await self.run_blocking(os.pread, st.fd, size, 0)
                meta = self.metadata_for(st.ino)
                return await self.run_blocking(self.store.put_object, key, data, *([meta] if meta else []))
        return await self._multipart(st, key, size)

    async def _uploaded(self, st: Staged, key: str, path: str, size: int, gen: int, etag: str,
                        started: float) -> None:
        st.failures = 0
        st.sending = None             # answered: a record written from here on needs no trace of it
        if st.generation != gen:
            # Changed during the upload: those changes are at most as old as the upload, so a
            # growing log goes up once per interval, not back to back.
            st.first_dirty = max(st.first_dirty, started)
        self.stats.add("uploads")
        self.stats.add("upload_bytes", size)
        old_remote, st.remote = st.remote, path
        st.synced = max(st.synced, gen)
        st.maybe_at.discard(path)
        for stray in self._stray_names(st):     # an earlier attempt's object under a name since left
            st.maybe_at.discard(stray)
            self.stray(self.prefix + stray)
        if st.path == path:
            st.replaced = False             # whatever it replaced there is overwritten now
        if st.deleted:
            await self._delete_quietly(key)      # unlinked while it was being uploaded
            return
        if old_remote is not None and old_remote != path:
            self._vacating.add(old_remote)      # a new file of that name waits until it is gone
            await self._delete_quietly(self.prefix + old_remote)   # renamed before or during the upload
        if st.path != path:
            st.first_dirty = time.monotonic()
            # Renamed during the upload: the server-side copy to the new name now, as a rename does
            # (a new file under the old name waits for it).
            st.forced = st.forced or gen == st.generation
        if gen == st.generation:
            st.etag = etag
            await self.run_blocking(self.meta.set_file, st.ino, size, etag, st.mtime_ns)
            await self.run_blocking(self.on_uploaded, st.ino, etag)
        if st.dirty:
            await self.run_blocking(self.meta.put_pending, st.ino, st.record())
        else:
            await self.run_blocking(self.meta.delete_pending, st.ino)

    async def _open_session(self, st: Staged, key: str, psize: int) -> PartSession:
        st.upload_id = (key, "")      # recorded first: a crash during the create leaves a trace
        await self.run_blocking(self.meta.put_pending, st.ino, st.record())
        meta = self.metadata_for(st.ino)
        try:
            upload_id = await self.run_blocking(self.store.create_multipart, key, *([meta] if meta else []))
        except BaseException:
            # It may exist with its answer lost, or be made later: listed and aborted (twice: at
            # once, and once S3 can no longer be acting on it).
            self._orphan_keys[key] = 0.0
            self._orphan_keys[key + "\0late"] = time.monotonic() + self.answer_grace
            raise
        st.upload_id = (key, upload_id)
        await self.run_blocking(self.meta.put_pending, st.ino, st.record())
        return PartSession(key, upload_id, psize)

    async def _send_part(self, st: Staged, session: PartSession, n: int, size: int) -> str:
        async with self.limiter:
            offset = (n - 1) * session.psize
            data = await self.run_blocking(os.pread, st.fd, min(session.psize, size - offset), offset)
            etag = await self.run_blocking(self.store.upload_part, session.key, session.upload_id, n, data)
        self.stats.add("upload_parts")
        return etag

    def _eager_due(self, st: Staged) -> bool:
        """A large file being written at its end whose finished parts can go to S3 now."""
        if (not self.eager or st.eager or st.uploading or not st.dirty or not st.writers or st.write_end != st.size
                or st.size <= max(self.small_file_threshold, self.part_size)
                or any(st.path.startswith(d + "/") for d in self._held)):
            return False
        session = st.session
        return session is None or (session.key == self.prefix + st.path and bool(session.ready(st.write_end, st.size)))

    async def _eager_parts(self, st: Staged) -> None:
        """Send the parts a sequential writer has finished, while it writes the next ones. Failures
        are left to the upload at close, which sends what is missing."""
        session = None
        try:
            key = self.prefix + st.path
            if st.session is None:
                opened = await self._open_session(st, key, self.part_size)
                if st.deleted or self.prefix + st.path != key or st.session is not None:
                    opened.abandoned = True          # unlinked or renamed while it was being created
                    session = opened
                    return
                st.session = opened
            session = st.session
            if session.key != key:
                return
            async with trio.open_nursery() as nursery:
                for n in session.ready(st.write_end, st.size):
                    session.busy.add(n)
                    nursery.start_soon(self._eager_part, st, session, n)
        except (StoreError, OSError) as e:
            log.debug("eager upload of %s paused: %s", st.path, e)     # the upload at close retries
        finally:
            st.eager = False
            if session is not None and session.abandoned and not session.owned:
                with trio.CancelScope(shield=True), trio.move_on_after(ABORT_ON_STOP_S):
                    await self._abort_quietly(session.key, session.upload_id)
            self._maybe_drop(st)
            self._wake.set()

    async def _eager_part(self, st: Staged, session: PartSession, n: int) -> None:
        try:
            etag = await self._send_part(st, session, n, n * session.psize)
        except Exception as e:      # the upload at close sends it again
            session.failed(n)
            log.debug("eager part %d of %s failed: %s", n, session.key, e)
            return
        session.finished(n, etag)

    async def _multipart(self, st: Staged, key: str, size: int) -> str:
        session = st.session
        if session is not None and (session.key != key or -(-size // session.psize) > MAX_PARTS):
            self._abandon_session(st)
            session = None
        if session is None:
            session = st.session = await self._open_session(st, key, part_size(size, self.part_size))
        session.in_use = True            # this task owns it now: nobody else aborts it
        try:
            etag = await self._complete(st, session, key, size)
        except BaseException as e:
            session.failures += 1
            give_up = (session.abandoned or session.failures >= SESSION_FAILURES
                       or not isinstance(e, Exception))      # stopping: abort it rather than leave it
            if give_up:
                if st.session is session:
                    st.session = None
                session.abandoned = True
                with trio.CancelScope(shield=True), trio.move_on_after(ABORT_ON_STOP_S):
                    await self._abort_quietly(key, session.upload_id)
            raise
        finally:
            session.in_use = False
        if st.session is session:
            st.session = None
        st.upload_id = None
        return etag

    async def _complete(self, st: Staged, session: PartSession, key: str, size: int) -> str:
        """Send the parts S3 does not have (the last one always: the file may have grown since it
        was whole) and complete the upload."""
        while session.busy:              # eager parts still in flight: their results count
            await trio.sleep(0.02)
        count = -(-size // session.psize)
        sent: dict[int, str] = {}

        async def send(n: int) -> None:
            sent[n] = await self._send_part(st, session, n, size)
            session.finished(n, sent[n])      # kept for a retry unless written meanwhile

        async with trio.open_nursery() as nursery:
            for n in range(1, count + 1):
                if n not in session.done or n == count:
                    session.busy.add(n)
                    nursery.start_soon(self._part_owned, session, n, send)
        if session.abandoned:
            raise SessionAbandoned(key)
        parts = {n: session.done[n] for n in range(1, count + 1) if n in session.done}
        parts.update(sent)
        etag = await self.run_blocking(self.store.complete_multipart, key, session.upload_id,
                                       sorted(parts.items()))
        session.failures = 0
        return etag

    @staticmethod
    async def _part_owned(session: PartSession, n: int, send) -> None:
        try:
            await send(n)
        except BaseException:
            session.failed(n)
            raise

    async def _abort_quietly(self, key: str, upload_id: str) -> None:
        """Abort an upload nobody completes; one S3 refuses is retried (its parts cost storage)."""
        try:
            await self.run_blocking(self.store.abort_multipart, key, upload_id)
        except StoreError as e:
            log.warning("could not abort the abandoned multipart upload of %s (retried later): %s", key, e)
            self._abort_later.append((key, upload_id))
            return
        self._notify()

    async def _abort_orphans(self, key: str) -> None:
        """A CreateMultipartUpload of `key` got no answer: S3 may have made the upload all the same.
        List the key's uploads and abort those no session of ours holds. Not while an upload of that
        name runs (its own new session could be listed before its create answered)."""
        entry, key = key, key.removesuffix("\0late")
        path = key[len(self.prefix):]
        if path in self._inflight or any(st.eager for st in self.files.values() if st.path == path):
            return                       # next round
        live = {s.upload_id for s in (st.session for st in self.files.values()) if s is not None}
        live |= {st.upload_id[1] for st in self.files.values() if st.upload_id}
        try:
            found = await self.run_blocking(self.store.list_multipart, key)
        except StoreError as e:
            log.warning("could not list the multipart uploads of %s (retried later): %s", key, e)
            return
        self._orphan_keys.pop(entry, None)
        for k, upload_id in found:
            if k == key and upload_id not in live:
                log.info("aborting the multipart upload of %s whose create had no answer", key)
                await self._abort_quietly(k, upload_id)

    async def _delete_quietly(self, key: str) -> None:
        """Delete an object the mount no longer shows (an unlinked file's upload, a renamed file's old
        name). If S3 refuses, the name stays `_vacating` (no new upload to it may start) and the
        scheduler retries the delete until it is done: what the mount does not show must not stay."""
        path = key[len(self.prefix):]
        self._deleting.add(path)
        try:
            await self.run_blocking(self.store.delete, key)
        except ObjectNotFound:
            pass
        except StoreError as e:
            log.warning("could not delete %s (retried later): %s", key, e)
            self._vacating.add(path)
            self._to_delete.append(key)
            return
        finally:
            self._deleting.discard(path)
        self._vacating.discard(path)
        self._notify()           # a rename waiting for the name (claim_name) goes on

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        self._wake.set()

    def close(self) -> None:
        for st in self.files.values():
            try:
                os.close(st.fd)
            except OSError:
                pass
        self.files.clear()
