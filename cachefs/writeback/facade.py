"""`Writeback`: the write path as the other layers (fs.py, namespace/changes.py, the daemon) see it.

It composes the parts and holds no state of its own:
  staging.py   the staged files (`Staged`), their room, the copies kept after upload
  names.py     which S3 names an upload, delete or rename copy is using now
  schedule.py  what is due and when; flush and the wait for an upload
  upload.py    one upload: PUT, copy, multipart with parallel and eager parts, retries
  cleanup.py   deletes and aborts, retried; what a lost answer may have left
  replay.py    start-up: adopt a previous run's staged files, abort its multipart uploads
  signals.py   the events the tasks meet on
Ownership (docs/ARCHITECTURE.md "Write path state"): the fields of a `Staged` are changed through
these methods; other layers read them.

Concurrency: everything runs on the trio thread except the blocking calls passed to `run_blocking`
(S3 requests, fsync, copies).
"""
from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable

from cachefs import supervise
from cachefs.meta.schema import Inode
from cachefs.meta.store import MetaStore
from cachefs.stats import Stats
from cachefs.store.base import ObjectStore
from cachefs.writeback.cleanup import Cleanup, RunBlocking
from cachefs.writeback.names import CLAIM_WAIT_S, Names
from cachefs.writeback.replay import Replay
from cachefs.writeback.schedule import Scheduler
from cachefs.writeback.signals import Signals
from cachefs.writeback.staging import Staged, Staging
from cachefs.writeback.upload import Uploader


class Writeback:
    def __init__(self, meta: MetaStore, store: ObjectStore, run_blocking: RunBlocking, stats: Stats, *,
                 prefix: str, staging_dir: str, staging_size: int, small_file_threshold: int,
                 small_sync_interval: float, large_sync_interval: float, part_size: int,
                 upload_concurrency: int, eager: bool = True, answer_grace: float = 35.0) -> None:
        self.meta = meta
        self.run_blocking = run_blocking
        self.stats = stats
        self.prefix = prefix
        self.signals = Signals()
        self.staging = Staging(meta, stats, self.signals, staging_dir=staging_dir, staging_size=staging_size)
        # Asked on every read, lookup and getattr: the staging's own method, without a facade frame.
        self.get: Callable[[int], Staged | None] = self.staging.get
        self.files = self.staging.files     # by inode; other layers read it, never change it
        # A request whose answer was lost may still be acted on by S3 later (its client gave up at
        # the read timeout, the server had not): what it may have made is checked again after this.
        self.names = Names(self.files, self.signals, prefix=prefix, answer_grace=answer_grace)
        self.cleanup = Cleanup(meta, store, run_blocking, self.staging, self.names, self.signals, prefix=prefix,
                               answer_grace=answer_grace)
        self.uploader = Uploader(meta, store, run_blocking, stats, self.staging, self.names, self.cleanup,
                                 self.signals, prefix=prefix, part_size=part_size,
                                 upload_concurrency=upload_concurrency)
        self.scheduler = Scheduler(self.staging, self.names, self.cleanup, self.uploader, self.signals,
                                   prefix=prefix, small_file_threshold=small_file_threshold,
                                   small_sync_interval=small_sync_interval, large_sync_interval=large_sync_interval,
                                   part_size=part_size, eager=eager, answer_grace=answer_grace)
        self.replay = Replay(meta, store, run_blocking, self.staging, self.names, prefix=prefix)

    # -- hooks set by whoever shows the attributes (fs.py) ----------------------------------
    @property
    def metadata_for(self) -> Callable[[int], dict[str, str]]:
        """The object user metadata (x-amz-meta-*) an upload of this inode carries (posixmeta.py)."""
        return self.uploader.metadata_for

    @metadata_for.setter
    def metadata_for(self, fn: Callable[[int], dict[str, str]]) -> None:
        self.uploader.metadata_for = fn

    @property
    def on_uploaded(self) -> Callable[[int, str], None]:
        """Called (in a worker thread) once S3 holds the file's current version under an ETag."""
        return self.uploader.on_uploaded

    @on_uploaded.setter
    def on_uploaded(self, fn: Callable[[int, str], None]) -> None:
        self.uploader.on_uploaded = fn

    # -- start and stop ---------------------------------------------------------------------
    def open(self) -> None:
        """Create the staging directory and adopt what a previous run left (before serving)."""
        self.replay.open()

    async def run(self) -> None:
        """Abort what a previous run left unfinished, then run the scheduler until cancelled. Each
        upload, eager part batch, abort and delete is one supervised unit."""
        await supervise.supervised("replay", self.replay.abort_stale)
        await self.scheduler.run()

    def close(self) -> None:
        self.staging.close()

    # -- queries ----------------------------------------------------------------------------
    @property
    def staged_bytes(self) -> int:
        return self.staging.staged_bytes

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

    def summary(self) -> dict[str, float]:
        """Gauges for stats and metrics; called from the exporter's thread too (list() of a
        dict's values is one step under the GIL, so no iteration races with the trio thread)."""
        now = time.monotonic()
        dirty = [st for st in list(self.files.values()) if st.dirty]
        limit = self.scheduler.small_file_threshold
        by_class = {"small": [st for st in dirty if st.size <= limit], "large": [st for st in dirty if st.size > limit]}
        per_class: dict[str, float] = {}
        for name, files in by_class.items():    # the two upload classes (--small-file-threshold)
            per_class[f"uploads_pending_{name}"] = len(files)
            per_class[f"uploads_oldest_age_{name}_s"] = round(max((now - st.first_dirty for st in files),
                                                                  default=0.0), 3)
        return {"uploads_pending": len(dirty),
                "uploads_pending_bytes": sum(st.size for st in dirty),
                "uploads_oldest_age_s": round(max((now - st.first_dirty for st in dirty), default=0.0), 3),
                **per_class,
                "staging_bytes": self.staging.staged_bytes,
                "staging_retained_bytes": sum(st.size for st in list(self.staging.retained.values()))}

    def pending_paths(self) -> list[str]:
        return sorted(st.path for st in list(self.files.values()) if st.dirty or st.uploading)

    # -- staging and file handles -----------------------------------------------------------
    def stage_new(self, inode: Inode, replaced: bool = False) -> Staged:
        """`replaced`: it took the name of a file whose object S3 holds until this one's upload."""
        st = self.staging.stage_new(inode)
        st.replaced = replaced
        return st

    def set_mtime(self, st: Staged, mtime_ns: int) -> None:
        """The mtime its upload carries (utimens, or the object's own when opened unchanged)."""
        st.mtime_ns = mtime_ns

    def remote_dropped(self, st: Staged) -> None:
        """A rename deleted S3's outdated copy of a changed file: its upload goes to the new name."""
        st.remote = None

    def remote_moved(self, st: Staged, new_path: str, etag: str) -> None:
        """A rename copied the clean file's object to `new_path` (a copy is a new ETag)."""
        st.remote, st.etag = new_path, etag

    def remote_replaced(self, ino: int, etag: str) -> None:
        """S3's object of this file was replaced by a copy of itself (new metadata, same bytes)."""
        st = self.get(ino)
        if st is not None:
            st.etag = etag

    async def stage_existing(self, inode: Inode, read_range: Callable[[int, int], Awaitable[bytes]],
                             truncate: bool) -> Staged:
        return await self.staging.stage_existing(inode, read_range, truncate)

    def write(self, st: Staged, offset: int, data: bytes) -> int:
        return self.staging.write(st, offset, data)

    def truncate(self, st: Staged, size: int) -> None:
        self.staging.truncate(st, size)

    def read(self, st: Staged, offset: int, size: int) -> bytes:
        return self.staging.read(st, offset, size)

    def opened(self, st: Staged, writable: bool) -> None:
        self.staging.opened(st, writable)

    def closed(self, st: Staged, writable: bool) -> None:
        self.staging.closed(st, writable)

    async def fsync(self, st: Staged, upload: bool) -> bool:
        """Durable on the node: the staging file and the pending record on disk. With `upload`,
        also wait until S3 holds what was written so far (False: it could not be uploaded)."""
        await self.run_blocking(os.fsync, st.fd)
        await self.run_blocking(self.meta.sync)
        if upload and st.dirty:
            return await self.wait_uploaded(st, float("inf"))
        return True

    # -- namespace changes ------------------------------------------------------------------
    def rename_started(self, st: Staged) -> None:
        """A rename of the file begins: no upload of it starts until `rename_done`. One that ran
        while the rename deleted or copied its old object set where S3 holds it, and the rename's own
        record of that then overwrote it: the upload's object stayed in S3 under a name no file has
        (tests/test_reliability_stress.py found it). An upload already in flight goes on."""
        st.renaming += 1

    def rename_done(self, st: Staged) -> None:
        st.renaming -= 1
        self.signals.wake()

    def renamed(self, ino: int, new_path: str, replaced: bool = False) -> None:
        """`replaced`: it took the name of a file whose object S3 may hold until this one's upload."""
        st = self.get(ino)
        if st is not None:
            self.staging.retained.pop(ino, None)       # it has a copy to make now
            if not st.dirty:
                st.first_dirty = time.monotonic()
            old = st.path
            if (st.replaced and old != new_path and st.remote != old and old not in self.names.inflight
                    and old not in self.names.moving_out()):
                # It took that name from a file whose object still sits there (its own upload never
                # came): that object goes, as the name now has no file (bench/stress.py found it).
                self.names.stray(self.prefix + old)
            st.replaced = replaced and st.remote != new_path
            st.path = new_path
            self.staging.update_record(st)

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
                self.staging.update_record(st)

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
        if ((st.replaced or st.path in st.maybe_at) and st.path != remote and st.path not in self.names.inflight
                and st.path not in self.names.moving_out()):
            gone.append(st.path)
        gone += [p for p in self.cleanup.stray_names(st) if p not in gone]
        st.maybe_at.clear()
        # Nothing of it is to be uploaded any more; while an upload to its name is in flight the
        # record keeps just that name, so that a restart deletes what it may leave.
        if st.sending is not None:
            self.meta.put_pending(ino, st.record())
        else:
            self.meta.delete_pending(ino)
        self.staging.maybe_drop(st)
        return gone

    # -- S3 names (names.py) ----------------------------------------------------------------
    async def hold_below(self, directory: str) -> None:
        await self.names.hold_below(directory)

    def release_below(self, directory: str) -> None:
        self.names.release_below(directory)

    def doomed(self, path: str) -> bool:
        return self.names.doomed(path)

    async def claim(self, path: str, below: bool = False, wait: bool = True, timeout: float = CLAIM_WAIT_S) -> None:
        await self.names.claim(path, below, wait, timeout)

    def release(self, path: str, below: bool = False) -> None:
        self.names.release(path, below)

    def stray(self, key: str) -> None:
        self.names.stray(key)

    def delete_later(self, key: str) -> None:
        self.names.delete_later(key)

    def moving_out(self) -> set[str]:
        return self.names.moving_out()

    # -- the schedule (schedule.py) ---------------------------------------------------------
    def due(self, st: Staged, now: float, moving_out: set[str] | None = None) -> bool:
        return self.scheduler.due(st, now, moving_out)

    async def wait_uploaded(self, st: Staged, deadline: float) -> bool:
        return await self.scheduler.wait_uploaded(st, deadline)

    async def wait_idle(self, st: Staged, deadline: float) -> bool:
        return await self.scheduler.wait_idle(st, deadline)

    async def flush_all(self, timeout: float) -> list[str]:
        """Upload everything pending now; wait up to `timeout` s. Returns the paths still pending."""
        return await self.scheduler.flush_all(timeout)
