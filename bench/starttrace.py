"""Where a cold epoch's first files wait: the loader's per-file times (LOADER_TRACE) beside the
requests the endpoint saw (the delaying proxy's PROXY_LOG), on one clock.

    LOADER_TRACE=/tmp/lt PROXY_LOG=/tmp/plog python -m bench.imgepoch --runs 1 --hint --latency-ms 20
    python -m bench.starttrace /tmp/lt /tmp/plog

Reads the last epoch traced (PREFIX.start and the workers' PREFIX.<pid> written after it) and prints,
in ms from the epoch's start: each worker's first files (start + open + read), the files read per
50 ms, every LIST and HEAD the proxy forwarded and every request it made a straggler, when the 1st,
16th, 64th ... GET arrived, and the files whose open and read took longest.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os

MARKS = (1, 16, 17, 32, 64, 65, 128, 256, 384, 512, 1024, 2048)
FIRST_FILES = 8
LONGEST = 6


def load_workers(prefix: str) -> tuple[float, list[list]]:
    with open(f"{prefix}.start") as f:
        start = float(f.read())
    since = os.path.getmtime(f"{prefix}.start")
    workers = []
    for path in sorted(glob.glob(f"{prefix}.[0-9]*")):
        if os.path.getmtime(path) >= since:
            with open(path) as f:
                workers.append(json.load(f))
    return start, workers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace", help="the LOADER_TRACE prefix")
    p.add_argument("proxy_log", nargs="?", help="the PROXY_LOG file")
    args = p.parse_args(argv)
    start, workers = load_workers(args.trace)

    def ms(t: float) -> str:
        return f"{1000 * (t - start):.0f}"

    for i, rows in enumerate(workers):
        firsts = " ".join(f"{ms(r[1])}+{1000 * (r[2] - r[1]):.0f}o+{1000 * (r[3] - r[2]):.0f}r"
                          for r in rows[:FIRST_FILES])
        print(f"worker {i}: {firsts} ... last read at {ms(rows[-1][3])}")
    per = collections.Counter(int((r[3] - start) / 0.05) for rows in workers for r in rows)
    print("files read per 50 ms:", " ".join(f"{50 * k}:{per[k]}" for k in sorted(per)))
    if args.proxy_log:
        gets = 0
        with open(args.proxy_log) as f:
            for line in f:
                stamp, _, request = line.rstrip("\n").partition(" ")
                t = float(stamp)
                if t < start:
                    continue
                if "list-type=" in request or request.startswith("HEAD") or "STRAGGLER" in request:
                    print(f"{ms(t):>7} ms {request[:160]}")
                if request.startswith("GET") and "list-type=" not in request:
                    gets += 1
                    if gets in MARKS:
                        print(f"{ms(t):>7} ms GET #{gets}")
    waits = sorted(((r[3] - r[1], r) for rows in workers for r in rows), key=lambda w: w[0])[-LONGEST:]
    print("longest waits (open + read):", " ".join(f"{r[0]} {1000 * w:.0f} ms at {ms(r[1])}" for w, r in waits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
