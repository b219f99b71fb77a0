"""Start-up: adopt what a previous run left, and abort the multipart uploads it left unfinished.

Every staged file with changes S3 lacks has a pending record in LMDB, committed before its first
change was acknowledged (staging.py). `open` (before the mount serves) adopts each one as dirty
and closed, so that the scheduler uploads it at once; staging files without a record are a clean
file's leftovers and are deleted. A record may also name a request that was in flight (`sending`:
an upload to a name the file has left): what it may have made is deleted as a stray. The
multipart uploads the dead daemon left are aborted when the scheduler starts (`abort_stale`);
until then their ids stay in the records.
"""
from __future__ import annotations

import logging
import os
import time

from cachefs.errors import StoreError
from cachefs.meta.store import MetaStore
from cachefs.store.base import ObjectStore
from cachefs.writeback.cleanup import RunBlocking
from cachefs.writeback.names import Names
from cachefs.writeback.staging import Staged, Staging

log = logging.getLogger(__name__)


class Replay:
    def __init__(self, meta: MetaStore, store: ObjectStore, run_blocking: RunBlocking, staging: Staging,
                 names: Names, *, prefix: str) -> None:
        self.meta = meta
        self.store = store
        self.run_blocking = run_blocking
        self.staging = staging
        self.names = names
        self.prefix = prefix
        self.orphan_uploads: list[tuple[str, str]] = []   # left by a dead daemon, no file to upload

    def open(self) -> None:
        """Create the staging directory and adopt what a previous run left (before serving)."""
        staging = self.staging
        os.makedirs(staging.staging_dir, mode=0o700, exist_ok=True)
        os.chmod(staging.staging_dir, 0o700)
        for ino, rec in self.meta.pending().items():
            recorded = rec.get("upload")
            upload = (recorded[0], recorded[1]) if recorded else None
            if rec.get("sending"):
                self.names.stray(self.prefix + rec["sending"])
            if rec["path"] is None:
                # Unlinked while its upload was in flight: only that trace was kept.
                if upload:
                    self.orphan_uploads.append(upload)
                self.meta.delete_pending(ino)
                continue
            try:
                fd = os.open(staging.path_of(ino), os.O_RDWR)
            except FileNotFoundError:
                # Unlinked, or its record was committed before its first byte: nothing to lose.
                log.warning("pending upload of %r has no staging file; dropping the record", rec["path"])
                if upload:
                    self.orphan_uploads.append(upload)
                self.meta.delete_pending(ino)
                continue
            size = os.fstat(fd).st_size
            st = Staged(ino, rec["path"], fd, size, time.time_ns(), generation=1, synced=0, remote=rec.get("remote"),
                        upload_id=upload)
            st.closed_dirty = True         # nobody has it open: upload at once
            staging.adopt(st)
        for name in os.listdir(staging.staging_dir):
            if not name.isdigit() or int(name) not in staging.files:
                os.unlink(os.path.join(staging.staging_dir, name))     # a clean file's leftover
        if staging.files:
            log.info("%d file(s) written before the last stop are pending upload (%d bytes)",
                     len(staging.files), staging.staged_bytes)

    async def abort_stale(self) -> None:
        """Abort what a dead daemon left: recorded upload ids, and for a create that was in flight
        (id "": the daemon died before S3 answered), whatever S3 lists for exactly that key."""
        left: list[tuple[Staged | None, tuple[str, str]]] = [(None, u) for u in self.orphan_uploads]
        left += [(st, st.upload_id) for st in self.staging.files.values() if st.upload_id]
        self.orphan_uploads = []
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
