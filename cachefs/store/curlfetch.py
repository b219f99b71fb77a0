"""GETs on the C fetcher (native/fetch.c, module cachefs._fetch), awaited from the trio thread.

The fetcher runs libcurl's multi in a thread of its own and writes a 200/206 body straight into
the buffer it is given; the trio thread submits a transfer with one call and learns of finished
ones through an eventfd, read by one system task per trio run, which drains them in batches and
wakes each waiting task. Nothing of the transfer itself (sockets, header lines, body chunks) runs
in Python. A cancelled waiter cancels its transfer (libcurl stops it, closing its connection).

Used by CurlEngine (store/curlengine.py) for GETs when the extension is built; HEAD and LIST stay
on pycurl. CACHEFS_NO_NATIVE_FETCH=1 in the environment keeps GETs on pycurl too (to compare).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import outcome
import trio

log = logging.getLogger(__name__)

try:
    from cachefs import _fetch as _native_fetch  # type: ignore[attr-defined]
except ImportError as e:          # not built (no libcurl headers at build time), or libcurl too old
    _native_fetch = None
    WHY_NOT = f"cachefs._fetch is not available ({e})"
else:
    WHY_NOT = ""
if os.environ.get("CACHEFS_NO_NATIVE_FETCH") and _native_fetch is not None:
    _native_fetch = None
    WHY_NOT = "CACHEFS_NO_NATIVE_FETCH is set"

ANSWERED = -1000 if _native_fetch is None else _native_fetch.ANSWERED


def available() -> bool:
    return _native_fetch is not None


class Answer:
    """A finished GET: libcurl's code and message, the HTTP status, the raw header lines, how many
    body bytes went into the caller's buffer, the body of any other answer (S3's error), the
    connections it opened and when its headers were complete (time.perf_counter's clock)."""
    __slots__ = ("code", "message", "status", "raw_headers", "body_len", "error_body", "connects", "headers_at")

    def __init__(self, record: tuple[Any, ...]) -> None:
        (_, self.code, self.message, self.status, self.raw_headers, self.body_len, self.error_body,
         self.connects, headers_at_ns) = record
        self.headers_at = headers_at_ns / 1e9

    def headers(self) -> dict[str, str]:
        out = {}
        for line in self.raw_headers.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                out[name.strip().decode("latin-1").lower()] = value.strip().decode("utf-8", "replace")
        return out


class _Wait:
    __slots__ = ("task", "answered")

    def __init__(self, task: Any, answered: trio.Event | None) -> None:
        self.task = task
        self.answered = answered


class TrioFetcher:
    """One C fetcher and the trio task that drains it, for one trio run."""

    def __init__(self, *, max_connections: int, connect_timeout: float, read_timeout: float,
                 cainfo: str | None, useragent: str) -> None:
        assert _native_fetch is not None, WHY_NOT
        self._fetcher = _native_fetch.Fetcher(max_connections, int(connect_timeout * 1000),
                                              max(1, int(read_timeout)), cainfo, useragent)
        self._waits: dict[int, _Wait] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self.closed = False

    def bound_to_current_run(self) -> bool:
        token = trio.lowlevel.current_trio_token()
        if self._token is None:
            self._token = token
            trio.lowlevel.spawn_system_task(self._drain_task, name="cachefs-fetch-drain")
        return self._token is token

    @property
    def pending(self) -> int:
        return int(self._fetcher.pending)

    async def get(self, url: str, headers: list[str], body: Any, sigv4: str | None, userpwd: str | None,
                  as_is: bool, answered: trio.Event | None) -> Answer:
        """GET `url` into `body` (a writable buffer of the expected length). Cancelled: the
        transfer stops at once."""
        ident = self._fetcher.submit(url, headers, body, sigv4, userpwd, as_is, answered is not None)
        self._waits[ident] = _Wait(trio.lowlevel.current_task(), answered)

        def abort(_: Any) -> trio.lowlevel.Abort:
            if self._waits.pop(ident, None) is not None and not self.closed:
                self._fetcher.cancel(ident)
            return trio.lowlevel.Abort.SUCCEEDED
        answer: Answer = await trio.lowlevel.wait_task_rescheduled(abort)
        return answer

    def close(self) -> None:
        """From the trio thread (or after its run ended): the drain task stops, the thread ends,
        every transfer is dropped."""
        if self.closed:
            return
        self.closed = True
        try:
            in_its_run = self._token is not None and trio.lowlevel.current_trio_token() is self._token
        except RuntimeError:
            in_its_run = False
        if in_its_run:
            trio.lowlevel.notify_closing(self._fetcher.fileno())
        self._fetcher.close()
        waits, self._waits = self._waits, {}
        for wait in waits.values():
            if in_its_run:
                trio.lowlevel.reschedule(wait.task, outcome.Error(ConnectionError("the S3 fetcher was closed")))

    async def _drain_task(self) -> None:
        fd = self._fetcher.fileno()
        while not self.closed:
            try:
                await trio.lowlevel.wait_readable(fd)
            except (trio.ClosedResourceError, trio.BusyResourceError, OSError, ValueError):
                return            # closed (notify_closing), or its run is ending
            if self.closed:
                return
            try:
                self._deliver(self._fetcher.drain())
            except Exception:     # a system task must not raise: it would end the whole trio run
                log.exception("draining the S3 fetcher failed")    # a waiter left: its deadline ends it

    def _deliver(self, records: list[tuple[Any, ...]]) -> None:
        for record in records:
            if record[1] == ANSWERED:
                wait = self._waits.get(record[0])
                if wait is not None and wait.answered is not None:
                    wait.answered.set()
                continue
            wait = self._waits.pop(record[0], None)
            if wait is not None:
                trio.lowlevel.reschedule(wait.task, outcome.Value(Answer(record)))
