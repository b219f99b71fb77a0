"""MetaStore: inodes, directory entries, listing/negative expiry and the block index, in LMDB.

Transactions are short and synchronous; callers on the trio thread may do reads inline (LMDB reads
are memory-mapped lookups) but run writes that touch many entries in a worker thread.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import lmdb

from cachefs.errors import UserError
from cachefs.meta import verify
from cachefs.meta.schema import (
    ATTRS,
    BLOCK,
    DATABASES,
    FIRST_FREE_INO,
    KIND_DIR,
    LAYOUT_VERSION,
    OWNER,
    PACKED,
    ROOT_INO,
    Inode,
    ObjMeta,
    dentry_key,
    pack_f64,
    pack_inode,
    pack_objmeta,
    pack_u64,
    unpack_f64,
    unpack_inode,
    unpack_objmeta,
    unpack_u64,
)

log = logging.getLogger(__name__)

# One indexed block (cache/base.py IndexEntry): key, size, time stored, directory id, pack, offset.
IndexEntry = tuple[bytes, int, float, int, int, int]

# LMDB reserves address space, not disk: 64 GiB holds ~100 M inodes and never needs a resize.
MAP_SIZE = 64 << 30


@dataclass(frozen=True)
class Entry:
    """One name in a directory as S3 reports it."""
    name: str
    kind: int
    size: int = 0
    mtime_ns: int = 0
    etag: str = ""


class MetaStore:
    def __init__(self, path: str, identity: str, max_readers: int = 256) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)
        damage = verify.check(path)
        if damage is not None:
            # Refused, not rebuilt: besides what S3 can tell again, the store holds the uploads still
            # pending (the `pending` sub-database), and a guess must never lose a write.
            raise UserError(f"metadata store {path} is corrupt ({damage}); cachefs will not use it. Moving it "
                            f"away (mv {path} {path}.corrupt) rebuilds it from S3 and keeps the cached blocks, "
                            "but forgets any upload still pending in it")
        try:
            # metasync=False: a system crash may undo the last commit but never corrupts the file.
            self.env = lmdb.open(path, map_size=MAP_SIZE, max_dbs=len(DATABASES), metasync=False,
                                 max_readers=max_readers)
            self.dbs = {name.decode(): self.env.open_db(name) for name in DATABASES}
        except lmdb.Error as e:
            raise UserError(f"metadata store {path} cannot be opened ({e}); it may be corrupt: "
                            "move the cache directory away to start fresh") from None
        self._write_lock = threading.Lock()  # one writer at a time, without blocking LMDB readers
        # Told of every change of an inode or a name (ino, parent, name), inside the write
        # transaction; it must not raise. The daemon points it at the fast path's forget.
        self.on_change: Callable[[int, int | None, bytes | None], None] | None = None
        # A file's size changed in S3 (a listing or HEAD showed another): called once the change is
        # committed, so that what the callee tells the kernel cannot be answered with the old size.
        self.on_resize: Callable[[int], None] | None = None
        self._resized: list[int] = []       # in the write transaction under way (its lock held)
        # > 0 from a write transaction's first resized file until on_resize was called for all of
        # them: an open meanwhile cannot know whether it read the new size before on_resize did.
        self.resizing = 0
        self._check_layout(path, identity)

    def _check_layout(self, path: str, identity: str) -> None:
        with self.env.begin(write=True, db=self.dbs["meta"]) as txn:
            version = txn.get(b"version")
            owner = txn.get(b"identity")
            if version is None:
                txn.put(b"version", LAYOUT_VERSION)
                txn.put(b"identity", identity.encode())
                txn.put(b"next_ino", pack_u64(FIRST_FREE_INO))
                txn.put(pack_u64(ROOT_INO), pack_inode(Inode(ROOT_INO, KIND_DIR, 0, 0, ROOT_INO, "", "")),
                        db=self.dbs["inodes"])
                return
        if version != LAYOUT_VERSION:
            raise UserError(f"metadata store {path} has layout version {version.decode(errors='replace')}, "
                            f"this cachefs uses {LAYOUT_VERSION.decode()}; use another --cache-dir")
        if owner != identity.encode():
            recorded = owner.decode(errors="replace") if owner is not None else "no mount"
            raise UserError(f"cache directory belongs to {recorded!r}, not {identity!r}; use another --cache-dir")

    def close(self) -> None:
        self.env.close()

    # -- reads ------------------------------------------------------------------------------
    def get_inode(self, ino: int) -> Inode | None:
        with self.env.begin(db=self.dbs["inodes"]) as txn:
            raw = txn.get(pack_u64(ino))
        return unpack_inode(ino, raw) if raw is not None else None

    def lookup(self, parent: int, name: bytes) -> Inode | None:
        with self.env.begin() as txn:
            child = txn.get(dentry_key(parent, name), db=self.dbs["dentries"])
            if child is None:
                return None
            raw = txn.get(child, db=self.dbs["inodes"])
        return unpack_inode(unpack_u64(child), raw) if raw is not None else None

    def listing_expiry(self, ino: int) -> float:
        with self.env.begin(db=self.dbs["listings"]) as txn:
            raw = txn.get(pack_u64(ino))
        return unpack_f64(raw) if raw else 0.0

    def manifest_expiry(self, ino: int) -> float:
        """Until when a directory's listing is a manifest's (0.0: it is not): docs/MANIFESTS.md."""
        with self.env.begin(db=self.dbs["manifested"]) as txn:
            raw = txn.get(pack_u64(ino))
        return unpack_f64(raw) if raw else 0.0

    def negative_expiry(self, parent: int, name: bytes) -> float:
        with self.env.begin(db=self.dbs["negative"]) as txn:
            raw = txn.get(dentry_key(parent, name))
        return unpack_f64(raw) if raw else 0.0

    def children(self, parent: int) -> list[tuple[bytes, Inode]]:
        """The entries of a directory, sorted by name."""
        prefix = pack_u64(parent)
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.dbs["dentries"])
            inodes = self.dbs["inodes"]
            if cur.set_range(prefix):
                for key, child in cur:
                    if not key.startswith(prefix):
                        break
                    raw = txn.get(child, db=inodes)
                    if raw is not None:
                        out.append((key[8:], unpack_inode(unpack_u64(child), raw)))
        return out

    # -- writes -----------------------------------------------------------------------------
    def _changed(self, ino: int, parent: int | None = None, name: bytes | None = None) -> None:
        """An inode's record (and the name, if given) is being changed: whoever answers from a
        copy of it (cachefs/fastpath.py) stops doing so."""
        if self.on_change is not None:
            self.on_change(ino, parent, name)

    def replace_listing(self, parent: Inode, entries: Iterable[Entry], expiry: float,
                        keep: AbstractSet[bytes] = frozenset()) -> list[tuple[bytes, Inode]]:
        """Make `parent`'s entries exactly `entries` (keeping inode numbers of unchanged names), plus
        the names in `keep` (files written here and not yet uploaded), which S3 does not list yet."""
        return self.replace_listings([(parent, entries, keep)], expiry)[0]

    def replace_listings(self, listings: Sequence[tuple[Inode, Iterable[Entry], AbstractSet[bytes]]],
                         expiry: float) -> list[list[tuple[bytes, Inode]]]:
        """replace_listing of many directories in one write transaction (one commit, one sync: a
        group of 300 small directories listed at once took 300 commits of ~0.3 ms each)."""
        try:
            with self._write_lock, self.env.begin(write=True) as txn:
                return [self._replace(txn, parent, entries, expiry, keep) for parent, entries, keep in listings]
        finally:
            self._tell_resized()

    def _replace(self, txn: lmdb.Transaction, parent: Inode, entries: Iterable[Entry], expiry: float,
                 keep: AbstractSet[bytes]) -> list[tuple[bytes, Inode]]:
        wanted = {e.name.encode(): e for e in entries}
        prefix = pack_u64(parent.ino)
        cur = txn.cursor(db=self.dbs["dentries"])
        existing: dict[bytes, int] = {}
        if cur.set_range(prefix):
            for raw_key, child in cur:
                key = bytes(raw_key)
                if not key.startswith(prefix):
                    break
                existing[key[8:]] = unpack_u64(child)
        kept = []
        for name, ino in existing.items():
            if name in keep:
                raw = txn.get(pack_u64(ino), db=self.dbs["inodes"])
                if raw is not None:
                    kept.append((name, unpack_inode(ino, raw)))
            elif name not in wanted:
                self._remove(txn, parent.ino, name, ino)
        result = [(name, self._upsert(txn, parent, name, entry, existing.get(name)))
                  for name, entry in wanted.items() if not (name in keep and name in existing)]
        result = sorted(result + kept, key=lambda pair: pair[0])
        txn.put(pack_u64(parent.ino), pack_u64(sum(1 for _, node in result if node.is_dir)),
                db=self.dbs["subdirs"])
        txn.put(pack_u64(parent.ino), pack_f64(expiry), db=self.dbs["listings"])
        txn.delete(pack_u64(parent.ino), db=self.dbs["manifested"])    # a real listing now
        neg = txn.cursor(db=self.dbs["negative"])
        if neg.set_range(prefix):
            while bytes(neg.key()).startswith(prefix) and neg.delete():
                pass
        return result

    def put_entry(self, parent: Inode, entry: Entry) -> Inode:
        """Record one entry found by a targeted lookup (HEAD / LIST of one name)."""
        return self.put_entries(parent, [entry])[0]

    def put_entries(self, parent: Inode, entries: Sequence[Entry]) -> list[Inode]:
        """put_entry of several names of one directory, in one write transaction (directories a flat
        listing showed keys below, recorded without their parent's listing)."""
        out = []
        try:
            with self._write_lock, self.env.begin(write=True) as txn:
                for entry in entries:
                    name = entry.name.encode()
                    child = txn.get(dentry_key(parent.ino, name), db=self.dbs["dentries"])
                    txn.delete(dentry_key(parent.ino, name), db=self.dbs["negative"])
                    out.append(self._upsert(txn, parent, name, entry, unpack_u64(child) if child else None))
        finally:
            self._tell_resized()
        return out

    def put_negative(self, parent: Inode, name: bytes, expiry: float) -> None:
        """Record that `name` does not exist (and forget it if we had it)."""
        with self._write_lock, self.env.begin(write=True) as txn:
            child = txn.get(dentry_key(parent.ino, name), db=self.dbs["dentries"])
            if child is not None:
                self._remove(txn, parent.ino, name, unpack_u64(child))
            txn.put(dentry_key(parent.ino, name), pack_f64(expiry), db=self.dbs["negative"])

    def _tell_resized(self) -> None:
        """on_resize of the files the write just committed (or failed to: a needless invalidation
        at worst) found resized."""
        with self._write_lock:
            resized, self._resized = self._resized, []
        try:
            if self.on_resize is not None:
                for ino in resized:
                    self.on_resize(ino)
        finally:
            if resized:
                with self._write_lock:         # += happens under it, in the next write perhaps
                    self.resizing -= 1

    def _upsert(self, txn: lmdb.Transaction, parent: Inode, name: bytes, entry: Entry, ino: int | None) -> Inode:
        old = None
        if ino is not None:
            raw = txn.get(pack_u64(ino), db=self.dbs["inodes"])
            old = unpack_inode(ino, raw) if raw is not None else None
        if old is not None and ino is not None and old.kind != entry.kind:
            # A file became a directory (or back): the kernel caches an inode's type, so the new
            # thing gets a new number rather than changing under the old one.
            self._remove(txn, parent.ino, name, ino)
            old = ino = None
        if ino is None:
            counter = txn.get(b"next_ino", db=self.dbs["meta"])
            assert counter is not None            # written when the store was created
            ino = unpack_u64(counter)
            txn.put(b"next_ino", pack_u64(ino + 1), db=self.dbs["meta"])
            txn.put(dentry_key(parent.ino, name), pack_u64(ino), db=self.dbs["dentries"])
            if entry.kind == KIND_DIR:
                self._count_subdirs(txn, parent.ino, +1)
        path = f"{parent.path}/{entry.name}" if parent.path else entry.name
        new = Inode(ino, entry.kind, entry.size, entry.mtime_ns, parent.ino, entry.etag, path)
        if new != old:
            txn.put(pack_u64(ino), pack_inode(new), db=self.dbs["inodes"])
            self._changed(ino, parent.ino, name)
            if old is not None and old.size != new.size:
                if not self._resized:
                    self.resizing += 1
                self._resized.append(ino)
        return new

    def _remove(self, txn: lmdb.Transaction, parent: int, name: bytes, ino: int) -> None:
        """Drop a dentry and its inode; for a directory, everything recorded below it too."""
        txn.delete(dentry_key(parent, name), db=self.dbs["dentries"])
        raw = txn.get(pack_u64(ino), db=self.dbs["inodes"])
        if raw is not None and unpack_inode(ino, raw).is_dir:
            self._count_subdirs(txn, parent, -1)
        self._changed(ino, parent, name)
        stack = [ino]
        while stack:
            current = stack.pop()
            if current != ino:               # told above, with its name
                self._changed(current)
            for db in ("inodes", "listings", "attrs", "owners", "objmeta", "subdirs", "manifested"):
                txn.delete(pack_u64(current), db=self.dbs[db])
            prefix = pack_u64(current)
            cur = txn.cursor(db=self.dbs["dentries"])
            if cur.set_range(prefix):
                while bytes(cur.key()).startswith(prefix):
                    stack.append(unpack_u64(cur.value()))
                    if not cur.delete():
                        break

    def _count_subdirs(self, txn: lmdb.Transaction, ino: int, delta: int) -> None:
        raw = txn.get(pack_u64(ino), db=self.dbs["subdirs"])
        count = unpack_u64(raw) if raw is not None else 0
        txn.put(pack_u64(ino), pack_u64(max(0, count + delta)), db=self.dbs["subdirs"])

    def subdirs(self, ino: int) -> int:
        """How many subdirectories a directory has, as far as this store knows."""
        with self.env.begin(db=self.dbs["subdirs"]) as txn:
            raw = txn.get(pack_u64(ino))
        return unpack_u64(raw) if raw is not None else 0

    # -- block index ------------------------------------------------------------------------
    def block_index(self) -> list[IndexEntry]:
        """Every indexed block: (key, size, time stored, directory id, pack number, offset); a block
        file of its own has pack -1."""
        blocks, packed = self.dbs["blocks"], self.dbs["packed"]
        with self.env.begin() as txn:
            out = [(bytes(key), *BLOCK.unpack(raw), -1, 0) for key, raw in txn.cursor(db=blocks)]
            out += [(bytes(key), *PACKED.unpack(raw)) for key, raw in txn.cursor(db=packed)]
        return out

    def update_block_index(self, added: Iterable[IndexEntry], removed: Iterable[bytes]) -> None:
        blocks, packed = self.dbs["blocks"], self.dbs["packed"]
        with self._write_lock, self.env.begin(write=True) as txn:
            for key in removed:
                txn.delete(key, db=blocks)
                txn.delete(key, db=packed)
            for key, size, stored_at, did, pack, offset in added:
                # a key removed and stored again in the other layout before a flush: one entry
                if pack < 0:
                    txn.put(key, BLOCK.pack(size, stored_at, did), db=blocks)
                    txn.delete(key, db=packed)
                else:
                    txn.put(key, PACKED.pack(size, stored_at, did, pack, offset), db=packed)
                    txn.delete(key, db=blocks)

    # -- the write path ---------------------------------------------------------------------
    def mark_listed(self, ino: int, expiry: float) -> None:
        """A directory made here is empty and complete: no LIST needed until `expiry`."""
        with self._write_lock, self.env.begin(write=True, db=self.dbs["listings"]) as txn:
            txn.put(pack_u64(ino), pack_f64(expiry))

    def expire_listings(self) -> int:
        """Trust no recorded listing: each directory is listed anew on its next use (after a daemon
        died, its last changes in S3 and here may not match). Returns how many were dropped."""
        with self._write_lock, self.env.begin(write=True, db=self.dbs["listings"]) as txn:
            keys = [bytes(k) for k, _ in txn.cursor()]
            for k in keys:
                txn.delete(k)
        return len(keys)

    def remove_entry(self, parent: int, name: bytes) -> None:
        with self._write_lock, self.env.begin(write=True) as txn:
            child = txn.get(dentry_key(parent, name), db=self.dbs["dentries"])
            if child is not None:
                self._remove(txn, parent, name, unpack_u64(child))

    def move(self, old_parent: int, old_name: bytes, new_parent: Inode, new_name: bytes) -> Inode:
        """Rename keeping the inode number (the kernel still holds it); a directory's recorded
        descendants get their new paths. An entry at the destination is replaced."""
        with self._write_lock, self.env.begin(write=True) as txn:
            child = txn.get(dentry_key(old_parent, old_name), db=self.dbs["dentries"])
            if child is None:
                raise KeyError(old_name)
            ino = unpack_u64(child)
            target = txn.get(dentry_key(new_parent.ino, new_name), db=self.dbs["dentries"])
            if target is not None and target != child:
                self._remove(txn, new_parent.ino, new_name, unpack_u64(target))
            txn.delete(dentry_key(old_parent, old_name), db=self.dbs["dentries"])
            txn.put(dentry_key(new_parent.ino, new_name), child, db=self.dbs["dentries"])
            self._changed(ino, old_parent, old_name)
            self._changed(ino, new_parent.ino, new_name)
            txn.delete(dentry_key(new_parent.ino, new_name), db=self.dbs["negative"])
            inodes = self.dbs["inodes"]
            raw = txn.get(child, db=inodes)
            assert raw is not None                # a dentry always has its inode
            node = unpack_inode(ino, raw)
            name = new_name.decode()
            moved = Inode(ino, node.kind, node.size, node.mtime_ns, new_parent.ino, node.etag,
                          f"{new_parent.path}/{name}" if new_parent.path else name)
            txn.put(child, pack_inode(moved), db=inodes)
            if moved.is_dir and old_parent != new_parent.ino:
                self._count_subdirs(txn, old_parent, -1)
                self._count_subdirs(txn, new_parent.ino, +1)
            stack = [moved] if moved.is_dir else []
            while stack:
                directory = stack.pop()
                prefix = pack_u64(directory.ino)
                cur = txn.cursor(db=self.dbs["dentries"])
                if not cur.set_range(prefix):
                    continue
                for key, sub in cur:
                    if not key.startswith(prefix):
                        break
                    raw = txn.get(sub, db=inodes)
                    if raw is None:
                        continue
                    old = unpack_inode(unpack_u64(sub), raw)
                    new = Inode(old.ino, old.kind, old.size, old.mtime_ns, old.parent, old.etag,
                                f"{directory.path}/{key[8:].decode()}")
                    txn.put(sub, pack_inode(new), db=inodes)
                    if new.is_dir:
                        stack.append(new)
        return moved

    def set_file(self, ino: int, size: int, etag: str, mtime_ns: int) -> Inode | None:
        """Record what S3 now holds for a file written here."""
        with self._write_lock, self.env.begin(write=True, db=self.dbs["inodes"]) as txn:
            raw = txn.get(pack_u64(ino))
            if raw is None:
                return None
            old = unpack_inode(ino, raw)
            new = Inode(ino, old.kind, size, mtime_ns, old.parent, etag, old.path)
            txn.put(pack_u64(ino), pack_inode(new))
            self._changed(ino)
        return new

    def pending(self) -> dict[int, dict[str, Any]]:
        with self.env.begin(db=self.dbs["pending"]) as txn:
            return {unpack_u64(k): json.loads(bytes(v)) for k, v in txn.cursor()}

    def put_pending(self, ino: int, record: dict[str, Any]) -> None:
        with self._write_lock, self.env.begin(write=True, db=self.dbs["pending"]) as txn:
            txn.put(pack_u64(ino), json.dumps(record).encode())

    def delete_pending(self, ino: int) -> None:
        with self._write_lock, self.env.begin(write=True, db=self.dbs["pending"]) as txn:
            txn.delete(pack_u64(ino))

    def get_attrs(self, ino: int) -> tuple[int, int, int] | None:
        with self.env.begin(db=self.dbs["attrs"]) as txn:
            raw = txn.get(pack_u64(ino))
        return ATTRS.unpack(raw) if raw is not None else None

    def put_attrs(self, ino: int, mode: int, atime_ns: int, mtime_ns: int) -> None:
        with self._write_lock, self.env.begin(write=True, db=self.dbs["attrs"]) as txn:
            txn.put(pack_u64(ino), ATTRS.pack(mode, atime_ns, mtime_ns))
            self._changed(ino)

    def attributes(self, ino: int) -> tuple[tuple[int, int, int] | None, tuple[int, int, int] | None,
                                            tuple[str, ObjMeta] | None]:
        """get_attrs, get_owner and get_objmeta in one read transaction (fs.attrs, for every
        entry of a listing)."""
        key = pack_u64(ino)
        with self.env.begin() as txn:
            kept = txn.get(key, db=self.dbs["attrs"])
            owner = txn.get(key, db=self.dbs["owners"])
            raw = txn.get(key, db=self.dbs["objmeta"])
        om = None
        if raw is not None:
            etag, mode, uid, gid, mtime_ns, target = unpack_objmeta(raw)
            om = etag, ObjMeta(mode, uid, gid, mtime_ns, target)
        return (ATTRS.unpack(kept) if kept is not None else None,
                OWNER.unpack(owner) if owner is not None else None, om)

    def get_owner(self, ino: int) -> tuple[int, int, int] | None:
        """(uid, gid, ctime_ns) set through this mount (-1: not set), or None."""
        with self.env.begin(db=self.dbs["owners"]) as txn:
            raw = txn.get(pack_u64(ino))
        return OWNER.unpack(raw) if raw is not None else None

    def put_owner(self, ino: int, uid: int, gid: int, ctime_ns: int) -> None:
        with self._write_lock, self.env.begin(write=True, db=self.dbs["owners"]) as txn:
            txn.put(pack_u64(ino), OWNER.pack(uid, gid, ctime_ns))
            self._changed(ino)

    def get_objmeta(self, ino: int) -> tuple[str, ObjMeta] | None:
        """(etag, attributes) the object's user metadata gave for the version with that etag."""
        with self.env.begin(db=self.dbs["objmeta"]) as txn:
            raw = txn.get(pack_u64(ino))
        if raw is None:
            return None
        etag, mode, uid, gid, mtime_ns, target = unpack_objmeta(raw)
        return etag, ObjMeta(mode, uid, gid, mtime_ns, target)

    def put_objmeta(self, ino: int, etag: str, m: ObjMeta) -> None:
        with self._write_lock, self.env.begin(write=True) as txn:
            if txn.get(pack_u64(ino), db=self.dbs["inodes"]) is None:
                return                       # removed meanwhile: no record without its inode
            txn.put(pack_u64(ino), pack_objmeta(etag, m.mode, m.uid, m.gid, m.mtime_ns, m.target),
                    db=self.dbs["objmeta"])
            self._changed(ino)

    def sync(self) -> None:
        """Make every commit durable against a power loss (metasync is off for speed)."""
        self.env.sync(True)
