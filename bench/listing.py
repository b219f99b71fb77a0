"""Listing CPU: boto3's list_objects_v2 against cachefs's listing on the libcurl engine (S3Store.alist_page
from trio: store/curlengine.py, parsed by store/s3list.py).

Starts Ceph RGW (bench/ceph.sh), uploads a dataset of DIRS directories of PER_DIR empty objects, and
then, in every run, lists through the daemon's own S3Store once with the fast path and once through
boto3 (the order alternating between runs; "fast" is the libcurl engine):
  dir    every directory with "/" as delimiter (what a lookup or `ls` of a directory costs)
  flat   the whole dataset without a delimiter, in pages of up to 1000 (a recursive walk)
Per cell: this process's CPU milliseconds per listing request, and wall milliseconds, min / median /
max over the runs. Both paths return the same pages (tests/test_store_curl.py checks that).

    .venv/bin/python -m bench.listing --runs 5
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import trio

from bench import util
from bench.endpoint import BUCKET, open_endpoint

PREFIX = "listing/"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def store_for(ep, fast: bool):
    from cachefs.store.s3 import S3Store
    os.environ.update(AWS_ACCESS_KEY_ID=ep.access_key, AWS_SECRET_ACCESS_KEY=ep.secret_key)
    return S3Store(BUCKET, endpoint_url=ep.url, region="us-east-1", addressing_style="path",
                   read_deadline=60.0, engine="curl" if fast else "boto3")


async def list_all(store, prefix: str, delimiter: str) -> int:
    """Requests made to list everything below `prefix` (the engine's coroutine, or boto3 in a thread)."""
    token, requests = None, 0
    while True:
        page = await store.alist_page(prefix, token, 1000, delimiter)
        requests += 1
        if page.next_token is None:
            return requests
        token = page.next_token


async def _requests(store, workload: str, dirs: int) -> int:
    if workload == "dir":
        return sum([await list_all(store, f"{PREFIX}d{d:04d}/", "/") for d in range(dirs)])
    return await list_all(store, PREFIX, "")


def measure(store, workload: str, dirs: int) -> dict:
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    requests = trio.run(_requests, store, workload, dirs)
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - t0
    return {"requests": requests, "cpu_ms": 1000 * cpu / requests, "wall_ms": 1000 * wall / requests}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--dirs", type=int, default=100)
    p.add_argument("--per-dir", type=int, default=30)
    p.add_argument("--endpoint", choices=("ceph", "moto"), default="ceph", help="moto: a smoke test only")
    p.add_argument("--out", help="JSON path (default bench/results/listing-<UTC timestamp>.json)")
    args = p.parse_args(argv)
    raw: dict = {}
    with tempfile.TemporaryDirectory(prefix="cachefs-listing-") as scratch, open_endpoint(scratch, args.endpoint) as ep:
        client = ep.client(max_pool=16)
        client.create_bucket(Bucket=BUCKET)
        keys = [f"{PREFIX}d{d:04d}/{i:04d}.jpg" for d in range(args.dirs) for i in range(args.per_dir)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=b""), keys))
        stores = {"fast": store_for(ep, True), "boto3": store_for(ep, False)}
        try:
            for store in stores.values():
                trio.run(list_all, store, PREFIX, "/")          # connections up, not measured
            for run in range(args.runs):
                for workload in ("dir", "flat"):
                    for name in (("fast", "boto3") if run % 2 == 0 else ("boto3", "fast")):
                        cell = measure(stores[name], workload, args.dirs)
                        raw.setdefault(workload, {}).setdefault(name, []).append(cell)
                        print(f"run {run + 1} {workload:4} {name:5} {cell['requests']:4d} requests "
                              f"{cell['cpu_ms']:7.2f} CPU-ms {cell['wall_ms']:7.2f} wall-ms per request", flush=True)
            assert stores["fast"].engine is not None, "the engine's listing fell back to boto3"
        finally:
            for store in stores.values():
                store.close()
    summary = {w: {name: {m: util.summarize([c[m] for c in cells]) for m in ("cpu_ms", "wall_ms")}
                   for name, cells in by_name.items()} for w, by_name in raw.items()}
    for w, by_name in summary.items():
        ratios = [b["cpu_ms"] / f["cpu_ms"] for f, b in zip(raw[w]["fast"], raw[w]["boto3"], strict=True)]
        by_name["boto3_over_fast_cpu"] = util.summarize(ratios)
    out = util.results_path("listing", args.out)
    util.write_json(out, {"args": vars(args), "endpoint": ep.kind, "objects": len(keys), "raw": raw,
                          "summary": summary, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print("| listing | objects per request | path | CPU ms per request min / median / max | wall ms median |")
    print("|---|---|---|---|---|")
    for w in ("dir", "flat"):
        per = round(len(keys) / raw[w]["fast"][0]["requests"])
        for name in ("fast", "boto3"):
            c, wall = summary[w][name]["cpu_ms"], summary[w][name]["wall_ms"]
            print(f"| {w} | {per} | {name} | {c['min']:.2f} / {c['median']:.2f} / {c['max']:.2f} "
                  f"| {wall['median']:.2f} |")
        r = summary[w]["boto3_over_fast_cpu"]
        print(f"| {w} | | boto3 / fast CPU | {r['min']:.1f} / {r['median']:.1f} / {r['max']:.1f} | |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
