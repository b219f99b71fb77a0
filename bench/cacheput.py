"""What storing one fetched object in the cache costs: TieredCache.put into the memory and disk tiers
as the daemon configures them (mem 256 MiB + ssd in a directory on the root filesystem, the LMDB
block index), for a small object (110 KB) and a block (4 MiB).

    python -m bench.cacheput [--runs 3] [--small 2000] [--large 40] [--dir DIR] [--json PATH]

Each run builds a fresh cache in a new directory under DIR (default /var/tmp: the root filesystem,
where the default cache lives), receives the bodies into native.buffer(n, headroom=32) as the S3
fast path does (cachefs/store/fastget.py _read_body), then times the puts in this thread: CPU
(time.thread_time: user + system of this thread, which is where put does its work) and wall clock,
per put, with the index flush at the end counted in. Variants isolate the phases:
    full        TieredCache.put, mem + ssd + LMDB index (the daemon's configuration)
    nowait      TieredCache.put_nowait (same tiers): CPU per call the writer took (what the trio thread
                pays), the disk writer thread's CPU (process CPU less this thread's) and how many
                calls were declined (queue full: the puts here come faster than any fetch could, so
                those are put() by this thread, as the reader would)
    mem         the memory tier alone
    disk        the disk tier alone, no index (full - mem - disk: what the LMDB index adds); a 110 KB
                object is a record appended to a pack file (cache/packs.py), as the daemon does
    disk-files  the same with pack_small_blocks off: a file per object
    hash        xxh3-64 of the payload (the frame's checksum)
Reported per variant: min / median / max over the runs of the mean CPU per put, and the worst single
put's wall time (what a trio thread calling it inline would stall for). The cache directories are
deleted only when the benchmark ends: on a file system without a journal (this project's VM), ext4
skips inodes freed in the last minute or more when it allocates one (fs/ext4/ialloc.c,
recently_deleted), so file creation right after a mass deletion costs several times more.
JSON to bench/results/cacheput-<UTC>.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import xxhash

from bench import util
from cachefs import native
from cachefs.cache.direct import ALIGN
from cachefs.cache.spec import TierSpec
from cachefs.cache.tiered import TieredCache
from cachefs.config import DEFAULT_MEM_TIER
from cachefs.meta.store import MetaStore
from cachefs.stats import Stats

SMALL = 110_000
BLOCK = 4 << 20
VARIANTS = ("full", "nowait", "mem", "disk", "disk-files", "hash")


def bodies(n: int, size: int) -> list[memoryview]:
    """n distinct bodies received as fastget receives them (header room in front)."""
    seed = os.urandom(size)
    out = []
    for i in range(n):
        view = memoryview(native.buffer(size, headroom=native.HEADER.size))
        view[:] = seed
        view[:8] = i.to_bytes(8, "big")
        out.append(view)
    return out


def build(variant: str, root: str) -> TieredCache:
    specs = []
    if variant in ("full", "nowait", "mem"):
        specs.append(TierSpec("mem", (), DEFAULT_MEM_TIER))
    if variant in ("full", "nowait", "disk", "disk-files"):
        specs.append(TierSpec("ssd", (os.path.join(root, "blocks"),), 20 << 30))
    meta = MetaStore(os.path.join(root, "meta"), "bench") if variant in ("full", "nowait") else None
    cache = TieredCache.build(specs, meta, Stats(), max_block=BLOCK, pack_below=0 if variant == "disk-files" else BLOCK)
    cache.open()
    cache.load()
    return cache


def one(variant: str, size: int, n: int, base: str) -> dict:
    data = bodies(n, size)
    keys = [xxhash.xxh3_128_digest(f"{size}-{i}-{time.time_ns()}".encode()) for i in range(n)]
    walls = []
    if variant == "hash":
        c0 = time.thread_time()
        for d in data:
            xxhash.xxh3_64_intdigest(d)
        cpu = time.thread_time() - c0
        return {"cpu_ms_per_put": 1000 * cpu / n}
    root = tempfile.mkdtemp(prefix="cachefs-cacheput-", dir=base)
    ROOTS.append(root)
    cache = build(variant, root)
    put = cache.put_nowait if variant == "nowait" else cache.put
    declined, taken_cpu = 0, 0.0
    p0, c0 = time.process_time(), time.thread_time()
    for k, d in zip(keys, data, strict=True):
        w0, t0 = time.perf_counter(), time.thread_time()
        if put(k, d):
            taken_cpu += time.thread_time() - t0
        elif variant != "nowait" or not cache.put(k, d):   # nowait: the writer's queue is full, as the reader does
            raise SystemExit(f"{variant}: put of {size} bytes not taken")
        else:
            declined += 1
        walls.append(time.perf_counter() - w0)
    cache.flush()                          # nowait: waits for the writer too
    cpu = time.thread_time() - c0
    writer = (time.process_time() - p0) - cpu
    cache.close()
    if cache.meta is not None:
        cache.meta.close()                 # type: ignore[attr-defined]
    out = {"cpu_ms_per_put": 1000 * cpu / n, "wall_ms_per_put": 1000 * sum(walls) / n,
           "wall_ms_p99": 1000 * sorted(walls)[int(0.99 * (n - 1))], "wall_ms_max": 1000 * max(walls)}
    if variant == "nowait":
        # the calls the writer took (the trio thread's cost); declined ones were put() by this thread,
        # counted in cpu_ms_per_put with the writer's share in writer_cpu_ms_per_put
        out.update(taken_cpu_ms_per_call=1000 * taken_cpu / max(n - declined, 1),
                   writer_cpu_ms_per_put=1000 * writer / n, declined=declined)
    return out


ROOTS: list[str] = []     # deleted at the end (see the module docstring)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--small", type=int, default=2000, help="110 KB puts per run and variant")
    ap.add_argument("--large", type=int, default=40, help="4 MiB puts per run and variant (mem tier: 256 MiB)")
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    native.set_pool(BLOCK + ALIGN, 16 + 4, fill=True)      # as the daemon does (daemon/core.py)
    variants = [v for v in args.variants.split(",") if v != "nowait" or hasattr(TieredCache, "put_nowait")]
    rows = []
    try:
        measure(args, variants, rows)
    finally:
        for root in ROOTS:
            shutil.rmtree(root, ignore_errors=True)
    summary: dict = {}
    for size in (SMALL, BLOCK):
        for variant in variants:
            mine = [r for r in rows if r["size"] == size and r["variant"] == variant]
            summary[f"{size}/{variant}"] = {k: util.summarize([r.get(k) for r in mine]) for k in mine[0]
                                            if k.endswith(("_put", "_max", "_call")) or k == "declined"}
    path = util.results_path("cacheput", args.json)
    util.write_json(path, {"args": vars(args), "rows": rows, "summary": summary, "native": native.ACTIVE,
                           "cpus": os.cpu_count(), "loadavg": os.getloadavg()})
    print(f"wrote {path}")
    for name, s in summary.items():
        print(f"{name:>16}: " + "  ".join(f"{k} {v['median']:.4f} ({v['min']:.4f}-{v['max']:.4f})"
                                          for k, v in s.items()), file=sys.stderr)
    return 0


def measure(args, variants: list[str], rows: list) -> None:
    for run in range(args.runs):
        for size, n in ((SMALL, args.small), (BLOCK, args.large)):
            for variant in variants:
                r = one(variant, size, n, args.dir)
                r.update(run=run, size=size, puts=n, variant=variant)
                rows.append(r)
                print(f"run {run} {size:>8} B {variant:>5}: " +
                      " ".join(f"{k}={v:.4f}" for k, v in r.items() if k.endswith(("_put", "p99", "max", "_call"))),
                      flush=True)


if __name__ == "__main__":
    sys.exit(main())
