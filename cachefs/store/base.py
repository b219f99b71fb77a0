"""The ObjectStore seam: what cachefs needs from S3, and nothing about FUSE.

The plain methods are synchronous and thread-safe (writes, the control plane, callers outside trio).
The read path calls the `a`-prefixed coroutines from the trio thread: a store with an engine of its
own (S3Store on libcurl) answers them in trio without a thread; the defaults here run the
synchronous method in a worker thread, so every store serves both.
Errors are the domain errors of cachefs.errors (ObjectNotFound, ObjectChanged, StoreUnavailable ...).
"""
from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from dataclasses import dataclass

import trio

from cachefs.errors import ObjectChanged, ObjectNotFound


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    mtime_ns: int
    # The object's user metadata (x-amz-meta-* without the prefix, names lower-case) when the
    # answer carried it (HEAD); None when it cannot (a LIST entry).
    meta: dict[str, str] | None = None


@dataclass(frozen=True)
class ListPage:
    objects: list[ObjectInfo]
    prefixes: list[str]      # common prefixes, each ending in the delimiter
    next_token: str | None   # None on the last page


class ObjectStore(abc.ABC):
    bucket: str

    @abc.abstractmethod
    def check_bucket(self, prefix: str = "") -> None:
        """Raise a UserError naming the cause if the bucket is not usable (missing, denied, unreachable)
        for listing under `prefix` (a policy may allow only the mount's prefix)."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, end: int, etag: str | None = None,
                  answered: threading.Event | None = None) -> bytes:
        """Bytes [start, end) of `key`; ObjectChanged if `etag` is given and no longer matches.
        `answered` is set once the store has the response and is reading its body (hedging
        duplicates only requests that have no answer yet)."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """The object's metadata, or None if there is no such key."""

    @abc.abstractmethod
    def list_page(self, prefix: str, token: str | None = None, max_keys: int = 1000,
                  delimiter: str = "/") -> ListPage:
        """One page of a delimited listing under `prefix`."""

    # -- the read path from trio ---------------------------------------------------------------
    async def aget_range(self, key: str, start: int, end: int, etag: str | None = None,
                         answered: trio.Event | None = None) -> bytes | memoryview:
        """get_range from the trio thread; `answered` is set once the response's body follows."""
        data: bytes | memoryview = await trio.to_thread.run_sync(self.get_range, key, start, end, etag)
        if answered is not None:
            answered.set()
        return data

    def hurry(self, key: str, start: int, end: int) -> None:
        """A reader now waits for the GET of [start, end) of `key` in flight, if any (from trio): a
        store that hedges stragglers may duplicate it sooner (store/hedge.py). Here nothing."""

    async def ahead(self, key: str) -> ObjectInfo | None:
        """head from the trio thread."""
        info: ObjectInfo | None = await trio.to_thread.run_sync(self.head, key)
        return info

    async def alist_page(self, prefix: str, token: str | None = None, max_keys: int = 1000,
                         delimiter: str = "/") -> ListPage:
        """list_page from the trio thread."""
        page: ListPage = await trio.to_thread.run_sync(self.list_page, prefix, token, max_keys, delimiter)
        return page

    # -- writes (idempotent: a retried request leaves the same state) ------------------------
    @abc.abstractmethod
    def put_object(self, key: str, data: bytes | memoryview, metadata: dict[str, str] | None = None) -> str:
        """Store `data` under `key` in one request, with user `metadata` (x-amz-meta-*); returns the new ETag."""

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        """Store `data` under `key` unless the key exists: True if stored, False if it was there.
        This default is a HEAD then a PUT (two writers may both store); S3Store sends one conditional
        PUT (`If-None-Match: *`) where the store honours it, MemoryStore decides under its lock."""
        if self.head(key) is not None:
            return False
        self.put_object(key, data)
        return True

    @abc.abstractmethod
    def create_multipart(self, key: str, metadata: dict[str, str] | None = None) -> str:
        """Start a multipart upload (the object gets user `metadata`); returns its upload id."""

    @abc.abstractmethod
    def upload_part(self, key: str, upload_id: str, number: int, data: bytes | memoryview) -> str:
        """Upload part `number` (1-based); returns the part's ETag."""

    @abc.abstractmethod
    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        """Assemble the parts [(number, etag)] into the object; returns its ETag."""

    @abc.abstractmethod
    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an unfinished multipart upload and its parts (no error if it is already gone)."""

    @abc.abstractmethod
    def list_multipart(self, prefix: str) -> list[tuple[str, str]]:
        """Unfinished multipart uploads under `prefix`: [(key, upload id)]."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key` (no error if it does not exist)."""

    @abc.abstractmethod
    def copy(self, src: str, dst: str, metadata: dict[str, str] | None = None) -> str:
        """Server-side copy of `src` to `dst`; returns the new ETag. The copy keeps the source's
        user metadata, or gets `metadata` instead (MetadataDirective=REPLACE)."""

    def replace_metadata(self, key: str, metadata: dict[str, str], size: int, etag: str | None = None) -> str:
        """Give `key` (of `size` bytes) new user metadata: a server-side copy onto itself, of the
        version with `etag` only (ObjectChanged otherwise). Returns the new ETag (a copy may change it)."""
        info = self.head(key)
        if info is None:
            raise ObjectNotFound(key)
        if etag and info.etag != etag:
            raise ObjectChanged(key)
        return self.copy(key, key, metadata)

    def close(self) -> None:
        """Release connections."""

    metadata_seen: Callable[[str, str, dict[str, str]], None] | None = None

    def watch_metadata(self, fn: Callable[[str, str, dict[str, str]], None]) -> None:
        """Have `fn(key, etag, metadata)` told (from any thread) the user metadata (x-amz-meta-*,
        names lower-case without the prefix) that GET answers carry: what a read learns for free."""
        self.metadata_seen = fn


class DelegatingWrites:
    """For store wrappers that change how reads behave (hedging, fault injection): writes go to
    `self.inner` unchanged."""
    inner: ObjectStore

    def put_object(self, key: str, data: bytes | memoryview, metadata: dict[str, str] | None = None) -> str:
        return self.inner.put_object(key, data, metadata)

    def create_multipart(self, key: str, metadata: dict[str, str] | None = None) -> str:
        return self.inner.create_multipart(key, metadata)

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes | memoryview) -> str:
        return self.inner.upload_part(key, upload_id, number, data)

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        return self.inner.complete_multipart(key, upload_id, parts)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        return self.inner.abort_multipart(key, upload_id)

    def list_multipart(self, prefix: str) -> list[tuple[str, str]]:
        return self.inner.list_multipart(prefix)

    def delete(self, key: str) -> None:
        return self.inner.delete(key)

    def copy(self, src: str, dst: str, metadata: dict[str, str] | None = None) -> str:
        return self.inner.copy(src, dst, metadata)

    def replace_metadata(self, key: str, metadata: dict[str, str], size: int, etag: str | None = None) -> str:
        return self.inner.replace_metadata(key, metadata, size, etag)

    def watch_metadata(self, fn: Callable[[str, str, dict[str, str]], None]) -> None:
        self.inner.watch_metadata(fn)
