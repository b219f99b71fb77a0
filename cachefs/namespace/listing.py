"""What a LIST shows of a directory: its entries by name, and its own marker object.

A delimited LIST of one directory (namespace.core) and a flat LIST of many directories under one
prefix (the order prefetch's directory groups: docs/CACHING.md "Order-aware prefetch") become the
same `DirListing`, so both leave LMDB exactly alike (docs/SEMANTICS.md: a name that is both a file
and a directory is a directory; keys whose segments cannot be file names are not shown).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from cachefs.meta.schema import KIND_DIR, KIND_FILE
from cachefs.meta.store import Entry
from cachefs.store.base import ObjectInfo

log = logging.getLogger(__name__)

NAME_MAX = 255  # bytes; Linux's limit for one path segment


def valid_name(name: bytes) -> bool:
    """A path segment that is a legal Linux file name and that S3 keys can hold."""
    if not name or len(name) > NAME_MAX or name in (b".", b"..") or b"/" in name or b"\0" in name:
        return False
    try:
        name.decode()
    except UnicodeDecodeError:
        return False
    return True


class DirListing:
    """One directory's entries as S3 lists them."""
    __slots__ = ("found", "marker")

    def __init__(self) -> None:
        self.found: dict[str, Entry] = {}
        self.marker: ObjectInfo | None = None     # the `dir/` object itself (s3fs and mkdir make them)

    def add_file(self, name: str, obj: ObjectInfo) -> None:
        if name in self.found:
            return
        if not name:
            self.marker = obj
        elif valid_name(name.encode()):
            self.found[name] = Entry(name, KIND_FILE, obj.size, obj.mtime_ns, obj.etag)
        else:
            log.debug("not shown: key %r is not a valid file name", obj.key)

    def add_dir(self, name: str) -> None:
        known = self.found.get(name)
        if known is not None and known.kind == KIND_DIR:
            return
        if valid_name(name.encode()):
            self.found[name] = Entry(name, KIND_DIR)      # a directory wins over a file of that name
        else:
            log.debug("not shown: %r is not a valid directory name", name)


def split_flat(prefix: str, objects: Iterable[ObjectInfo]) -> dict[str, DirListing]:
    """The directories wholly under `prefix` (a key prefix, not necessarily ending in '/'; each
    directory's own prefix, ending in '/', starts with it), each as a delimited LIST of it would
    show it, from a flat (undelimited) listing of every key under `prefix`."""
    dirs: dict[str, DirListing] = {}
    first = max(len(prefix) - 1, 0)
    for obj in objects:
        key = obj.key
        cut = key.find("/", first)
        while cut >= 0:
            path = key[:cut + 1]
            listing = dirs.get(path)
            if listing is None:
                listing = dirs[path] = DirListing()
            below = key.find("/", cut + 1)
            if below < 0:
                listing.add_file(key[cut + 1:], obj)
                break
            listing.add_dir(key[cut + 1:below])
            cut = below
    return dirs
