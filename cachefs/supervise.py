"""One supervisor for all background work: nothing that runs beside the FUSE requests can end the daemon.

Uploads, multipart parts, aborts, replay, read-ahead, directory prefetch, background listings, index
flushes, kernel tuning and the control server each run as a unit of work under `supervised`. A unit
that raises is logged in one line, counted (`cachefs_background_failures_total{task}`) and ends
alone; its owner retries or abandons it (uploads retry with backoff, hints are dropped). A long-lived
loop runs under `supervised_forever`, which restarts it after a pause. Only the FUSE session ending,
a signal or a cancellation stops the daemon (docs/RELIABILITY.md "The mount never dies").

A failure the owner expects (S3 refused, a local disk error) is a WARNING; anything else is a
programming error: an ERROR line with the traceback, and the same count.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from cachefs.errors import StoreError

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 1.0      # a crashed long-lived loop starts again after this: no busy loop on a bug
EXPECTED = (StoreError, OSError)

# The task names used (labels of the metric; docs/METRICS.md lists them).
TASKS = ("upload", "part", "abort", "delete", "replay", "scheduler", "readahead", "dir_prefetch",
         "dataset_walk", "order_prefetch", "listing", "index_flush", "kernel_tuning", "control", "eviction", "labels",
         "shared_cache")

_lock = threading.Lock()
_failures: Counter[str] = Counter({t: 0 for t in TASKS})


def failures() -> dict[str, int]:
    """Failures so far by task (read by the metrics exporter and `cachefs stats`)."""
    with _lock:
        return dict(_failures)


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of a (nested) exception group, or `exc` itself."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def is_expected(exc: BaseException) -> bool:
    """Only expected errors inside: an S3 failure, a local disk error (through any nursery's group)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_expected(e) for e in exc.exceptions)
    return isinstance(exc, EXPECTED)


def record_failure(task: str, exc: BaseException, what: str = "") -> None:
    """Log one line and count a failed unit of background work."""
    with _lock:
        _failures[task] += 1
    where = f"{task} {what}".strip()
    if is_expected(exc):
        log.warning("background %s failed: %s", where, first_error(exc))
    else:
        log.error("background %s failed (a bug; the mount goes on): %s: %s", where,
                  type(first_error(exc)).__name__, first_error(exc), exc_info=exc)


async def supervised(task: str, fn: Callable[..., Awaitable[Any]], *args: Any, what: str = "",
                     on_failure: Callable[[BaseException], None] | None = None) -> None:
    """Run one unit of background work; an exception ends it alone (logged, counted, `on_failure`).
    Cancellation passes through: it is how the daemon stops."""
    try:
        await fn(*args)
    except Exception as e:       # BaseExceptionGroup with Cancelled inside is not an Exception
        record_failure(task, e, what)
        if on_failure is not None:
            try:
                on_failure(e)
            except Exception as inner:   # the handler's own bug must not escape either
                record_failure(task, inner, f"{what} (failure handler)")


async def supervised_forever(task: str, fn: Callable[[], Awaitable[Any]]) -> None:
    """Run a loop that should never return; if it raises, count it and start it again."""
    while True:
        try:
            await fn()
            return
        except Exception as e:
            record_failure(task, e, "loop (restarting)")
        await trio.sleep(RESTART_PAUSE_S)


def start(nursery: trio.Nursery, task: str, fn: Callable[..., Awaitable[Any]], *args: Any, what: str = "",
          on_failure: Callable[[BaseException], None] | None = None) -> None:
    """`nursery.start_soon` under the supervisor."""
    # The task's name is `task` alone: read-ahead starts one per block, no string built per start.
    nursery.start_soon(_run, task, fn, args, what, on_failure, name=task)


async def _run(task, fn, args, what, on_failure) -> None:
    await supervised(task, fn, *args, what=what, on_failure=on_failure)
