"""Claims of the shared cache tier (cache/shared.py): nodes that miss the same block at the same
moment fetch it from the origin once (docs/CACHING.md "Shared tier", "Nodes reading at once").

On a shared-tier miss a node PUTs `<block object>.claim` with `If-None-Match: *` (a tiny JSON body:
its node and time). The winner fetches the block from the origin and `publish`es it at once, ahead
of the fill queue, then deletes the claim. A loser (412/409) polls the block's object, 20 ms growing
to 200 ms, and serves it when it appears; past `claim_wait` it fetches the block itself. Once in a
wait, after a quarter of it, the loser reads the claim: one older than STALE_CLAIM_WAITS waits (its
node died, or is stuck) is deleted and claimed anew. Every request is best-effort, within the tier's
deadline and behind its breaker: a failure means the origin, never an error to the reader.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from cachefs.errors import AccessDenied, ObjectNotFound, StoreError
from cachefs.stats import Stats
from cachefs.store.base import ObjectStore
from cachefs.store.health import OutageBreaker
from cachefs.store.retry import describe

log = logging.getLogger(__name__)

# A loser of a claim waits this long for the winner's block before fetching it itself. The winner
# needs one origin GET and one shared PUT behind its other fetches: in bench/shared.py (4 nodes on
# 2 cores, 16 fetches in flight each, 20 ms on the origin) a claimed 4 MiB block took up to about a
# second to appear, and no wait of 2 s ran out; a wait that runs out costs the origin fetch claims save.
DEFAULT_CLAIM_WAIT_S = 2.0
CLAIM_SUFFIX = ".claim"
CLAIM_BYTES = 128             # the claim's JSON body, padded: read back as one exact range
CLAIM_POLL_FIRST_S = 0.02     # the loser's first look at the block, then x1.5 a poll up to:
CLAIM_POLL_MAX_S = 0.2
# A claim looked at once, after this share of the wait (the common case never gets there: the
# block appears first), and taken over when older than STALE_CLAIM_WAITS waits (a dead claimant).
STALE_CHECK_SHARE = 0.25
STALE_CLAIM_WAITS = 5
# The winner deletes its claim this long after the block is written, not at once: a node whose GET
# missed just before the write and whose claim PUT comes just after the delete would otherwise win a
# claim on a block that exists, and fetch it from the origin again.
CLAIM_LINGER_S = 1.0
# Worker threads for claim requests (tiny PUTs and DELETEs), and apart for the claimed blocks' writes:
# a claim queued behind 4 MiB writes would run out of its deadline on a busy node, and a claim that
# times out sends its block to the origin unclaimed (measured: 27 of 356 claims on the busiest node).
CLAIM_THREADS = 16

# What a shared-tier read found, besides the body: absent or bad, or the tier failed (counted).
MISS, ERROR = "miss", "error"


def claim_body(now: float | None = None) -> bytes:
    """Who claimed a block and when (its node's clock): JSON, padded to CLAIM_BYTES."""
    node = f"{socket.gethostname()}:{os.getpid()}"[:64]
    raw = json.dumps({"node": node, "time": round(time.time() if now is None else now, 3)}).encode()
    return raw.ljust(CLAIM_BYTES)


def claim_time(raw: bytes | memoryview) -> float | None:
    """The claim's time, or None if the body is not a claim."""
    try:
        t = json.loads(bytes(raw).decode())["time"]
        return float(t)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class Claim:
    """A block this node claimed: it fetches it from the origin and publishes (or releases) it."""
    name: str                 # the block's shared object
    ident: bytes


class Missing(Exception):
    """No such shared object (a 404): a plain miss."""


class Truncated(Exception):
    """The object is shorter than asked for: a corrupt block, or not a claim."""


class ClaimsMixin:
    """The claim protocol of SharedTier, which provides these:"""
    store: ObjectStore
    stats: Stats
    breaker: OutageBreaker
    deadline: float
    claim_wait: float
    claim_linger: float = CLAIM_LINGER_S
    queued: int
    queued_bytes: int
    _nursery: trio.Nursery | None
    _claim_limiter: trio.CapacityLimiter
    _publish_limiter: trio.CapacityLimiter

    if TYPE_CHECKING:
        async def _read(self, name: str, ident: bytes, length: int) -> memoryview | str: ...
        async def _fetch(self, name: str, n: int) -> bytes | memoryview: ...
        def _hit(self, length: int) -> None: ...
        async def write(self, name: str, ident: bytes, body: bytes | memoryview,
                        limiter: trio.CapacityLimiter | None = None) -> bool: ...

    async def _claim_or_wait(self, name: str, ident: bytes, length: int) -> memoryview | Claim | None:
        """A shared-tier miss: claim the block, or wait for the node that did."""
        won = await self._claim(name)
        if won:
            self.stats.add("shared_cache_claims_won")
            self.stats.add("shared_cache_misses")
            return Claim(name, ident)
        if won is None:
            self.stats.add("shared_cache_misses")
            return None
        self.stats.add("shared_cache_claims_lost")
        return await self._await_claimed(name, ident, length)

    async def _await_claimed(self, name: str, ident: bytes, length: int) -> memoryview | Claim | None:
        """Another node claimed the block: poll its object (20 ms, growing) until it appears or
        claim_wait runs out; once, after a share of the wait, see whether the claim is stale."""
        start = trio.current_time()
        until = start + self.claim_wait
        interval = CLAIM_POLL_FIRST_S
        checked = False
        while (now := trio.current_time()) < until:
            await trio.sleep(min(interval, until - now))
            interval = min(interval * 1.5, CLAIM_POLL_MAX_S)
            found = await self._read(name, ident, length)
            if not isinstance(found, str):
                self._hit(length)
                self.stats.add("shared_cache_claim_waits_served")
                return found
            if found == ERROR:
                break
            if not checked and trio.current_time() - start >= self.claim_wait * STALE_CHECK_SHARE:
                checked = True
                took = await self._take_over(name, ident, length)
                if took is not None:
                    return took
        else:
            self.stats.add("shared_cache_claim_timeouts")
        self.stats.add("shared_cache_misses")
        return None

    async def _take_over(self, name: str, ident: bytes, length: int) -> memoryview | Claim | None:
        """The claim's age (its body's time): a stale, foreign or vanished claim (its node died, or
        its fetch failed) is replaced by this node's, if this node wins it; None: keep waiting."""
        raw = await self._claim_body(name)
        if isinstance(raw, str):
            return None
        if raw is not None:
            t = claim_time(raw)
            if t is not None and time.time() - t < STALE_CLAIM_WAITS * self.claim_wait:
                return None                   # alive, only slow: wait on
            self.stats.add("shared_cache_claims_stale")
            log.info("shared cache claim %s%s is stale (%s): taken over", name, CLAIM_SUFFIX,
                     "no time in it" if t is None else f"{time.time() - t:.0f} s old")
            await self._claim_op(self._delete_claim, name)
        else:                                 # gone: written meanwhile, or released
            found = await self._read(name, ident, length)
            if not isinstance(found, str):
                self._hit(length)
                self.stats.add("shared_cache_claim_waits_served")
                return found
        if await self._claim(name):
            self.stats.add("shared_cache_claims_won")
            self.stats.add("shared_cache_misses")
            return Claim(name, ident)
        return None

    async def _claim_body(self, name: str) -> bytes | memoryview | str | None:
        """A claim's body (b"" if it is not one of ours), None if there is none, or ERROR."""
        try:
            await self.breaker.aadmit(("get", name + CLAIM_SUFFIX))
        except StoreError:
            self.stats.add("shared_cache_errors")
            return ERROR
        raw: bytes | memoryview | None = None
        try:
            with trio.move_on_after(self.deadline):
                raw = await self._fetch(name + CLAIM_SUFFIX, CLAIM_BYTES)
            if raw is None:
                raise TimeoutError(f"no answer within the {self.deadline:g} s shared-cache deadline")
        except (ObjectNotFound, Missing):
            raw = None
        except Truncated:
            raw = b""                         # not a claim of ours: taken over
        except Exception as e:  # noqa: BLE001 - best-effort tier: the origin instead
            self.breaker.failed(describe(e), ("get", name + CLAIM_SUFFIX))
            self.stats.add("shared_cache_errors")
            return ERROR
        self.breaker.succeeded()
        return raw

    def _delete_claim(self, name: str) -> None:
        self.store.delete(name + CLAIM_SUFFIX)

    async def _claim(self, name: str) -> bool | None:
        """PUT the block's claim, conditional: True if this node won, False if another node holds it,
        None if the tier failed (the block then comes from the origin, unclaimed)."""
        gave_up = threading.Event()
        won: Any = ERROR
        try:
            won = await self._claim_op(self._put_claim, name, gave_up)
        finally:
            if won is ERROR:            # timed out or cancelled: the PUT may still land
                gave_up.set()
        return None if won is ERROR else bool(won)

    def _put_claim(self, name: str, gave_up: threading.Event) -> bool:
        """In a worker thread. A claim won after its caller gave up waiting is nobody's: deleted."""
        won = self.store.put_if_absent(name + CLAIM_SUFFIX, claim_body())
        if won and gave_up.is_set():
            with contextlib.suppress(Exception):
                self.store.delete(name + CLAIM_SUFFIX)
        return won

    async def _claim_op(self, fn: Callable[..., Any], name: str, *args: Any, admit: bool = True) -> Any:
        """A claim's request in a worker thread, within the deadline and (`admit`) behind the
        breaker: its result, or ERROR on any failure (counted as a shared-tier error)."""
        try:
            if admit:
                await self.breaker.aadmit(("claim", name))
        except StoreError:
            self.stats.add("shared_cache_errors")
            return ERROR
        try:
            with trio.fail_after(self.deadline):
                result = await trio.to_thread.run_sync(fn, name, *args, limiter=self._claim_limiter,
                                                       abandon_on_cancel=True)
        except AccessDenied as e:             # an answer: the tier is up, but this node may not claim
            self.breaker.succeeded()
            self.stats.add("shared_cache_errors")
            if self.claim_wait > 0:
                log.warning("shared cache claims are refused (%s): off for this mount", e)
                self.claim_wait = 0
            return ERROR
        except Exception as e:  # noqa: BLE001 - best-effort tier: the origin instead
            self.breaker.failed(describe(e), ("claim", name))
            self.stats.add("shared_cache_errors")
            log.debug("shared cache claim request on %s failed: %s", name, describe(e))
            return ERROR
        self.breaker.succeeded()
        return result

    def publish(self, claim: Claim, body: bytes | memoryview) -> None:
        """The claimed block, fetched: written now, ahead of the queue (other nodes are polling for
        it), then its claim deleted; never waited for. Its bytes count in the queue's gauges."""
        if self._nursery is None:
            self.release(claim)
            return
        self.queued += 1
        self.queued_bytes += len(body)
        self._nursery.start_soon(self._publish, claim, body)

    async def _publish(self, claim: Claim, body: bytes | memoryview) -> None:
        written = False
        try:
            await self.write(claim.name, claim.ident, body, self._publish_limiter)
            written = True
        except Exception as e:  # noqa: BLE001 - the others find the claim gone, or wait it out
            self.stats.add("shared_cache_write_errors")
            log.debug("shared cache write of claimed %s failed: %s", claim.name, e)
        finally:
            self.queued -= 1
            self.queued_bytes -= len(body)
        if written:
            await trio.sleep(self.claim_linger)
        self.release(claim)

    def release(self, claim: Claim) -> None:
        """Delete a claim (published, or its fetch failed), in the background, best-effort: a claim
        left behind costs the next node missing the block a stale check, no more."""
        if self._nursery is not None:     # not refused by the breaker: a claim left behind holds others up
            self._nursery.start_soon(partial(self._claim_op, self._delete_claim, claim.name, admit=False))
