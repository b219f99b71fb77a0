"""The read path's retries against S3: which failures are worth another attempt (the network, 5xx,
throttling; never a definite answer such as 404 or 412), the backoff between attempts, and an
attempt's response body that a caller past its deadline can cut off. S3Store._read runs the loop."""
from __future__ import annotations

import http.client
import random
import socket
import threading
from typing import Any

import botocore.exceptions as bce
import urllib3.exceptions

NETWORK_ERRORS = (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError,
                  bce.ConnectionClosedError, bce.ResponseStreamingError,
                  urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
# What a read retries: the network failing (before or during the response body), or S3 answering
# that it failed or is overloaded. Anything else (404, 403, 412, 400 ...) is a definite answer.
BODY_ERRORS = (bce.IncompleteReadError, http.client.HTTPException)
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded",
                  "ServiceUnavailable", "503", "429"}
# Backoff before retry n (1-based) is BASE * 2**(n-1), times a random factor in [0.5, 1) ("equal
# jitter": spread out, but never less than half, so a retry storm cannot form), capped at RETRY_CAP_S.
# 100 ms first: a 500 or a reset is usually one bad server or connection, and the next try lands
# elsewhere. 500 ms first after 503 SlowDown / 429: the endpoint asked us to slow down.
RETRY_BASE_S = 0.1
THROTTLE_BASE_S = 0.5
RETRY_CAP_S = 5.0


def error_code(e: bce.ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def http_status(e: bce.ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class ShortRead(Exception):
    """A response body shorter than the range asked for (a connection cut mid-body)."""


class DeadlineExceeded(Exception):
    """The read's deadline passed while an attempt was still waiting for S3."""


class Attempt:
    """One attempt's response body, so that a caller that stops waiting can close it: the worker
    thread reading it then fails at once instead of holding a connection for as long as S3 trickles."""

    def __init__(self, deadline: float | None = None) -> None:
        self._lock = threading.Lock()
        self._body = None
        self.abandoned = False
        self.deadline = deadline

    def hold(self, body: Any) -> None:
        """The response whose body is about to be read (a botocore StreamingBody or urllib3 response)."""
        with self._lock:
            if self.abandoned:
                body.close()
                raise ShortRead("abandoned at the deadline")
            self._body = body

    def abandon(self) -> None:
        with self._lock:
            self.abandoned = True
            body = self._body
        if body is None:
            return
        # Not body.close(): that waits for the reading thread's buffer lock, i.e. for the trickle to
        # end. Shutting the socket down makes that thread's read fail now; it then closes everything.
        sock = socket_of(body)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def socket_of(body: Any) -> socket.socket | None:
    """The socket under a botocore StreamingBody or urllib3 (2.x) response, or None if its layout is
    unknown."""
    raw = getattr(body, "_raw_stream", body)       # a StreamingBody, or the urllib3 response itself
    conn = getattr(raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    if sock is None:       # released to the pool already, or another urllib3: through the http.client response
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def retryable(e: bce.ClientError) -> bool:
    return (http_status(e) in RETRY_STATUS or error_code(e) in THROTTLE_CODES
            or error_code(e) in ("InternalError", "RequestTimeout"))


def backoff(retry: int, throttled: bool) -> float:
    base = THROTTLE_BASE_S if throttled else RETRY_BASE_S
    return float(min(RETRY_CAP_S, base * 2 ** (retry - 1)) * random.uniform(0.5, 1.0))


def describe(e: BaseException) -> str:
    if isinstance(e, bce.ClientError):
        return f"{error_code(e) or 'HTTP'} {http_status(e) or ''}".strip()
    if isinstance(e, (DeadlineExceeded, ShortRead)):
        return str(e)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
