"""S3Store's read path in trio: the coroutines aget_range, ahead and alist_page on the libcurl engine
(store/curlengine.py), with the same retries, backoff, deadline, outage breaker, counters and error
translation as the synchronous boto3 path in store/s3.py, and no thread.

The deadline (`read_deadline`) is a trio cancel scope around each attempt: a body trickling in past it
is ended there (its transfer removed from libcurl's multi), and a caller cancelled by trio stops its
request the same way. Backoff is trio.sleep; the breaker's wait for a probe is awaited
(OutageBreaker.aadmit). An answer the engine does not handle (FallBack) hands this request, and every
later one, to the base class's defaults: the synchronous boto3 methods in a worker thread.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import botocore.exceptions as bce
import trio

from cachefs.errors import ObjectNotFound, StoreError
from cachefs.stats import Stats
from cachefs.store.base import ListPage, ObjectInfo, ObjectStore
from cachefs.store.health import OutageBreaker
from cachefs.store.retry import (
    BODY_ERRORS,
    NETWORK_ERRORS,
    THROTTLE_CODES,
    DeadlineExceeded,
    ShortRead,
    error_code,
    http_status,
    retryable,
)
from cachefs.store.s3list import FallBack

if TYPE_CHECKING:      # imported by S3Store only when pycurl is there
    from cachefs.store.curlengine import CurlEngine

log = logging.getLogger(__name__)
T = TypeVar("T")
_META = "x-amz-meta-"
MAX_KEY_BYTES = 1024


class TrioReads(ObjectStore):
    """The read coroutines of S3Store (which provides these attributes)."""
    engine: CurlEngine | None
    stats: Stats
    breaker: OutageBreaker
    read_deadline: float
    max_attempts: int
    _retries_metric: Any

    if TYPE_CHECKING:      # S3Store's, used here
        def _translate(self, e: Exception, key: str) -> StoreError: ...

        def _deadline_exceeded(self) -> DeadlineExceeded: ...

        def _retry_delay(self, operation: str, key: str, error: Exception, throttled: bool, attempts: int,
                         started: float, now: float, deadline: float | None, ident: object) -> float: ...

    def _fall_back(self, e: FallBack) -> None:
        if self.engine is not None:
            log.info("S3 reads go through boto3 from now on (%s)", e)
            self.engine = None

    async def aget_range(self, key: str, start: int, end: int, etag: str | None = None,
                         answered: trio.Event | None = None) -> bytes | memoryview:
        engine = self.engine
        if engine is None:
            return await super().aget_range(key, start, end, etag, answered)
        if len(key.encode()) > MAX_KEY_BYTES:
            raise ObjectNotFound(f"s3://{self.bucket}/{key[:64]}...: a key longer than S3 allows")

        def tell(headers: dict[str, str]) -> None:
            if self.metadata_seen is not None:
                meta = {name[len(_META):]: value for name, value in headers.items() if name.startswith(_META)}
                self.metadata_seen(key, headers.get("etag", ""), meta)

        async def attempt() -> bytes | memoryview:
            data = await engine.get(key, start, end, etag, tell, answered)
            if len(data) != end - start:
                raise ShortRead(f"short read: {len(data)} of {end - start} bytes")
            return data
        try:
            data = await self._aread("GetObject", key, attempt, (start, end), counter="s3_get")
        except FallBack as e:
            self._fall_back(e)
            return await super().aget_range(key, start, end, etag, answered)
        except StoreError:
            self.stats.add("s3_get_errors")
            raise
        self.stats.add("s3_get_bytes", len(data))
        return data

    async def ahead(self, key: str) -> ObjectInfo | None:
        engine = self.engine
        if engine is None:
            return await super().ahead(key)
        if len(key.encode()) > MAX_KEY_BYTES:
            return None
        try:
            return await self._aread("HeadObject", key, lambda: engine.head(key), counter="s3_head")
        except FallBack as e:
            self._fall_back(e)
            return await super().ahead(key)
        except ObjectNotFound:
            return None

    async def alist_page(self, prefix: str, token: str | None = None, max_keys: int = 1000,
                         delimiter: str = "/") -> ListPage:
        engine = self.engine
        if engine is None:
            return await super().alist_page(prefix, token, max_keys, delimiter)
        if len(prefix.encode()) > MAX_KEY_BYTES:
            return ListPage([], [], None)
        try:
            return await self._aread("ListObjectsV2", prefix,
                                     lambda: engine.list_page(prefix, token, max_keys, delimiter),
                                     (token, delimiter, max_keys), counter="s3_list")
        except FallBack as e:
            self._fall_back(e)
            return await super().alist_page(prefix, token, max_keys, delimiter)

    async def _aread(self, operation: str, key: str, attempt_fn: Callable[[], Awaitable[T]],
                     ident: object = None, counter: str = "") -> T:
        """S3Store._read in trio: attempts until success, a definite answer, `max_attempts` or the
        deadline; backoff between them. Raises StoreError (or FallBack)."""
        started = trio.current_time()
        deadline = started + self.read_deadline if self.read_deadline else math.inf
        ident = (operation, key, ident)
        await self.breaker.aadmit(ident)
        if counter:
            self.stats.add(counter)
        attempts = 0
        while True:
            attempts += 1
            try:
                with trio.move_on_at(deadline):
                    result = await attempt_fn()
                    self.breaker.succeeded()
                    return result
                raise self._deadline_exceeded()
            except bce.ClientError as e:
                if not retryable(e):
                    self.breaker.succeeded()           # S3 answered; the answer is "no"
                    if http_status(e) == 404 and error_code(e) != "NoSuchBucket":
                        raise ObjectNotFound(f"s3://{self.bucket}/{key} does not exist") from e
                    raise self._translate(e, key) from e
                error: Exception = e
                throttled = error_code(e) in THROTTLE_CODES or http_status(e) in (429, 503)
            except FallBack:
                self.breaker.succeeded()
                raise
            except DeadlineExceeded as e:
                error, throttled = e, False
            except (*NETWORK_ERRORS, *BODY_ERRORS, ShortRead) as e:
                error, throttled = e, False
            await trio.sleep(self._retry_delay(operation, key, error, throttled, attempts, started,
                                               trio.current_time(), deadline, ident))
