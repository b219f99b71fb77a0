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
from dataclasses import dataclass

import pyfuse3

from . import metrics
from .config import Config
from .errors import CachefsError, ObjectChanged, errno_for
from .meta.schema import Inode
from .namespace import NAME_MAX, Namespace
from .reader import BlockReader, ReadState
from .stats import Stats
from .tree import Tree
from .writeback import Staged, StagingFull, Writeback

log = logging.getLogger(__name__)

STATS_XATTR = b"user.cachefs.stats"
_UNCOUNTED_XATTR_NAMESPACES = (b"security.", b"system.")   # we keep none; the kernel and ls ask often
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
_DIR_LISTING_TTL = 3600.0 * 24   # a directory made here is complete until something lists it anew


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

    # -- attributes -------------------------------------------------------------------------
    def attrs(self, inode: Inode, unlinked: Staged | None = None) -> pyfuse3.EntryAttributes:
        """`unlinked`: the staging copy of a file unlinked while open (fstat still works, nlink 0)."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode.ino
        if self.wb is not None:
            inode = self.wb.overlay(inode, unlinked)
        if inode.is_dir:
            a.st_mode = stat.S_IFDIR | self.cfg.dir_mode
            a.st_nlink = 2
            mtime = self.started_ns
        else:
            a.st_mode = stat.S_IFREG | self.cfg.file_mode
            a.st_nlink = 1
            mtime = inode.mtime_ns
        atime = mtime
        if self.wb is not None:          # chmod / utimens / create recorded them
            kept = self.ns.meta.get_attrs(inode.ino)
            if kept is not None:
                a.st_mode = stat.S_IFMT(a.st_mode) | kept[0]
                atime = kept[1]
                if inode.is_dir or kept[2]:
                    # A file's mtime is its object's (or staged copy's), unless a utimens set it
                    # since its last change (kept[2] != 0): a new listing must not undo that.
                    mtime = kept[2]
        if unlinked is not None:
            a.st_nlink = 0
        a.st_size = inode.size
        a.st_blocks = -(-inode.size // 512)
        a.st_blksize = 128 * 1024   # stdio buffer hint; the kernel splits reads itself
        a.st_uid = self.cfg.uid
        a.st_gid = self.cfg.gid
        a.st_atime_ns = atime
        a.st_mtime_ns = a.st_ctime_ns = mtime
        a.entry_timeout = self.cfg.entry_timeout
        a.attr_timeout = self.cfg.attr_timeout
        return a

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
            f.staged = await self.wb.stage_existing(node, self._reader_of(node), truncate=trunc)
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
        self._written.add(node.ino)
        fh = next(self._fh)
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        self._files[fh] = OpenFile(node, self.ns.key_of(node), ReadState(), staged, writable)
        self.wb.opened(staged, writable)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=False), self.attrs(node)

    @fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        node = await self._writable().mkdir(parent_inode, name, mode & ~ctx.umask, _DIR_LISTING_TTL)
        return self.attrs(node)

    @fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        """A regular file: an empty one, as create + close would make. Anything else: EPERM, as
        POSIX says for a filesystem that cannot hold it (S3 has no devices, FIFOs or sockets)."""
        tree = self._writable()
        if not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        node, staged = await tree.create(parent_inode, name, mode & ~ctx.umask)
        self._written.add(node.ino)
        self.wb.opened(staged, True)
        self.wb.closed(staged, True)          # the last writer's close: due for upload now
        return self.attrs(node)

    @fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        self._writable()
        raise pyfuse3.FUSEError(errno.EPERM)      # S3 has nothing to hold a link (link(2), symlink(2))

    @fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._writable()
        raise pyfuse3.FUSEError(errno.EPERM)

    @fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        await self._writable().rmdir(parent_inode, name)

    @fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        tree = self._writable()
        await self._stage_open_readers(parent_inode, name)
        await tree.unlink(parent_inode, name)

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

    @fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        self._writable()
        if (fields.update_uid and attr.st_uid != self.cfg.uid) or (fields.update_gid and attr.st_gid != self.cfg.gid):
            raise pyfuse3.FUSEError(errno.EPERM)      # one owner for the whole mount
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
            before = self.wb.get(inode)
            staged = await self.wb.stage_existing(node, self._reader_of(node), truncate=attr.st_size == 0)
            self._written.add(inode)
            # A copy staged empty (truncate to 0) still differs from S3's if the object was not empty.
            if staged.size != attr.st_size or (before is None and node.size != attr.st_size):
                self.wb.truncate(staged, attr.st_size)
                await self._changed(inode)
        if fields.update_mode or fields.update_atime or fields.update_mtime:
            current = self.attrs(node)
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
        return self.attrs(self.ns.get(inode))

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
