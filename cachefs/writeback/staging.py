"""Staging: a file being written lives whole in STAGING/<ino> until S3 holds its newest bytes.

Reads through the mount come from there (read-your-writes). Before a change is acknowledged, the
file's pending record is committed in LMDB, so after a crash the next mount with the same cache
directory finds every staged file and uploads it (replay.py; docs/SEMANTICS.md "Writes", "Crash
safety").

Ownership (docs/ARCHITECTURE.md "Write path state"): a `Staged` and its descriptor belong to
`Staging`; the descriptor is closed only by `drop`, and only when nobody can use it any more (no open
handle, no upload or eager part in flight, nothing left to upload). A file uploaded and closed keeps
its copy (`retained`, up to RETAIN_FILES) until the room is needed.

pwrite/pread to the staging file run inline on the trio thread: they hit the page cache and take
microseconds, less than a thread hop.
"""
from __future__ import annotations

import errno
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cachefs.errors import FsError
from cachefs.meta.schema import Inode
from cachefs.meta.store import MetaStore
from cachefs.stats import Stats
from cachefs.writeback.parts import PartSession
from cachefs.writeback.signals import Signals

COPY_CHUNK = 4 << 20          # bytes per read when a file is copied into staging
# Uploaded files nobody has open keep their staging copy (reads after the write and a reopen for
# writing stay local) until the room is needed; at most this many, each holding an open fd.
RETAIN_FILES = 128


class StagingFull(FsError):
    """The staging area has no room for this write (its limit or its disk): ENOSPC to the writer."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


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
    renaming: int = 0              # renames of it running (their S3 requests, their record): no upload starts

    @property
    def dirty(self) -> bool:
        return not self.deleted and (self.generation != self.synced or self.path != self.remote)

    def record(self) -> dict[str, object]:
        rec: dict[str, object] = {"path": None if self.deleted else self.path, "remote": self.remote,
                                  "upload": list(self.upload_id) if self.upload_id else None}
        if self.sending is not None and self.sending != rec["path"]:
            # Renamed or unlinked while a request to the old name was in flight: if this daemon
            # dies, that request may still land, and the next one deletes what it made.
            rec["sending"] = self.sending
        return rec


class Staging:
    """The staged files (`files`, by inode), the room they take (`staged_bytes` of `staging_size`)
    and the uploaded copies kept for reads (`retained`)."""

    def __init__(self, meta: MetaStore, stats: Stats, signals: Signals, *, staging_dir: str,
                 staging_size: int) -> None:
        self.meta = meta
        self.stats = stats
        self.signals = signals
        self.staging_dir = staging_dir
        self.staging_size = staging_size
        self.files: dict[int, Staged] = {}
        self.staged_bytes = 0
        self.retained: OrderedDict[int, Staged] = OrderedDict()   # clean, closed; oldest first
        self.to_abort: list[tuple[str, str]] = []   # abandoned eager sessions no task owns: the scheduler aborts
        self._copies = 0                    # names staging copies in progress uniquely

    def path_of(self, ino: int) -> str:
        return os.path.join(self.staging_dir, str(ino))

    def get(self, ino: int) -> Staged | None:
        st = self.files.get(ino)
        if st is None or st.deleted:
            return None
        if ino in self.retained:
            # A retained copy is only good while S3 still holds the version uploaded from it.
            inode = self.meta.get_inode(ino)
            if inode is None or inode.etag != st.etag:
                self.drop(st)
                return None if self.files.get(ino) is not st else st
        return st

    def adopt(self, st: Staged) -> None:
        """A file a previous run left staged (replay.py)."""
        self.files[st.ino] = st
        self.staged_bytes += st.size

    # -- staging a file ---------------------------------------------------------------------
    def stage_new(self, inode: Inode) -> Staged:
        """A file created here: empty, dirty, recorded before the create is acknowledged."""
        fd = os.open(self.path_of(inode.ino), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        st = Staged(inode.ino, inode.path, fd, 0, time.time_ns())
        st.first_dirty = st.last_write = time.monotonic()
        self.meta.put_pending(st.ino, st.record())
        self.files[inode.ino] = st
        return st

    async def stage_existing(self, inode: Inode, read_range: Callable[[int, int], Awaitable[bytes]],
                             truncate: bool) -> Staged:
        """Bring a file from S3 into staging before it is changed (all of it, unless it is being
        truncated to zero). `read_range(offset, size)` reads it through the cache."""
        st = self.get(inode.ino)
        if st is not None:
            return st
        self.reserve(0 if truncate else inode.size)
        # Copied under a name of its own and renamed into place: two stagings of one file at once
        # (an open and a truncate) must not write into each other's copy.
        self._copies += 1
        tmp = f"{self.path_of(inode.ino)}.copy{self._copies}"
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
        os.rename(tmp, self.path_of(inode.ino))
        size = 0 if truncate else inode.size
        st = Staged(inode.ino, inode.path, fd, size, inode.mtime_ns, generation=0, synced=0, remote=inode.path,
                    etag=inode.etag)
        self.files[inode.ino] = st
        return st

    def reserve(self, nbytes: int) -> None:
        while nbytes > 0 and self.staged_bytes + nbytes > self.staging_size and self.retained:
            self.drop(next(iter(self.retained.values())))     # uploaded copies make room first
        if nbytes > 0 and self.staged_bytes + nbytes > self.staging_size:
            self.stats.add("staging_full")
            raise StagingFull(f"staging area full ({self.staged_bytes} of {self.staging_size} bytes "
                              "waiting for upload)")
        self.staged_bytes += nbytes

    # -- changes ----------------------------------------------------------------------------
    def touch(self, st: Staged) -> None:
        """Record a change. The first change since S3 was current commits the pending record
        before the change is acknowledged: that is what a restart after a crash replays."""
        was_dirty = st.dirty
        self.retained.pop(st.ino, None)      # changed: it has something to upload again
        st.generation += 1
        st.last_write = time.monotonic()
        st.mtime_ns = time.time_ns()
        if not was_dirty and not st.deleted:      # an unlinked file is never uploaded: no record
            st.first_dirty = st.last_write
            self.meta.put_pending(st.ino, st.record())

    def write(self, st: Staged, offset: int, data: bytes) -> int:
        end = offset + len(data)
        self.reserve(max(0, end - st.size))
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
        self.touch(st)
        self.stats.add("write_bytes", n)
        return n

    def truncate(self, st: Staged, size: int) -> None:
        if size > st.size:
            self.reserve(size - st.size)
        else:
            self.staged_bytes -= st.size - size
        os.ftruncate(st.fd, size)
        if st.session is not None:        # the parts from the new end on change, like a write's
            st.session.changed(min(size, st.size), max(size, st.size, 1))
        st.size = size
        st.write_end = min(st.write_end, size)
        self.touch(st)
        if st.writers == 0:          # truncate(2) of a file nobody has open: upload now
            st.closed_dirty = True
            self.signals.wake()

    def read(self, st: Staged, offset: int, size: int) -> bytes:
        return os.pread(st.fd, size, offset)

    def update_record(self, st: Staged) -> None:
        """The pending record says what a restart must upload: only a file with changes S3 lacks
        has one, at its current path. A record left at an old path (a clean file moved with its
        directory) made a restart upload it there again, and an unlinked file kept for its open
        handles must not get one back (bench/stress.py found both)."""
        if st.dirty:
            self.meta.put_pending(st.ino, st.record())
        else:
            self.meta.delete_pending(st.ino)

    # -- open/close bookkeeping -------------------------------------------------------------
    def opened(self, st: Staged, writable: bool) -> None:
        self.retained.pop(st.ino, None)
        if writable and not st.writers:
            st.write_end = -1        # a sequential writer is one whose writes since this open end the file
        st.opens += 1
        st.writers += writable

    def closed(self, st: Staged, writable: bool) -> None:
        st.opens -= 1
        st.writers -= writable
        if writable and st.writers == 0 and st.dirty:
            st.closed_dirty = True
            self.signals.wake()
        elif writable and st.writers == 0 and st.session is not None and not st.uploading:
            self.abandon_session(st)     # opened for writing, nothing changed: its early parts go
        self.maybe_drop(st)

    # -- leaving staging --------------------------------------------------------------------
    def in_use(self, st: Staged) -> bool:
        """Someone may still use its descriptor or needs its bytes: an open handle, an upload or
        eager parts in flight, changes not yet in S3."""
        return bool(st.opens or st.uploading or st.eager or st.dirty)

    def maybe_drop(self, st: Staged) -> None:
        """A closed file whose bytes S3 holds is retained (up to RETAIN_FILES, while its room is not
        needed); an unlinked one leaves staging."""
        if self.in_use(st):
            return
        if st.deleted or not st.etag:
            self.drop(st)
            return
        self.retained[st.ino] = st
        self.retained.move_to_end(st.ino)
        while len(self.retained) > RETAIN_FILES:
            self.drop(next(iter(self.retained.values())))

    def abandon_session(self, st: Staged) -> None:
        """Its parts no longer describe the file (renamed, unlinked, too many parts): it is aborted,
        by the task that owns it if one does (parts.py), else by the scheduler."""
        session, st.session = st.session, None
        if session is None:
            return
        session.abandoned = True
        if not session.owned:
            self.to_abort.append((session.key, session.upload_id))
            self.signals.wake()

    def drop(self, st: Staged) -> None:
        """Close and remove the staging copy. Never while it is in use: the descriptor has one owner,
        and a descriptor number closed under a user can be reused by another file (issue 15)."""
        self.retained.pop(st.ino, None)
        if self.in_use(st):
            return          # dropped by maybe_drop when its last user is done
        self.abandon_session(st)
        if self.files.get(st.ino) is st:
            del self.files[st.ino]
        os.close(st.fd)
        try:
            os.unlink(self.path_of(st.ino))
        except FileNotFoundError:
            pass
        self.staged_bytes -= st.size
        if st.deleted or st.generation == st.synced:
            self.meta.delete_pending(st.ino)

    def close(self) -> None:
        for st in self.files.values():
            try:
                os.close(st.fd)
            except OSError:
                pass
        self.files.clear()
