"""Deletes and aborts: what the mount no longer shows must leave S3, whatever S3 answered.

An unlinked file's upload, a renamed file's old name, a multipart upload nobody will complete: each is
deleted or aborted, and one S3 refuses is retried by the scheduler until it is done. A request whose
answer was lost may still be acted on by S3 later (its client gave up at the read timeout, the server
had not): what it may have made is looked at again once `answer_grace` has passed (a stray object is
deleted, a multipart upload whose create got no answer is listed and aborted).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from cachefs import supervise
from cachefs.errors import ObjectNotFound, StoreError
from cachefs.meta.schema import ROOT_INO
from cachefs.meta.store import MetaStore
from cachefs.store.base import ObjectStore
from cachefs.writeback.names import Names
from cachefs.writeback.signals import Signals
from cachefs.writeback.staging import Staged, Staging

log = logging.getLogger(__name__)

RunBlocking = Callable[..., Awaitable[Any]]

CLEANUP_RETRY_S = 1.0         # deletes and aborts S3 refused, and stray checks, retried at most once a second


class Cleanup:
    def __init__(self, meta: MetaStore, store: ObjectStore, run_blocking: RunBlocking, staging: Staging,
                 names: Names, signals: Signals, *, prefix: str, answer_grace: float) -> None:
        self.meta = meta
        self.store = store
        self.run_blocking = run_blocking
        self.staging = staging
        self.names = names
        self.signals = signals
        self.prefix = prefix
        self.answer_grace = answer_grace
        self.abort_later: list[tuple[str, str]] = []      # aborts S3 refused: retried like deletes
        self.orphan_keys: dict[str, float] = {}  # key -> when: a create got no answer; list, abort strays
        self.retry_at = 0.0

    def cleaning(self) -> bool:
        """Deletes or aborts still to be done (refused by S3, or in flight)."""
        names = self.names
        return bool(names.to_delete or self.abort_later or self.orphan_keys or names.strays or names.vacating
                    or self.staging.to_abort)

    def start_due(self, nursery: trio.Nursery, now: float) -> None:
        """The scheduler's round: abandoned sessions are aborted; what S3 refused or may have done
        unseen is retried."""
        to_abort = self.staging.to_abort
        while to_abort:
            key, upload_id = to_abort.pop()
            supervise.start(nursery, "abort", self.abort_quietly, key, upload_id, what=key)
        names = self.names
        if (names.to_delete or self.abort_later or self.orphan_keys or names.strays) and now >= self.retry_at:
            # What S3 refused or may have done unseen, retried at most once a second.
            self.retry_at = now + CLEANUP_RETRY_S
            keys, names.to_delete = names.to_delete, []
            for key in keys:
                supervise.start(nursery, "delete", self.delete_quietly, key, what=key)
            aborts, self.abort_later = self.abort_later, []
            for key, upload_id in aborts:
                supervise.start(nursery, "abort", self.abort_quietly, key, upload_id, what=key)
            for key, when in list(self.orphan_keys.items()):
                if now >= when:
                    supervise.start(nursery, "abort", self.abort_orphans, key, what=key)
            for key, when in list(names.strays.items()):
                if now >= when:
                    del names.strays[key]
                    supervise.start(nursery, "delete", self.delete_stray, key, what=key)

    # -- deletes ----------------------------------------------------------------------------
    async def delete_quietly(self, key: str) -> None:
        """Delete an object the mount no longer shows (an unlinked file's upload, a renamed file's old
        name). If S3 refuses, the name stays `vacating` (no new upload to it may start) and the
        scheduler retries the delete until it is done: what the mount does not show must not stay."""
        names = self.names
        path = key[len(self.prefix):]
        names.deleting.add(path)
        try:
            await self.run_blocking(self.store.delete, key)
        except ObjectNotFound:
            pass
        except StoreError as e:
            log.warning("could not delete %s (retried later): %s", key, e)
            names.vacating.add(path)
            names.to_delete.append(key)
            return
        finally:
            names.deleting.discard(path)
        names.vacating.discard(path)
        self.signals.notify()           # a rename waiting for the name (claim) goes on

    async def delete_stray(self, key: str) -> None:
        names = self.names
        path = key[len(self.prefix):]
        if self.shown(path):
            return                       # a file has the name now: its object is no stray
        if path in names.inflight or path in names.moving_out() or names.is_claimed(path):
            names.strays[key] = time.monotonic() + CLEANUP_RETRY_S
            return
        await self.delete_quietly(key)

    def shown(self, path: str) -> bool:
        """Whether the mount shows a file or directory at `path` (from LMDB)."""
        node = self.meta.get_inode(ROOT_INO)
        for part in path.split("/"):
            if node is None:
                return False
            node = self.meta.lookup(node.ino, part.encode())
        return node is not None

    def stray_names(self, st: Staged) -> list[str]:
        """Names a failed upload of `st` may have reached that no file of the mount has now."""
        return [p for p in st.maybe_at if p != st.path and not self.shown(p)]

    # -- aborts -----------------------------------------------------------------------------
    def create_unanswered(self, key: str) -> None:
        """A CreateMultipartUpload of `key` got no answer: the upload may exist with its answer lost,
        or be made later: listed and aborted (twice: at once, and once S3 can no longer be acting on it)."""
        self.orphan_keys[key] = 0.0
        self.orphan_keys[key + "\0late"] = time.monotonic() + self.answer_grace

    async def abort_quietly(self, key: str, upload_id: str) -> None:
        """Abort an upload nobody completes; one S3 refuses is retried (its parts cost storage)."""
        try:
            await self.run_blocking(self.store.abort_multipart, key, upload_id)
        except StoreError as e:
            log.warning("could not abort the abandoned multipart upload of %s (retried later): %s", key, e)
            self.abort_later.append((key, upload_id))
            return
        self.signals.notify()

    async def abort_orphans(self, key: str) -> None:
        """A CreateMultipartUpload of `key` got no answer: S3 may have made the upload all the same.
        List the key's uploads and abort those no session of ours holds. Not while an upload of that
        name runs (its own new session could be listed before its create answered)."""
        files = self.staging.files
        entry, key = key, key.removesuffix("\0late")
        path = key[len(self.prefix):]
        if path in self.names.inflight or any(st.eager for st in files.values() if st.path == path):
            return                       # next round
        live = {s.upload_id for s in (st.session for st in files.values()) if s is not None}
        live |= {st.upload_id[1] for st in files.values() if st.upload_id}
        try:
            found = await self.run_blocking(self.store.list_multipart, key)
        except StoreError as e:
            log.warning("could not list the multipart uploads of %s (retried later): %s", key, e)
            return
        self.orphan_keys.pop(entry, None)
        for k, upload_id in found:
            if k == key and upload_id not in live:
                log.info("aborting the multipart upload of %s whose create had no answer", key)
                await self.abort_quietly(k, upload_id)
