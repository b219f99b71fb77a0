"""The read path's S3 requests on libcurl (PyPI `pycurl`), awaited from the trio thread.

One attempt of a GET (ranged, If-Match), HEAD or ListObjectsV2 page: the URL botocore would build
(endpoint and addressing style, taken from the boto3 client once), signed by libcurl itself
(CURLOPT_AWS_SIGV4) with the client's credentials frozen per request (refreshable ones included,
a session token as a header that libcurl signs too); botocore's S3SigV4Auth signs only a key with
"." or ".." segments, which libcurl will not send untouched with SigV4. A 200/206 body of the
expected length lands straight in a recycled block buffer with header room for the cache's frame
(native.buffer), anything else in bytes. TLS is verified against
AWS_CA_BUNDLE or the system's CA bundle.

Failures come out as the exceptions S3Store's retry loop already classifies: botocore's ClientError
for an S3 error answer, CurlNetworkError (a ConnectionError) or CurlTimeout (a TimeoutError) when
there is no answer, FallBack for an answer only boto3 handles (a redirect to another region).
Retries, deadlines and the breaker are S3Store's (store/s3.py); the multi: store/curlmulti.py.
GETs run on the C fetcher instead when it is built (store/curlfetch.py, native/fetch.c): the same
URL, headers and signing, the answer handed over whole, with the same errors and counters.
"""
from __future__ import annotations

import os
import re
import ssl
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import botocore.exceptions as bce
import pycurl
import trio
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

from cachefs import __version__, metrics, native
from cachefs.store import curlfetch
from cachefs.store.base import ListPage, ObjectInfo
from cachefs.store.curlfetch import TrioFetcher
from cachefs.store.curlmulti import TrioMulti
from cachefs.store.s3list import FallBack, parse_page

SIGV4_MIN_LIBCURL = 0x074B00   # 7.75.0: CURLOPT_AWS_SIGV4
_SENTINEL = "cachefs-sentinel-key"
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
# The answers S3Store knows what to do with; anything else (301, 307 ...) goes to boto3, which
# follows region redirects itself (and so does a 400 that names a wrong region, _WRONG_REGION).
_HANDLED_ERRORS = {400, 403, 404, 408, 412, 416, 429, 500, 502, 503, 504}
_WRONG_REGION = {"AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException"}
_META = "x-amz-meta-"
_EMPTY_PAYLOAD = "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ERROR_BODY_MAX = 64 * 1024
# libcurl's CURLcodes for "no answer in time" (28) and its own write callback refusing a body (23).
_TIMEOUT_CODES = {pycurl.E_OPERATION_TIMEDOUT}


class CurlNetworkError(ConnectionError):
    """No (complete) answer: connection refused or reset, a body cut short, TLS failure ..."""


class CurlTimeout(TimeoutError):
    """libcurl's own timeouts: connect, or no data for read_timeout seconds."""


def unavailable() -> str | None:
    """None when this libcurl can sign SigV4 itself; else why the engine cannot run."""
    version = pycurl.version_info()
    if version[2] < SIGV4_MIN_LIBCURL or not hasattr(pycurl, "AWS_SIGV4"):
        return f"libcurl {version[1]} has no CURLOPT_AWS_SIGV4 (needs 7.75)"
    return None


def ca_bundle() -> str | None:
    """AWS_CA_BUNDLE, else the system's bundle (this wheel's libcurl has another distribution's path
    built in), else certifi's (botocore's default)."""
    explicit = os.environ.get("AWS_CA_BUNDLE")
    if explicit:
        return explicit
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return candidate
    try:
        import certifi
        return str(certifi.where())
    except ImportError:
        return None


def bucket_url(client: Any, operation: str, params: dict[str, str]) -> str:
    """The URL botocore builds for this operation (endpoint and addressing style), without its query."""
    url: str = client.generate_presigned_url(operation, Params=params)
    return url.split("?", 1)[0]


def quote_key(key: str) -> str:
    """A key as S3 wants it in the path: every byte but unreserved characters and '/' percent-encoded
    (botocore's percent_encode with safe='/~')."""
    return quote(key, safe="/~")


class _Exchange:
    """One request's answer as libcurl hands it over: status, headers, body."""
    __slots__ = ("status", "headers", "expected", "view", "buf", "pos", "answered", "limit", "headers_at")

    def __init__(self, expected: int, answered: trio.Event | None) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.expected = expected           # body length that goes into a block buffer (0: none)
        self.view: memoryview | None = None
        self.buf = bytearray()
        self.pos = 0
        self.answered = answered
        self.limit = 0
        self.headers_at = 0.0           # time.perf_counter() when the answer's headers were complete

    def header(self, line: bytes) -> None:
        if line.startswith(b"HTTP/"):
            parts = line.split(None, 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self.headers = {}         # a 100 Continue's or a redirect's headers are not the answer's
            return
        name, sep, value = line.partition(b":")
        if sep:
            self.headers[name.strip().decode("latin-1").lower()] = value.strip().decode("utf-8", "replace")
        elif line in (b"\r\n", b"\n") and self.status >= 200:
            self.headers_at = time.perf_counter()
            if self.answered is not None and self.status in (200, 206):
                self.answered.set()

    def write(self, chunk: bytes) -> int | None:
        n = len(chunk)
        if self.pos == 0 and self.view is None and not self.buf:
            ok = self.status in (200, 206)
            if not ok:
                self.limit = ERROR_BODY_MAX
            elif self.expected and self.headers.get("content-length") == str(self.expected):
                self.view = memoryview(native.buffer(self.expected, headroom=native.HEADER.size))
        if self.view is not None:
            end = self.pos + n
            if end > self.expected:
                return 0                      # more than announced: libcurl aborts the transfer
            self.view[self.pos:end] = chunk
            self.pos = end
            return None
        if self.limit and len(self.buf) >= self.limit:
            return None                       # an error body: its start says enough
        self.buf += chunk
        return None

    def body(self) -> bytes | memoryview:
        if self.view is not None:
            return self.view if self.pos == self.expected else self.view[:self.pos]
        return bytes(self.buf)


class CurlEngine:
    """Requests on one TrioMulti (created per trio run), easy handles kept for reuse."""

    def __init__(self, client: Any, bucket: str, *, connect_timeout: float, read_timeout: float,
                 max_connections: int) -> None:
        why = unavailable()
        if why:
            raise FallBack(why)
        self.region = client.meta.region_name or "us-east-1"
        self._credentials = client._request_signer._credentials   # refreshable: frozen per request
        base = bucket_url(client, "get_object", {"Bucket": bucket, "Key": _SENTINEL})
        if not base.endswith("/" + _SENTINEL):
            raise FallBack(f"unexpected object URL {base}")
        self.object_prefix = base[:-len(_SENTINEL)]          # ".../bucket/" or "https://bucket.host/"
        self.list_url = bucket_url(client, "list_objects_v2", {"Bucket": bucket})
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.cainfo = ca_bundle()
        self._sigv4 = f"aws:amz:{self.region}:s3"
        self._agent = f"cachefs/{__version__} libcurl"
        self._multi: TrioMulti | None = None
        self._free: list[pycurl.Curl] = []
        # Told how many connections each request opened (a reused one: none; a transfer cancelled
        # mid-answer closes its connection, so churn shows here).
        self.on_connections: Callable[[int], None] = _ignore
        self._userpwd: tuple[Any, str] = (None, "")
        # GETs on the C fetcher when it is built (store/curlfetch.py); HEAD and LIST on pycurl.
        self.fetch_native = curlfetch.available()
        self._fetcher: TrioFetcher | None = None

    # -- plumbing ---------------------------------------------------------------------------------
    def _current_multi(self) -> TrioMulti:
        multi = self._multi
        if multi is None or not multi.bound_to_current_run():
            if multi is not None:     # it served an earlier trio run (tests): its tasks are gone
                multi.close()
            self._free.clear()
            multi = self._multi = TrioMulti()
            multi.multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, self.max_connections)
            multi.multi.setopt(pycurl.M_MAXCONNECTS, self.max_connections)   # as native/fetch.c: idle ones kept
            multi.bound_to_current_run()
        return multi

    def _handle(self) -> pycurl.Curl:
        if self._free:
            return self._free.pop()
        c = pycurl.Curl()
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.CONNECTTIMEOUT_MS, int(self.connect_timeout * 1000))
        # No data for read_timeout seconds ends the transfer, like a socket read timeout.
        c.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        c.setopt(pycurl.LOW_SPEED_TIME, max(1, int(self.read_timeout)))
        c.setopt(pycurl.BUFFERSIZE, 512 * 1024)     # fewer, larger write callbacks
        c.setopt(pycurl.USERAGENT, self._agent)
        c.setopt(pycurl.TCP_NODELAY, 1)
        if self.cainfo:
            c.setopt(pycurl.CAINFO, self.cainfo)
        return c

    def _auth(self, method: str, url: str, headers: list[str], as_is: bool) -> tuple[list[str], str | None, str]:
        """(headers to send, libcurl's CURLOPT_AWS_SIGV4 or None, its user:password). libcurl signs,
        an x-amz-security-token header too (libcurl 8.x; checked against moto with session
        credentials); botocore signs instead for a path libcurl would tidy (`as_is`: a key with "."
        or ".." segments, which libcurl refuses to send untouched with SigV4): then the headers are
        signed already and libcurl adds no auth."""
        creds = self._credentials.get_frozen_credentials()
        if as_is:
            request = AWSRequest(method, url, headers=dict(h.split(": ", 1) for h in headers))
            S3SigV4Auth(creds, "s3", self.region).add_auth(request)
            return [f"{k}: {v}" for k, v in request.headers.items()], None, ""
        if self._userpwd[0] != creds:
            self._userpwd = (creds, f"{creds.access_key}:{creds.secret_key}")
        if creds.token:
            headers = [*headers, f"x-amz-security-token: {creds.token}"]
        return headers, self._sigv4, self._userpwd[1]

    def _sign(self, c: pycurl.Curl, method: str, url: str, headers: list[str], as_is: bool) -> list[str]:
        """The headers to send; libcurl set to sign them (_auth)."""
        signed, sigv4, userpwd = self._auth(method, url, headers, as_is)
        c.setopt(pycurl.PATH_AS_IS, as_is)
        if sigv4 is None:
            c.setopt(pycurl.HTTPAUTH, pycurl.HTTPAUTH_BASIC)   # and no user: libcurl adds no auth
            c.unsetopt(pycurl.USERPWD)
        else:
            c.setopt(pycurl.AWS_SIGV4, sigv4)
            c.setopt(pycurl.USERPWD, userpwd)
        return signed

    async def _exchange(self, operation: str, method: str, url: str, headers: list[str], expected: int = 0,
                        answered: trio.Event | None = None, as_is: bool = False) -> _Exchange:
        multi = self._current_multi()
        c = self._handle()
        ex = _Exchange(expected, answered)
        c.setopt(pycurl.URL, url)
        if method == "HEAD":
            c.setopt(pycurl.NOBODY, 1)
        else:
            c.setopt(pycurl.HTTPGET, 1)
        signed = self._sign(c, method, url, headers, as_is)
        if signed:
            c.setopt(pycurl.HTTPHEADER, signed)
        else:
            c.unsetopt(pycurl.HTTPHEADER)       # an empty list would leave the last request's in place
        c.setopt(pycurl.HEADERFUNCTION, ex.header)
        c.setopt(pycurl.WRITEFUNCTION, ex.write)
        t0 = time.perf_counter()
        try:
            code, message = await multi.perform(c)
            opened = c.getinfo(pycurl.NUM_CONNECTS)
            if opened:
                self.on_connections(opened)
        finally:
            c.setopt(pycurl.HEADERFUNCTION, _ignore)   # drop the references to this exchange
            c.setopt(pycurl.WRITEFUNCTION, _ignore)
            if not multi.closed:
                self._free.append(c)
        _raise_for_code(operation, code, message)
        return _counted(operation, ex, t0)

    async def _fetched(self, url: str, headers: list[str], expected: int, answered: trio.Event | None,
                       as_is: bool) -> _Exchange:
        """_exchange for a GET on the C fetcher (store/curlfetch.py): the body lands in a block
        buffer without a Python call per chunk."""
        fetcher = self._current_fetcher()
        signed, sigv4, userpwd = self._auth("GET", url, headers, as_is)
        if sigv4 is not None:
            # libcurl before 8.x signs S3 requests without this header, which S3 requires (the
            # hash of an empty body); libcurl signs the one it is given (native/fetch.c)
            signed = [*signed, _EMPTY_PAYLOAD]
        buf = native.buffer(expected, headroom=native.HEADER.size)
        t0 = time.perf_counter()
        answer = await fetcher.get(url, signed, buf, sigv4, userpwd, as_is, answered)
        if answer.connects:
            self.on_connections(answer.connects)
        _raise_for_code("GetObject", answer.code, answer.message)
        ex = _Exchange(expected, None)
        ex.status = answer.status
        ex.headers = answer.headers()
        ex.headers_at = answer.headers_at
        if answer.body_len or not answer.error_body:
            ex.view = memoryview(buf)
            ex.pos = answer.body_len
        else:
            ex.buf = bytearray(answer.error_body)
        return _counted("GetObject", ex, t0)

    def _current_fetcher(self) -> TrioFetcher:
        fetcher = self._fetcher
        if fetcher is None or not fetcher.bound_to_current_run():
            if fetcher is not None:   # it served an earlier trio run (tests): its task is gone
                fetcher.close()
            fetcher = self._fetcher = TrioFetcher(
                max_connections=self.max_connections, connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout, cainfo=self.cainfo, useragent=self._agent)
            fetcher.bound_to_current_run()
        return fetcher

    @staticmethod
    def _error(operation: str, ex: _Exchange) -> Exception:
        body = bytes(ex.buf)
        code = (_CODE.search(body) or [b"", b""])[1].decode(errors="replace")
        if ex.status not in _HANDLED_ERRORS or code in _WRONG_REGION:
            return FallBack(f"HTTP {ex.status} {code}".strip())
        message = (_MESSAGE.search(body) or [b"", b""])[1].decode(errors="replace")
        error: Exception = bce.ClientError({"Error": {"Code": code or str(ex.status), "Message": message},
                                            "ResponseMetadata": {"HTTPStatusCode": ex.status}}, operation)
        return error

    # -- the requests -------------------------------------------------------------------------------
    async def get(self, key: str, start: int, end: int, etag: str | None,
                  on_headers: Callable[[dict[str, str]], None] | None = None,
                  answered: trio.Event | None = None) -> bytes | memoryview:
        """Bytes [start, end) of `key` (fewer if the body was cut short: the caller checks)."""
        headers = [f"Range: bytes={start}-{end - 1}"]
        if etag:
            headers.append(f"If-Match: {etag}")
        url = self.object_prefix + quote_key(key)
        if self.fetch_native:
            ex = await self._fetched(url, headers, end - start, answered, _dot_segments(key))
        else:
            ex = await self._exchange("GetObject", "GET", url, headers, end - start, answered, _dot_segments(key))
        if ex.status not in (200, 206):
            raise self._error("GetObject", ex)
        if on_headers is not None:
            on_headers(ex.headers)
        data = ex.body()
        metrics.S3_RECEIVED.labels("GetObject").inc(len(data))
        return data

    async def head(self, key: str) -> ObjectInfo | None:
        ex = await self._exchange("HeadObject", "HEAD", self.object_prefix + quote_key(key), [],
                                  as_is=_dot_segments(key))
        if ex.status == 404:
            return None
        if ex.status != 200:
            raise self._error("HeadObject", ex)
        h = ex.headers
        try:
            mtime_ns = int(parsedate_to_datetime(h["last-modified"]).timestamp() * 1e9)
            size = int(h["content-length"])
        except (KeyError, TypeError, ValueError) as e:
            raise FallBack(f"a HEAD answer without a usable length or date ({e})") from None
        meta = {name[len(_META):]: value for name, value in h.items() if name.startswith(_META)}
        return ObjectInfo(key, size, h.get("etag", ""), mtime_ns, meta)

    async def list_page(self, prefix: str, token: str | None, max_keys: int, delimiter: str) -> ListPage:
        params = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys), "encoding-type": "url"}
        if delimiter:
            params["delimiter"] = delimiter
        if token:
            params["continuation-token"] = token
        query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))
        ex = await self._exchange("ListObjectsV2", "GET", f"{self.list_url}?{query}", [])
        if ex.status != 200:
            raise self._error("ListObjectsV2", ex)
        return parse_page(bytes(ex.buf))

    def close(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None
        if self._multi is not None:
            self._multi.close()
            self._multi = None
        for c in self._free:
            c.close()
        self._free.clear()


def _raise_for_code(operation: str, code: int, message: str) -> None:
    """libcurl's result of a transfer (pycurl's or the C fetcher's): no answer is an exception."""
    if code != 0:
        metrics.S3_REQUESTS.labels(operation, "error").inc()
        if code in _TIMEOUT_CODES:
            raise CurlTimeout(f"curl error {code}: {message}")
        raise CurlNetworkError(f"curl error {code}: {message}")


def _counted(operation: str, ex: _Exchange, t0: float) -> _Exchange:
    metrics.S3_SECONDS.labels(operation).observe((ex.headers_at or time.perf_counter()) - t0)
    metrics.S3_REQUESTS.labels(operation, str(ex.status)).inc()
    return ex


def _dot_segments(key: str) -> bool:
    """Whether the key has a "." or ".." path segment, which libcurl would resolve away."""
    return "." in key and any(part in (".", "..") for part in key.split("/"))


def _ignore(*args: Any) -> None:
    return None
