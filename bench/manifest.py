"""A manifest of a large dataset against Ceph RGW (issue 18): how long `cachefs manifest build` takes,
how large the file is, and how long a mount takes to load it.

    python -m bench.manifest [--keys 1000000] [--dirs 1000] [--runs 3] [--keep-endpoint DIR]

Starts Ceph RGW (bench/ceph.sh), fills a bucket with KEYS empty objects in DIRS directories
(`m/dDDDDD/fFFFFFFFF`, what a dataset of small files lists like), PUT by one pycurl multi handle with
64 in flight (SigV4 by libcurl: boto3 would spend more CPU per PUT than the endpoint does). Then per
run: `python -m cachefs manifest build s3://BUCKET -o FILE` (the bucket holds only the dataset: wall
seconds, its CPU, the endpoint's CPU), the file's size, and a mount with `--manifest FILE` timed
from the command to the mount point answering, beside a mount without it (the difference is the
load into LMDB).
Writes bench/results/manifest-<UTC timestamp>.json.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

from bench import util
from bench.endpoint import BUCKET, open_endpoint
from bench.systems import Cachefs

PREFIX = "m/"
IN_FLIGHT = 64


def key_of(i: int, per_dir: int) -> str:
    return f"{PREFIX}d{i // per_dir:05d}/f{i:09d}"


def fill(ep, keys: int, dirs: int) -> float:
    """PUT `keys` empty objects with one CurlMulti; returns seconds. Raises on any non-200."""
    import pycurl
    per_dir = max(1, -(-keys // dirs))
    multi = pycurl.CurlMulti()
    free = []
    for _ in range(IN_FLIGHT):
        c = pycurl.Curl()
        c.setopt(pycurl.AWS_SIGV4, "aws:amz:us-east-1:s3")
        c.setopt(pycurl.USERPWD, f"{ep.access_key}:{ep.secret_key}")
        c.setopt(pycurl.CUSTOMREQUEST, "PUT")
        c.setopt(pycurl.POSTFIELDS, b"")
        c.setopt(pycurl.WRITEFUNCTION, lambda chunk: None)
        free.append(c)
    t0, sent, done, last = time.monotonic(), 0, 0, 0.0
    while done < keys:
        while free and sent < keys:
            c = free.pop()
            c.setopt(pycurl.URL, f"{ep.url}/{BUCKET}/{key_of(sent, per_dir)}")
            multi.add_handle(c)
            sent += 1
        multi.select(1.0)
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        _, ok, failed = multi.info_read()
        for c in ok:
            if c.getinfo(pycurl.RESPONSE_CODE) != 200:
                raise RuntimeError(f"PUT answered {c.getinfo(pycurl.RESPONSE_CODE)}")
        if failed:
            raise RuntimeError(f"PUT failed: {failed[0][2]}")
        for c in ok:
            multi.remove_handle(c)
            free.append(c)
        done += len(ok)
        if time.monotonic() - last > 30:
            last = time.monotonic()
            print(f"  {done:,} of {keys:,} PUT ({done / (last - t0):.0f}/s)", flush=True)
    return time.monotonic() - t0


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def build(ep, out: str) -> dict:
    ep_cpu0, cpu0, t0 = util.cpu_seconds(ep.pids) or 0.0, children_cpu_s(), time.monotonic()
    res = util.build_manifest(ep, BUCKET, out, timeout=1800, check=False)
    seconds = time.monotonic() - t0
    if res.returncode != 0:
        raise RuntimeError(f"manifest build failed: {res.stderr.strip()[-400:]}")
    return {"build_s": seconds, "build_cpu_s": children_cpu_s() - cpu0,
            "endpoint_cpu_s": (util.cpu_seconds(ep.pids) or 0.0) - ep_cpu0,
            "manifest_mb": os.path.getsize(out) / 1e6, "last_line": res.stderr.strip().splitlines()[-1:]}


def mount_with(system: Cachefs, manifest: str) -> dict:
    """Seconds from `cachefs mount --manifest` to a mount point that answers, then without it."""
    out = {}
    for label, extra in (("mount_with_manifest_s", ("--manifest", manifest)), ("mount_without_s", ())):
        system.extra_args = extra
        t0 = time.monotonic()
        system.remount()
        out[label] = time.monotonic() - t0
        system.umount()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--dirs", type=int, default=1000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", help="JSON path (default bench/results/manifest-<UTC timestamp>.json)")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cachefs-manifest-", dir="/var/tmp") as scratch, \
            open_endpoint(scratch, "ceph") as ep:
        ep.client().create_bucket(Bucket=BUCKET)
        print(f"filling s3://{BUCKET}/{PREFIX} with {args.keys:,} keys in {args.dirs:,} directories", flush=True)
        fill_s = fill(ep, args.keys, args.dirs)
        print(f"filled in {fill_s:.0f} s ({args.keys / fill_s:.0f} PUT/s)", flush=True)
        system = Cachefs(scratch, ep, BUCKET, scratch)
        for r in range(args.runs):
            path = os.path.join(scratch, f"run{r}.manifest")
            row = {"run": r + 1, **build(ep, path)}
            try:
                row.update(mount_with(system, path))
            except Exception as e:  # noqa: BLE001 - the build figures stand on their own
                row["mount_error"] = f"{type(e).__name__}: {e}"
            rows.append(row)
            print(f"run {r + 1}: {row}", flush=True)
            os.unlink(path)
    summary = {k: util.summarize([row[k] for row in rows if k in row])
               for k in ("build_s", "build_cpu_s", "endpoint_cpu_s", "manifest_mb", "mount_with_manifest_s",
                         "mount_without_s") if any(k in row for row in rows)}
    for name, s in summary.items():
        print(f"{name:24s} min {s['min']:8.2f}  median {s['median']:8.2f}  max {s['max']:8.2f}")
    args.fill_s = fill_s
    util.write_runs(util.results_path("manifest", args.out), args, ep, rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
