"""Client CPU of the read path's S3 engines, side by side: the libcurl engine (S3Store.aget_range awaited
from trio, no thread), the former fast GET (store/fastget.py as of commit FASTGET_COMMIT, botocore-signed
urllib3, through trio worker threads) and plain boto3 get_object through trio worker threads.

    python -m bench.engine [--runs 3] [--endpoint ceph|moto] [--in-flight 16] [--puts] [--out PATH]

Starts Ceph RGW (bench/ceph.sh; moto with a loud note if it cannot), uploads 400 x 110 KB objects and
4 x 64 MiB objects, then in every run (rotating which engine goes first): 110 KB GETs (2,000) and
1 GiB of 4 MiB ranged GETs (256), each with --in-flight requests at once. Client CPU is this process's
(getrusage RUSAGE_SELF: every thread). `--puts` also measures a 1 MiB and an 8 MiB PUT's client CPU,
boto3 against libcurl (the question whether writes should move to the engine). Prints min/median/max
over runs and writes bench/results/engine-<UTC timestamp>.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import trio

from bench import util
from bench.endpoint import open_endpoint

KB, MiB, GiB = 1000, 1 << 20, 1 << 30
SMALL, RANGE = 110 * KB, 4 * MiB
SMALL_OBJECTS, LARGE_OBJECTS = 400, 4
SMALL_GETS, RANGE_GETS = 2000, GiB // RANGE
FASTGET_COMMIT = "6ad382a"      # the last commit with store/fastget.py


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _old_fastget():
    """store/fastget.py from git history as a module of its own, or None outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        source = subprocess.run(["git", "show", f"{FASTGET_COMMIT}:cachefs/store/fastget.py"], cwd=root,
                                capture_output=True, check=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="bench-engine-"), "oldfastget.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("oldfastget", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _targets(kind: str, count: int) -> list[tuple[str, int, int]]:
    if kind == "small":
        return [(f"small/{i % SMALL_OBJECTS:05d}", 0, SMALL) for i in range(count)]
    per_object = 64 * MiB // RANGE
    return [(f"large/{(i // per_object) % LARGE_OBJECTS}", (i % per_object) * RANGE, (i % per_object + 1) * RANGE)
            for i in range(count)]


async def _drive(get, targets, in_flight: int) -> tuple[float, float, int]:
    """Run `await get(key, start, end)` over targets with `in_flight` at once: (wall s, CPU s, bytes)."""
    queue = list(reversed(targets))
    got = 0

    async def worker():
        nonlocal got
        while queue:
            key, start, end = queue.pop()
            data = await get(key, start, end)
            if len(data) != end - start:
                raise RuntimeError(f"short read of {key}")
            got += len(data)
    cpu0, t0 = cpu_s(), time.monotonic()
    async with trio.open_nursery() as nursery:
        for _ in range(in_flight):
            nursery.start_soon(worker)
    return time.monotonic() - t0, cpu_s() - cpu0, got


def _engines(endpoint, bucket: str, in_flight: int) -> dict:
    from cachefs.store.s3 import S3Store
    curl = S3Store(bucket, endpoint_url=endpoint.url, region="us-east-1", addressing_style="path",
                   read_deadline=30.0, max_connections=in_flight)
    if curl.engine is None:
        raise SystemExit("the libcurl engine is unavailable here")
    boto = S3Store(bucket, endpoint_url=endpoint.url, region="us-east-1", addressing_style="path",
                   engine="boto3", max_connections=in_flight)
    client = boto.read_client
    engines = {"curl-trio": lambda key, start, end: curl.aget_range(key, start, end)}

    def boto3_get(key: str, start: int, end: int) -> bytes:
        body: bytes = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"].read()
        return body
    old = _old_fastget()
    if old is not None:
        fast = old.FastGetter(client, bucket)

        def fast_get(key: str, start: int, end: int):
            return fast.get(key, start, end, None, lambda raw: None, None)
        engines["fastget-threads"] = lambda key, start, end: trio.to_thread.run_sync(fast_get, key, start, end)
    engines["boto3-threads"] = lambda key, start, end: trio.to_thread.run_sync(boto3_get, key, start, end)
    return engines


def _puts(endpoint, bucket: str, count: int = 10) -> dict:
    """Client CPU per PUT of 1 and 8 MiB: boto3 put_object against one libcurl easy handle (SigV4 by
    libcurl, payload hashed by libcurl, the body from memory)."""
    import pycurl
    client = endpoint.client()
    out = {}
    for size in (1 * MiB, 8 * MiB):
        body = os.urandom(size)
        cpu0 = cpu_s()
        for i in range(count):
            client.put_object(Bucket=bucket, Key=f"put/boto3-{i}", Body=body)
        out[f"boto3_{size // MiB}MiB_ms"] = (cpu_s() - cpu0) / count * 1e3
        c = pycurl.Curl()
        c.setopt(pycurl.AWS_SIGV4, "aws:amz:us-east-1:s3")
        c.setopt(pycurl.USERPWD, f"{endpoint.access_key}:{endpoint.secret_key}")
        c.setopt(pycurl.CUSTOMREQUEST, "PUT")
        c.setopt(pycurl.WRITEFUNCTION, lambda chunk: None)
        cpu0 = cpu_s()
        for i in range(count):
            c.setopt(pycurl.URL, f"{endpoint.url}/{bucket}/put/curl-{i}")
            c.setopt(pycurl.POSTFIELDS, body)
            c.perform()
            if c.getinfo(pycurl.RESPONSE_CODE) != 200:
                raise RuntimeError(f"PUT answered {c.getinfo(pycurl.RESPONSE_CODE)}")
        out[f"curl_{size // MiB}MiB_ms"] = (cpu_s() - cpu0) / count * 1e3
        c.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--endpoint", choices=("ceph", "moto"), default="ceph")
    ap.add_argument("--in-flight", type=int, default=16)
    ap.add_argument("--puts", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as scratch, \
            open_endpoint(scratch, prefer=args.endpoint) as endpoint:
        os.environ.update(AWS_ACCESS_KEY_ID=endpoint.access_key, AWS_SECRET_ACCESS_KEY=endpoint.secret_key)
        os.environ.pop("AWS_CA_BUNDLE", None)
        client = endpoint.client()
        bucket = "bench-engine"
        client.create_bucket(Bucket=bucket)
        small, large = os.urandom(SMALL), os.urandom(64 * MiB)
        for i in range(SMALL_OBJECTS):
            client.put_object(Bucket=bucket, Key=f"small/{i:05d}", Body=small)
        for i in range(LARGE_OBJECTS):
            client.put_object(Bucket=bucket, Key=f"large/{i}", Body=large)
        engines = _engines(endpoint, bucket, args.in_flight)
        small_gets = SMALL_GETS if endpoint.kind == "ceph-rgw" else 500
        rows = []
        for run in range(args.runs):
            order = list(engines)
            order = order[run % len(order):] + order[:run % len(order)]
            for name in order:
                for kind, targets in (("small", _targets("small", small_gets)),
                                      ("range", _targets("range", RANGE_GETS))):
                    wall, cpu, nbytes = trio.run(_drive, engines[name], targets, args.in_flight)
                    row = {"run": run, "engine": name, "kind": kind, "requests": len(targets), "wall_s": wall,
                           "cpu_s": cpu, "gets_per_s": len(targets) / wall,
                           "cpu_ms_per_get": cpu / len(targets) * 1e3, "cpu_s_per_gib": cpu / (nbytes / GiB)}
                    rows.append(row)
                    print(f"run {run} {name:16s} {kind:5s} {row['gets_per_s']:7.0f} GET/s  "
                          f"{row['cpu_ms_per_get']:.3f} ms CPU/GET  {row['cpu_s_per_gib']:.3f} CPU-s/GiB", flush=True)
        summary: dict = {}
        for name in engines:
            for kind, metric in (("small", "cpu_ms_per_get"), ("small", "gets_per_s"), ("range", "cpu_s_per_gib"),
                                 ("range", "gets_per_s")):
                values = [r[metric] for r in rows if r["engine"] == name and r["kind"] == kind]
                summary[f"{name} {kind} {metric}"] = {"min": min(values), "median": statistics.median(values),
                                                      "max": max(values)}
        print(f"\nendpoint {endpoint.kind}, {args.in_flight} in flight, {args.runs} runs (min / median / max)")
        for name, s in summary.items():
            print(f"  {name:45s} {s['min']:9.3f} {s['median']:9.3f} {s['max']:9.3f}")
        if args.puts:
            summary["puts"] = _puts(endpoint, bucket)
            print("PUT client CPU, ms:", {k: round(v, 2) for k, v in summary["puts"].items()})
        util.write_runs(util.results_path("engine", args.out), args, endpoint, rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
