"""pyfuse3 Operations: translation only, and the one place domain errors become errno.

Each request is handed to the layer that knows its rules: namespace/changes.py (create, mkdir, rmdir,
unlink, rename), namespace/attrview.py (the attributes shown; chmod, chown, utimens), namespace/handles.py
(open files: reads, writes, truncate), namespace/links.py (symlinks). What comes back is turned into
pyfuse3's objects; what is raised becomes an errno through errors.errno_for, in `fuse_errors`, and
only there. The checks left here are POSIX rules of the FUSE interface itself.

Inode numbers are persistent (LMDB) and never reused, so the kernel's lookup counts need no
bookkeeping here: forget() has nothing to free.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import stat
import time
from collections import OrderedDict

import pyfuse3
import trio

from cachefs import metrics
from cachefs.config import Config
from cachefs.errors import (
    Answer,
    CachefsError,
    FileTooLarge,
    IsADirectory,
    NameTooLong,
    NotALink,
    NotDurable,
    NotNeeded,
    NotPermitted,
    ReadOnly,
    errno_for,
)
from cachefs.fastpath import FastPath
from cachefs.meta.schema import Inode
from cachefs.namespace.attrs import S3_MAX_OBJECT_SIZE
from cachefs.namespace.attrview import AttributeView
from cachefs.namespace.changes import Tree
from cachefs.namespace.core import Namespace
from cachefs.namespace.handles import Handles
from cachefs.namespace.links import make_symlink
from cachefs.namespace.listing import NAME_MAX
from cachefs.reader import BlockReader, ReadState
from cachefs.stats import Stats
from cachefs.writeback import Staged, Writeback

log = logging.getLogger(__name__)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
FAST_NODES_KEPT = 1 << 16
# Files S3 resized whose next open tells the kernel; past this many (never opened since), the oldest
# are told at once.
RESIZED_KEPT = 1 << 16
_DIR_LISTING_TTL = 3600.0 * 24   # a directory made here is complete until something lists it anew
# The answer given outside fuse_errors (no timing, no counting), from the table once.
_NO_FLUSH = errno_for(NotNeeded())


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
        except pyfuse3.FUSEError as e:       # pyfuse3's own (its Operations' ENOSYS)
            metrics.count_fuse_error(op, e.errno)
            raise
        except Answer as e:                  # a rule's answer, not a failure: not logged
            raise _failed(op, errno_for(e)) from None
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
                raise _failed(op, errno_for(first)) from None
            log.warning("%s: %s", op, first)
            raise _failed(op, errno_for(first)) from None
        except Exception as e:
            log.exception("unexpected error in %s", op)
            raise _failed(op, errno_for(e)) from None
        finally:
            observe(time.perf_counter() - start)
    return wrapper


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _failed(op: str, err: int) -> pyfuse3.FUSEError:
    metrics.count_fuse_error(op, err)
    return pyfuse3.FUSEError(err)


class CachefsOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, namespace: Namespace, reader: BlockReader, cfg: Config, stats: Stats,
                 writeback: Writeback | None = None) -> None:
        super().__init__()
        self.ns = namespace
        self.reader = reader
        self.wb = writeback
        self.tree = Tree(namespace, writeback) if writeback is not None else None
        self.cfg = cfg
        self.stats = stats
        self.view = AttributeView(namespace, writeback, cfg, stats)
        self.handles = Handles(namespace, reader, writeback, self.view, stats)
        self._dirs: dict[int, list[tuple[bytes, Inode]]] = {}
        self.fast: FastPath | None = None
        # ino -> the version handed to the fast path, until its first open there (the oldest of
        # files never opened are dropped past FAST_NODES_KEPT: their opens then read LMDB)
        self._fast_nodes: OrderedDict[int, Inode] = OrderedDict()
        self._ready: list[tuple[Inode, object]] = []     # files fetched whole, to hand over
        self._ready_event = trio.Event()
        self._resized: dict[int, None] = {}             # files S3 resized, oldest first: _resized_in_s3
        namespace.meta.on_resize = self._resized_in_s3

    def attrs(self, inode: Inode, unlinked: Staged | None = None) -> pyfuse3.EntryAttributes:
        """What the kernel is told (namespace/attrview.py decides). `unlinked`: the staging copy of
        a file unlinked while open."""
        if unlinked is None and not inode.is_dir:
            inode = self._as_open(inode)
        return self._filled(inode, unlinked)

    def _filled(self, inode: Inode, unlinked: Staged | None = None) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        self.view.fill(a, inode, unlinked)
        return a

    # -- sizes the kernel holds ------------------------------------------------------------------
    def _resized_in_s3(self, ino: int) -> None:
        """A listing, HEAD or manifest showed a file's new size. The kernel may hold the old one for
        up to --attr-timeout and cuts reads there: an open of the new version would read its bytes
        under the old size (a mix of versions; found by bench/rostress.py). Its attributes are
        invalidated at its next open (here or by the hand-over to C); this is called once the change
        is committed, so a GETATTR the invalidation brings reads the new size."""
        self.stats.add("files_resized_in_s3")
        self._told_another_size(ino)

    def _told_another_size(self, ino: int) -> None:
        """The kernel may hold another size of `ino` than its version's: told at its next open."""
        self._resized.pop(ino, None)
        self._resized[ino] = None
        if len(self._resized) > RESIZED_KEPT:
            try:               # the trio thread and a listing's thread both come here
                oldest = next(iter(self._resized))
            except (StopIteration, RuntimeError):
                return
            if self._resized.pop(oldest, 1) is None:
                self._invalidate_attrs(oldest)      # committed long ago

    def _kernel_may_hold_another_size(self, ino: int) -> bool:
        resized = bool(self._resized) and self._resized.pop(ino, 1) is None
        return resized or self.ns.meta.resizing > 0     # a write is telling of resized files now

    def _opening(self, node: Inode) -> None:
        """Before a handle on `node`'s version is made (Python's): handles open on another size
        become stale (Handles._reading for Python's, here for the C's), and the kernel's attributes
        are invalidated when it may hold another size."""
        other = self.fast is not None and self.fast.stale_other_sizes(node.ino, node.size) > 0
        size = self.handles.open_size(node.ino)
        if self._kernel_may_hold_another_size(node.ino) or other or size not in (None, node.size):
            self._invalidate_attrs(node.ino)
            self.stats.add("kernel_sizes_invalidated")

    def _as_open(self, node: Inode) -> Inode:
        """The version whose size the kernel is told: while one is open (here or in C) the open one,
        so that a GETATTR between an open and its reads cannot cut them at a newer version's size;
        the newer size is told at the next open (_resized)."""
        size = self.handles.open_size(node.ino) if self.handles.reading else None
        if size is None and self.fast is not None:
            size = self.fast.open_size(node.ino)
        if size is None or size == node.size:
            return node
        self._told_another_size(node.ino)
        return dataclasses.replace(node, size=size)

    @staticmethod
    def _invalidate_attrs(ino: int) -> None:
        """The kernel's attributes of `ino` marked stale: the next stat, or read past the size it
        holds, asks again. No page is touched, so this never waits for a read in flight."""
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except FileNotFoundError:              # the kernel does not know the inode: nothing held
            pass
        except OSError as e:
            log.debug("cannot invalidate the attributes of inode %d: %s", ino, e)

    # -- the fast path: files whose FUSE requests C answers (cachefs/fastpath.py) ---------------
    def start_fast_path(self, fast: FastPath) -> None:
        """From now on, a small file the order prefetch has whole in memory is handed to `fast`;
        any change of an inode or name recorded in the metadata store takes it back. Read-only
        mounts only: no write, staging copy or rename through the mount can then change a file."""
        self.fast = fast
        self.reader.on_file_ready = self._file_ready
        self.ns.meta.on_change = self._fast_forget
        self.stats.add_gauges(fast.counters)

    def _fast_forget(self, ino: int, parent: int | None, name: bytes | None) -> None:
        if self.fast is not None:
            self.fast.forget(ino, parent, name)
            self._fast_nodes.pop(ino, None)

    def _file_ready(self, inode: Inode, data) -> None:
        """Queued, handed over by serve_fast_path: the fetch that calls this has just woken the
        cache's disk writer, and the LMDB reads of a hand-over (each releases the GIL) then waited
        for that thread (py-spy: a sixth of the trio thread's time); later, in a batch, they do not."""
        if self.fast is not None:
            self._ready.append((inode, data))
            self._ready_event.set()

    def _hand_over(self, fast: FastPath, inode: Inode, data) -> None:
        try:
            node = self.ns.meta.get_inode(inode.ino)     # its path holds its parent and name
            if node is None or node != inode:
                return                    # renamed or changed since the prefetch began
            name = node.path.rpartition("/")[2].encode()
            until = self.ns.answers_until(node)
            open_sizes = (self.handles.open_size(node.ino), fast.open_size(node.ino))
            if any(size not in (None, node.size) for size in open_sizes):
                return                    # another size is open: Python serves this one (_opening);
                                          # none is, so its attributes are its own (no _as_open)
            if self._kernel_may_hold_another_size(node.ino):
                self._invalidate_attrs(node.ino)
                self.stats.add("kernel_sizes_invalidated")
            if self.handles.opened_etag.get(node.ino) == node.etag:
                data = None                   # opened through Python before it got here: read
            if until > time.time() and fast.add(node.ino, node.parent, name, self._filled(node), until, data):
                self._fast_nodes[node.ino] = node
                if len(self._fast_nodes) > FAST_NODES_KEPT:
                    self._fast_nodes.popitem(last=False)
        except Exception:   # noqa: BLE001 - the file is then served by Python, as before
            log.exception("fast path: could not hand over %s", inode.path)
            self.stats.add("fast_path_errors")

    async def serve_fast_path(self) -> None:
        """Hand the files the order prefetch fetched over to the C, and tell the reader of the opens
        the C answered, in order: what an open and a read here would have noted (the order's window
        moves on; the page cache of that version may be kept at the next open)."""
        fast = self.fast
        assert fast is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._note_fast_opens, fast)
            while True:
                await self._ready_event.wait()
                self._ready_event = trio.Event()
                ready, self._ready = self._ready, []
                for inode, data in ready:
                    self._hand_over(fast, inode, data)

    async def _note_fast_opens(self, fast: FastPath) -> None:
        fd = fast.event_fd()
        while True:
            await trio.lowlevel.wait_readable(fd)
            for ino in fast.opened():
                handed = self._fast_nodes.pop(ino, None)
                node = handed or self.ns.meta.get_inode(ino)
                if node is None:
                    continue
                self.reader.note_served(node, self.ns.key_of(node))
                if handed is not None:       # the version the C read from
                    self.handles.opened_etag[ino] = node.etag

    def object_metadata(self, ino: int) -> dict[str, str]:
        """The x-amz-meta-* an upload of this file carries: the attributes the mount shows."""
        return self.view.object_metadata(ino)

    def _writable(self) -> Tree:
        if self.tree is None or self.cfg.read_only:
            raise ReadOnly()
        return self.tree

    # -- names and attributes ---------------------------------------------------------------
    @fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        if len(name) > NAME_MAX:
            raise NameTooLong(f"{len(name)} bytes")
        inode = await self.ns.lookup(parent_inode, name)
        if inode is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0              # a cacheable "no such entry"
            negative.entry_timeout = self.cfg.negative_ttl
            return negative
        return self.attrs(inode)

    @fuse_errors
    async def getattr(self, inode, ctx=None):
        f = self.handles.unlinked_open(inode)
        if f is not None:
            return self.attrs(f.inode, f.staged)
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

    @fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        tree = self._writable()
        if self.cfg.single_owner and ((fields.update_uid and attr.st_uid != self.cfg.uid)
                                      or (fields.update_gid and attr.st_gid != self.cfg.gid)):
            raise NotPermitted("--single-owner: one owner for the whole mount")
        if fields.update_size and attr.st_size > S3_MAX_OBJECT_SIZE:
            raise FileTooLarge(f"truncate to {attr.st_size} bytes: S3 holds at most 5 TiB an object")
        gone = self.handles.unlinked_open(inode)
        if gone is not None:      # only its staging copy is left: size and mtime live there
            staged = gone.staged
            assert staged is not None            # what makes it an unlinked open file
            if fields.update_size:
                tree.wb.truncate(staged, attr.st_size)
            if fields.update_mtime:
                tree.wb.set_mtime(staged, attr.st_mtime_ns)
            return self.attrs(gone.inode, staged)
        node = self.ns.get(inode)
        if fields.update_size:
            if node.is_dir:
                raise IsADirectory(node.path)
            await self.handles.truncate(node, attr.st_size)
        if fields.update_mtime and not node.is_dir:
            self.handles.utimed.add(inode)     # the file's next change of content clears this mtime
        await self.view.change(node, attr, fields)
        return self.attrs(self.ns.get(inode))

    # -- directories ------------------------------------------------------------------------
    @fuse_errors
    async def opendir(self, inode, ctx):
        entries = await self.ns.entries(inode)
        fh = self.handles.next_fh()
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
        if flags & _WRITE_FLAGS and (self.wb is None or self.cfg.read_only):
            raise ReadOnly()
        node = self.ns.get(inode)
        if node.is_dir:
            raise IsADirectory(node.path)
        self._opening(node)
        if self.fast is not None:
            self.fast.drop_data(inode)       # read here: the C's copy is for a first read only
        self.reader.note_open(node)          # the reader's place in an order (reader/order.py)
        fh, keep = await self.handles.open(node, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=False)

    @fuse_errors
    async def read(self, fh, off, size):
        return await self.handles.read(fh, off, size)

    @fuse_errors
    async def release(self, fh):      # decorated: an exception here would end pyfuse3's main loop
        self.handles.release(fh)

    @fuse_errors
    async def write(self, fh, off, buf):
        return await self.handles.write(fh, off, buf)

    async def flush(self, fh):
        # Nothing to do at close(2) (uploads follow the schedule, docs/SEMANTICS.md), and the
        # kernel waits for FLUSH before close returns: ENOSYS once tells it never to send one again,
        # which takes a round trip through the daemon off every close (small-file epochs).
        raise pyfuse3.FUSEError(_NO_FLUSH)

    @fuse_errors
    async def fsync(self, fh, datasync):
        if not await self.handles.fsync(fh, self.cfg.fsync_upload):
            raise NotDurable("fsync: the file is not in S3 yet")

    # -- namespace changes ------------------------------------------------------------------
    @fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        tree = self._writable()
        node, staged = await tree.create(parent_inode, name, mode & ~ctx.umask)
        await self.view.owned_by(node.ino, parent_inode, ctx.uid, ctx.gid)
        await self.view.dir_changed(parent_inode)
        fh = self.handles.created(node, staged, flags & os.O_ACCMODE != os.O_RDONLY)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=False), self.attrs(node)

    @fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        node = await self._writable().mkdir(parent_inode, name, mode & ~ctx.umask, _DIR_LISTING_TTL)
        await self.view.owned_by(node.ino, parent_inode, ctx.uid, ctx.gid)
        await self.view.dir_changed(parent_inode)
        await self.view.new_dir_marker(node)
        return self.attrs(node)

    @fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        """A regular file: an empty one, as create + close would make. Anything else: EPERM, as
        POSIX says for a filesystem that cannot hold it (S3 has no devices, FIFOs or sockets)."""
        tree = self._writable()
        if not stat.S_ISREG(mode):
            raise NotPermitted(f"mknod of mode {mode:o}: S3 holds regular files only")
        node, staged = await tree.create(parent_inode, name, mode & ~ctx.umask)
        await self.view.owned_by(node.ino, parent_inode, ctx.uid, ctx.gid)
        await self.view.dir_changed(parent_inode)
        self.handles.written.add(node.ino)
        tree.wb.opened(staged, True)
        tree.wb.closed(staged, True)          # the last writer's close: due for upload now
        return self.attrs(node)

    @fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        """An object whose body is the target and whose x-amz-meta-mode has S_IFLNK (as s3fs
        stores one), PUT at once like a directory's marker."""
        self._writable()
        uid, gid = (self.cfg.uid, self.cfg.gid) if self.cfg.single_owner else (ctx.uid, ctx.gid)
        node = await make_symlink(self.ns, parent_inode, name, target, uid, gid)
        await self.view.dir_changed(parent_inode)
        return self.attrs(node)

    @fuse_errors
    async def readlink(self, inode, ctx):
        node = self.ns.get(inode)
        om = self.view.objmeta(node)
        if not om.is_link:
            raise NotALink(node.path)
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
        raise NotPermitted("hard links")

    @fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        await self._writable().rmdir(parent_inode, name)
        await self.view.dir_changed(parent_inode)

    @fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        tree = self._writable()
        await self.handles.stage_open_readers(parent_inode, name)
        await tree.unlink(parent_inode, name)
        await self.view.dir_changed(parent_inode)

    @fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        tree = self._writable()
        if not flags:          # a file replaced while open for reading stays readable, as on unlink
            await self.handles.stage_open_readers(parent_inode_new, name_new)
        await tree.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
        await self.view.dir_changed(parent_inode_old, parent_inode_new)

    # -- extended attributes ----------------------------------------------------------------
    # None are kept (docs/SEMANTICS.md). ENOSYS, once, makes the kernel stop sending the request
    # (fc->no_getxattr etc.) and answer EOPNOTSUPP itself: `ls -l` asks every entry for
    # security.selinux and system.posix_acl_access, and every write asks for security.capability,
    # each a round trip through the daemon otherwise (docs/BENCHMARKS.md, Metadata).
    @fuse_errors
    async def getxattr(self, inode, name, ctx):
        raise NotNeeded("extended attributes are not kept")

    @fuse_errors
    async def listxattr(self, inode, ctx):
        raise NotNeeded("extended attributes are not kept")

    @fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        raise NotNeeded("extended attributes are not kept")

    @fuse_errors
    async def removexattr(self, inode, name, ctx):
        raise NotNeeded("extended attributes are not kept")
