"""Namespace changes: create, mkdir, rmdir, unlink and rename, in S3, LMDB and the staging area.

S3 has no directories and no rename (docs/SEMANTICS.md "Writes"):
- mkdir PUTs an empty "dir/" marker at once, so the directory exists for every client;
- rename of a file is a server-side copy and a delete; of a directory, that for every object below
  it. Not atomic: a crash half-way leaves both names, each with complete objects, never a torn one;
- files still in staging move without S3 requests: their upload goes to the new name.

A rename that fails part-way (docs/SEMANTICS.md "Rename"): while copying, it is rolled back (the
copies made are deleted, the tree is as before, the caller gets the error); once every copy is
made it is finished (the mount shows the new name, old objects S3 would not delete now are
deleted by the write path's retries). A copy gives the object a new ETag: the inode records it,
so the file does not go stale.
"""
from __future__ import annotations

import errno
import logging
import time

import trio

from cachefs.errors import FsError, ObjectNotFound, StoreError
from cachefs.meta.schema import KIND_DIR, KIND_FILE, Inode
from cachefs.meta.store import Entry
from cachefs.namespace.core import Namespace, valid_name
from cachefs.writeback import Staged, Writeback

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1     # linux/fs.h
RENAME_EXCHANGE = 2


def check_name(name: bytes) -> str:
    if len(name) > 255:
        raise FsError(errno.ENAMETOOLONG)
    if not valid_name(name):
        raise FsError(errno.EINVAL, f"{name!r} cannot be an S3 key segment")
    return name.decode()


class Tree:
    def __init__(self, ns: Namespace, wb: Writeback) -> None:
        self.ns = ns
        self.meta = ns.meta
        self.store = ns.store
        self.wb = wb
        self.run_blocking = ns.run_blocking

    async def _dir(self, ino: int) -> Inode:
        node = self.ns.get(ino)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        return node

    async def _child(self, parent: Inode, name: bytes) -> Inode:
        node = await self.ns.lookup(parent.ino, name)
        if node is None:
            raise FsError(errno.ENOENT)
        return node

    async def _is_empty(self, directory: Inode) -> bool:
        return not await self.ns.entries(directory.ino)

    # -- creation ---------------------------------------------------------------------------
    async def create(self, parent_ino: int, name: bytes, mode: int) -> tuple[Inode, Staged]:
        parent = await self._dir(parent_ino)
        text = check_name(name)
        existing = await self.ns.lookup(parent.ino, name)
        if existing is not None and existing.is_dir:
            raise FsError(errno.EISDIR)
        path = f"{parent.path}/{text}" if parent.path else text
        if existing is not None:                # O_CREAT over a file the kernel did not know
            for gone in self.wb.unlinked(existing.ino):
                if gone != path:                # that name's object is overwritten by our upload
                    await self._delete(self.ns.cfg.prefix + gone)
        now = time.time_ns()
        inode = await self.run_blocking(self.meta.put_entry, parent, Entry(text, KIND_FILE, 0, now, ""))
        # mtime 0: the file's follows its content (a utimens sets one; see fs.attrs)
        await self.run_blocking(self.meta.put_attrs, inode.ino, mode & 0o7777, now, 0)
        st = self.wb.stage_new(inode, replaced=existing is not None)
        return inode, st

    async def mkdir(self, parent_ino: int, name: bytes, mode: int, listing_ttl: float) -> Inode:
        parent = await self._dir(parent_ino)
        text = check_name(name)
        if await self.ns.lookup(parent.ino, name) is not None:
            raise FsError(errno.EEXIST)
        path = f"{parent.path}/{text}" if parent.path else text
        await self.run_blocking(self.store.put_object, self.ns.cfg.prefix + path + "/", b"")
        now = time.time_ns()
        inode = await self.run_blocking(self.meta.put_entry, parent, Entry(text, KIND_DIR))
        await self.run_blocking(self.meta.put_attrs, inode.ino, mode & 0o7777, now, now)
        await self.run_blocking(self.meta.mark_listed, inode.ino, time.time() + listing_ttl)
        return inode

    # -- removal ----------------------------------------------------------------------------
    async def rmdir(self, parent_ino: int, name: bytes) -> None:
        parent = await self._dir(parent_ino)
        node = await self._child(parent, name)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        if not await self._is_empty(node):
            raise FsError(errno.ENOTEMPTY)
        await self._delete_or_later(self.ns.dir_prefix(node))          # its marker, if it has one
        await self.run_blocking(self.meta.remove_entry, parent.ino, name)
        await self._keep_if_empty(parent)

    async def unlink(self, parent_ino: int, name: bytes) -> None:
        parent = await self._dir(parent_ino)
        node = await self._child(parent, name)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        await self._unlink_file(node)
        await self.run_blocking(self.meta.remove_entry, parent.ino, name)
        await self._keep_if_empty(parent)

    async def _keep_if_empty(self, directory: Inode) -> None:
        """S3 has no empty directories: one whose last object went away through the mount gets a
        marker, so it stays as POSIX says (an extra marker is harmless). The change it follows is
        done: a marker S3 refuses is a warning, not the caller's error."""
        if directory.path and not await self.run_blocking(self.meta.children, directory.ino):
            try:
                await self.run_blocking(self.store.put_object, self.ns.dir_prefix(directory), b"")
            except StoreError as e:
                log.warning("could not keep the empty directory %s in S3 (it shows here until "
                            "relisted): %s", directory.path, e)

    async def _unlink_file(self, node: Inode) -> None:
        """The unlink is done here whatever S3 answers: a delete S3 refused, or whose answer was
        lost after it landed, is retried in the background (no upload to that name starts before)."""
        gone = self.wb.unlinked(node.ino) if node.ino in self.wb.files else [node.path]
        for path in gone:
            await self._delete_or_later(self.ns.cfg.prefix + path)

    async def _delete(self, key: str) -> None:
        try:
            await self.run_blocking(self.store.delete, key)
        except ObjectNotFound:
            pass

    # -- rename -----------------------------------------------------------------------------
    async def rename(self, old_parent_ino: int, old_name: bytes, new_parent_ino: int, new_name: bytes,
                     flags: int) -> None:
        if flags & RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "RENAME_EXCHANGE cannot be done on S3")
        old_parent = await self._dir(old_parent_ino)
        new_parent = await self._dir(new_parent_ino)
        text = check_name(new_name)
        node = await self._child(old_parent, old_name)
        target = await self.ns.lookup(new_parent.ino, new_name)
        if target is not None and target.ino == node.ino:
            return
        new_path = f"{new_parent.path}/{text}" if new_parent.path else text
        if node.is_dir and (new_path + "/").startswith(node.path + "/"):
            raise FsError(errno.EINVAL, "cannot move a directory into itself")
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FsError(errno.EEXIST)
            if node.is_dir and not target.is_dir:
                raise FsError(errno.ENOTDIR)
            if not node.is_dir and target.is_dir:
                raise FsError(errno.EISDIR)
            if target.is_dir and not await self._is_empty(target):
                raise FsError(errno.ENOTEMPTY)
        if node.is_dir:
            await self.wb.claim(new_path, below=True)    # no clean-up deletes a copy below it
            try:
                await self.wb.hold_below(node.path)      # no upload below it lands during the copy
                # An empty target's marker is overwritten by the source's, or stays (harmless).
                etags = await self._move_prefix(node.path, new_path)
                moved = await self.run_blocking(self.meta.move, old_parent.ino, old_name, new_parent, new_name)
                await self.run_blocking(self._record_etags, moved, etags)
                self.wb.renamed_dir(node.path, new_path)
            finally:
                self.wb.release_below(node.path)
                self.wb.release(new_path, below=True)
            await self._keep_if_empty(old_parent)
            return
        if target is not None and target.ino in self.wb.files:
            # Its pending upload must not land over ours; where S3 holds it under another name goes.
            for gone in self.wb.unlinked(target.ino):
                if gone != new_path:
                    await self._delete(self.ns.cfg.prefix + gone)
        st = self.wb.get(node.ino)
        copies = st is None or (not st.uploading and st.remote is not None and not st.dirty)
        await self.wb.claim(new_path, wait=copies)     # nothing may land on, or delete, a copy to it
        try:
            await self._rename_file(node, old_parent, old_name, new_parent, new_name, new_path, target)
        finally:
            self.wb.release(new_path)
        await self._keep_if_empty(old_parent)

    async def _rename_file(self, node: Inode, old_parent: Inode, old_name: bytes, new_parent: Inode,
                           new_name: bytes, new_path: str, target: Inode | None) -> None:
        st = self.wb.get(node.ino)
        if st is not None:
            self.wb.rename_started(st)      # no upload of it starts before wb.renamed below
        try:
            await self._move_file(st, node, old_parent, old_name, new_parent, new_name, new_path, target)
        finally:
            if st is not None:
                self.wb.rename_done(st)

    async def _move_file(self, st: Staged | None, node: Inode, old_parent: Inode, old_name: bytes,
                         new_parent: Inode, new_name: bytes, new_path: str, target: Inode | None) -> None:
        prefix = self.ns.cfg.prefix
        etag = None
        if st is None:
            etag = await self._copy_or_undo(prefix + node.path, prefix + new_path, new_parent, target)
            await self._delete_or_later(prefix + node.path)       # copied: the rename is done
        elif not st.uploading and st.remote is not None:
            if st.dirty:          # S3's copy is outdated anyway: the upload goes to the new name
                await self._delete_or_later(prefix + st.remote)
                self.wb.remote_dropped(st)
            else:
                etag = await self._copy_or_undo(prefix + st.remote, prefix + new_path, new_parent, target)
                await self._delete_or_later(prefix + st.remote)
                self.wb.remote_moved(st, new_path, etag)
        await self.run_blocking(self.meta.move, old_parent.ino, old_name, new_parent, new_name)
        if etag is not None:        # a copy is a new object (a multipart one gets a new ETag)
            await self.run_blocking(self._record_etags, None, {node.ino: etag})
        self.wb.renamed(node.ino, new_path, replaced=target is not None)

    async def _copy_or_undo(self, src: str, dst: str, new_parent: Inode, target: Inode | None) -> str:
        """A rename's copy. If it fails, it may still have landed (an answer lost): a copy to a new
        name is deleted again; one over an existing file may have replaced its object, so the
        directory is listed anew on its next use and shows what S3 holds."""
        try:
            return await self.run_blocking(self.store.copy, src, dst)
        except StoreError:
            with trio.CancelScope(shield=True):
                if target is None:
                    self.wb.stray(dst)
                else:
                    await self.run_blocking(self.meta.mark_listed, new_parent.ino, 0.0)
            raise

    async def _delete_or_later(self, key: str) -> None:
        """Delete an old name after its copy: the rename is done, so a refusal is retried later."""
        try:
            await self._delete(key)
        except StoreError as e:
            log.warning("could not delete %s after its copy (retried later): %s", key, e)
            self.wb.delete_later(key)

    async def _move_prefix(self, old: str, new: str) -> dict[str, str]:
        """Copy every object below directory `old` (its marker too) to `new`, then delete them.
        A copy that fails rolls the copies made so far back and raises; a source deleted meanwhile
        is skipped. Returns {path below the directory: new ETag}."""
        prefix = self.ns.cfg.prefix
        src_prefix, dst_prefix = prefix + old + "/", prefix + new + "/"
        keys = await self._all_keys(src_prefix)
        copied: dict[str, str] = {}
        rel = ""
        try:
            for key in keys:
                rel = key[len(src_prefix):]
                if self.wb.doomed(key[len(prefix):]):
                    continue         # an unlinked file's object whose delete is pending: not moved
                try:
                    copied[rel] = await self.run_blocking(self.store.copy, key, dst_prefix + rel)
                except ObjectNotFound:
                    continue         # deleted meanwhile: nothing to move
        except BaseException:
            if rel and rel not in copied:
                copied[rel] = ""         # the copy that failed may have landed all the same
            with trio.CancelScope(shield=True):
                await self._roll_back(dst_prefix, copied)
            raise
        for key in keys:
            await self._delete_or_later(key)
        return copied

    async def _roll_back(self, dst_prefix: str, copied: dict[str, str]) -> None:
        """Delete the copies a failed directory rename made (the target was empty: they are all new)."""
        for rel in copied:
            self.wb.stray(dst_prefix + rel)      # deleted now, and again once a late copy cannot land
        if copied:
            log.warning("a directory rename failed after %d copies; they were rolled back", len(copied))

    def _record_etags(self, moved: Inode | None, etags: dict) -> None:
        """After copies: each file's inode takes its new object's ETag. `etags` maps inode numbers
        (moved None) or paths below the moved directory to ETags."""
        for where, etag in etags.items():
            inode = self.meta.get_inode(where) if moved is None else self._below(moved, where)
            if inode is not None and not inode.is_dir and inode.etag != etag:
                self.meta.set_file(inode.ino, inode.size, etag, inode.mtime_ns)

    def _below(self, directory: Inode, rel: str) -> Inode | None:
        node: Inode | None = directory
        for part in rel.split("/"):
            if node is None or not part:
                return None
            node = self.meta.lookup(node.ino, part.encode())
        return node

    async def _all_keys(self, prefix: str) -> list[str]:
        keys, token = [], None
        while True:
            page = await self.store.alist_page(prefix, token, delimiter="")
            keys += [o.key for o in page.objects]
            token = page.next_token
            if token is None:
                return keys
