"""A fault-injecting ObjectStore wrapper for tests: delays and errors on chosen requests (the
coroutines' delays are trio sleeps)."""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import trio

from cachefs.store.base import DelegatingWrites, ListPage, ObjectInfo, ObjectStore

# rule(operation, key, call_number) -> seconds to delay, or an exception to raise, or None
Rule = Callable[[str, str, int], "float | BaseException | None"]


class FaultyStore(DelegatingWrites, ObjectStore):
    def __init__(self, inner: ObjectStore, rule: Rule) -> None:
        self.inner = inner
        self.bucket = inner.bucket
        self.rule = rule
        self._calls = itertools.count()
        self._lock = threading.Lock()

    def _inject(self, op: str, key: str) -> None:
        with self._lock:
            n = next(self._calls)
        action = self.rule(op, key, n)
        if isinstance(action, BaseException):
            raise action
        if action:
            time.sleep(action)

    def get_range(self, key: str, start: int, end: int, etag: str | None = None,
                  answered: threading.Event | None = None) -> bytes:
        self._inject("get", key)          # a delay here is a request with no answer yet
        return self.inner.get_range(key, start, end, etag, answered)

    async def _ainject(self, op: str, key: str) -> None:
        with self._lock:
            n = next(self._calls)
        action = self.rule(op, key, n)
        if isinstance(action, BaseException):
            raise action
        if action:
            await trio.sleep(action)

    async def aget_range(self, key: str, start: int, end: int, etag: str | None = None,
                         answered: trio.Event | None = None) -> bytes | memoryview:
        await self._ainject("get", key)
        return await self.inner.aget_range(key, start, end, etag, answered)

    async def ahead(self, key: str) -> ObjectInfo | None:
        await self._ainject("head", key)
        return await self.inner.ahead(key)

    async def alist_page(self, prefix: str, token: str | None = None, max_keys: int = 1000,
                         delimiter: str = "/") -> ListPage:
        await self._ainject("list", prefix)
        return await self.inner.alist_page(prefix, token, max_keys, delimiter)

    def head(self, key: str) -> ObjectInfo | None:
        self._inject("head", key)
        return self.inner.head(key)

    def list_page(self, prefix: str, token: str | None = None, max_keys: int = 1000,
                  delimiter: str = "/") -> ListPage:
        self._inject("list", prefix)
        return self.inner.list_page(prefix, token, max_keys, delimiter)

    def check_bucket(self, prefix: str = "") -> None:
        self.inner.check_bucket(prefix)
