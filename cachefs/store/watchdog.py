"""One thread that calls a function when its deadline passes, unless it was disarmed first.

The read path's fast GET runs in its caller's thread and bounds its header wait with a socket
timeout; a body that trickles in never trips one, so an armed deadline shuts that request's socket
instead. One thread for the whole mount: arming costs a heap push, not a thread hop per GET.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

# An armed deadline: [when, seq, fn or None (disarmed)], a list so that disarm() can change it in place.
Entry = list[Any]


class Watchdog:
    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, when: float, fn: Callable[[], None]) -> Entry:
        """Call `fn()` at time.monotonic() `when`; returns the handle for disarm()."""
        entry = [when, next(self._seq), fn]
        with self._cv:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cachefs-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0] is entry:
                self._cv.notify()              # earlier than what the thread sleeps towards
        return entry

    @staticmethod
    def disarm(entry: Entry) -> None:
        entry[2] = None                        # dropped lazily when it reaches the top

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._closed:
                        return
                    while self._heap and self._heap[0][2] is None:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cv.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        fn = heapq.heappop(self._heap)[2]
                        break
                    self._cv.wait(wait)
            try:
                fn()
            except Exception:  # noqa: BLE001 - a failed shutdown of one request must not stop the others
                pass
