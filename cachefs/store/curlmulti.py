"""libcurl's multi interface driven by trio, in the trio thread: no thread per request, no polling loop.

libcurl tells us, through its socket callback, which sockets it wants watched for what (in, out,
both, or no longer), and through its timer callback when it next wants to be called regardless.
The sockets it wants watched are kept in an epoll set of our own (level-triggered: what libcurl
leaves unread is reported again); one trio system task waits for that set to be readable and
calls `socket_action` for each ready socket, and one timer task calls `socket_action(SOCKET_TIMEOUT)`
when libcurl's timer expires. (A task per socket and direction cost each readiness a task switch
and two epoll_ctl calls in trio, and each reused connection a task spawn: measured per cold small
file, docs/BENCHMARKS.md.) A socket libcurl lets go (POLL_REMOVE, said just before it closes one)
leaves the set at once.

A transfer is an easy handle added to the multi; `await TrioMulti.perform(handle)` returns when
libcurl is done with it (its result code, 0 for success) and, if the awaiting task is cancelled,
removes the handle from the multi: the request really stops (its connection is closed by libcurl).

The tasks belong to the trio run they were started in; a store used from a later trio.run (tests)
gets a fresh multi. Everything here runs in the trio thread; nothing is thread-safe.
"""
from __future__ import annotations

import logging
import math
import select
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


class TrioMulti:
    def __init__(self) -> None:
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_SOCKETFUNCTION, self._socket_cb)
        self.multi.setopt(pycurl.M_TIMERFUNCTION, self._timer_cb)
        self._token: trio.lowlevel.TrioToken | None = None
        self._epoll = select.epoll()
        self._watches: dict[int, int] = {}                      # fd -> the epoll events it is watched for
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
            trio.lowlevel.spawn_system_task(self._poll_task, name="cachefs-curl-sockets")
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
        return len(self._watches)

    def close(self) -> None:
        """Stop the tasks and drop the multi: from the trio thread, or after its trio run ended
        (never from another thread while the run goes on)."""
        self.closed = True
        self._watches.clear()
        if self._timer_scope is not None:
            self._timer_scope.cancel()
        try:
            in_its_run = self._token is not None and trio.lowlevel.current_trio_token() is self._token
        except RuntimeError:      # outside trio: its run has ended
            in_its_run = False
        if in_its_run:
            trio.lowlevel.notify_closing(self._epoll.fileno())    # the socket task stops waiting on it
        for handle in self._handles.values():
            try:
                self.multi.remove_handle(handle)
            except pycurl.error:
                pass
        self.multi.close()
        self._epoll.close()

    # -- libcurl's callbacks (called inside socket_action, add_handle or remove_handle) ----------
    def _socket_cb(self, what: int, fd: int, multi: Any, socketp: Any) -> None:
        if self.closed:          # closing: libcurl lets its sockets go, maybe outside trio
            return
        events = (select.EPOLLIN if what & pycurl.POLL_IN else 0) | (select.EPOLLOUT if what & pycurl.POLL_OUT else 0)
        if what == pycurl.POLL_REMOVE or not events:
            # let go (libcurl may close it right after this), or kept but not watched: out of the
            # set either way (a socket watched for nothing would still report a hang-up, forever)
            if self._watches.pop(fd, None) is not None:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass         # closed already: the kernel took it out of the set
            return
        if self._watches.get(fd) == events:
            return
        try:
            try:
                if fd in self._watches:
                    self._epoll.modify(fd, events)
                else:
                    self._epoll.register(fd, events)
            except FileExistsError:     # a number reused after a close we were not told of
                self._epoll.modify(fd, events)
            except FileNotFoundError:   # closed and reused meanwhile: the kernel took it out
                self._epoll.register(fd, events)
        except OSError as e:            # cannot be watched: libcurl's timeouts end its transfer
            log.warning("libcurl socket %d cannot be watched: %s", fd, e)
            self._watches.pop(fd, None)
            return
        self._watches[fd] = events

    def _timer_cb(self, timeout_ms: int) -> None:
        if self.closed:
            return
        at = self._timer_at = math.inf if timeout_ms < 0 else trio.current_time() + timeout_ms / 1000
        # Only ever brought forward: libcurl moves its timer several times per transfer, mostly
        # later, and each move of a trio deadline is a heap push. Woken before `_timer_at`, the
        # task goes back to sleep until it without calling libcurl.
        scope = self._timer_scope
        if scope is not None and at < scope.deadline:
            scope.deadline = at

    # -- the tasks ----------------------------------------------------------------------------------
    async def _poll_task(self) -> None:
        """Every socket libcurl wants watched, through the one epoll set: ready ones to socket_action."""
        epfd = self._epoll.fileno()
        while not self.closed:
            try:
                await trio.lowlevel.wait_readable(epfd)
                ready = self._epoll.poll(0)
            except (trio.ClosedResourceError, trio.BusyResourceError, OSError, ValueError):
                return            # closed (notify_closing), or its run is ending
            for fd, ev in ready:
                if self.closed:
                    return
                if fd not in self._watches:
                    continue      # let go by an action of this same batch
                flags = 0
                if ev & (select.EPOLLIN | select.EPOLLHUP):
                    flags |= pycurl.CSELECT_IN
                if ev & select.EPOLLOUT:
                    flags |= pycurl.CSELECT_OUT
                if ev & select.EPOLLERR:
                    flags |= pycurl.CSELECT_ERR
                self._action(fd, flags)

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
