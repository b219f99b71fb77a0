"""The upload schedule (docs/SEMANTICS.md "When data reaches S3"), and waiting for it.

A file up to --small-file-threshold is uploaded after --small-sync-interval of quiet, or every
interval while it keeps growing, or when its last writer closes it; a larger one after
--large-sync-interval or on close, as a multipart upload with parallel parts, whose finished parts a
sequential writer's file sends early (eager parts). One scheduler task looks for due work every
TICK_S, or at once when woken, and starts each upload, batch of eager parts, abort and delete as one
unit under the supervisor (supervise.py): a failure ends that unit alone, never the daemon.
"""
from __future__ import annotations

import time

import trio

from cachefs import supervise
from cachefs.writeback.cleanup import Cleanup
from cachefs.writeback.names import Names
from cachefs.writeback.signals import Signals
from cachefs.writeback.staging import Staged, Staging
from cachefs.writeback.upload import Uploader

TICK_S = 0.25                 # how often the scheduler looks for due uploads
FSYNC_FAILURES = 3            # --fsync-upload: failed attempts before fsync gives up with EIO
CLEANUP_WAIT_S = 10.0         # a flush waits at most this long, after the uploads, for retried deletes and aborts


class Scheduler:
    def __init__(self, staging: Staging, names: Names, cleanup: Cleanup, uploader: Uploader, signals: Signals, *,
                 prefix: str, small_file_threshold: int, small_sync_interval: float, large_sync_interval: float,
                 part_size: int, eager: bool, answer_grace: float) -> None:
        self.files = staging.files
        self.names = names
        self.cleanup = cleanup
        self.uploader = uploader
        self.signals = signals
        self.prefix = prefix
        self.small_file_threshold = small_file_threshold
        self.small_sync_interval = small_sync_interval
        self.large_sync_interval = large_sync_interval
        self.part_size = part_size
        self.eager = eager
        self.answer_grace = answer_grace

    # -- what is due ------------------------------------------------------------------------
    def due(self, st: Staged, now: float, moving_out: set[str] | None = None) -> bool:
        if not st.dirty or st.uploading or st.renaming or now < st.retry_at:
            return False
        if st.path in self.names.inflight or st.path in self.names.vacating:
            # Another inode's upload to this name is in flight (the file it replaced, unlinked
            # or renamed over): it finishes, and deletes its result, before ours may start.
            return False
        if st.path in (self.names.moving_out() if moving_out is None else moving_out):
            # A file renamed away from this name while its upload here was in flight still sits
            # here in S3 until its copy to the new name: ours would be copied there instead.
            return False
        if any(st.path.startswith(d + "/") or (st.remote or "").startswith(d + "/") for d in self.names.held):
            return False
        if st.forced or st.closed_dirty:
            return True
        interval = self.small_sync_interval if st.size <= self.small_file_threshold else self.large_sync_interval
        # Quiet for an interval, or changing for longer than one (a log reaches S3 while it grows).
        return now - st.last_write >= interval or now - st.first_dirty >= interval

    def eager_due(self, st: Staged) -> bool:
        """A large file being written at its end whose finished parts can go to S3 now."""
        if (not self.eager or st.eager or st.uploading or not st.dirty or not st.writers or st.write_end != st.size
                or st.size <= max(self.small_file_threshold, self.part_size)
                or any(st.path.startswith(d + "/") for d in self.names.held)):
            return False
        session = st.session
        return session is None or (session.key == self.prefix + st.path and bool(session.ready(st.write_end, st.size)))

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Starts every due upload; runs until cancelled. The loop itself restarts if it fails."""
        async with trio.open_nursery() as nursery:
            await supervise.supervised_forever("scheduler", lambda: self._schedule(nursery))

    async def _schedule(self, nursery: trio.Nursery) -> None:
        while True:
            now = time.monotonic()
            moving_out = self.names.moving_out()
            for st in list(self.files.values()):
                if not st.eager and self.due(st, now, moving_out):
                    st.uploading = True
                    supervise.start(nursery, "upload", self.uploader.upload, st, what=st.path)
                elif self.eager_due(st):
                    st.eager = True
                    supervise.start(nursery, "part", self.uploader.eager_parts, st, what=st.path)
            self.cleanup.start_due(nursery, now)
            await self.signals.sleep(TICK_S)

    # -- waiting ----------------------------------------------------------------------------
    async def wait_uploaded(self, st: Staged, deadline: float) -> bool:
        """Until the changes made so far are in S3 (or the file was deleted). False when the
        deadline passes or the upload failed FSYNC_FAILURES times in a row (S3 is down)."""
        target, failures = st.generation, st.failures
        st.forced = True
        st.retry_at = 0.0
        self.signals.wake()
        while not st.deleted and (st.synced < target or st.path != st.remote):
            left = deadline - time.monotonic()
            if left <= 0 or st.failures - failures >= FSYNC_FAILURES:
                return False
            changed = self.signals.changed
            with trio.move_on_after(left):
                await changed.wait()
            st.forced = True
        return True

    async def wait_idle(self, st: Staged, deadline: float) -> bool:
        """Until no upload of `st` is in flight, its record written too (wait_uploaded returns once
        S3 has answered, before the file's ETag is recorded). False when the deadline passes."""
        while st.uploading:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            changed = self.signals.changed
            with trio.move_on_after(left):
                await changed.wait()
        return True

    async def flush_all(self, timeout: float) -> list[str]:
        """Upload everything pending now; wait up to `timeout` s. Returns the paths still pending."""
        deadline = time.monotonic() + timeout
        for st in list(self.files.values()):
            if st.dirty:
                st.forced = True
                st.retry_at = 0.0
        self.signals.wake()
        cleanup_until = None
        cleanup_s = max(CLEANUP_WAIT_S, self.answer_grace + 2 * TICK_S)
        while True:
            left = [st for st in self.files.values() if st.dirty or st.uploading]
            if not left and self.cleanup.cleaning():
                # Uploads done: deletes and aborts S3 refused are retried for a little longer, so
                # that S3 holds what the mount shows when flush returns (they go on after it too).
                cleanup_until = cleanup_until or min(deadline, time.monotonic() + cleanup_s)
                if time.monotonic() < cleanup_until:
                    with trio.move_on_after(min(TICK_S, cleanup_until - time.monotonic())):
                        await self.signals.changed.wait()
                    continue
            if not left or time.monotonic() >= deadline:
                return sorted(st.path for st in left)
            changed = self.signals.changed
            with trio.move_on_after(deadline - time.monotonic()):
                await changed.wait()
