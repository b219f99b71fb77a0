"""ObjectStore over any S3-compatible endpoint.

Two ways to S3: the read path's coroutines (aget_range, ahead, alist_page, called from the trio
thread) use the libcurl engine (store/curlengine.py, its retry loop in store/s3trio.py) when
`engine="curl"`; everything else goes through boto3 in the caller's thread: the control plane
(check_bucket), the writes, and the synchronous get_range/head/list_page for callers outside trio
(and all reads with `engine="boto3"`, or when libcurl is unusable).
The clients and credentials: store/credentials.py; what a read retries and how long it waits: store/retry.py."""
from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import botocore.exceptions as bce

from cachefs.errors import AccessDenied, ObjectChanged, ObjectNotFound, StoreError, StoreUnavailable, UserError
from cachefs.stats import Stats
from cachefs.store.base import ListPage, ObjectInfo, ObjectStore
from cachefs.store.credentials import s3_clients
from cachefs.store.health import OutageBreaker
from cachefs.store.retry import (
    BODY_ERRORS,
    NETWORK_ERRORS,
    THROTTLE_CODES,
    Attempt,
    DeadlineExceeded,
    ShortRead,
    backoff,
    describe,
    error_code,
    http_status,
    retryable,
)
from cachefs.store.s3list import FallBack
from cachefs.store.s3trio import TrioReads

if TYPE_CHECKING:
    from cachefs.store.curlengine import CurlEngine

log = logging.getLogger(__name__)

T = TypeVar("T")

# S3's own limit: a key is at most 1024 bytes of UTF-8. No such object can exist.
MAX_KEY_BYTES = 1024
# S3's limit for one CopyObject request; larger objects are copied part by part.
MAX_SINGLE_COPY = 5 << 30
_META = "x-amz-meta-"

_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                    "InvalidClientTokenId", "AuthorizationHeaderMalformed"}


def _curl_engine(client: Any, bucket: str, **kw: Any) -> CurlEngine | None:
    """The libcurl engine, or None (logged once) if pycurl is missing or its libcurl cannot sign."""
    try:
        import pycurl

        from cachefs.store.curlengine import CurlEngine
    except ImportError as e:
        log.info("S3 reads go through boto3: the libcurl engine is unusable (%s)", e)
        return None
    try:
        return CurlEngine(client, bucket, **kw)
    except (FallBack, pycurl.error) as e:
        log.info("S3 reads go through boto3: the libcurl engine is unusable (%s)", e)
        return None


class S3Store(TrioReads, ObjectStore):
    def __init__(self, bucket: str, *, endpoint_url: str | None = None, region: str | None = None,
                 addressing_style: str = "auto", profile: str | None = None,
                 credentials_file: str | None = None, max_attempts: int = 4,
                 connect_timeout: float = 5.0, read_timeout: float = 30.0, max_connections: int = 32,
                 stats: Stats | None = None, read_deadline: float = 0.0, engine: str = "curl") -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.stats = stats or Stats()
        # Reads retry in _read (bounded by attempts and one deadline, with a breaker for outages),
        # so their client makes one attempt per call. Writes keep botocore's retries.
        self.client, self.read_client = s3_clients(
            endpoint_url=endpoint_url, region=region, addressing_style=addressing_style, profile=profile,
            credentials_file=credentials_file, max_attempts=max_attempts, connect_timeout=connect_timeout,
            read_timeout=read_timeout, max_connections=max_connections)
        self.max_attempts = max_attempts
        self.read_deadline = read_deadline
        self.breaker = OutageBreaker(self.where)
        # Attempts run here when a deadline bounds them: the caller stops waiting at the deadline even
        # if the socket does not (a response trickling in never trips the read timeout). Bounded, so an
        # outage cannot pile up threads: a full pool makes new attempts wait, and time out, in the queue.
        self._attempts = cf.ThreadPoolExecutor(max_connections, thread_name_prefix="cachefs-s3") \
            if read_deadline else None
        from cachefs import metrics  # the read client's requests are counted like the others
        metrics.instrument_boto_client(self.read_client)
        self.engine: CurlEngine | None = None
        if engine == "curl":     # what cannot be built is done by boto3
            self.engine = _curl_engine(self.read_client, bucket, connect_timeout=connect_timeout,
                                       read_timeout=read_timeout, max_connections=max_connections)
            if self.engine is not None:
                self.engine.on_connections = lambda n: self.stats.add("s3_connections", n)
        elif engine != "boto3":
            raise ValueError(f"unknown S3 engine {engine!r}")
        self._retries_metric = metrics.S3_RETRIES
        self._conditional_put = True       # put_if_absent's If-None-Match, until the store says 501

    @property
    def where(self) -> str:
        return self.endpoint_url or "AWS S3"

    # -- start-up check ------------------------------------------------------------------
    def check_bucket(self, prefix: str = "") -> None:
        """One LIST request: unlike HEAD it returns an error body that names the exact cause."""
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        except bce.NoCredentialsError:
            raise UserError("no AWS credentials found") from None
        except NETWORK_ERRORS as e:
            raise UserError(f"cannot reach S3 endpoint {self.where}: {e}") from None
        except bce.ClientError as e:
            code, status = error_code(e), http_status(e)
            if code == "NoSuchBucket" or (status == 404 and not code.startswith("NoSuchKey")):
                raise UserError(f"bucket {self.bucket!r} does not exist at {self.where}") from None
            if code in _BAD_CREDENTIALS:
                raise UserError(f"S3 rejected the credentials for bucket {self.bucket!r} ({code}); "
                                "check the access key and secret") from None
            if code == "AccessDenied" or status == 403:
                raise UserError(f"access denied to bucket {self.bucket!r} at {self.where} ({code or status})") from None
            raise UserError(f"S3 error for bucket {self.bucket!r} at {self.where}: {code or status}") from None

    # -- data ----------------------------------------------------------------------------
    def _translate(self, e: Exception, key: str) -> StoreError:
        self.stats.add("s3_errors")
        if isinstance(e, bce.ClientError):
            code, status = error_code(e), http_status(e)
            if code in ("NoSuchKey", "404") or status == 404:
                return ObjectNotFound(f"s3://{self.bucket}/{key} no longer exists")
            if code == "PreconditionFailed" or status == 412:
                return ObjectChanged(f"s3://{self.bucket}/{key} changed in S3 while open")
            if status == 403:
                return AccessDenied(f"access denied to s3://{self.bucket}/{key} ({code})")
            return StoreUnavailable(f"S3 error {code or status} for s3://{self.bucket}/{key}")
        return StoreUnavailable(f"S3 unreachable for s3://{self.bucket}/{key}: {e}")

    def get_range(self, key: str, start: int, end: int, etag: str | None = None,
                  answered: threading.Event | None = None) -> bytes:
        if len(key.encode()) > MAX_KEY_BYTES:
            raise ObjectNotFound(f"s3://{self.bucket}/{key[:64]}...: a key longer than S3 allows")
        args: dict[str, str] = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"}
        if etag:
            args["IfMatch"] = etag

        def attempt(call: Attempt) -> bytes:
            r: dict[str, Any] = self.read_client.get_object(**args)
            body = r["Body"]
            if self.metadata_seen is not None:
                self.metadata_seen(key, r.get("ETag", ""), {k.lower(): v for k, v in r.get("Metadata", {}).items()})
            call.hold(body)
            if answered is not None:
                answered.set()
            data: bytes = body.read()
            if len(data) != end - start:
                raise ShortRead(f"short read: {len(data)} of {end - start} bytes")
            return data
        try:
            data = self._read("GetObject", key, attempt, (start, end), counter="s3_get")
        except StoreError:
            self.stats.add("s3_get_errors")
            raise
        self.stats.add("s3_get_bytes", len(data))
        return data

    def head(self, key: str) -> ObjectInfo | None:
        if len(key.encode()) > MAX_KEY_BYTES:
            return None
        try:
            r = self._read("HeadObject", key, lambda call: self.read_client.head_object(Bucket=self.bucket, Key=key),
                           counter="s3_head")
        except ObjectNotFound:
            return None
        return ObjectInfo(key, r["ContentLength"], r["ETag"], int(r["LastModified"].timestamp() * 1e9),
                          {k.lower(): v for k, v in r.get("Metadata", {}).items()})

    def list_page(self, prefix: str, token: str | None = None, max_keys: int = 1000,
                  delimiter: str = "/") -> ListPage:
        if len(prefix.encode()) > MAX_KEY_BYTES:
            return ListPage([], [], None)
        args: dict[str, str | int] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if delimiter:                 # none: every key below the prefix (a directory rename)
            args["Delimiter"] = delimiter
        if token:
            args["ContinuationToken"] = token

        def attempt(call: Attempt) -> ListPage:
            r: dict[str, Any] = self.read_client.list_objects_v2(**args)
            objects = [ObjectInfo(o["Key"], o["Size"], o.get("ETag", ""), int(o["LastModified"].timestamp() * 1e9))
                       for o in r.get("Contents", ())]
            prefixes = [p["Prefix"] for p in r.get("CommonPrefixes", ())]
            return ListPage(objects, prefixes, r.get("NextContinuationToken") if r.get("IsTruncated") else None)
        return self._read("ListObjectsV2", prefix, attempt, (token, delimiter, max_keys), counter="s3_list")

    # -- the read path's retries -----------------------------------------------------------
    def _read(self, operation: str, key: str, attempt_fn: Callable[[Attempt], T], ident: object = None,
              counter: str = "") -> T:
        """Run `attempt_fn` until it succeeds, fails definitely, has made `max_attempts` attempts or
        the deadline (`read_deadline`) has passed; back off between attempts. Raises StoreError.
        `counter` counts requests sent: not those the outage breaker refuses."""
        started = time.monotonic()
        deadline = started + self.read_deadline if self.read_deadline else None
        ident = (operation, key, ident)
        self.breaker.admit(ident)
        if counter:
            self.stats.add(counter)
        attempts = 0
        while True:
            attempts += 1
            try:
                result = self._attempt(attempt_fn, deadline)
            except bce.ClientError as e:
                if not retryable(e):
                    self.breaker.succeeded()           # S3 answered; the answer is "no"
                    if http_status(e) == 404 and error_code(e) != "NoSuchBucket":
                        raise ObjectNotFound(f"s3://{self.bucket}/{key} does not exist") from e
                    raise self._translate(e, key) from e
                error: Exception = e
                throttled = error_code(e) in THROTTLE_CODES or http_status(e) in (429, 503)
            except DeadlineExceeded as e:
                error, throttled = e, False
            except (*NETWORK_ERRORS, *BODY_ERRORS, ShortRead) as e:
                error, throttled = e, False
            else:
                self.breaker.succeeded()
                return result
            time.sleep(self._retry_delay(operation, key, error, throttled, attempts, started, time.monotonic(),
                                         deadline, ident))

    def _retry_delay(self, operation: str, key: str, error: Exception, throttled: bool, attempts: int,
                     started: float, now: float, deadline: float | None, ident: object) -> float:
        """After a failed attempt (both read loops, sync and trio): the backoff before the next one,
        or StoreUnavailable when attempts or the deadline are spent (counted, told to the breaker)."""
        delay = backoff(attempts, throttled)
        late = isinstance(error, DeadlineExceeded) or (deadline is not None and now + delay >= deadline)
        if attempts >= self.max_attempts or late:
            self.stats.add("s3_errors")
            if late:
                self.stats.add("s3_read_deadline_exceeded")
            summary = describe(error)
            self.breaker.failed(summary, ident)
            raise StoreUnavailable(f"S3 {operation} of s3://{self.bucket}/{key} failed after {attempts} "
                                   f"attempt{'s' if attempts > 1 else ''} in {now - started:.1f} s: "
                                   f"{summary}") from error
        self.stats.add("s3_retries")
        self._retries_metric.labels(operation).inc()
        log.debug("S3 %s of %s: %s; retry %d in %.2f s", operation, key, describe(error), attempts, delay)
        return delay

    def _deadline_exceeded(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"no answer within the {self.read_deadline:g} s read deadline")

    def _attempt(self, attempt_fn: Callable[[Attempt], T], deadline: float | None) -> T:
        call = Attempt(deadline)
        if deadline is None or self._attempts is None:
            return attempt_fn(call)
        future = self._attempts.submit(attempt_fn, call)
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except cf.TimeoutError:
            future.cancel()
            call.abandon()
            raise self._deadline_exceeded() from None

    # -- writes --------------------------------------------------------------------------
    def _call(self, counter: str, key: str, fn: Callable[..., dict[str, Any]], **args: Any) -> dict[str, Any]:
        """One write request; botocore answers with a dict."""
        self.stats.add(counter)
        try:
            return fn(Bucket=self.bucket, Key=key, **args)
        except (bce.ClientError, *NETWORK_ERRORS) as e:
            self.stats.add("s3_write_errors")
            raise self._translate(e, key) from e

    def put_object(self, key: str, data: bytes | memoryview, metadata: dict[str, str] | None = None) -> str:
        extra = {"Metadata": metadata} if metadata else {}
        r = self._call("s3_put", key, self.client.put_object, Body=bytes(data), **extra)
        self.stats.add("s3_put_bytes", len(data))
        return str(r["ETag"])

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        """One PUT with `If-None-Match: *` (AWS S3, MinIO, Ceph RGW, moto honour it): False on a 412
        (the key exists) or a 409 (a concurrent conditional PUT of the key won). A store that does not
        implement the header (501) gets plain PUTs from then on: last writer wins, same bytes."""
        if self._conditional_put:
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(data), IfNoneMatch="*")
            except bce.ClientError as e:
                status, code = http_status(e), error_code(e)
                if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                if status != 501 and code != "NotImplemented":
                    self.stats.add("s3_write_errors")
                    raise self._translate(e, key) from e
                log.info("%s does not support conditional PUTs (If-None-Match): plain PUTs from now on",
                         self.where)
                self._conditional_put = False
            except NETWORK_ERRORS as e:
                self.stats.add("s3_write_errors")
                raise self._translate(e, key) from e
            else:
                self.stats.add("s3_put")
                self.stats.add("s3_put_bytes", len(data))
                return True
        self.put_object(key, data)
        return True

    def create_multipart(self, key: str, metadata: dict[str, str] | None = None) -> str:
        extra = {"Metadata": metadata} if metadata else {}
        r = self._call("s3_multipart_create", key, self.client.create_multipart_upload, **extra)
        return str(r["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes | memoryview) -> str:
        r = self._call("s3_put_part", key, self.client.upload_part, UploadId=upload_id, PartNumber=number,
                       Body=bytes(data))
        self.stats.add("s3_put_bytes", len(data))
        return str(r["ETag"])

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        body = {"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in sorted(parts)]}
        r = self._call("s3_multipart_complete", key, self.client.complete_multipart_upload,
                       UploadId=upload_id, MultipartUpload=body)
        return str(r["ETag"])

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self._call("s3_multipart_abort", key, self.client.abort_multipart_upload, UploadId=upload_id)
        except ObjectNotFound:
            pass        # NoSuchUpload: already completed or aborted

    def list_multipart(self, prefix: str) -> list[tuple[str, str]]:
        out, args = [], {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            try:
                r = self.client.list_multipart_uploads(**args)
            except (bce.ClientError, *NETWORK_ERRORS) as e:
                raise self._translate(e, prefix) from e
            out += [(u["Key"], u["UploadId"]) for u in r.get("Uploads", ())]
            if not r.get("IsTruncated"):
                return out
            args.update(KeyMarker=r["NextKeyMarker"], UploadIdMarker=r["NextUploadIdMarker"])

    def delete(self, key: str) -> None:
        self._call("s3_delete", key, self.client.delete_object)

    def copy(self, src: str, dst: str, metadata: dict[str, str] | None = None) -> str:
        """One CopyObject, whose answer carries the new ETag. (A HEAD for it went through the read
        path's outage breaker: a rename failed after its copy had landed, issue 15.) Above S3's
        single-copy limit, boto3's managed copy (part copies) and a HEAD on the write client."""
        self.stats.add("s3_copy")
        extra = {"Metadata": metadata, "MetadataDirective": "REPLACE"} if metadata is not None else {}
        source = {"Bucket": self.bucket, "Key": src}
        try:
            try:
                r = self.client.copy_object(Bucket=self.bucket, Key=dst, CopySource=source, **extra)
                return str(r["CopyObjectResult"]["ETag"])
            except bce.ClientError as e:
                if e.response.get("Error", {}).get("Code") != "InvalidRequest":
                    raise
            self.client.copy(source, self.bucket, dst, ExtraArgs=extra or None)
            return str(self.client.head_object(Bucket=self.bucket, Key=dst)["ETag"])
        except (bce.ClientError, *NETWORK_ERRORS) as e:
            self.stats.add("s3_write_errors")
            raise self._translate(e, src) from e

    def replace_metadata(self, key: str, metadata: dict[str, str], size: int, etag: str | None = None) -> str:
        # One CopyObject onto itself up to S3's single-copy limit (the managed copy would first
        # HEAD the source and split anything above 8 MB into part copies); above it, the managed copy.
        if size > MAX_SINGLE_COPY:
            return super().replace_metadata(key, metadata, size, etag)
        extra = {"CopySourceIfMatch": etag} if etag else {}
        r = self._call("s3_copy", key, self.client.copy_object, CopySource={"Bucket": self.bucket, "Key": key},
                       Metadata=metadata, MetadataDirective="REPLACE", **extra)
        return str(r["CopyObjectResult"]["ETag"])

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        if self._attempts is not None:
            self._attempts.shutdown(wait=False, cancel_futures=True)
        self.read_client.close()
        self.client.close()
