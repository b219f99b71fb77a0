"""Namespace changes: create, mkdir, rmdir, unlink and rename, in S3, LMDB and the staging area.

S3 has no directories and no rename (docs/SEMANTICS.md "Writes"):
- mkdir PUTs an empty "dir/" marker at once, so the directory exists for every client;
- rename of a file is a server-side copy and a delete; of a directory, that for every object below
  it. Not atomic: a crash half-way leaves both names, each with complete objects, never a torn one;
- files still in staging move without S3 requests: their upload goes to the new name.
"""
from __future__ import annotations

import errno
import logging
import time

from .errors import FsError, ObjectNotFound
from .meta.schema import KIND_DIR, KIND_FILE, Inode
from .meta.store import Entry
from .namespace import Namespace, valid_name
from .writeback import Staged, Writeback

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
        if existing is not None:
            self.wb.unlinked(existing.ino)      # O_CREAT over a file the kernel did not know
        now = time.time_ns()
        inode = await self.run_blocking(self.meta.put_entry, parent, Entry(text, KIND_FILE, 0, now, ""))
        # mtime 0: the file's follows its content (a utimens sets one; see fs.attrs)
        await self.run_blocking(self.meta.put_attrs, inode.ino, mode & 0o7777, now, 0)
        return inode, self.wb.stage_new(inode)

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
        await self._delete(self.ns.dir_prefix(node))          # its marker, if it has one
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
        marker, so it stays as POSIX says (an extra marker is harmless)."""
        if directory.path and not await self.run_blocking(self.meta.children, directory.ino):
            await self.run_blocking(self.store.put_object, self.ns.dir_prefix(directory), b"")

    async def _unlink_file(self, node: Inode) -> None:
        if node.ino in self.wb.files:
            remote = self.wb.unlinked(node.ino)
        else:
            remote = node.path
        if remote is not None:
            await self._delete(self.ns.cfg.prefix + remote)

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
            try:
                await self.wb.hold_below(node.path)      # no upload below it lands during the copy
                if target is not None:
                    await self._delete(self.ns.dir_prefix(target))
                await self._move_prefix(node.path, new_path)
                await self.run_blocking(self.meta.move, old_parent.ino, old_name, new_parent, new_name)
                self.wb.renamed_dir(node.path, new_path)
            finally:
                self.wb.release_below(node.path)
            await self._keep_if_empty(old_parent)
            return
        if target is not None and target.ino in self.wb.files:
            self.wb.unlinked(target.ino)        # its pending upload must not land over ours
        st = self.wb.get(node.ino)
        prefix = self.ns.cfg.prefix
        if st is None:
            await self.run_blocking(self.store.copy, prefix + node.path, prefix + new_path)
            await self._delete(prefix + node.path)
        elif not st.uploading and st.remote is not None:
            if st.dirty:          # S3's copy is outdated anyway: the upload goes to the new name
                await self._delete(prefix + st.remote)
                st.remote = None
            else:
                await self.run_blocking(self.store.copy, prefix + st.remote, prefix + new_path)
                await self._delete(prefix + st.remote)
                st.remote = new_path
        await self.run_blocking(self.meta.move, old_parent.ino, old_name, new_parent, new_name)
        self.wb.renamed(node.ino, new_path)
        await self._keep_if_empty(old_parent)

    async def _move_prefix(self, old: str, new: str) -> None:
        """Copy every object below directory `old` (its marker too) to `new`, then delete them."""
        prefix = self.ns.cfg.prefix
        src_prefix, dst_prefix = prefix + old + "/", prefix + new + "/"
        keys = await self.run_blocking(self._all_keys, src_prefix)
        for key in keys:
            await self.run_blocking(self.store.copy, key, dst_prefix + key[len(src_prefix):])
        for key in keys:
            await self._delete(key)

    def _all_keys(self, prefix: str) -> list[str]:
        keys, token = [], None
        while True:
            page = self.store.list_page(prefix, token, delimiter="")
            keys += [o.key for o in page.objects]
            token = page.next_token
            if token is None:
                return keys
