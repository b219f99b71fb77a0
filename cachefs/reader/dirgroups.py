"""Directories of the orders' paths, grouped for flat listing (docs/CACHING.md "Order-aware prefetch").

A shuffled order over many small directories needs each of them listed before its files can be
looked up, and one LIST per directory made the order prefetch listing-bound behind latency (1,000
class directories of a few files each: hints 0.87 of none behind 20 ms; docs/BENCHMARKS.md
"Directory groups"). Directories whose keys share a prefix are listed together instead, by one flat
(undelimited) paged LIST of that prefix: sorted, then split on the next character of their keys
until each group's directories hold about a page of the order's files. A directory alone in its
group, or one holding another of the order's directories, is listed on its own (a flat LIST of it
would read every key below it).
"""
from __future__ import annotations

import bisect
import os
from collections import Counter

import trio

GROUP_KEYS = 1000       # the order's files per group: one page of a LIST
EXTRA_PAGES = 1         # pages a group's listing may read beyond its estimate (keys not in the order)


class DirGroup:
    """Directories listed by one flat LIST of their common key prefix."""
    __slots__ = ("prefix", "files", "started", "done")

    def __init__(self, prefix: str, files: int) -> None:
        self.prefix = prefix
        self.files = files              # the order's files in it, when it was made
        self.started = False
        self.done = trio.Event()

    @property
    def max_pages(self) -> int:
        return -(-self.files // GROUP_KEYS) + EXTRA_PAGES

    @property
    def base(self) -> str:
        """The deepest directory holding the whole group (a key prefix ending in '/', or ''): none of
        the group's directories is the prefix itself (it would hold the others)."""
        return self.prefix[:self.prefix.rfind("/") + 1]


class DirGroups:
    """The directories (key prefixes ending in '/') of the paths of the orders received, and the
    groups made of them, each made the first time one of its directories is wanted."""

    def __init__(self) -> None:
        self._pending: Counter[str] = Counter()      # directory -> the order's files in it, not grouped
        self._groups: dict[str, DirGroup | None] = {}   # directory -> its group (None: listed alone)
        self._made: list[str] = []                    # every group's prefix, sorted
        self._by_prefix: dict[str, DirGroup] = {}

    def note(self, dir_keys: Counter[str]) -> None:
        """The directories of a batch of an order's paths, each with its count of paths."""
        self._pending.update(dir_keys)

    def forget_done(self) -> None:
        """A new epoch: the groups listed for the last one are fresh or expired; they go (a
        directory whose listing expired is grouped anew when next noted)."""
        self._groups = {d: g for d, g in self._groups.items() if g is not None and not g.done.is_set()}
        self._by_prefix = {p: g for p, g in self._by_prefix.items() if not g.done.is_set()}
        self._made = sorted(self._by_prefix)

    def group_of(self, dir_key: str) -> DirGroup | None:
        """The group listing `dir_key`, made now from every directory noted and not grouped yet;
        None when the directory is listed on its own."""
        if dir_key not in self._groups:
            if dir_key not in self._pending:
                return self._covering(dir_key)
            self._make()
        return self._groups.get(dir_key)

    def _covering(self, dir_key: str) -> DirGroup | None:
        """A group whose prefix holds `dir_key` (made before the directory was noted)."""
        i = bisect.bisect_right(self._made, dir_key)
        if i and dir_key.startswith(self._made[i - 1]):
            group = self._by_prefix[self._made[i - 1]]
            return None if group.done.is_set() else group
        return None

    def _make(self) -> None:
        names = sorted(self._pending)
        counts = self._pending
        self._pending = Counter()
        alone: list[str] = []
        todo: list[str] = []
        for i, name in enumerate(names):
            if i + 1 < len(names) and names[i + 1].startswith(name):
                alone.append(name)              # holds another: a flat LIST would read it all
            elif (group := self._covering(name)) is not None:
                self._groups[name] = group
            else:
                todo.append(name)
        for name in alone:
            self._groups[name] = None
        stack = [(0, len(todo))] if todo else []
        while stack:
            lo, hi = stack.pop()
            common = os.path.commonprefix([todo[lo], todo[hi - 1]])
            files = sum(counts[todo[i]] for i in range(lo, hi))
            if hi - lo == 1:
                self._groups[todo[lo]] = None
                continue
            if files <= GROUP_KEYS:
                group = DirGroup(common, files)
                bisect.insort(self._made, common)
                self._by_prefix[common] = group
                for i in range(lo, hi):
                    self._groups[todo[i]] = group
                continue
            at, i = len(common), lo            # split on the next character: each part has it in common
            while i < hi:
                j = i + 1
                while j < hi and todo[j][at] == todo[i][at]:
                    j += 1
                stack.append((i, j))
                i = j
