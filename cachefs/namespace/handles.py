"""Open files: the handles fs.py gives the kernel, and where each one's bytes come from and go.

A handle reads its file's staging copy while there is one (read-your-writes), else the object
through the block reader. Writing stages the file first (writeback/). The kernel's page cache is
kept across opens only while it holds the very version of the object (`opened_etag`). A file
unlinked or renamed over while open keeps working on its staging copy, as POSIX says.

No FUSE here: fs.py translates (FileInfo, errnos through errors.py).
"""
from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass

from cachefs.errors import FileTooLarge, NotOpenForWriting, ObjectChanged
from cachefs.meta.schema import Inode
from cachefs.namespace.attrs import S3_MAX_OBJECT_SIZE
from cachefs.namespace.attrview import AttributeView
from cachefs.namespace.core import Namespace
from cachefs.reader import BlockReader, ReadState
from cachefs.stats import Stats
from cachefs.writeback import Staged, StagingFull, Writeback

log = logging.getLogger(__name__)


@dataclass
class OpenFile:
    inode: Inode
    key: str
    state: ReadState
    staged: Staged | None = None     # set while the file's bytes are in staging
    writable: bool = False
    stale: bool = False              # another size of the object was opened since: reads get ESTALE


class Handles:
    def __init__(self, ns: Namespace, reader: BlockReader, wb: Writeback | None, view: AttributeView,
                 stats: Stats) -> None:
        self.ns = ns
        self.reader = reader
        self.wb = wb
        self.view = view
        self.stats = stats
        self._fh = itertools.count(1)           # file and directory handles alike
        self.files: dict[int, OpenFile] = {}
        # ino -> the handles reading its S3 version (no staging copy), by fh: the size the kernel is
        # told while they are open (fs.py attrs), which reads cannot go past
        self.reading: dict[int, dict[int, OpenFile]] = {}
        self.opened_etag: dict[int, str] = {}   # ino -> ETag whose bytes the page cache holds
        self.written: set[int] = set()          # inodes written through this mount
        self.utimed: set[int] = set()           # files whose kept mtime the next change clears
        view.on_copied = self._object_copied

    @property
    def _writeback(self) -> Writeback:
        """The write path: only reached where there is one (fs.py answers EROFS without it)."""
        assert self.wb is not None
        return self.wb

    def next_fh(self) -> int:
        return next(self._fh)

    def _object_copied(self, ino: int, old_etag: str, etag: str) -> None:
        """A metadata copy gave the object a new ETag (the same bytes): open handles read the new
        version, and the page cache stays good."""
        self.written.add(ino)
        if self.opened_etag.get(ino) == old_etag:
            self.opened_etag[ino] = etag

    def unlinked_open(self, ino: int) -> OpenFile | None:
        """An open file of this inode whose name is gone (unlink, or renamed over): its handles
        keep working on its staging copy, as POSIX says."""
        if self.wb is None:
            return None
        st = self.wb.files.get(ino)
        if st is None or not st.deleted:
            return None
        return next((f for f in self.files.values() if f.staged is st), None)

    # -- open and close ---------------------------------------------------------------------
    async def open(self, node: Inode, flags: int) -> tuple[int, bool]:
        """A handle on `node` (a file; the caller checked the mount is writable if `flags` write);
        returns it and whether the kernel may keep its page cache."""
        inode = node.ino
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        fh = self.next_fh()
        f = OpenFile(node, self.ns.key_of(node), ReadState(), writable=writable)
        if writable:
            trunc = bool(flags & os.O_TRUNC)
            shown = await self.view.pin(node)
            f.staged = await self._writeback.stage_existing(node, self.reader_of(node), truncate=trunc)
            if not f.staged.dirty:
                # the object's mtime metadata, not LastModified
                self._writeback.set_mtime(f.staged, shown.st_mtime_ns)
            self._writeback.opened(f.staged, writable)      # first: a truncate by a writer is not "closed"
            kept = self.ns.meta.get_attrs(inode)
            if kept is not None and kept[2]:
                self.utimed.add(inode)
            if trunc and (f.staged.size or node.size):
                # Emptied, even if staged empty from the start: S3 still holds the old bytes.
                try:
                    self._writeback.truncate(f.staged, 0)
                    await self.changed(inode)
                except BaseException:
                    self._writeback.closed(f.staged, writable)
                    raise
        else:
            f.staged = self.wb.get(inode) if self.wb is not None else None
            if f.staged is not None:
                self._writeback.opened(f.staged, writable)
        if f.staged is not None:
            self.opened_etag.pop(inode, None)
            self.files[fh] = f
            return fh, False
        self.files[fh] = f
        self._reading(fh, f)
        # Keep the page cache only if it holds this very version of the object.
        keep = self.opened_etag.get(inode) == node.etag
        self.opened_etag[inode] = node.etag
        if not keep:
            # Small files (and their neighbours) are fetched ahead. Not when the kernel keeps its
            # pages of this version: it reads them there (a warm epoch), and what it lacks comes
            # on demand from the cache tiers. Skipping it made warm opens ~15% cheaper (BENCHMARKS.md).
            self.reader.prefetch_file(node, f.key, self.ns)
        return fh, keep

    def created(self, node: Inode, staged: Staged, writable: bool) -> int:
        """A handle on a file create() just made."""
        self.written.add(node.ino)
        fh = self.next_fh()
        self.files[fh] = OpenFile(node, self.ns.key_of(node), ReadState(), staged, writable)
        self._writeback.opened(staged, writable)
        return fh

    def _reading(self, fh: int, f: OpenFile) -> None:
        """A handle on the S3 version `f.inode`: handles of the same file open on another size are
        made stale. The kernel holds one size per inode and cuts reads there, so while both were
        open one of them would read its version cut at the other's size (docs/SEMANTICS.md)."""
        open_ = self.reading.setdefault(f.inode.ino, {})
        for other in open_.values():
            if other.inode.size != f.inode.size:
                other.stale = True
        open_[fh] = f

    def open_size(self, ino: int) -> int | None:
        """The size of the version open (not stale) on `ino`, if any; None for a file written through
        this mount (its handles read its newest version: read() below)."""
        if ino in self.written:
            return None
        for f in self.reading.get(ino, {}).values():
            if not f.stale:
                return f.inode.size
        return None

    def release(self, fh: int) -> None:
        f = self.files.pop(fh, None)
        if f is not None and f.staged is not None:
            self._writeback.closed(f.staged, f.writable)
        elif f is not None:
            open_ = self.reading.get(f.inode.ino)
            if open_ is not None:
                open_.pop(fh, None)
                if not open_:
                    del self.reading[f.inode.ino]

    # -- reading and writing ----------------------------------------------------------------
    def reader_of(self, node: Inode):
        async def read_range(offset: int, size: int):
            return await self.reader.read(node, self.ns.key_of(node), offset, size, ReadState())
        return read_range

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        f = self.files[fh]
        self.stats.add("fuse_reads")
        staged = f.staged or (self.wb.get(f.inode.ino) if self.wb is not None else None)
        if staged is not None:
            data = self._writeback.read(staged, off, size)
        else:
            if f.inode.ino in self.written:        # uploaded since it was opened: its new version
                f.inode = self.ns.get(f.inode.ino)
            elif f.stale:
                raise ObjectChanged(f.key)
            try:
                data = await self.reader.read(f.inode, f.key, off, size, f.state)
            except ObjectChanged:
                await self.ns.refresh(f.inode)   # the next open sees the new version
                self.opened_etag.pop(f.inode.ino, None)
                raise
        self.stats.add("fuse_read_bytes", len(data))
        return data

    async def write(self, fh: int, off: int, buf) -> int:
        f = self.files[fh]
        if f.staged is None or not f.writable:
            raise NotOpenForWriting()
        if off + len(buf) > S3_MAX_OBJECT_SIZE:
            raise FileTooLarge(f"a write to {off + len(buf)} bytes: S3 holds at most 5 TiB an object")
        self.written.add(f.inode.ino)
        self.stats.add("fuse_writes")
        n = self._writeback.write(f.staged, off, buf)
        if f.inode.ino in self.utimed:
            await self.changed(f.inode.ino)
        return n

    async def changed(self, ino: int) -> None:
        """The file's content changed: a mtime kept from a utimens gives way to the change's."""
        self.utimed.discard(ino)
        kept = self.ns.meta.get_attrs(ino)
        if kept is not None and kept[2]:
            await self.ns.run_blocking(self.ns.meta.put_attrs, ino, kept[0], kept[1], 0)

    async def fsync(self, fh: int, upload: bool) -> bool:
        """False: asked to wait for S3 (`upload`), the file could not be brought there."""
        f = self.files.get(fh)
        if f is not None and f.staged is not None:
            return await self._writeback.fsync(f.staged, upload)
        return True

    async def truncate(self, node: Inode, size: int) -> None:
        """setattr's size change of a file (not unlinked): staged, then cut or extended."""
        inode = node.ino
        await self.view.pin(node)
        before = self._writeback.get(inode)
        staged = await self._writeback.stage_existing(node, self.reader_of(node), truncate=size == 0)
        self.written.add(inode)
        # A copy staged empty (truncate to 0) still differs from S3's if the object was not empty.
        if staged.size != size or (before is None and node.size != size):
            self._writeback.truncate(staged, size)
            await self.changed(inode)

    async def stage_open_readers(self, parent_inode: int, name: bytes) -> None:
        """A file open only for reading is copied into staging before its object is deleted, so
        that its handles can still read all of it (POSIX). If the staging area has no room, the
        handles read what the cache holds and get ENOENT for the rest."""
        node = await self.ns.lookup(parent_inode, name)
        if node is None or node.is_dir:
            return
        readers = [f for f in self.files.values() if f.inode.ino == node.ino and f.staged is None]
        if not readers:
            return
        try:       # staged already (by a writer opened after them), or copied now
            staged = await self._writeback.stage_existing(node, self.reader_of(node), truncate=False)
        except StagingFull as e:
            log.warning("unlink of %s while open: %s; its readers keep only what is cached", node.path, e)
            return
        for f in readers:
            f.staged = staged
            self._writeback.opened(staged, False)
