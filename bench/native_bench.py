"""Micro-benchmark: the C block reader (cachefs._native) against the pure-Python fallback.

Two workloads over N cached 4 MiB block files, page cache warm (so this measures CPU and copies,
not the disk):
  block   read_block(path, verify=True) of every file: what a cache hit costs
  ranges  the files as one logical file read in 128 KiB requests (the kernel's buffered read size),
          offset by half a request so one in 32 spans two blocks: read_ranges() per request
Each is run with 1 and with T threads (the C reader releases the GIL), native and python
interleaved in every repetition so machine noise hits both alike.

    .venv/bin/python -m bench.native_bench [--blocks 16] [--passes 8] [--repeat 7] [--threads 2] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
import types

from bench.util import summarize
from cachefs import native
from cachefs.cache.disk import encode_header

MiB = 1 << 20
BLOCK = 4 * MiB            # cachefs's default block size
REQUEST = 128 * 1024       # the kernel's default FUSE read request without a larger read_ahead_kb


def make_blocks(root: str, count: int) -> list[str]:
    paths = []
    for i in range(count):
        payload = os.urandom(BLOCK)
        path = os.path.join(root, f"{i:04d}")
        with open(path, "wb") as f:
            f.write(encode_header(payload) + payload)
        paths.append(path)
    return paths


def request_ranges(paths: list[str]) -> list[list[tuple[str, int, int]]]:
    """The read_ranges() argument of each 128 KiB request over the blocks as one file."""
    requests = []
    for start in range(REQUEST // 2, len(paths) * BLOCK - REQUEST, REQUEST):
        i, off = divmod(start, BLOCK)
        first = min(REQUEST, BLOCK - off)
        ranges = [(paths[i], off, first)]
        if first < REQUEST:
            ranges.append((paths[i + 1], 0, REQUEST - first))
        requests.append(ranges)
    return requests


def run_once(work, items: list, threads: int) -> float:
    """MB/s of `work(item)` over all items (each ITEM_BYTES[work name]), split across `threads` threads."""
    def worker(part):
        for item in part:
            work(item)
    parts = [items[t::threads] for t in range(threads)]
    pool = [threading.Thread(target=worker, args=(p,)) for p in parts]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return len(items) * ITEM_BYTES[work.__name__] / (time.perf_counter() - t0) / 1e6


ITEM_BYTES = {"block": BLOCK, "ranges": REQUEST}     # bytes served per item of each workload


def workloads(impl) -> dict:
    def block(path):
        if impl.read_block(path, verify=True) is None:
            raise RuntimeError(f"{path}: checksum failed")

    def ranges(request):
        impl.read_ranges(request)
    return {"block": block, "ranges": ranges}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=16, help="4 MiB block files to read (default 16)")
    parser.add_argument("--passes", type=int, default=8,
                        help="reads of the whole set per measurement, so one lasts long enough to time (default 8)")
    parser.add_argument("--repeat", type=int, default=7, help="repetitions, at least 5 (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="the multi-threaded run's threads (default 2)")
    parser.add_argument("--dir", default=None, help="where to write the block files (default: a temp dir)")
    parser.add_argument("--out", default=None, help="JSON output (default bench/results/native-<time>.json)")
    args = parser.parse_args()
    if args.repeat < 5 or args.blocks < 2:
        parser.error("--repeat must be >= 5 and --blocks >= 2")
    if native._native is None:
        parser.error("cachefs._native is not built (or CACHEFS_NO_NATIVE is set): nothing to compare")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"native-{stamp}.json")

    root = tempfile.mkdtemp(prefix="cachefs-native-bench-", dir=args.dir)
    try:
        paths = make_blocks(root, args.blocks)
        items = {"block": paths * args.passes, "ranges": request_ranges(paths) * args.passes}
        impls = {"native": native._native,
                 "python": types.SimpleNamespace(read_block=native.py_read_block, read_ranges=native.py_read_ranges)}
        runs = {(w, t, name): [] for w in items for t in (1, args.threads) for name in impls}
        for impl in impls.values():       # warm the page cache and both code paths once
            for w, work in workloads(impl).items():
                run_once(work, items[w], 1)
        for _ in range(args.repeat):
            for w, t, name in runs:
                runs[(w, t, name)].append(run_once(workloads(impls[name])[w], items[w], t))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    results = []
    print(f"{'workload':<8} {'threads':>7} {'impl':<7} {'min':>8} {'median':>8} {'max':>8}  MB/s   speedup")
    for (w, t, name), mbps in runs.items():
        s = summarize(mbps)
        speedup = s["median"] / summarize(runs[(w, t, "python")])["median"]
        results.append({"workload": w, "threads": t, "impl": name, "mbps": [round(v, 1) for v in mbps],
                        **{k: round(s[k], 1) for k in ("min", "median", "max")}, "speedup_median": round(speedup, 2)})
        print(f"{w:<8} {t:>7} {name:<7} {s['min']:>8.0f} {s['median']:>8.0f} {s['max']:>8.0f}"
              + (f"         x{speedup:.2f}" if name == "native" else ""))
    report = {"benchmark": "native_bench", "time_utc": stamp, "host": platform.node(),
              "python": platform.python_version(), "cpus": os.cpu_count(), "blocks": args.blocks, "passes": args.passes,
              "block_bytes": BLOCK, "request_bytes": REQUEST, "repeat": args.repeat, "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
