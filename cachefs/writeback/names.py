"""Which S3 names are busy, and why: the bookkeeping that keeps two requests off one name.

An upload, a rename's copy and a delete of the same name must not overlap, or one would delete or
overwrite what the other made. Each structure here says who is using a name now; `due` (schedule.py)
starts no upload to a busy name, `claim` makes a rename wait for one, and a delete of an object that
may have landed unseen (`stray`) waits until no file has the name. These guards were found one by one
by bench/stress.py and the fault matrix: change them only with both at hand.

Paths here are relative to the mount's prefix; `to_delete` and `strays` hold full keys.
"""
from __future__ import annotations

import time

import trio

from cachefs.errors import StoreUnavailable
from cachefs.writeback.signals import Signals
from cachefs.writeback.staging import Staged

CLAIM_WAIT_S = 30.0           # a rename waits at most this long for an upload or delete of its target name


class Names:
    def __init__(self, files: dict[int, Staged], signals: Signals, *, prefix: str, answer_grace: float) -> None:
        self.files = files
        self.signals = signals
        self.prefix = prefix
        self.answer_grace = answer_grace
        self.inflight: set[str] = set()    # paths an upload is writing to right now
        self.vacating: set[str] = set()    # names whose object is being deleted from S3 (or will be, retried)
        self.deleting: set[str] = set()    # names whose DeleteObject is in flight now
        self.held: set[str] = set()        # directories being renamed: nothing below starts uploading
        self.claimed: list[tuple[str, bool]] = []   # names (or directories) a rename is copying to
        self.to_delete: list[str] = []     # keys whose delete failed: retried by the scheduler
        self.strays: dict[str, float] = {}     # key -> when: an object that may have landed unwanted

    def moving_out(self) -> set[str]:
        """Names where S3 holds a file that has been renamed since (it is copied away later)."""
        return {st.remote for st in self.files.values() if st.remote is not None and st.remote != st.path}

    def doomed(self, path: str) -> bool:
        """S3 holds an object there that the mount no longer shows and that is being deleted."""
        return path in self.vacating

    # -- renames ----------------------------------------------------------------------------
    async def claim(self, path: str, below: bool = False, wait: bool = True, timeout: float = CLAIM_WAIT_S) -> None:
        """Before a rename copies objects to `path` (`below`: to the keys below directory `path`):
        an upload still landing there (a file that had the name and was replaced) or a delete of
        it must finish first, or it would delete or overwrite the copy; deletes only waiting for
        their retry are dropped (the copy overwrites those objects anyway), and no late clean-up
        touches the name until `release`. StoreUnavailable if it stays busy past `timeout`.
        `wait=False`: no copy is made now (a staged file's upload goes there later, in turn)."""
        def covered(p: str) -> bool:
            return p == path or (below and p.startswith(path + "/"))
        if wait and not below and self.prefix + path in self.to_delete and path not in self.deleting:
            # One copy to exactly this name, now: it overwrites the object the delete was for.
            self.to_delete = [k for k in self.to_delete if k != self.prefix + path]
            self.vacating.discard(path)
        self.claimed.append((path, below))
        deadline = time.monotonic() + timeout
        while wait and any(covered(p) for p in self.inflight | self.vacating):
            left = deadline - time.monotonic()
            if left <= 0:
                self.release(path, below)
                raise StoreUnavailable(f"{self.prefix}{path} is still being uploaded or deleted; try again")
            changed = self.signals.changed
            with trio.move_on_after(left):
                await changed.wait()

    def release(self, path: str, below: bool = False) -> None:
        if (path, below) in self.claimed:
            self.claimed.remove((path, below))

    def is_claimed(self, path: str) -> bool:
        return any(path == p or (below and path.startswith(p + "/")) for p, below in self.claimed)

    async def hold_below(self, directory: str) -> None:
        """Before a directory's objects are copied: no upload below it may start, and those in
        flight finish first (one landing after the copy would stay behind under the old name
        while its record says the new one). `release_below` ends it. An upload counts if its name
        or its source object (a renamed file's copy from below the directory) is there: a copy
        racing the directory's copy left an object behind under the new name (bench/stress.py)."""
        self.held.add(directory)
        below = directory + "/"
        while any(st.uploading and (st.path.startswith(below) or (st.remote or "").startswith(below))
                  for st in self.files.values()) or any(p.startswith(below) for p in self.inflight):
            changed = self.signals.changed
            await changed.wait()

    def release_below(self, directory: str) -> None:
        self.held.discard(directory)
        self.signals.wake()

    # -- objects to delete ------------------------------------------------------------------
    def stray(self, key: str) -> None:
        """An object that may have landed although the mount does not show it (a request whose answer
        was lost): deleted now and once more after `answer_grace`, unless a file has the name then."""
        if key[len(self.prefix):] not in self.vacating:
            self.delete_later(key)
        self.strays[key] = time.monotonic() + self.answer_grace
        self.signals.wake()

    def delete_later(self, key: str) -> None:
        """An object the mount no longer shows whose delete S3 refused: the scheduler retries it,
        and no upload to that name starts before it is gone."""
        self.vacating.add(key[len(self.prefix):])
        self.to_delete.append(key)
        self.signals.wake()
