"""The data of an order prefetch, kept apart from its trio tasks so it can be tested alone: the order's
paths (compact: 1.28 million paths must not cost a Python string each), where a path sits in it, and
the byte window arithmetic — what is "passed", what is "ahead", whether one more file fits.

Positions run 0..len-1 in the order the job will read. Each is in one of four states: untouched,
started (a prefetch took it: its bytes count against the window), done (skipped: cached, not found,
too large), passed (the reader opened it, or went more than `slack` positions beyond it).
"""
from __future__ import annotations

from array import array
from bisect import bisect_left

# Positions indexed per sorted chunk: sorting 64k hashes takes a few tens of ms on the trio thread,
# and a lookup bisects one chunk per 64k paths (20 for ImageNet: ~30 us an open).
INDEX_CHUNK = 1 << 16
# The window's share of what the cache can hold (docs/CACHING.md "Order-aware prefetch"): under LRU,
# blocks prefetched and not yet read are older than the ones read since they were fetched, so the
# two together must fit below the watermark for the oldest prefetched block to survive; half
# guarantees that, and under scan-resistant it leaves the other half to the reader's own misses.
WINDOW_FRACTION = 0.5
# A file the reader has not opened is "passed" once it opened a file this many positions further
# on; at least MIN_SLACK (a single reader), else twice the furthest behind the frontier an open was
# seen: a DataLoader's workers each read their own batch, so opens arrive out of order by up to
# workers x prefetch_factor x batch_size positions, and those files are not skipped, only late.
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
            positions = array("Q", [p for _, p in pairs])
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

    `frontier`: the furthest position opened. `low`: every position below it is passed or done.
    `ahead`: bytes of started positions not yet passed, at most `window` (a file larger than the
    whole window is never started)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.state = bytearray()
        self.sizes: dict[int, int] = {}       # started positions -> their bytes
        self.ahead = 0
        self.frontier = -1
        self.low = 0
        self.lag = 0                          # furthest behind the frontier an open was seen

    def grow(self, n: int) -> None:
        """The order now has n positions."""
        self.state.extend(bytes(n - len(self.state)))

    @property
    def slack(self) -> int:
        return max(MIN_SLACK, 2 * self.lag)

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

    def opened(self, pos: int) -> list[int]:
        """The reader opened position `pos`: returns the started positions it passed (their fetches,
        unless a reader waits for them, are cancelled; their bytes leave the window)."""
        passed = []
        if self.state[pos] == STARTED:
            self.release(pos)
        self.state[pos] = PASSED
        if pos < self.frontier:
            self.lag = max(self.lag, self.frontier - pos)
        else:
            self.frontier = pos
        passed += self._advance()
        return passed

    def _advance(self) -> list[int]:
        passed = []
        end = len(self.state)
        while self.low < end:
            s = self.state[self.low]
            if s in (PASSED, DONE):
                self.low += 1
                continue
            if self.low >= self.frontier - self.slack:
                break
            if s == STARTED:                  # overtaken: the reader skipped it
                passed.append(self.low)
                self.release(self.low)
            self.state[self.low] = PASSED
            self.low += 1
        return passed

    def is_passed(self, pos: int) -> bool:
        return self.state[pos] == PASSED or pos < self.low
