"""libcurl's multi interface driven by trio, in the trio thread: no thread per request, no polling loop.

libcurl tells us, through its socket callback, which sockets it wants watched for what (in, out,
both, or no longer), and through its timer callback when it next wants to be called regardless.
Here each (socket, direction) it wants is one trio system task in `wait_readable`/`wait_writable`
(trio allows one waiter per fd and direction), which calls `socket_action` when the socket is
ready; one timer task calls `socket_action(SOCKET_TIMEOUT)` when libcurl's timer expires.
When libcurl stops wanting a direction the task's scope is cancelled; when it lets a socket go
(POLL_REMOVE, which it says just before closing one) `notify_closing` wakes any waiter first.

A transfer is an easy handle added to the multi; `await TrioMulti.perform(handle)` returns when
libcurl is done with it (its result code, 0 for success) and, if the awaiting task is cancelled,
removes the handle from the multi: the request really stops (its connection is closed by libcurl).

The tasks belong to the trio run they were started in; a store used from a later trio.run (tests)
gets a fresh multi. Everything here runs in the trio thread; nothing is thread-safe.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import pycurl
import trio

log = logging.getLogger(__name__)


class _Transfer:
    __slots__ = ("done", "result", "message")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result = -1          # libcurl's CURLcode once done
        self.message = ""


class _Watch:
    """One task waiting for one socket to be ready in one direction."""
    __slots__ = ("scope",)

    def __init__(self) -> None:
        self.scope = trio.CancelScope()


class TrioMulti:
    def __init__(self) -> None:
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_SOCKETFUNCTION, self._socket_cb)
        self.multi.setopt(pycurl.M_TIMERFUNCTION, self._timer_cb)
        self._token: trio.lowlevel.TrioToken | None = None
        self._watches: dict[tuple[int, int], _Watch] = {}      # (fd, POLL_IN or POLL_OUT) -> task
        self._transfers: dict[int, _Transfer] = {}              # id(easy handle) -> its transfer
        self._handles: dict[int, pycurl.Curl] = {}
        self._timer_scope: trio.CancelScope | None = None
        self._timer_at = math.inf
        self.closed = False

    # -- what callers use ------------------------------------------------------------------------
    def bound_to_current_run(self) -> bool:
        """Whether this multi can serve the current trio run (False: it served another one)."""
        token = trio.lowlevel.current_trio_token()
        if self._token is None:
            self._token = token
            trio.lowlevel.spawn_system_task(self._timer_task, name="cachefs-curl-timer")
        return self._token is token

    async def perform(self, handle: pycurl.Curl) -> tuple[int, str]:
        """Run the transfer `handle` is set up for; (CURLcode, error message). Cancelled: the
        transfer is removed from the multi at once."""
        transfer = _Transfer()
        key = id(handle)
        self._transfers[key] = transfer
        self._handles[key] = handle
        try:
            self.multi.add_handle(handle)       # libcurl asks for a timer at 0: the timer task starts it
            try:
                await transfer.done.wait()
            finally:
                if transfer.result < 0 and not self.closed:     # cancelled mid-transfer: stop it for real
                    self.multi.remove_handle(handle)
        finally:
            del self._transfers[key]
            del self._handles[key]
        return transfer.result, transfer.message

    @property
    def watched_sockets(self) -> int:
        return len({fd for fd, _ in self._watches})

    def close(self) -> None:
        """Stop the tasks and drop the multi: from the trio thread, or after its trio run ended
        (never from another thread while the run goes on)."""
        self.closed = True
        for watch in list(self._watches.values()):
            watch.scope.cancel()
        self._watches.clear()
        if self._timer_scope is not None:
            self._timer_scope.cancel()
        for handle in self._handles.values():
            try:
                self.multi.remove_handle(handle)
            except pycurl.error:
                pass
        self.multi.close()

    # -- libcurl's callbacks (called inside socket_action, add_handle or remove_handle) ----------
    def _socket_cb(self, what: int, fd: int, multi: Any, socketp: Any) -> None:
        if self.closed:          # closing: libcurl lets its sockets go, maybe outside trio
            return
        if what == pycurl.POLL_REMOVE:
            stopped = [self._watches.pop((fd, d), None) for d in (pycurl.POLL_IN, pycurl.POLL_OUT)]
            if any(stopped):
                trio.lowlevel.notify_closing(fd)      # libcurl may close it right after this
                for watch in stopped:
                    if watch is not None:
                        watch.scope.cancel()
            return
        for direction in (pycurl.POLL_IN, pycurl.POLL_OUT):
            key = (fd, direction)
            if what & direction:
                if key not in self._watches:
                    watch = self._watches[key] = _Watch()
                    trio.lowlevel.spawn_system_task(self._watch_task, fd, direction, watch,
                                                    name="cachefs-curl-socket")
            else:
                stopped_watch = self._watches.pop(key, None)
                if stopped_watch is not None:
                    stopped_watch.scope.cancel()

    def _timer_cb(self, timeout_ms: int) -> None:
        if self.closed:
            return
        self._timer_at = math.inf if timeout_ms < 0 else trio.current_time() + timeout_ms / 1000
        if self._timer_scope is not None:
            self._timer_scope.deadline = self._timer_at

    # -- the tasks ----------------------------------------------------------------------------------
    async def _watch_task(self, fd: int, direction: int, watch: _Watch) -> None:
        wait = trio.lowlevel.wait_readable if direction == pycurl.POLL_IN else trio.lowlevel.wait_writable
        event = pycurl.CSELECT_IN if direction == pycurl.POLL_IN else pycurl.CSELECT_OUT
        with watch.scope:
            while not self.closed and not watch.scope.cancel_called:
                try:
                    await wait(fd)
                except (trio.ClosedResourceError, trio.BusyResourceError, OSError):
                    return        # libcurl let the socket go (notify_closing), or it is gone
                self._action(fd, event)

    async def _timer_task(self) -> None:
        while not self.closed:
            with trio.CancelScope(deadline=self._timer_at) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            if self.closed:
                return
            if scope.cancelled_caught and trio.current_time() >= self._timer_at:
                self._timer_at = math.inf       # libcurl sets the next one from inside socket_action
                self._action(pycurl.SOCKET_TIMEOUT, 0)

    def _action(self, fd: int, event: int) -> None:
        if self.closed:
            return
        try:
            self.multi.socket_action(fd, event)
        except pycurl.error as e:      # a system task must not raise: it would end the whole trio run
            log.error("libcurl socket_action failed: %s", e)
            return
        while True:
            queued, ok, failed = self.multi.info_read()
            for handle in ok:
                self._finish(handle, 0, "")
            for handle, code, message in failed:
                self._finish(handle, code, message)
            if not queued:
                return

    def _finish(self, handle: pycurl.Curl, code: int, message: str) -> None:
        self.multi.remove_handle(handle)
        transfer = self._transfers.get(id(handle))
        if transfer is not None:
            transfer.result, transfer.message = code, message
            transfer.done.set()
