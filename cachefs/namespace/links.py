"""Symbolic links, stored as s3fs stores them: an object whose body is the target and whose
x-amz-meta-mode has S_IFLNK (posixmeta.py). Such an object is a file to the rest of cachefs (its
LMDB kind is a file): unlink deletes it and rename copies it like any other object, and the copy
keeps its metadata, so it stays a link. Only its attributes (fs.attrs, from `objmeta`) make it one.
"""
from __future__ import annotations

import errno
import stat
import time

from cachefs.errors import FsError
from cachefs.meta.schema import KIND_FILE, Inode
from cachefs.meta.store import Entry
from cachefs.namespace.attrs import SYMLINK_MAX, ObjMeta, encode
from cachefs.namespace.core import Namespace
from cachefs.namespace.listing import NAME_MAX, valid_name

LINK_MODE = stat.S_IFLNK | 0o777     # what Linux and s3fs give every link


async def make_symlink(ns: Namespace, parent_ino: int, name: bytes, target: bytes, uid: int, gid: int) -> Inode:
    """PUT the link's object at once (like a directory's marker: it exists for every client when
    symlink(2) returns), then record it with its metadata, so no HEAD is needed to know it."""
    parent = ns.get(parent_ino)
    if not parent.is_dir:
        raise FsError(errno.ENOTDIR)
    if len(name) > NAME_MAX or len(target) > SYMLINK_MAX:
        raise FsError(errno.ENAMETOOLONG)
    if not valid_name(name):
        raise FsError(errno.EINVAL, f"{name!r} cannot be an S3 key segment")
    if not target:
        raise FsError(errno.ENOENT, "an empty symlink target")
    if await ns.lookup(parent_ino, name) is not None:
        raise FsError(errno.EEXIST)
    text = name.decode()
    path = f"{parent.path}/{text}" if parent.path else text
    now = time.time_ns()
    metadata = encode(LINK_MODE, uid, gid, now)
    etag = await ns.run_blocking(ns.store.put_object, ns.cfg.prefix + path, bytes(target), metadata)
    inode = await ns.run_blocking(ns.meta.put_entry, parent, Entry(text, KIND_FILE, len(target), now, etag))
    await ns.run_blocking(ns.meta.put_objmeta, inode.ino, etag, ObjMeta(LINK_MODE, uid, gid, now, bytes(target)))
    return inode
