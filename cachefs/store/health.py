"""Is S3 answering? A circuit breaker for the read path, so that an outage costs readers one bound, not many.

Without it every read of uncached data during an outage waits its whole deadline (attempts x timeouts),
and reads queued behind the daemon's bounded worker pool wait several deadlines in a row, all of them
in uninterruptible sleep in the kernel. With it:

- healthy: requests run normally (retries, backoff, deadline);
- after FAIL_THRESHOLD requests in a row failed with every attempt (or ran out of their deadline),
  S3 is *down*: a request fails at once with StoreUnavailable (EIO to the reader), except one probe
  every PROBE_INTERVAL_S, which runs as a normal request;
- any request that gets an answer from S3 (success, or a definite answer like 404) ends the outage,
  and with it the memory of the ranges that failed during it;
- a request that arrives while the probe is out waits for the probe's answer, at most PROBE_WAIT_S
  from the probe's start: when S3 is back, the reads beside the probe (the other blocks of the same
  file) go through with it, instead of failing at once and leaving the reader a file cut short.

Cached data never reaches the store, so it keeps being served throughout.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cachefs.errors import StoreUnavailable

log = logging.getLogger(__name__)

# Three whole requests (each with all its attempts) failing in a row, with no success between them, is
# an outage rather than one bad object or one straggler.
FAIL_THRESHOLD = 3
# A range whose read just failed with every attempt fails again at once for this long: the kernel asks
# again for the page it needed right after its read-ahead request failed, and one reader must not wait
# two deadlines for one EIO.
FAILED_RANGE_MEMORY_S = 1.0
FAILED_RANGE_ENTRIES = 4096
# While down, one real request per second checks whether S3 is back: recovery is noticed within about
# a second, at the cost of one request per second to a dead endpoint.
PROBE_INTERVAL_S = 1.0
# A healthy S3 answers a block's GET well within this; a dead one costs a request at most this wait.
PROBE_WAIT_S = 1.0
# How often a trio task waiting for the probe looks at its state (at most PROBE_WAIT_S, during outages only).
PROBE_POLL_S = 0.01


class OutageBreaker:
    def __init__(self, where: str, threshold: int = FAIL_THRESHOLD, probe_interval: float = PROBE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, probe_wait: float = PROBE_WAIT_S,
                 consequence: str = "reads of uncached data fail at once") -> None:
        self.where = where
        self.consequence = consequence      # what an outage means, for its log line
        self.threshold = threshold
        self.probe_interval = probe_interval
        self.probe_wait = probe_wait
        self.clock = clock
        self._lock = threading.Condition(threading.Lock())      # notified when a probe ends
        self._probe_started = 0.0
        self._failures = 0          # whole requests failed in a row
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._probing = False
        self._last_error = ""
        self.failed_fast = 0        # requests refused while down (this outage)
        self.outages = 0
        self._recent: dict[object, tuple[float, str]] = {}   # what failed just now -> (when, error)

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def admit(self, ident: object = None) -> bool:
        """Before a request (`ident`: what it asks for): returns whether it is the outage's probe;
        raises StoreUnavailable if S3 is down and this request is not the probe (after waiting for
        the probe out, if any), or if this very request failed a moment ago."""
        waited = False
        with self._lock:
            while True:
                verdict = self._admit_locked(ident, waited)
                if isinstance(verdict, bool):
                    return verdict
                waited = True
                self._lock.wait(verdict)

    async def aadmit(self, ident: object = None) -> bool:
        """admit() for the trio thread: the wait for the probe's answer is awaited (a short poll of
        the probe's state; only while a probe is out), never blocking the thread."""
        import trio
        waited = False
        while True:
            with self._lock:
                verdict = self._admit_locked(ident, waited)
                probe_started = self._probe_started
            if isinstance(verdict, bool):
                return verdict
            waited = True
            until = self.clock() + verdict
            while self.clock() < until and self._probing and self._probe_started == probe_started:
                await trio.sleep(PROBE_POLL_S)

    def _admit_locked(self, ident: object, waited: bool) -> bool | float:
        """admit's decision under the lock: whether the request is the probe, or how long to wait
        for the probe's answer before deciding again (`waited`: it has waited once already)."""
        now = self.clock()
        recent = self._recent.get(ident) if ident is not None else None
        if recent is not None:
            if now - recent[0] < FAILED_RANGE_MEMORY_S:
                raise StoreUnavailable(f"failed {now - recent[0]:.1f} s ago ({recent[1]}); "
                                       "not asking again yet")
            del self._recent[ident]
        if self._down_since is None:
            return False
        if self._probing and not waited:
            return max(0.0, self._probe_started + self.probe_wait - now)
        if self._probing or now < self._next_probe:
            self.failed_fast += 1
            raise StoreUnavailable(f"S3 endpoint {self.where} unreachable for {now - self._down_since:.0f} s "
                                   f"(last error: {self._last_error}); not waiting for it")
        self._probing = True
        self._probe_started = now
        self._next_probe = now + self.probe_interval
        return True

    def succeeded(self) -> None:
        """S3 answered (with data or a definite error such as 404)."""
        with self._lock:
            self._failures = 0
            self._probing = False
            if self._down_since is None:
                return
            down_for = self.clock() - self._down_since
            failed_fast, self._down_since, self.failed_fast = self.failed_fast, None, 0
            self._recent.clear()             # those ranges failed for the outage, not for themselves
            self._lock.notify_all()
        log.warning("S3 endpoint %s answers again after %.1f s; %d reads failed at once meanwhile",
                    self.where, down_for, failed_fast)

    def failed(self, error: str, ident: object = None) -> None:
        """A request failed with every attempt it was allowed (or ran out of its deadline)."""
        with self._lock:
            if ident is not None:
                if len(self._recent) >= FAILED_RANGE_ENTRIES:
                    self._recent.pop(next(iter(self._recent)))
                self._recent[ident] = (self.clock(), error)
            self._failures += 1
            self._probing = False
            self._last_error = error
            self._lock.notify_all()
            if self._down_since is not None or self._failures < self.threshold:
                return
            self._down_since = self.clock()
            self._next_probe = self._down_since + self.probe_interval
            self.outages += 1
        log.warning("S3 endpoint %s unreachable (%d requests in a row failed; last: %s): %s until it "
                    "answers again (probed every %.0f s)",
                    self.where, self.threshold, error, self.consequence, self.probe_interval)
