"""A whole tree written into the MetaStore in one write transaction (a manifest loaded at start).

Each directory of the tree ends up exactly as a full LIST would leave it (inode numbers of names
already recorded kept, names no longer there dropped), except for names a pending upload still
needs, and is marked listed until `expiry` and as a manifest's listing (`manifested`, schema.py).
New names get their inodes without the per-name reads of MetaStore's one-entry path, so that a
million entries load in seconds.
"""
from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from cachefs.meta.schema import KIND_DIR, ROOT_INO, Inode, dentry_key, pack_f64, pack_inode, pack_u64, unpack_u64
from cachefs.meta.store import Entry, MetaStore

# One entry of a directory: the fields of meta.store.Entry, in its order (a tuple: a million of them
# are made at start, and a dataclass costs twice the time).
Row = tuple[str, int, int, int, str]      # name, kind, size, mtime_ns, etag


def load_tree(meta: MetaStore, dirs: Mapping[str, Mapping[bytes, Row]], expiry: float,
              keep: AbstractSet[str] = frozenset()) -> int:
    """Make each directory in `dirs` (path relative to the mount, '' for the root -> its entries by
    name) hold exactly those entries, listed and manifested until `expiry`. Every directory entry
    of the tree must have its own key in `dirs`. Names whose path is in `keep` (or is a directory
    above one) stay even if the tree lacks them. Returns the number of inodes written."""
    dbs = meta.dbs
    written = 0
    with meta._write_lock, meta.env.begin(write=True) as txn:
        raw_root = txn.get(pack_u64(ROOT_INO), db=dbs["inodes"])
        assert raw_root is not None           # written when the store was created
        root = Inode(ROOT_INO, KIND_DIR, 0, 0, ROOT_INO, "", "")
        counter = txn.get(b"next_ino", db=dbs["meta"])
        assert counter is not None
        next_ino = unpack_u64(counter)
        stack = [root]
        while stack:
            directory = stack.pop()
            wanted = dirs.get(directory.path, {})
            prefix = pack_u64(directory.ino)
            existing: dict[bytes, int] = {}
            cur = txn.cursor(db=dbs["dentries"])
            if cur.set_range(prefix):
                for key, child in cur:
                    if not key.startswith(prefix):
                        break
                    existing[bytes(key[8:])] = unpack_u64(child)
            subdirs = 0
            base = directory.path + "/" if directory.path else ""
            for name, ino in existing.items():
                if name not in wanted and not _kept(base + name.decode(errors="replace"), keep):
                    meta._remove(txn, directory.ino, name, ino)
                elif name not in wanted:
                    raw = txn.get(pack_u64(ino), db=dbs["inodes"])
                    subdirs += raw is not None and raw[0] == KIND_DIR
            for name, row in wanted.items():
                known = existing.get(name)
                raw = txn.get(pack_u64(known), db=dbs["inodes"]) if known is not None else None
                if known is not None and (raw is None or raw[0] != row[1]):
                    txn.put(b"next_ino", pack_u64(next_ino), db=dbs["meta"])
                    node = meta._upsert(txn, directory, name, Entry(*row), known)   # a file became a directory
                    next_ino = unpack_u64(txn.get(b"next_ino", db=dbs["meta"]) or b"")
                else:
                    if known is None:
                        ino, next_ino = next_ino, next_ino + 1
                        txn.put(dentry_key(directory.ino, name), pack_u64(ino), db=dbs["dentries"])
                    else:
                        ino = known
                    node = Inode(ino, row[1], row[2], row[3], directory.ino, row[4], base + row[0])
                    packed = pack_inode(node)
                    if packed != raw:
                        txn.put(pack_u64(ino), packed, db=dbs["inodes"])
                written += 1
                if node.is_dir:
                    subdirs += 1
                    stack.append(node)
            txn.put(prefix, pack_u64(subdirs), db=dbs["subdirs"])
            txn.put(prefix, pack_f64(expiry), db=dbs["listings"])
            txn.put(prefix, pack_f64(expiry), db=dbs["manifested"])
            neg = txn.cursor(db=dbs["negative"])
            if neg.set_range(prefix):
                while neg.key().startswith(prefix) and neg.delete():
                    pass
        txn.put(b"next_ino", pack_u64(next_ino), db=dbs["meta"])
    return written


def forget_manifest(meta: MetaStore) -> int:
    """A mount without --manifest trusts no listing a manifest made: those directories are listed
    anew on their next use. Returns how many there were."""
    with meta._write_lock, meta.env.begin(write=True) as txn:
        keys = [bytes(k) for k, _ in txn.cursor(db=meta.dbs["manifested"])]
        for k in keys:
            txn.delete(k, db=meta.dbs["manifested"])
            txn.delete(k, db=meta.dbs["listings"])
    return len(keys)


def _kept(path: str, keep: AbstractSet[str]) -> bool:
    return path in keep or any(k.startswith(path + "/") for k in keep)
