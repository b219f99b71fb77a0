"""Ranged GetObject without botocore's per-call pipeline.

A boto3 get_object call spends ~1.3 ms of CPU in botocore itself (parameter validation, the event
hooks, serializer, response parser) on top of the HTTP exchange: 2.0 ms of CPU for a 110 KB GET
against 0.6-0.75 ms this way, 3.6-4.0 ms against 2.45 ms for a 4 MiB block (bench/s3client.py,
docs/BENCHMARKS.md). On a loader reading small files cold, the daemon's CPU per file sets the
rate, so the read path takes this shortcut. It still uses botocore for everything that must be
right: the request is signed by botocore's SigV4 signer with the client's (refreshable)
credentials and region, sent through the client's own HTTP session (its connection pool, TLS and CA
bundle, proxies and timeouts), its URL is the one botocore builds for the bucket (endpoint and
addressing style), and errors come out as the same botocore exceptions, so retries, deadlines and
error translation in S3Store are unchanged.

Anything this path cannot handle (a redirect to another region, an unexpected status) raises
FallBack once, and the store switches to plain boto3 calls for good.

SignedRequests (signing, sending, timing, errors) is shared with the listing's fast path,
store/fastlist.py.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import botocore.exceptions as bce
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.utils import percent_encode

from cachefs import __version__, metrics, native

_SENTINEL = "cachefs-sentinel-key"
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
# The answers S3Store knows what to do with; anything else (301, 307, 400 ...) goes to boto3,
# which follows region redirects itself.
_HANDLED_ERRORS = {403, 404, 408, 412, 416, 429, 500, 502, 503, 504}
_WRONG_REGION = {"AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException"}


def _read_body(raw: Any, expected: int) -> bytes | memoryview:
    """The body of a 200/206 answer. One of the expected length is received straight into a buffer
    of its own (native.buffer: recycled block memory, so a 4 MiB body costs no page faults and no
    copy), through the http.client response urllib3 wraps; anything else (no or another length, or
    a urllib3 without that attribute) is read by urllib3. A body cut short gives fewer bytes: the
    caller checks the length."""
    fp: Any = getattr(raw, "_fp", None)
    if (expected <= 0 or not hasattr(fp, "readinto")
            or raw.headers.get("Content-Length") != str(expected) or raw.headers.get("Transfer-Encoding")):
        body: bytes = raw.read()
        return body
    view = memoryview(native.buffer(expected, headroom=native.HEADER.size))   # header room: write_framed
    got = 0
    while got < expected:
        n = fp.readinto(view[got:])
        if not n:
            break
        got += n
    return view if got == expected else view[:got]


class FallBack(Exception):
    """This request (and every later one) should go through boto3."""


class DeadlinePassed(TimeoutError):
    """The caller's deadline passed before the request could be sent."""


class SignedRequests:
    """What the fast paths share: requests signed by botocore's SigV4 signer with the client's
    credentials and region, sent through the client's own HTTP session, timed and counted like
    boto3's, and S3's error answers turned into botocore's ClientError (or FallBack)."""

    def __init__(self, client: Any) -> None:
        self.region = client.meta.region_name
        self._credentials = client._request_signer._credentials   # refreshable: frozen per request
        self._http = client._endpoint.http_session
        self.read_timeout = client.meta.config.read_timeout
        self._agent = f"cachefs/{__version__} botocore-signed"

    def _send(self, operation: str, url: str, headers: dict[str, str], deadline: float | None,
              params: dict[str, str] | None = None) -> Any:
        """The response (its body not read yet), or botocore's connection errors, or DeadlinePassed."""
        headers["User-Agent"] = self._agent
        request = AWSRequest("GET", url, headers=headers, params=params)
        S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self.region).add_auth(request)
        prepared = request.prepare()
        prepared.stream_output = True
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlinePassed("the read deadline passed")
            prepared.context = {"read_timeout": min(self.read_timeout, remaining)}
        t0 = time.perf_counter()
        try:
            response = self._http.send(prepared)
        except Exception:
            metrics.S3_REQUESTS.labels(operation, "error").inc()
            raise
        metrics.S3_SECONDS.labels(operation).observe(time.perf_counter() - t0)
        metrics.S3_REQUESTS.labels(operation, str(response.status_code)).inc()
        return response

    @staticmethod
    def _error(operation: str, status: int, raw: Any) -> Exception:
        """The exception for an answer other than success (its connection released)."""
        body = raw.read(64 * 1024) if status != 304 else b""
        raw.release_conn()
        code = (_CODE.search(body) or [b"", b""])[1].decode(errors="replace")
        if status not in _HANDLED_ERRORS or code in _WRONG_REGION:
            return FallBack(f"HTTP {status} {code}".strip())
        message = (_MESSAGE.search(body) or [b"", b""])[1].decode(errors="replace")
        error: Exception = bce.ClientError({"Error": {"Code": code or str(status), "Message": message},
                                            "ResponseMetadata": {"HTTPStatusCode": status}}, operation)
        return error


def bucket_url(client: Any, operation: str, params: dict[str, str]) -> str:
    """The URL botocore builds for this operation (endpoint and addressing style), without its query."""
    url: str = client.generate_presigned_url(operation, Params=params)
    return url.split("?", 1)[0]


class FastGetter(SignedRequests):
    def __init__(self, client: Any, bucket: str) -> None:
        super().__init__(client)
        base = bucket_url(client, "get_object", {"Bucket": bucket, "Key": _SENTINEL})
        if not base.endswith("/" + _SENTINEL):
            raise FallBack(f"unexpected object URL {base}")
        self.prefix = base[:-len(_SENTINEL)]          # ".../bucket/" or "https://bucket.host/"

    def get(self, key: str, start: int, end: int, etag: str | None, on_body: Callable[[Any], object],
            deadline: float | None = None) -> bytes | memoryview:
        """Bytes [start, end) of `key`. `on_body(response)` is told the raw urllib3 response before its
        body is read (so a caller past its deadline can shut the socket: a body trickling in trips
        no socket timeout). With a `deadline` (time.monotonic()), waiting for the answer does not
        outlast it. Raises botocore's exceptions (ClientError with the S3 error code, connection
        errors), DeadlinePassed or FallBack."""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if etag:
            headers["If-Match"] = etag
        response = self._send("GetObject", self.prefix + percent_encode(key, safe="/~"), headers, deadline)
        status = response.status_code
        raw = response.raw
        if status not in (200, 206):
            raise self._error("GetObject", status, raw)
        on_body(raw)
        try:
            data = _read_body(raw, end - start)
        finally:
            raw.release_conn()
        metrics.S3_RECEIVED.labels("GetObject").inc(len(data))
        return data
