"""The ObjectStore seam: what cachefs needs from S3, and nothing about FUSE.

Methods are synchronous and thread-safe; the daemon calls them from its bounded thread pool.
Errors are the domain errors of cachefs.errors (ObjectNotFound, ObjectChanged, StoreUnavailable ...).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    mtime_ns: int


@dataclass(frozen=True)
class ListPage:
    objects: list[ObjectInfo]
    prefixes: list[str]      # common prefixes, each ending in the delimiter
    next_token: str | None   # None on the last page


class ObjectStore(abc.ABC):
    bucket: str

    @abc.abstractmethod
    def check_bucket(self) -> None:
        """Raise a UserError naming the cause if the bucket is not usable (missing, denied, unreachable)."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes [start, end) of `key`; ObjectChanged if `etag` is given and no longer matches."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """The object's metadata, or None if there is no such key."""

    @abc.abstractmethod
    def list_page(self, prefix: str, token: str | None = None, max_keys: int = 1000,
                  delimiter: str = "/") -> ListPage:
        """One page of a delimited listing under `prefix`."""

    def close(self) -> None:
        """Release connections."""
