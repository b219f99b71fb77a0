"""The attributes the mount shows for an inode, and S3's x-amz-meta-* kept in step with them.

Each attribute comes from the first that has it: what was set through this mount (LMDB `attrs` and
`owners`), the object's x-amz-meta-* (`objmeta`, for the version S3 holds now), the mount's defaults
(--uid, --gid, --file-mode, --dir-mode; the object's LastModified). A chmod/chown/utimens is recorded
here at once, then carried to S3: by the file's next upload, or by a copy of the object onto itself.

No FUSE here: `fill` sets the st_* fields of whatever object it is given (fs.py gives it pyfuse3's
EntryAttributes; `shown` returns an `Attrs`).
"""
from __future__ import annotations

import functools
import stat
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

import trio

from cachefs import supervise
from cachefs.config import Config
from cachefs.errors import ObjectNotFound
from cachefs.meta.schema import Inode
from cachefs.namespace import attrs as posixmeta
from cachefs.namespace.attrs import NO_META, ObjMeta
from cachefs.namespace.core import Namespace
from cachefs.stats import Stats
from cachefs.writeback import Staged, Writeback

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


class Attrs:
    """The st_* fields `fill` sets, for uses inside cachefs (the kernel gets EntryAttributes)."""
    __slots__ = ("st_ino", "st_mode", "st_nlink", "st_size", "st_blocks", "st_blksize", "st_uid", "st_gid",
                 "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "entry_timeout", "attr_timeout")
    st_ino: int
    st_mode: int
    st_nlink: int
    st_size: int
    st_blocks: int
    st_blksize: int
    st_uid: int
    st_gid: int
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int
    entry_timeout: float
    attr_timeout: float


class AttributeView:
    def __init__(self, ns: Namespace, wb: Writeback | None, cfg: Config, stats: Stats) -> None:
        self.ns = ns
        self.wb = wb
        self.cfg = cfg
        self.stats = stats
        self.started_ns = time.time_ns()
        self._meta_locks: dict[int, trio.Lock] = {}   # one metadata copy at a time per file
        self._store_waiting: set[int] = set()         # files whose metadata copy waits for their upload
        # What the latest upload of a file carried, for the most recent _UPLOADED_META_KEPT files.
        self._uploaded_meta: OrderedDict[int, dict[str, str]] = OrderedDict()
        # Told (ino, old ETag, new ETag) when a metadata copy gave the object a new ETag (same bytes).
        self.on_copied: Callable[[int, str, str], None] = lambda ino, old, new: None
        if wb is not None:
            wb.metadata_for = self._upload_metadata
            wb.on_uploaded = self._record_uploaded_metadata

    @property
    def _writeback(self) -> Writeback:
        """The write path: only reached where there is one (fs.py answers EROFS without it)."""
        assert self.wb is not None
        return self.wb

    # -- what is shown ----------------------------------------------------------------------
    def objmeta(self, inode: Inode, known: tuple[str, ObjMeta] | None | Literal[False] = False) -> ObjMeta:
        """What the object's x-amz-meta-* said, if known for the version S3 holds now; for a
        directory, what its marker's said when it was last listed. `known`: the record, if read."""
        if not inode.is_dir and not inode.etag:
            return NO_META
        if known is False:
            known = self.ns.meta.get_objmeta(inode.ino)
        if known is None:
            return NO_META
        return known[1] if inode.is_dir or known[0] == inode.etag else NO_META

    def shown(self, inode: Inode, unlinked: Staged | None = None) -> Attrs:
        a = Attrs()
        self.fill(a, inode, unlinked)
        return a

    def fill(self, a, inode: Inode, unlinked: Staged | None = None) -> None:
        """Set `a`'s st_* fields. `unlinked`: the staging copy of a file unlinked while open (fstat
        still works, nlink 0)."""
        a.st_ino = inode.ino
        staged = unlinked
        if self.wb is not None:
            staged = staged or self.wb.get(inode.ino)
            inode = self.wb.overlay(inode, unlinked)
        meta = self.ns.meta
        kept, owner, known = meta.attributes(inode.ino)
        om = self.objmeta(inode, known)
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
        assert perm is not None               # build_config resolves --file-mode and --dir-mode
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

    # -- recorded here ----------------------------------------------------------------------
    async def pin(self, node: Inode) -> Attrs:
        """Before a file is staged: record here the mode and owner its object's metadata gives, so
        that they outlive the version they came with (the upload carries them on)."""
        shown = self.shown(node)
        om = self.objmeta(node)
        meta = self.ns.meta
        if om.uid >= 0 or om.gid >= 0:
            if meta.get_owner(node.ino) is None:
                await self.ns.run_blocking(meta.put_owner, node.ino, shown.st_uid, shown.st_gid, -1)
        if om.perm is not None and meta.get_attrs(node.ino) is None:
            await self.ns.run_blocking(meta.put_attrs, node.ino, stat.S_IMODE(shown.st_mode), shown.st_atime_ns, 0)
        return shown

    async def owned_by(self, ino: int, parent_ino: int, uid: int, gid: int) -> None:
        """A new file or directory belongs to its creator (uid, gid), and to its directory's group
        if that is set-group-ID (POSIX); with --single-owner to the mount's owner."""
        if self.cfg.single_owner:
            return
        parent = self.shown(self.ns.get(parent_ino))
        if parent.st_mode & stat.S_ISGID:
            gid = parent.st_gid
        await self.ns.run_blocking(self.ns.meta.put_owner, ino, uid, gid, time.time_ns())

    async def dir_changed(self, *inos: int) -> None:
        """An entry was added to or removed from these directories: their mtime and ctime are now."""
        meta = self.ns.meta
        now = time.time_ns()
        for ino in dict.fromkeys(inos):
            kept = meta.get_attrs(ino)
            if kept is None:
                shown = self.shown(self.ns.get(ino))
                kept = (stat.S_IMODE(shown.st_mode), shown.st_atime_ns, now)
            await self.ns.run_blocking(meta.put_attrs, ino, kept[0], kept[1], now)
            owner = meta.get_owner(ino) or (-1, -1, now)
            await self.ns.run_blocking(meta.put_owner, ino, owner[0], owner[1], now)

    async def change(self, node: Inode, attr, fields) -> None:
        """A chmod, chown or utimens (setattr's `attr` and `fields`, the size done already): recorded
        here, then carried to the object's or directory marker's metadata."""
        inode = node.ino
        chown = fields.update_uid or fields.update_gid
        current = self.shown(node)
        if fields.update_mode or fields.update_atime or fields.update_mtime:
            mode = stat.S_IMODE(attr.st_mode if fields.update_mode else current.st_mode)
            atime = attr.st_atime_ns if fields.update_atime else current.st_atime_ns
            if fields.update_mtime or node.is_dir:
                mtime = attr.st_mtime_ns if fields.update_mtime else current.st_mtime_ns
            else:                           # a file keeps following its content (0), or its utimens
                kept = self.ns.meta.get_attrs(inode)
                mtime = kept[2] if kept is not None else 0
            staged = self._writeback.get(inode)
            if staged is not None and fields.update_mtime:
                self._writeback.set_mtime(staged, mtime)
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

    # -- carried to S3 ----------------------------------------------------------------------
    def object_metadata(self, ino: int) -> dict[str, str]:
        """The x-amz-meta-* an upload of this file carries: the attributes the mount shows."""
        inode = self.ns.meta.get_inode(ino)
        if inode is None:
            return {}
        a = self.shown(inode)
        return posixmeta.encode(a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns)

    def _upload_metadata(self, ino: int) -> dict[str, str]:
        wanted = self.object_metadata(ino)
        st = self._writeback.files.get(ino)
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
        st = self._writeback.get(node.ino)
        if st is not None and st.etag == node.etag and self._uploaded_meta.get(node.ino) == wanted:
            return True              # uploaded from here with these attributes
        om = self.objmeta(node)
        return (om.mode > 0 and min(om.uid, om.gid, om.mtime_ns) >= 0
                and posixmeta.encode(om.mode, om.uid, om.gid, om.mtime_ns) == wanted)

    async def _store_attrs(self, ino: int) -> None:
        """Bring the object's x-amz-meta-* in line with the attributes the file shows. A file with
        changes still to upload needs nothing: its upload carries them. An object already in S3
        is copied onto itself with the new metadata (one CopyObject; a new ETag, recorded here so
        that the file does not become ESTALE; docs/SEMANTICS.md)."""
        lock = self._meta_locks.setdefault(ino, trio.Lock())
        try:
            async with lock:
                st = self._writeback.get(ino)
                if st is not None and st.uploading:
                    # Its metadata was taken when the upload started: wait for it, its record (the
                    # new ETag) too, then see.
                    deadline = time.monotonic() + _UPLOAD_WAIT_S
                    await self._writeback.wait_uploaded(st, deadline)
                    await self._writeback.wait_idle(st, deadline)
                    st = self._writeback.get(ino)
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
                target = self.objmeta(node).target
                old_etag = node.etag
                etag = await self.ns.run_blocking(self.ns.store.replace_metadata, self.ns.key_of(node), wanted,
                                                  node.size, old_etag)
                self.stats.add("metadata_copies")
                om = posixmeta.parse(wanted)
                self.ns.meta.put_objmeta(ino, etag, om.with_target(target) if target is not None else om)
                # Both at once (no await between): a staging copy kept after its upload is only good
                # while its ETag is the inode's, and it still holds the bytes S3 has.
                self.ns.meta.set_file(ino, node.size, etag, node.mtime_ns)
                self._writeback.remote_replaced(ino, etag)
                self.on_copied(ino, old_etag, etag)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._meta_locks.pop(ino, None)

    async def _store_dir_attrs(self, node: Inode) -> None:
        """A directory's mode and owner go on its `dir/` marker (as s3fs keeps them): a PUT of the
        empty marker with them, which also makes one for a directory that had none (harmless).
        Its mtime is left out: it changes with every entry made in it, and would cost a request each."""
        a = self.shown(node)
        wanted = posixmeta.encode(a.st_mode, a.st_uid, a.st_gid, 0)
        del wanted[posixmeta.MTIME]
        known = self.ns.meta.get_objmeta(node.ino)
        held: tuple[int | None, int, int] | None
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

    async def new_dir_marker(self, node: Inode) -> None:
        """A directory just made: its marker gets the attributes it was made with (not the defaults
        the marker was PUT with)."""
        await self._store_dir_attrs(node)

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
                st = self._writeback.files.get(ino)
                if st is None or st.deleted:
                    return
                if not st.dirty and not st.uploading:
                    break
            await self._store_attrs(ino)
        except ObjectNotFound:
            pass                            # unlinked meanwhile
        finally:
            self._store_waiting.discard(ino)
