"""The two events the write path's tasks meet on.

`changed` is set, and replaced by a fresh event, whenever an upload, delete or abort finishes: a
task waiting for one (flush, fsync, a rename claiming a name) takes the current event and waits on
it, then looks again. `wake()` makes the scheduler look for due work now instead of at its next
tick. Both are replaced, never cleared, so a waiter never misses a set that came before its wait.
"""
from __future__ import annotations

import trio


class Signals:
    def __init__(self) -> None:
        self.changed = trio.Event()
        self._wake = trio.Event()

    def wake(self) -> None:
        """Something became due: the scheduler runs now."""
        self._wake.set()

    def notify(self) -> None:
        """An upload, delete or abort finished: waiters look again, and so does the scheduler."""
        self.changed.set()
        self.changed = trio.Event()
        self._wake.set()

    async def sleep(self, timeout: float) -> None:
        """The scheduler's pause between rounds: `timeout`, or until woken."""
        with trio.move_on_after(timeout):
            await self._wake.wait()
        self._wake = trio.Event()
