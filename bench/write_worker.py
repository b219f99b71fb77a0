"""The writing process of bench/writes.py, run as a child so that a hung mount costs a timeout, not
the run. It prints one JSON line per phase on stdout; times are time.monotonic() (CLOCK_MONOTONIC,
the same clock in every process), so the parent can time S3 from the moment the writer closed.

  python -m bench.write_worker checkpoint PATH SIZE_BYTES SEED
      open(O_TRUNC) -> 1 MiB writes -> fsync -> close; prints {t_open, t_written, t_fsynced, t_closed}
  python -m bench.write_worker appends PATH SECONDS MAX_LINES LINE_BYTES
      appends lines (flush after each, like a logging handler) for SECONDS or MAX_LINES, prints
      {lines, t_open, t_last, latency percentiles}, keeps the file open until a line arrives on stdin,
      then closes it and prints {t_closed}
"""
from __future__ import annotations

import json
import os
import random
import sys
import time

MiB = 1 << 20
WRITE_CHUNK = MiB  # dd bs=1M; checkpoint writers (torch.save through a buffered file) issue large writes
PROGRESS_S = 0.05  # the appender notes its line count this often (S3 is sampled every 0.25 s)


def chunk_buffer(seed: int) -> bytearray:
    """1 MiB of seeded random bytes; chunk i carries i in its first 8 bytes, so no two chunks match."""
    return bytearray(random.Random(seed).randbytes(WRITE_CHUNK))


def chunk(buf: bytearray, i: int) -> bytearray:
    buf[:8] = i.to_bytes(8, "little")
    return buf


def expected_chunks(size: int, seed: int):
    """What a checkpoint of `size` bytes holds, chunk by chunk (for the parent's verification)."""
    buf = chunk_buffer(seed)
    for i in range((size + WRITE_CHUNK - 1) // WRITE_CHUNK):
        yield bytes(chunk(buf, i)[:min(WRITE_CHUNK, size - i * WRITE_CHUNK)])


def log_line(i: int, size: int) -> bytes:
    """Line i of the append log: exactly `size` bytes, newline-terminated, numbered."""
    head = f"{i:010d} step={i} loss={1.0 / (i + 1):.6f} "
    return (head + "x" * max(0, size - len(head) - 1))[:size - 1].encode() + b"\n"


def checkpoint(path: str, size: int, seed: int) -> dict:
    buf = chunk_buffer(seed)
    t_open = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done, i = 0, 0
        while done < size:
            view = memoryview(chunk(buf, i))[:min(WRITE_CHUNK, size - done)]
            while view:  # a short write is legal; finish the chunk
                n = os.write(fd, view)
                view, done = view[n:], done + n
            i += 1
        t_written = time.monotonic()
        os.fsync(fd)
        t_fsynced = time.monotonic()
    finally:
        os.close(fd)
    return {"t_open": t_open, "t_written": t_written, "t_fsynced": t_fsynced, "t_closed": time.monotonic()}


def appends(path: str, seconds: float, max_lines: int, line_bytes: int) -> None:
    lat = []
    f = open(path, "ab", buffering=line_bytes * 64)
    t_open = time.monotonic()
    deadline = t_open + seconds
    now = t_open
    progress = [(t_open, 0)]  # (time, lines written by then), every PROGRESS_S: how far S3 trails
    while now < deadline and len(lat) < max_lines:
        f.write(log_line(len(lat), line_bytes))
        f.flush()  # one write(2) per line, as logging.StreamHandler does
        t = time.monotonic()
        lat.append(t - now)
        now = t
        if now - progress[-1][0] >= PROGRESS_S:
            progress.append((now, len(lat)))
    progress.append((now, len(lat)))
    lat_sorted = sorted(lat)

    def pct(p: float) -> float:
        return lat_sorted[min(len(lat_sorted) - 1, int(p * len(lat_sorted)))] * 1e3 if lat_sorted else 0.0
    print(json.dumps({"lines": len(lat), "t_open": t_open, "t_last": now, "progress": progress,
                      "line_ms_p50": pct(0.5),
                      "line_ms_p99": pct(0.99), "line_ms_max": lat_sorted[-1] * 1e3 if lat_sorted else 0.0}),
          flush=True)
    sys.stdin.readline()  # the parent has looked at S3 while the file was open
    t_close = time.monotonic()
    f.close()
    print(json.dumps({"t_close_start": t_close, "t_closed": time.monotonic()}), flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "checkpoint":
        print(json.dumps(checkpoint(argv[1], int(argv[2]), int(argv[3]))), flush=True)
    elif argv[0] == "appends":
        appends(argv[1], float(argv[2]), int(argv[3]), int(argv[4]))
    else:
        sys.exit(f"unknown workload {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
