"""Single-flight: at most one operation per key in progress; whoever comes later waits for it.

The read path shares one fetch per block among concurrent readers and read-ahead (reader/), the
namespace one listing per directory among concurrent lookups (namespace/). Only the trio thread
touches a `Flights` map, so it needs no lock.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)


class Flight:
    """One operation in progress. Its owner may leave an outcome (`value` or `error`) for those who
    wait; neither set after `done` means it was cancelled before it finished."""
    __slots__ = ("done", "value", "error", "shared")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.shared = False          # someone waited for this flight

    async def wait(self) -> None:
        await self.done.wait()


class Flights(Generic[K]):
    def __init__(self) -> None:
        self._flying: dict[K, Flight] = {}

    def get(self, key: K) -> Flight | None:
        return self._flying.get(key)

    def __getitem__(self, key: K) -> Flight:
        return self._flying[key]

    def __contains__(self, key: object) -> bool:
        return key in self._flying

    def __len__(self) -> int:
        return len(self._flying)

    def start(self, key: K) -> Flight:
        """Register the operation on `key` (its owner must `land` it, whatever happens)."""
        flight = self._flying[key] = Flight()
        return flight

    def land(self, key: K) -> None:
        """The operation on `key` is over: forget it and wake whoever waits."""
        self._flying.pop(key).done.set()

    @contextmanager
    def flying(self, key: K) -> Iterator[Flight]:
        """start(key) ... land(key), on every way out."""
        flight = self.start(key)
        try:
            yield flight
        finally:
            self.land(key)
