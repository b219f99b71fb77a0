"""One upload of a staged file: a PUT, a server-side copy (a renamed file S3 already holds), or a
multipart upload with parallel parts; and the eager parts of a large file still being written.

A failed upload is retried with backoff for ever (the scheduler starts it again once `retry_at` has
passed); staged data is never dropped. A request that failed may have landed all the same with its
answer lost: its name goes to `maybe_at`, and the object is deleted if no file has that name once an
upload succeeds (cleanup.py).

A multipart session (`PartSession`, parts.py) has one owner at a time: the eager part task while parts
are `busy`, the upload while it is `in_use`. Whoever abandons it only marks it; the owner aborts it.
Everything here runs on the trio thread except the blocking calls given to `run_blocking`.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable

import trio

from cachefs import supervise
from cachefs.errors import ObjectNotFound, StoreError
from cachefs.meta.store import MetaStore
from cachefs.stats import Stats
from cachefs.store.base import ObjectStore
from cachefs.writeback.cleanup import Cleanup, RunBlocking
from cachefs.writeback.names import Names
from cachefs.writeback.parts import MAX_PARTS, PartSession, part_size
from cachefs.writeback.signals import Signals
from cachefs.writeback.staging import Staged, Staging

log = logging.getLogger(__name__)

RETRY_FIRST_S = 1.0           # backoff after a failed upload: 1, 2, 4 ... seconds
RETRY_MAX_S = 60.0            # ... capped, so uploads resume within a minute of S3 coming back
SESSION_FAILURES = 2          # a multipart session that failed this often in a row is given up (lost)
ABORT_ON_STOP_S = 5.0         # how long a stopping daemon spends aborting the session it was sending


class SessionAbandoned(StoreError):
    """The multipart session an upload was completing was abandoned meanwhile (the file was renamed
    or unlinked): the upload starts again, which is not a failure."""


class Uploader:
    def __init__(self, meta: MetaStore, store: ObjectStore, run_blocking: RunBlocking, stats: Stats,
                 staging: Staging, names: Names, cleanup: Cleanup, signals: Signals, *, prefix: str,
                 part_size: int, upload_concurrency: int) -> None:
        self.meta = meta
        self.store = store
        self.run_blocking = run_blocking
        self.stats = stats
        self.staging = staging
        self.names = names
        self.cleanup = cleanup
        self.signals = signals
        self.prefix = prefix
        self.part_size = part_size
        self.limiter = trio.CapacityLimiter(upload_concurrency)
        # The object user metadata (x-amz-meta-*) an upload of this inode carries (posixmeta.py);
        # set by whoever shows the attributes (fs.py, through Writeback).
        self.metadata_for: Callable[[int], dict[str, str]] = lambda ino: {}
        # Called (in a worker thread) once S3 holds the file's current version under `etag`: what
        # shows the attributes records the metadata that version carries (an equal ETag, say of an
        # empty file, must not bring back an older version's metadata).
        self.on_uploaded: Callable[[int, str], None] = lambda ino, etag: None

    async def upload(self, st: Staged) -> None:
        """One upload of `st` as it is now. `st.uploading` stays set until the result is recorded,
        so that flush_all and unmount wait for the bookkeeping too, not just the transfer. Any
        failure leaves the data staged and the file due again after a backoff."""
        gen, path, size = st.generation, st.path, st.size
        started = time.monotonic()
        st.forced = st.closed_dirty = False
        key = self.prefix + path
        self.names.inflight.add(path)
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
            self.names.inflight.discard(path)
            self.staging.maybe_drop(st)
            self.signals.notify()

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
                etag: str = await self.run_blocking(self.store.copy, self.prefix + st.remote, key,
                                                    *([meta] if meta else []))
                self.stats.add("upload_copies")
                return etag
            except ObjectNotFound:          # its old object is gone: upload the staged bytes instead
                log.info("copy source %s%s is gone; uploading %s from staging", self.prefix, st.remote, key)
        if size <= self.part_size:
            self.staging.abandon_session(st)        # truncated below one part: a single PUT now
            async with self.limiter:
                data = await self.run_blocking(os.pread, st.fd, size, 0)
                meta = self.metadata_for(st.ino)
                etag = await self.run_blocking(self.store.put_object, key, data, *([meta] if meta else []))
                return etag
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
        for stray in self.cleanup.stray_names(st):     # an earlier attempt's object under a name since left
            st.maybe_at.discard(stray)
            self.names.stray(self.prefix + stray)
        if st.path == path:
            st.replaced = False             # whatever it replaced there is overwritten now
        if st.deleted:
            await self.cleanup.delete_quietly(key)      # unlinked while it was being uploaded
            return
        if old_remote is not None and old_remote != path:
            self.names.vacating.add(old_remote)      # a new file of that name waits until it is gone
            await self.cleanup.delete_quietly(self.prefix + old_remote)   # renamed before or during the upload
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

    # -- multipart --------------------------------------------------------------------------
    async def _open_session(self, st: Staged, key: str, psize: int) -> PartSession:
        st.upload_id = (key, "")      # recorded first: a crash during the create leaves a trace
        await self.run_blocking(self.meta.put_pending, st.ino, st.record())
        meta = self.metadata_for(st.ino)
        try:
            upload_id: str = await self.run_blocking(self.store.create_multipart, key, *([meta] if meta else []))
        except BaseException:
            self.cleanup.create_unanswered(key)      # it may exist with its answer lost
            raise
        st.upload_id = (key, upload_id)
        await self.run_blocking(self.meta.put_pending, st.ino, st.record())
        return PartSession(key, upload_id, psize)

    async def _send_part(self, st: Staged, session: PartSession, n: int, size: int) -> str:
        async with self.limiter:
            offset = (n - 1) * session.psize
            data = await self.run_blocking(os.pread, st.fd, min(session.psize, size - offset), offset)
            etag: str = await self.run_blocking(self.store.upload_part, session.key, session.upload_id, n, data)
        self.stats.add("upload_parts")
        return etag

    async def eager_parts(self, st: Staged) -> None:
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
                    await self.cleanup.abort_quietly(session.key, session.upload_id)
            self.staging.maybe_drop(st)
            self.signals.wake()

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
            self.staging.abandon_session(st)
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
                    await self.cleanup.abort_quietly(key, session.upload_id)
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
        etag: str = await self.run_blocking(self.store.complete_multipart, key, session.upload_id,
                                            sorted(parts.items()))
        session.failures = 0
        return etag

    @staticmethod
    async def _part_owned(session: PartSession, n: int, send: Callable[[int], Awaitable[None]]) -> None:
        try:
            await send(n)
        except BaseException:
            session.failed(n)
            raise
