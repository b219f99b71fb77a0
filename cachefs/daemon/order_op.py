"""The control socket's streamed `order` op: the order in which a job will read files.

The request line is `{"op": "order", "epoch": N, "stream": "rank0"}` (both optional); the paths
follow it, one a line, relative to the mount (a leading `/` is the mount's root; a line starting
with `"` is a JSON string, for a path holding a newline), and an empty line (or the end of what the
client sends) ends them. The daemon hands each received batch to the prefetcher as it arrives, so an
order of 1.28 million paths is never one message; the answer, one line, comes after the end.
"""
from __future__ import annotations

import json
import logging

import trio

log = logging.getLogger(__name__)

MAX_PATH_LINE = 64 << 10       # one path (S3 keys are at most 1 KiB; JSON escapes make it longer)


def decode_path(line: bytes) -> str | None:
    try:
        if line.startswith(b'"'):
            value = json.loads(line)
            return value if isinstance(value, str) else None
        return line.decode()
    except ValueError:         # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None


async def receive(daemon, request: dict, lines) -> dict:
    """Read the order's paths from `lines` (ipc.LineReader) into a new order of its stream."""
    epoch = request.get("epoch")
    if epoch is not None and not isinstance(epoch, int):
        raise ValueError(f"epoch must be a whole number, got {epoch!r}")
    stream = str(request.get("stream") or "default")
    orders = daemon.reader.orders
    order = orders.begin(stream, epoch, daemon.namespace)
    received = bad = 0
    ended = False
    try:
        async for batch in lines.batches(MAX_PATH_LINE):
            paths = []
            for line in batch:
                if not line:
                    ended = True
                    break
                path = decode_path(line)
                if path is None:
                    bad += 1
                else:
                    paths.append(path)
            received += len(paths)
            if order is not None and paths:
                orders.add(order, paths)
            if ended:
                break
            await trio.lowlevel.checkpoint()     # FUSE requests go on while a long order streams in
    finally:
        if order is not None:
            orders.end(order)                    # a client gone half-way: what came is the order
    if order is None:
        log.info("control: order of stream %s epoch %s ignored: a later epoch is active", stream, epoch)
        return {"stream": stream, "epoch": epoch, "received": received, "ignored": "a later epoch is active"}
    if bad:
        daemon.stats.add("order_not_found", bad)
    log.info("control: order of stream %s epoch %s: %d paths", stream, epoch, received)
    return {"stream": stream, "epoch": epoch, "received": received, "undecodable": bad,
            "window": order.progress.window}
