"""Which S3 client path for the read path: boto3 in threads, cachefs's fast GET (store/fastget.py:
signed by botocore, sent through the boto3 client's own HTTP session, no per-call pipeline; what
cachefs did by default before the libcurl engine; its last version is loaded from git history) in
the same threads, or aiobotocore. The libcurl engine itself: bench/engine.py.

Against one endpoint (Ceph RGW, started here unless --endpoint-url is given), each client fetches
  ranged  one large object in 4 MiB ranged GETs (cachefs's block fetches), N in flight
  small   whole ~110 KB objects (the image-folder workload's GETs), N in flight
with N = 1, 4, 8, 16, the two clients interleaved in every run so machine noise hits both alike.
Per cell: MB/s, objects/s, per-request latency (p50, p95) and the client's CPU seconds per GiB.

aiobotocore pins an older botocore than the project's boto3, so it does not go into .venv; without
it (`.venv/bin/python -m bench.s3client`) only the two boto3-based paths run. With it, from a side
virtualenv that has both clients on one botocore:

    python3 -m venv /tmp/aiovenv && /tmp/aiovenv/bin/pip install aiobotocore 'boto3<1.44'
    PYTHONPATH=. /tmp/aiovenv/bin/python -m bench.s3client --runs 3 [--endpoint-url URL]

Writes bench/results/s3client-<UTC timestamp>.json and prints a table.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from bench.util import summarize, write_json

MiB = 1 << 20
BLOCK = 4 * MiB              # cachefs's default block size = its ranged GET size
SMALL = 110_000              # the image-folder workload's file size
LARGE_KEY = "s3client/large.bin"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def client_config(inflight: int):
    from botocore.config import Config
    return Config(s3={"addressing_style": "path"}, max_pool_connections=max(inflight, 10),
                  retries={"max_attempts": 4, "mode": "standard"})


def requests_for(workload: str, large_size: int, small_keys: list[str]) -> list[tuple[str, str | None]]:
    """(key, Range header or None) of every GET of one pass."""
    if workload == "ranged":
        return [(LARGE_KEY, f"bytes={o}-{min(o + BLOCK, large_size) - 1}") for o in range(0, large_size, BLOCK)]
    return [(k, None) for k in small_keys]


def measure(fetch_all, reqs) -> dict:
    """Run one pass; MB/s, objects/s, latencies and CPU per GiB."""
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    latencies, nbytes = fetch_all(reqs)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    latencies.sort()
    return {"mb_s": nbytes / elapsed / 1e6, "objects_s": len(reqs) / elapsed,
            "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
            "cpu_s_per_gib": cpu / (nbytes / (1 << 30)), "bytes": nbytes, "seconds": elapsed}


def threaded(inflight: int, get):
    """fetch_all and close over a pool of `inflight` threads; `get(key, range or None)` -> body."""
    pool = ThreadPoolExecutor(inflight)

    def one(req):
        t = time.perf_counter()
        n = len(get(*req))
        return time.perf_counter() - t, n

    def fetch_all(reqs):
        results = list(pool.map(one, reqs))
        return [r[0] for r in results], sum(r[1] for r in results)
    return fetch_all, pool.shutdown


# -- boto3 in threads (a sync client called from a bounded thread pool) -----------------------------
def boto3_fetcher(endpoint: dict, bucket: str, inflight: int):
    import boto3
    client = boto3.session.Session().client("s3", config=client_config(inflight), **endpoint)

    def get(key, rng):
        kw = {"Range": rng} if rng else {}
        return client.get_object(Bucket=bucket, Key=key, **kw)["Body"].read()
    return threaded(inflight, get)


# -- cachefs's fast GET in the same threads (what cachefs does by default) ---------------------------
def fastget_fetcher(endpoint: dict, bucket: str, inflight: int):
    import boto3

    from bench.engine import _old_fastget  # store/fastget.py left the tree; its last version from git
    FastGetter = _old_fastget().FastGetter
    client = boto3.session.Session().client("s3", config=client_config(inflight), **endpoint)
    getter = FastGetter(client, bucket)

    def get(key, rng):
        if rng:
            start, last = (int(x) for x in rng[len("bytes="):].split("-"))
        else:
            start, last = 0, SMALL - 1               # the small objects are all SMALL bytes
        return getter.get(key, start, last + 1, None, lambda raw: None)
    return threaded(inflight, get)


# -- aiobotocore (asyncio; cachefs runs on trio, so it would need trio-asyncio or a loop thread) ---
def aiobotocore_fetcher(endpoint: dict, bucket: str, inflight: int):
    from aiobotocore.session import get_session
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    client = loop.run_until_complete(stack.enter_async_context(
        get_session().create_client("s3", config=client_config(inflight), **endpoint)))

    async def run(reqs):
        sem = asyncio.Semaphore(inflight)

        async def one(req):
            key, rng = req
            async with sem:
                t = time.perf_counter()
                kw = {"Range": rng} if rng else {}
                resp = await client.get_object(Bucket=bucket, Key=key, **kw)
                async with resp["Body"] as stream:
                    body = await stream.read()
                return time.perf_counter() - t, len(body)
        results = await asyncio.gather(*(one(r) for r in reqs))
        return [r[0] for r in results], sum(r[1] for r in results)

    def close():
        loop.run_until_complete(stack.aclose())
        loop.close()
    return (lambda reqs: loop.run_until_complete(run(reqs))), close


FETCHERS = {"boto3-threads": boto3_fetcher, "cachefs-fast-get": fastget_fetcher, "aiobotocore": aiobotocore_fetcher}


def upload(endpoint: dict, bucket: str, large_size: int, small_count: int) -> list[str]:
    import boto3
    s3 = boto3.session.Session().client("s3", config=client_config(8), **endpoint)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=LARGE_KEY, Body=os.urandom(large_size))
    keys = [f"s3client/small/{i:05d}.jpg" for i in range(small_count)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=os.urandom(SMALL)), keys))
    return keys


def run(endpoint: dict, bucket: str, args) -> dict:
    small_keys = upload(endpoint, bucket, args.large_mib * MiB, args.small_count)
    inflights = [int(n) for n in args.inflight.split(",")]
    raw: dict = {}
    for run_no in range(args.runs):
        for workload in ("ranged", "small"):
            reqs = requests_for(workload, args.large_mib * MiB, small_keys)
            for n in inflights:
                order = list(FETCHERS) if run_no % 2 == 0 else list(reversed(FETCHERS))
                for name in order:
                    fetch_all, close = FETCHERS[name](endpoint, bucket, n)
                    try:
                        fetch_all(reqs[:max(n, 4)])          # connections up, not measured
                        cell = measure(fetch_all, reqs)
                    finally:
                        close()
                    raw.setdefault(workload, {}).setdefault(str(n), {}).setdefault(name, []).append(cell)
                    print(f"run {run_no + 1} {workload:6} N={n:<2} {name:13} {cell['mb_s']:8.1f} MB/s "
                          f"{cell['objects_s']:7.1f} obj/s p50 {cell['p50_ms']:6.1f} ms p95 {cell['p95_ms']:6.1f} ms "
                          f"cpu {cell['cpu_s_per_gib']:5.2f} s/GiB", flush=True)
    summary = {w: {n: {name: {m: summarize([c[m] for c in cells]) for m in
                              ("mb_s", "objects_s", "p50_ms", "p95_ms", "cpu_s_per_gib")}
                       for name, cells in by_client.items()} for n, by_client in by_n.items()}
               for w, by_n in raw.items()}
    return {"raw": raw, "summary": summary}


def table(summary: dict) -> str:
    lines = ["| workload | in flight | client | MB/s min / median / max | objects/s median | p50 ms | p95 ms | "
             "client CPU s/GiB |", "|---|---|---|---|---|---|---|---|"]
    for w, by_n in summary.items():
        for n, by_client in by_n.items():
            for name, s in by_client.items():
                mb = s["mb_s"]
                lines.append(f"| {w} | {n} | {name} | {mb['min']:.0f} / {mb['median']:.0f} / {mb['max']:.0f} | "
                             f"{s['objects_s']['median']:.0f} | {s['p50_ms']['median']:.1f} | "
                             f"{s['p95_ms']['median']:.1f} | {s['cpu_s_per_gib']['median']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint-url", help="an S3 endpoint (default: start Ceph RGW with bench/ceph.sh)")
    p.add_argument("--bucket", default="s3client-bench")
    p.add_argument("--inflight", default="1,4,8,16")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--large-mib", type=int, default=256, help="size of the object read in ranged GETs")
    p.add_argument("--small-count", type=int, default=400, help="number of ~110 KB objects")
    p.add_argument("--out", help="JSON file (default bench/results/s3client-<timestamp>.json)")
    args = p.parse_args(argv)
    try:
        import aiobotocore  # noqa: F401
    except ImportError:
        del FETCHERS["aiobotocore"]
        print("bench.s3client: aiobotocore is not installed here: boto3 and cachefs's fast GET only "
              "(see the module docstring for the side venv)", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        if args.endpoint_url:
            url, kind = args.endpoint_url, "given"
            key = os.environ.get("AWS_ACCESS_KEY_ID", "benchaccesskey")
            secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "benchsecretkey")
        else:
            from bench.endpoint import open_endpoint
            ep = stack.enter_context(open_endpoint(stack.enter_context(tempfile.TemporaryDirectory())))
            url, kind, key, secret = ep.url, ep.kind, ep.access_key, ep.secret_key
        endpoint = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": key,
                    "aws_secret_access_key": secret}
        result = run(endpoint, args.bucket, args)
    import boto3
    import botocore
    try:
        import aiobotocore
        aio_version = aiobotocore.__version__
    except ImportError:
        aio_version = None
    result["meta"] = {"endpoint": url, "endpoint_kind": kind, "runs": args.runs, "large_mib": args.large_mib,
                      "small_count": args.small_count, "small_bytes": SMALL, "block": BLOCK,
                      "boto3": boto3.__version__, "botocore": botocore.__version__,
                      "aiobotocore": aio_version, "cpus": os.cpu_count(),
                      "python": platform.python_version(),
                      "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   time.strftime("s3client-%Y%m%dT%H%M%SZ.json", time.gmtime()))
    write_json(out, result)
    print(table(result["summary"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
