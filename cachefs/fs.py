"""pyfuse3 Operations: translation only, and the one place domain errors become errno.

Inode numbers are persistent (LMDB) and never reused, so the kernel's lookup counts need no
bookkeeping here: forget() has nothing to free.
"""
from __future__ import annotations

import errno
import functools
import itertools
import json
import logging
import os
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass

import pyfuse3
import trio

from cachefs import metrics, supervise

from cachefs.namespace import attrs as posixmeta
from cachefs.config import Config
from cachefs.errors import CachefsError, FsError, ObjectChanged, ObjectNotFound, errno_for
from cachefs.namespace.links import make_symlink
from cachefs.meta.schema import Inode
from cachefs.namespace.core import NAME_MAX, Namespace
from cachefs.namespace.attrs import NO_META, S3_MAX_OBJECT_SIZE, ObjMeta
from cachefs.reader import BlockReader, ReadState
from cachefs.stats import Stats
from cachefs.namespace.changes import Tree
from cachefs.writeback import Staged, StagingFull, Writeback

log = logging.getLogger(__name__)

STATS_XATTR = b"user.cachefs.stats"
_UNCOUNTED_XATTR_NAMESPACES = (b"security.", b"system.")   # we keep none; the kernel and ls ask often
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
_DIR_LISTING_TTL = 3600.0 * 24   # a directory made here is complete until something lists it anew
# A chmod/chown/utimens during an upload of the file waits for it (the upload's metadata was taken
# when it started), then copies the object with the new metadata; past this, the change stays local
# until the file's next upload.
_UPLOAD_WAIT_S = 60.0
# Files whose last upload's metadata is remembered, so that a chmod/chown/utimens right after it
# that changes nothing (`cp -a`, `rsync -a`) costs no copy: more than a burst of such a copy has
# files closed and not yet given their attributes.
_UPLOADED_META_KEPT = 4096
# How often a metadata change waiting for a large file's upload (an early multipart session) looks.
_AFTER_UPLOAD_POLL_S = 0.5


def fuse_errors(fn=None, *, op: str | None = None):
    """The errno boundary: domain errors become their errno; anything unexpected is logged, EIO.
    Also where every operation is counted and timed (one histogram observation per request), under
    `op` (default: the function's name)."""
    if fn is None:
        return functools.partial(fuse_errors, op=op)
    op = op or fn.__name__
    observe = metrics.fuse_op_timer(op)

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError as e:
            metrics.count_fuse_error(op, e.errno)
            raise
        except CachefsError as e:
            log.warning("%s: %s", op, e)
            raise _failed(op, errno_for(e)) from None
        except OSError as e:
            log.warning("%s: %s", op, e)
            raise _failed(op, errno_for(e)) from None
        except ExceptionGroup as group:      # from a nursery (a read spanning several blocks)
            first = _first_leaf(group)
            if not isinstance(first, (CachefsError, OSError)):
                log.exception("unexpected error in %s", op)
                raise _failed(op, errno.EIO) from None
            log.warning("%s: %s", op, first)
            raise _failed(op, errno_for(first)) from None
        except Exception:
            log.exception("unexpected error in %s", op)
            raise _failed(op, errno.EIO) from None
        finally:
            observe(time.perf_counter() - start)
    return wrapper


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _failed(op: str, err: int) -> pyfuse3.FUSEError:
    metrics.count_fuse_error(op, err)
    return pyfuse3.FUSEError(err)


@dataclass
class OpenFile:
    inode: Inode
    key: str
    state: ReadState
    staged: Staged | None = None     # set while the file's bytes are in staging
    writable: bool = False


class CachefsOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, namespace: Namespace, reader: BlockReader, cfg: Config, stats: Stats,
                 stats_extra=None, writeback: Writeback | None = None) -> None:
        super().__init__()
        self.ns = namespace
        self.reader = reader
        self.wb = writeback
        self.tree = Tree(namespace, writeback) if writeback is not None else None
        self.cfg = cfg
        self.stats = stats
        self.stats_extra = stats_extra or (lambda: {})
        self.started_ns = time.time_ns()
        self._fh = itertools.count(1)
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, list[tuple[bytes, Inode]]] = {}
        self._opened_etag: dict[int, str] = {}   # ino -> ETag whose bytes the page cache holds
        self._written: set[int] = set()           # inodes written through this mount
        self._utimed: set[int] = set()            # files whose kept mtime the next change clears
        self._meta_locks: dict[int, trio.Lock] = {}   # one metadata copy at a time per file
        self._store_waiting: set[int] = set()         # files whose metadata copy waits for their upload
        # What the latest upload of a file carried, for the most recent _UPLOADED_META_KEPT files.
        self._uploaded_meta: OrderedDict[int, dict[str, str]] = OrderedDict()
        if writeback is not None:
            writeback.metadata_for = self._upload_metadata
            writeback.on_uploaded = self._record_uploaded_metadata

    # -- attributes -------------------------------------------------------------------------
    def _objmeta(self, inode: Inode, known: tuple[str, ObjMeta] | None | bool = False) -> ObjMeta:
        """What the object's x-amz-meta-* said, if known for the version S3 holds now; for a
        directory, what its marker's said when it was last listed. `known`: the record, if read."""
        if not inode.is_dir and not inode.etag:
            return NO_META
        if known is False:
            known = self.ns.meta.get_objmeta(inode.ino)
        if known is None:
            return NO_META
        return known[1] if inode.is_dir or known[0] == inode.etag else NO_META

    def attrs(self, inode: Inode, unlinked: Staged | None = None) -> pyfuse3.EntryAttributes:
        """`unlinked`: the staging copy of a file unlinked while open (fstat still works, nlink 0).

        Each attribute comes from the first that has it: what was set through this mount (LMDB
        `attrs` and `owners`), the object's x-amz-meta-* (`objmeta`, for the version S3 holds now),
        the mount's defaults (--uid, --gid, --file-mode, --dir-mode; the object's LastModified)."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode.ino
        staged = unlinked
        if self.wb is not None:
            staged = staged or self.wb.get(inode.ino)
            inode = self.wb.overlay(inode, unlinked)
        meta = self.ns.meta
        kept, owner, known = meta.attributes(inode.ino)
        om = self._objmeta(inode, known)
        uid, gid = self.cfg.uid, self.cfg.gid
        if inode.is_dir:
            ftype = stat.S_IFDIR
            perm = om.perm if om.perm is not None else self.cfg.dir_mode
            a.st_nlink = 2 + meta.subdirs(inode.ino)
            mtime = om.mtime_ns if om.mtime_ns >= 0 else self.started_ns
        else:
            ftype = stat.S_IFLNK if om.is_link else stat.S_IFREG
            perm = om.perm if om.perm is not None else self.cfg.file_mode
            a.st_nlink = 1
            # A staging copy's time is the file's (its last write); else the object's mtime metadata.
            mtime = om.mtime_ns if om.mtime_ns >= 0 and staged is None else inode.mtime_ns
        if not self.cfg.single_owner:
            uid = om.uid if om.uid >= 0 else uid
            gid = om.gid if om.gid >= 0 else gid
        atime = mtime
        if kept is not None:                   # chmod / utimens / create recorded them here
            perm = kept[0]
            atime = kept[1]
            if inode.is_dir or kept[2]:
                # A file's mtime is its object's (or staged copy's), unless a utimens set it
                # since its last change (kept[2] != 0): a new listing must not undo that.
                mtime = kept[2]
        ctime = mtime
        if owner is not None:                  # chown / create recorded them here
            if not self.cfg.single_owner:
                uid = owner[0] if owner[0] >= 0 else uid
                gid = owner[1] if owner[1] >= 0 else gid
            ctime = max(ctime, owner[2])
        if unlinked is not None:
            a.st_nlink = 0
        a.st_mode = ftype | perm
        a.st_size = inode.size
        a.st_blocks = -(-inode.size // 512)
        a.st_blksize = 128 * 1024   # stdio buffer hint; the kernel splits reads itself
        a.st_uid = uid
        a.st_gid = gid
        a.st_atime_ns = atime
        a.st_mtime_ns = mtime
        a.st_ctime_ns = ctime
        a.entry_timeout = self.cfg.entry_timeout
        a.attr_timeout = self.cfg.attr_timeout
        return a

    def object_metadata(self, ino: int) -> dict[str, str]:
        """The x-amz-meta-* an upload of this file carries: the attributes the mount shows."""
        inode = self.ns.meta.get_inode(ino)
        if inode is None:
            return {}
        a = self.attrs(inode)
        return posixmeta.encode(a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns)

    def _upload_metadata(self, ino: int) -> dict[str, str]:
        wanted = self.object_metadata(ino)
        st = self.wb.files.get(ino)
        if st is not None and not st.uploading:
            # A multipart session opened early, while the file is still being written: its final
            # mtime is not known yet, and S3's LastModified (the completion) is closer than now.
            wanted.pop(posixmeta.MTIME, None)
        self._uploaded_meta[ino] = wanted
        self._uploaded_meta.move_to_end(ino)
        if len(self._uploaded_meta) > _UPLOADED_META_KEPT:
            self._uploaded_meta.popitem(last=False)
        return wanted

    def _record_uploaded_metadata(self, ino: int, etag: str) -> None:
        """S3 holds this file's version `etag` with the metadata its upload carried: recorded, so
        that after a remount the attributes are those (fsrand found an empty file's upload showing
        an older empty version's mtime: both have the same ETag)."""
        wanted = self._uploaded_meta.get(ino)
        if wanted:
            self.ns.meta.put_objmeta(ino, etag, posixmeta.parse(wanted))

    def _in_s3_already(self, node: Inode, wanted: dict[str, str]) -> bool:
        """S3's version of the file (node.etag) carries `wanted` already: no copy needed (`cp -a`
        and `rsync -a` set owner and mode a file already has)."""
        st = self.wb.get(node.ino)
        if st is not None and st.etag == node.etag and self._uploaded_meta.get(node.ino) == wanted:
            return True              # uploaded from here with these attributes
        om = self._objmeta(node)
        return (om.mode > 0 and min(om.uid, om.gid, om.mtime_ns) >= 0
                and posixmeta.encode(om.mode, om.uid, om.gid, om.mtime_ns) == wanted)

    @fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        inode = await self.ns.lookup(parent_inode, name)
        if inode is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0              # a cacheable "no such entry"
            negative.entry_timeout = self.cfg.negative_ttl
            return negative
        return self.attrs(inode)

    @fuse_errors
    async def getattr(self, inode, ctx=None):
        f = self._unlinked_open(inode)
        if f is not None:
            return self.attrs(f.inode, f.staged)
        return self.attrs(self.ns.get(inode))

    def _unlinked_open(self, ino: int) -> OpenFile | None:
        """An open file of this inode whose name is gone (unlink, or renamed over): its handles
        keep working on its staging copy, as POSIX says."""
        if self.wb is None:
            return None
        st = self.wb.files.get(ino)
        if st is None or not st.deleted:
            return None
        return next((f for f in self._files.values() if f.staged is st), None)

    async def forget(self, inode_list):
        pass

    @fuse_errors
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = self.cfg.block_size
        s.f_frsize = 4096
        # An object store has no fixed size; report a large, stable figure so tools do not refuse.
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 40
        s.f_files = s.f_ffree = s.f_favail = 1 << 32
        s.f_namemax = 255
        return s

    # -- directories ------------------------------------------------------------------------
    @fuse_errors
    async def opendir(self, inode, ctx):
        entries = await self.ns.entries(inode)
        fh = next(self._fh)
        self._dirs[fh] = entries
        return fh

    @fuse_errors
    async def readdir(self, fh, start_id, token):
        entries = self._dirs[fh]
        for i in range(start_id, len(entries)):
            name, inode = entries[i]
            if not pyfuse3.readdir_reply(token, name, self.attrs(inode), i + 1):
                break

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    # -- files ------------------------------------------------------------------------------
    @fuse_errors
    async def open(self, inode, flags, ctx):
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        if flags & _WRITE_FLAGS and (self.wb is None or self.cfg.read_only):
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self.ns.get(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        fh = next(self._fh)
        f = OpenFile(node, self.ns.key_of(node), ReadState(), writable=writable)
        if writable:
            trunc = bool(flags & os.O_TRUNC)
            shown = await self._pin_attrs(node)
            f.staged = await self.wb.stage_existing(node, self._reader_of(node), truncate=trunc)
            if not f.staged.dirty:
                f.staged.mtime_ns = shown.st_mtime_ns    # the object's mtime metadata, not LastModified
            self.wb.opened(f.staged, writable)      # first: a truncate by a writer is not "closed"
            kept = self.ns.meta.get_attrs(inode)
            if kept is not None and kept[2]:
                self._utimed.add(inode)
            if trunc and (f.staged.size or node.size):
                # Emptied, even if staged empty from the start: S3 still holds the old bytes.
                try:
                    self.wb.truncate(f.staged, 0)
                    await self._changed(inode)
                except BaseException:
                    self.wb.closed(f.staged, writable)
                    raise
        else:
            f.staged = self.wb.get(inode) if self.wb is not None else None
            if f.staged is not None:
                self.wb.opened(f.staged, writable)
        if f.staged is not None:
            self._opened_etag.pop(inode, None)
            self._files[fh] = f
            return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=False)
        self._files[fh] = f
        # Keep the page cache only if it holds this very version of the object.
        keep = self._opened_etag.get(inode) == node.etag
        self._opened_etag[inode] = node.etag
        if not keep:
            # Small files (and their neighbours) are fetched ahead. Not when the kernel keeps its
            # pages of this version: it reads them there (a warm epoch), and what it lacks comes
            # on demand from the cache tiers. Skipping it made warm opens ~15% cheaper (BENCHMARKS.md).
            self.reader.prefetch_file(node, f.key, self.ns)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=False)

    async def _pin_attrs(self, node: Inode) -> pyfuse3.EntryAttributes:
        """Before a file is staged: record here the mode and owner its object's metadata gives, so
        that they outlive the version they came with (the upload carries them on)."""
        shown = self.attrs(node)
        om = self._objmeta(node)
        meta = self.ns.meta
        if om.uid >= 0 or om.gid >= 0:
            if meta.get_owner(node.ino) is None:
                await self.ns.run_blocking(meta.put_owner, node.ino, shown.st_uid, shown.st_gid, -1)
        if om.perm is not None and meta.get_attrs(node.ino) is None:
            await self.ns.run_blocking(meta.put_attrs, node.ino, stat.S_IMODE(shown.st_mode), shown.st_atime_ns, 0)
        return shown

    def _reader_of(self, node: Inode):
        async def read_range(offset: int, size: int):
            return await self.reader.read(node, self.ns.key_of(node), offset, size, ReadState())
        return read_range

    @fuse_errors
    async def read(self, fh, off, size):
        f = self._files[fh]
        self.stats.add("fuse_reads")
        staged = f.staged or (self.wb.get(f.inode.ino) if self.wb is not None else None)
        if staged is not None:
            data = self.wb.read(staged, off, size)
        else:
            if f.inode.ino in self._written:        # uploaded since it was opened: its new version
                f.inode = self.ns.get(f.inode.ino)
            try:
                data = await self.reader.read(f.inode, f.key, off, size, f.state)
            except ObjectChanged:
                await self.ns.refresh(f.inode)   # the next open sees the new version
                self._opened_etag.pop(f.inode.ino, None)
                raise
        self.stats.add("fuse_read_bytes", len(data))
        return data

    @fuse_errors
    async def release(self, fh):      # decorated: an exception here would end pyfuse3's main loop
        f = self._files.pop(fh, None)
        if f is not None and f.staged is not None:
            self.wb.closed(f.staged, f.writable)

    # -- writing ----------------------------------------------------------------------------
    def _writable(self) -> Tree:
        if self.tree is None or self.cfg.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        return self.tree

    @fuse_errors
    async def write(self, fh, off, buf):
        f = self._files[fh]
        if f.staged is None or not f.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        if off + len(buf) > S3_MAX_OBJECT_SIZE:
            raise FsError(errno.EFBIG, f"a write to {off + len(buf)} bytes: S3 holds at most 5 TiB an object")
        self._written.add(f.inode.ino)
        self.stats.add("fuse_writes")
        n = self.wb.write(f.staged, off, buf)
        if f.inode.ino in self._utimed:
            await self._changed(f.inode.ino)
        return n

    async def _changed(self, ino: int) -> None:
        """The file's content changed: a mtime kept from a utimens gives way to the change's."""
        self._utimed.discard(ino)
        kept = self.ns.meta.get_attrs(ino)
        if kept is not None and kept[2]:
            await self.ns.run_blocking(self.ns.meta.put_attrs, ino, kept[0], kept[1], 0)

    async def flush(self, fh):
        # Nothing to do at close(2) (uploads follow the schedule, docs/SEMANTICS.md), and the
        # kernel waits for FLUSH before close returns: ENOSYS once tells it never to send one again,
        # which takes a round trip through the daemon off every close (small-file epochs).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @fuse_errors
    async def fsync(self, fh, datasync):
        f = self._files.get(fh)
        if f is not None and f.staged is not None:
            if not await self.wb.fsync(f.staged, self.cfg.fsync_upload):
                raise pyfuse3.FUSEError(errno.EIO)

    @fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        tree = self._writable()
        node, staged = await tree.create(parent_inode, name, mode & ~ctx.umask)
        await self._owned_by(node.ino, parent_inode, ctx)
        await self._dir_changed(parent_inode)
        self._written.add(node.ino)
        fh = next(self._fh)
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        self._files[fh] = OpenFile(node, self.ns.key_of(node), ReadState(), staged, writable)
        self.wb.opened(staged, writable)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=False), self.attrs(node)

    @fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        node = await self._writable().mkdir(parent_inode, name, mode & ~ctx.umask, _DIR_LISTING_TTL)
        await self._owned_by(node.ino, parent_inode, ctx)
        await self._dir_changed(parent_inode)
        await self._store_dir_attrs(node)   # not the defaults: the marker made without them, once more
        return self.attrs(node)

    @fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        """A regular file: an empty one, as create + close would make. Anything else: EPERM, as
        POSIX says for a filesystem that cannot hold it (S3 has no devices, FIFOs or sockets)."""
        tree = self._writable()
        if not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        node, staged = await tree.create(parent_inode, name, mode & ~ctx.umask)
        await self._owned_by(node.ino, parent_inode, ctx)
        await self._dir_changed(parent_inode)
        self._written.add(node.ino)
        self.wb.opened(staged, True)
        self.wb.closed(staged, True)          # the last writer's close: due for upload now
        return self.attrs(node)

    async def _owned_by(self, ino: int, parent_ino: int, ctx) -> None:
        """A new file or directory belongs to its creator, and to its directory's group if that
        is set-group-ID (POSIX); with --single-owner to the mount's owner."""
        if self.cfg.single_owner:
            return
        gid = ctx.gid
        parent = self.attrs(self.ns.get(parent_ino))
        if parent.st_mode & stat.S_ISGID:
            gid = parent.st_gid
        await self.ns.run_blocking(self.ns.meta.put_owner, ino, ctx.uid, gid, time.time_ns())

    async def _dir_changed(self, *inos: int) -> None:
        """An entry was added to or removed from these directories: their mtime and ctime are now."""
        meta = self.ns.meta
        now = time.time_ns()
        for ino in dict.fromkeys(inos):
            kept = meta.get_attrs(ino)
            if kept is None:
                shown = self.attrs(self.ns.get(ino))
                kept = (stat.S_IMODE(shown.st_mode), shown.st_atime_ns, now)
            await self.ns.run_blocking(meta.put_attrs, ino, kept[0], kept[1], now)
            owner = meta.get_owner(ino) or (-1, -1, now)
            await self.ns.run_blocking(meta.put_owner, ino, owner[0], owner[1], now)

    @fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        """An object whose body is the target and whose x-amz-meta-mode has S_IFLNK (as s3fs
        stores one), PUT at once like a directory's marker."""
        self._writable()
        uid, gid = (self.cfg.uid, self.cfg.gid) if self.cfg.single_owner else (ctx.uid, ctx.gid)
        node = await make_symlink(self.ns, parent_inode, name, target, uid, gid)
        await self._dir_changed(parent_inode)
        return self.attrs(node)

    @fuse_errors
    async def readlink(self, inode, ctx):
        node = self.ns.get(inode)
        om = self._objmeta(node)
        if not om.is_link:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if om.target is None:         # learned from a HEAD: the target is the object's body
            target = await self.reader.read(node, self.ns.key_of(node), 0, node.size, ReadState())
            om = om.with_target(bytes(target))
            await self.ns.run_blocking(self.ns.meta.put_objmeta, inode, node.etag, om)
        return om.target

    @fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        """EPERM: S3 has nothing that could make two names one object (POSIX's answer for a
        filesystem that does not support hard links)."""
        self._writable()
        raise pyfuse3.FUSEError(errno.EPERM)

    @fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        await self._writable().rmdir(parent_inode, name)
        await self._dir_changed(parent_inode)

    @fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        tree = self._writable()
        await self._stage_open_readers(parent_inode, name)
        await tree.unlink(parent_inode, name)
        await self._dir_changed(parent_inode)

    async def _stage_open_readers(self, parent_inode: int, name: bytes) -> None:
        """A file open only for reading is copied into staging before its object is deleted, so
        that its handles can still read all of it (POSIX). If the staging area has no room, the
        handles read what the cache holds and get ENOENT for the rest."""
        node = await self.ns.lookup(parent_inode, name)
        if node is None or node.is_dir:
            return
        readers = [f for f in self._files.values() if f.inode.ino == node.ino and f.staged is None]
        if not readers:
            return
        try:       # staged already (by a writer opened after them), or copied now
            staged = await self.wb.stage_existing(node, self._reader_of(node), truncate=False)
        except StagingFull as e:
            log.warning("unlink of %s while open: %s; its readers keep only what is cached", node.path, e)
            return
        for f in readers:
            f.staged = staged
            self.wb.opened(staged, False)

    @fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        tree = self._writable()
        if not flags:          # a file replaced while open for reading stays readable, as on unlink
            await self._stage_open_readers(parent_inode_new, name_new)
        await tree.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
        await self._dir_changed(parent_inode_old, parent_inode_new)

    @fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        self._writable()
        chown = fields.update_uid or fields.update_gid
        if chown and self.cfg.single_owner and (
                (fields.update_uid and attr.st_uid != self.cfg.uid) or (fields.update_gid and attr.st_gid != self.cfg.gid)):
            raise pyfuse3.FUSEError(errno.EPERM)      # --single-owner: one owner for the whole mount
        if fields.update_size and attr.st_size > S3_MAX_OBJECT_SIZE:
            raise FsError(errno.EFBIG, f"truncate to {attr.st_size} bytes: S3 holds at most 5 TiB an object")
        gone = self._unlinked_open(inode)
        if gone is not None:      # only its staging copy is left: size and mtime live there
            if fields.update_size:
                self.wb.truncate(gone.staged, attr.st_size)
            if fields.update_mtime:
                gone.staged.mtime_ns = attr.st_mtime_ns
            return self.attrs(gone.inode, gone.staged)
        node = self.ns.get(inode)
        if fields.update_size:
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            await self._pin_attrs(node)
            before = self.wb.get(inode)
            staged = await self.wb.stage_existing(node, self._reader_of(node), truncate=attr.st_size == 0)
            self._written.add(inode)
            # A copy staged empty (truncate to 0) still differs from S3's if the object was not empty.
            if staged.size != attr.st_size or (before is None and node.size != attr.st_size):
                self.wb.truncate(staged, attr.st_size)
                await self._changed(inode)
        current = self.attrs(node)
        if fields.update_mode or fields.update_atime or fields.update_mtime:
            mode = stat.S_IMODE(attr.st_mode if fields.update_mode else current.st_mode)
            atime = attr.st_atime_ns if fields.update_atime else current.st_atime_ns
            if fields.update_mtime or node.is_dir:
                mtime = attr.st_mtime_ns if fields.update_mtime else current.st_mtime_ns
            else:                           # a file keeps following its content (0), or its utimens
                kept = self.ns.meta.get_attrs(inode)
                mtime = kept[2] if kept is not None else 0
            if fields.update_mtime and not node.is_dir:
                self._utimed.add(inode)
            staged = self.wb.get(inode)
            if staged is not None and fields.update_mtime:
                staged.mtime_ns = mtime
            elif fields.update_mtime and not node.is_dir:
                await self.ns.run_blocking(self.ns.meta.set_file, inode, node.size, node.etag, mtime)
            await self.ns.run_blocking(self.ns.meta.put_attrs, inode, mode, atime, mtime)
        if chown or fields.update_mode:          # a change of the inode itself: ctime
            uid = attr.st_uid if fields.update_uid else current.st_uid
            gid = attr.st_gid if fields.update_gid else current.st_gid
            if self.cfg.single_owner:
                uid, gid = -1, -1
            await self.ns.run_blocking(self.ns.meta.put_owner, inode, uid, gid, time.time_ns())
        if node.is_dir and (chown or fields.update_mode) and node.path:
            await self._store_dir_attrs(node)
        elif not node.is_dir and (chown or fields.update_mode or fields.update_mtime):
            await self._store_attrs(inode)
        return self.attrs(self.ns.get(inode))

    async def _store_attrs(self, ino: int) -> None:
        """Bring the object's x-amz-meta-* in line with the attributes the file shows. A file with
        changes still to upload needs nothing: its upload carries them. An object already in S3
        is copied onto itself with the new metadata (one CopyObject; a new ETag, recorded here so
        that the file does not become ESTALE; docs/SEMANTICS.md)."""
        lock = self._meta_locks.setdefault(ino, trio.Lock())
        try:
            async with lock:
                st = self.wb.get(ino)
                if st is not None and st.uploading:
                    # Its metadata was taken when the upload started: wait for it, then see.
                    await self.wb.wait_uploaded(st, time.monotonic() + _UPLOAD_WAIT_S)
                    st = self.wb.get(ino)
                if st is not None and (st.dirty or st.uploading):
                    if st.session is not None:
                        # A multipart session opened early carries the attributes of its start:
                        # the copy follows the upload that completes it.
                        self._store_after_upload(ino)
                    return                  # else the next upload carries the attributes
                node = self.ns.get(ino)
                if not node.etag:
                    return                  # not in S3 (yet)
                wanted = self.object_metadata(ino)
                if self._in_s3_already(node, wanted):
                    return
                target = self._objmeta(node).target
                old_etag = node.etag
                etag = await self.ns.run_blocking(self.ns.store.replace_metadata, self.ns.key_of(node), wanted,
                                                  node.size, old_etag)
                self.stats.add("metadata_copies")
                om = posixmeta.parse(wanted)
                self.ns.meta.put_objmeta(ino, etag, om.with_target(target) if target is not None else om)
                # Both at once (no await between): a staging copy kept after its upload is only good
                # while its ETag is the inode's, and it still holds the bytes S3 has.
                st = self.wb.get(ino)
                self.ns.meta.set_file(ino, node.size, etag, node.mtime_ns)
                if st is not None:
                    st.etag = etag
                self._written.add(ino)      # open handles read the new version (the same bytes)
                if self._opened_etag.get(ino) == old_etag:
                    self._opened_etag[ino] = etag    # and the page cache stays good
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._meta_locks.pop(ino, None)

    async def _store_dir_attrs(self, node: Inode) -> None:
        """A directory's mode and owner go on its `dir/` marker (as s3fs keeps them): a PUT of the
        empty marker with them, which also makes one for a directory that had none (harmless).
        Its mtime is left out: it changes with every entry made in it, and would cost a request each."""
        a = self.attrs(node)
        wanted = posixmeta.encode(a.st_mode, a.st_uid, a.st_gid, 0)
        del wanted[posixmeta.MTIME]
        known = self.ns.meta.get_objmeta(node.ino)
        if known is not None:
            om = known[1]
            held = (stat.S_IMODE(om.mode), om.uid, om.gid) if om.mode else None
        else:                         # a marker without metadata, or none: the defaults everywhere
            held = (self.cfg.dir_mode, self.cfg.uid, self.cfg.gid)
        if held == (stat.S_IMODE(a.st_mode), a.st_uid, a.st_gid):
            return                    # S3 holds these already (`cp -a`, `tar -x` set them again)
        etag = await self.ns.run_blocking(self.ns.store.put_object, self.ns.dir_prefix(node), b"", wanted)
        self.stats.add("metadata_copies")
        await self.ns.run_blocking(self.ns.meta.put_objmeta, node.ino, etag, posixmeta.parse(wanted))

    def _store_after_upload(self, ino: int) -> None:
        if ino in self._store_waiting:
            return
        self._store_waiting.add(ino)
        what = f"metadata of inode {ino} after its upload"
        trio.lowlevel.spawn_system_task(functools.partial(supervise.supervised, "upload", self._wait_and_store, ino,
                                                          what=what), name=f"cachefs {what}")

    async def _wait_and_store(self, ino: int) -> None:
        """Once the file's upload is done (nothing pending), give the object the attributes the
        file shows. If the daemon stops first, they stay in this node's LMDB only."""
        try:
            while True:
                await trio.sleep(_AFTER_UPLOAD_POLL_S)
                st = self.wb.files.get(ino)
                if st is None or st.deleted:
                    return
                if not st.dirty and not st.uploading:
                    break
            await self._store_attrs(ino)
        except ObjectNotFound:
            pass                            # unlinked meanwhile
        finally:
            self._store_waiting.discard(ino)

    # -- extended attributes ----------------------------------------------------------------
    async def getxattr(self, inode, name, ctx):
        # `ls -l` asks every entry for security.selinux and system.posix_acl_access, and FUSE sends
        # both here (answering ENOSYS would stop the kernel asking for any xattr, the stats one
        # too). Such names go back at once, without the timing and error counting of fuse_errors:
        # with it a warm `ls -lR` took a quarter longer (docs/BENCHMARKS.md).
        if name.startswith(_UNCOUNTED_XATTR_NAMESPACES):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return await self._getxattr(inode, name)

    @fuse_errors(op="getxattr")
    async def _getxattr(self, inode, name):
        if inode == pyfuse3.ROOT_INODE and name == STATS_XATTR:
            return json.dumps({**self.stats.snapshot(), **self.stats_extra()}, sort_keys=True).encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @fuse_errors
    async def listxattr(self, inode, ctx):
        return [STATS_XATTR] if inode == pyfuse3.ROOT_INODE else []
