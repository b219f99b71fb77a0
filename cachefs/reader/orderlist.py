"""The data of an order prefetch, kept apart from its trio tasks so it can be tested alone: the order's
paths (compact: 1.28 million paths must not cost a Python string each), where a path sits in it, and
the byte window arithmetic — what is "passed", what is "ahead", whether one more file fits.

Positions run 0..len-1 in the order the job will read. Each is in one of four states: untouched,
started (a prefetch took it: its bytes count against the window), done (skipped: cached, not found,
too large), passed (the reader opened it, or overtook it: see Progress).
"""
from __future__ import annotations

import time
from array import array
from bisect import bisect_left
from collections import deque

# Positions indexed per sorted chunk: sorting 64k hashes takes a few tens of ms on the trio thread,
# and a lookup bisects one chunk per 64k paths (20 for ImageNet: ~30 us an open).
INDEX_CHUNK = 1 << 16
# The window's share of what the cache can hold (docs/CACHING.md "Order-aware prefetch"): under LRU,
# blocks prefetched and not yet read are older than the ones read since they were fetched, so the
# two together must fit below the watermark for the oldest prefetched block to survive; half
# guarantees that, and under scan-resistant it leaves the other half to the reader's own misses.
WINDOW_FRACTION = 0.5
# Overtaken: a file the reader has not opened while, for TRAIL_S seconds, every file it opened was
# more than MIN_SLACK positions further on. Not "behind the furthest open": a DataLoader's workers
# each read their own batch, so opens arrive out of order by up to workers x prefetch_factor x
# batch_size positions, and the files of the slowest worker's batch are late, not skipped. A worker
# stalled longer than TRAIL_S has its files fetched on demand, as without an order.
TRAIL_S = 2.0
MIN_SLACK = 8

UNTOUCHED, STARTED, DONE, PASSED = 0, 1, 2, 3


def normalize(path: str) -> str | None:
    """The path as the mount's inodes spell it (`a/b/c`, no leading slash), or None if it leaves
    the mount (`..`) or names nothing."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def default_window(capacity: int, fraction: float = WINDOW_FRACTION) -> int:
    return int(capacity * fraction)


class OrderList:
    """The paths of one order, appended as they stream in, and a lookup of a path's position."""

    def __init__(self) -> None:
        self._blob = bytearray()
        self._ends = array("Q")            # end of path i in _blob
        self._chunks: list[tuple[int, int, array, array]] = []   # (first, last, sorted hashes, their positions)
        self._tail: dict[int, list[int]] = {}    # hash -> positions, of the chunk being filled

    def __len__(self) -> int:
        return len(self._ends)

    def append(self, path: str) -> None:
        raw = path.encode()
        pos = len(self._ends)
        self._blob += raw
        self._ends.append(len(self._blob))
        self._tail.setdefault(hash(raw), []).append(pos)
        if len(self._ends) % INDEX_CHUNK == 0:
            self._seal()

    def _seal(self) -> None:
        """The filled chunk becomes two sorted arrays; the dict that held it goes."""
        pairs = sorted((h, p) for h, ps in self._tail.items() for p in ps)
        if pairs:
            positions = array("I", [p for _, p in pairs])
            self._chunks.append((min(positions), max(positions), array("q", [h for h, _ in pairs]), positions))
        self._tail = {}

    def path(self, pos: int) -> str:
        start = self._ends[pos - 1] if pos else 0
        return self._blob[start:self._ends[pos]].decode()

    def find(self, path: str, start: int = 0) -> int | None:
        """The first position >= start holding `path`, or None."""
        raw = path.encode()
        h = hash(raw)
        best = None
        for first, last, hashes, positions in self._chunks:
            if last < start or (best is not None and first > best):
                continue
            i = bisect_left(hashes, h)
            while i < len(hashes) and hashes[i] == h:
                p = positions[i]
                if p >= start and (best is None or p < best) and self.path(p).encode() == raw:
                    best = p
                i += 1
            if best is not None:
                return best          # chunks are in position order: no later chunk has a smaller one
        for p in self._tail.get(h, ()):
            if p >= start and self.path(p).encode() == raw:
                return p
        return None


class Progress:
    """Where the reader is in an order, and the prefetch's bytes ahead of it.

    `low`: every position below it is passed or done. `edge`: positions below it are overtaken (the
    lowest position opened in the last TRAIL_S seconds, less MIN_SLACK; none before the reader has
    been seen for TRAIL_S). `ahead`: bytes of started positions not yet passed, at most `window` (a
    file larger than the whole window is never started)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.state = bytearray()
        self.sizes: dict[int, int] = {}       # started positions -> their bytes
        self.ahead = 0
        self.low = 0
        self.edge = 0
        self._first_open: float | None = None
        self._trail: deque[tuple[float, int]] = deque()   # (time, position) opens, positions increasing

    def grow(self, n: int) -> None:
        """The order now has n positions."""
        self.state.extend(bytes(n - len(self.state)))

    def fits(self, size: int) -> bool:
        return size <= self.window and self.ahead + size <= self.window

    def start(self, pos: int, size: int) -> None:
        self.state[pos] = STARTED
        self.sizes[pos] = size
        self.ahead += size

    def done(self, pos: int) -> None:
        """Nothing to fetch there (cached, not found, too large)."""
        if self.state[pos] == UNTOUCHED:
            self.state[pos] = DONE
        self._advance()

    def release(self, pos: int) -> None:
        """A started position whose fetch failed or was cancelled: its bytes leave the window."""
        size = self.sizes.pop(pos, None)
        if size is not None:
            self.ahead -= size

    def opened(self, pos: int, now: float | None = None) -> list[int]:
        """The reader opened position `pos`: returns the started positions it overtook (their
        fetches, unless a reader waits for them, are cancelled; their bytes leave the window)."""
        now = time.monotonic() if now is None else now
        if self.state[pos] == STARTED:
            self.release(pos)
        self.state[pos] = PASSED
        if self._first_open is None:
            self._first_open = now
        # the sliding minimum of the positions opened in the last TRAIL_S seconds
        while self._trail and self._trail[-1][1] >= pos:
            self._trail.pop()
        self._trail.append((now, pos))
        while now - self._trail[0][0] > TRAIL_S and len(self._trail) > 1:
            self._trail.popleft()
        if now - self._first_open >= TRAIL_S:
            self.edge = max(self.edge, self._trail[0][1] - MIN_SLACK)
        return self._advance()

    def _advance(self) -> list[int]:
        passed = []
        end = len(self.state)
        while self.low < end:
            s = self.state[self.low]
            if s in (PASSED, DONE):
                self.low += 1
                continue
            if self.low >= self.edge:
                break
            if s == STARTED:                  # overtaken: the reader skipped it
                passed.append(self.low)
                self.release(self.low)
            self.state[self.low] = PASSED
            self.low += 1
        return passed

    def is_passed(self, pos: int) -> bool:
        return self.state[pos] == PASSED or pos < self.low
