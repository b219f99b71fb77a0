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
from .namespace import Namespace
from .reader import BlockReader, ReadState
from .stats import Stats

log = logging.getLogger(__name__)

STATS_XATTR = b"user.cachefs.stats"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


def fuse_errors(fn):
    """The errno boundary: domain errors become their errno; anything unexpected is logged, EIO.
    Also where every operation is counted and timed (one histogram observation per request)."""
    op = fn.__name__
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
        except Exception:
            log.exception("unexpected error in %s", op)
            raise _failed(op, errno.EIO) from None
        finally:
            observe(time.perf_counter() - start)
    return wrapper


def _failed(op: str, err: int) -> pyfuse3.FUSEError:
    metrics.count_fuse_error(op, err)
    return pyfuse3.FUSEError(err)


@dataclass
class OpenFile:
    inode: Inode
    key: str
    state: ReadState


class CachefsOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, namespace: Namespace, reader: BlockReader, cfg: Config, stats: Stats,
                 stats_extra=None) -> None:
        super().__init__()
        self.ns = namespace
        self.reader = reader
        self.cfg = cfg
        self.stats = stats
        self.stats_extra = stats_extra or (lambda: {})
        self.started_ns = time.time_ns()
        self._fh = itertools.count(1)
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, list[tuple[bytes, Inode]]] = {}
        self._opened_etag: dict[int, str] = {}   # ino -> ETag whose bytes the page cache holds

    # -- attributes -------------------------------------------------------------------------
    def attrs(self, inode: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode.ino
        if inode.is_dir:
            a.st_mode = stat.S_IFDIR | self.cfg.dir_mode
            a.st_nlink = 2
            mtime = self.started_ns
        else:
            a.st_mode = stat.S_IFREG | self.cfg.file_mode
            a.st_nlink = 1
            mtime = inode.mtime_ns
        a.st_size = inode.size
        a.st_blocks = -(-inode.size // 512)
        a.st_blksize = 128 * 1024   # stdio buffer hint; the kernel splits reads itself
        a.st_uid = self.cfg.uid
        a.st_gid = self.cfg.gid
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = mtime
        a.entry_timeout = self.cfg.entry_timeout
        a.attr_timeout = self.cfg.attr_timeout
        return a

    @fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        inode = await self.ns.lookup(parent_inode, name)
        if inode is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0              # a cacheable "no such entry"
            negative.entry_timeout = self.cfg.negative_ttl
            return negative
        return self.attrs(inode)

    @fuse_errors
    async def getattr(self, inode, ctx=None):
        return self.attrs(self.ns.get(inode))

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
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self.ns.get(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        fh = next(self._fh)
        self._files[fh] = OpenFile(node, self.ns.key_of(node), ReadState())
        # Keep the page cache only if it holds this very version of the object.
        keep = self._opened_etag.get(inode) == node.etag
        self._opened_etag[inode] = node.etag
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=False)

    @fuse_errors
    async def read(self, fh, off, size):
        f = self._files[fh]
        self.stats.add("fuse_reads")
        try:
            data = await self.reader.read(f.inode, f.key, off, size, f.state)
        except ObjectChanged:
            await self.ns.refresh(f.inode)   # the next open sees the new version
            self._opened_etag.pop(f.inode.ino, None)
            raise
        self.stats.add("fuse_read_bytes", len(data))
        return data

    async def release(self, fh):
        self._files.pop(fh, None)

    # -- extended attributes ----------------------------------------------------------------
    @fuse_errors
    async def getxattr(self, inode, name, ctx):
        if inode == pyfuse3.ROOT_INODE and name == STATS_XATTR:
            return json.dumps({**self.stats.snapshot(), **self.stats_extra()}, sort_keys=True).encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @fuse_errors
    async def listxattr(self, inode, ctx):
        return [STATS_XATTR] if inode == pyfuse3.ROOT_INODE else []
