"""What single requests cost the endpoint's own processes: a flat LIST page of 1,000 keys, a
one-directory LIST, and a 110 KB GET sent one at a time (boto3), over the image dataset's layout.

    python -m bench.endpointcost [--runs 3] [--images 3000] [--classes 1000] [--json PATH]

Starts its own endpoint (Ceph RGW, else moto) in a scratch directory. CPU is the endpoint's
processes' user + system time over each loop, per request. The same GETs at 16 and 64 in flight,
alone and beside busy processes, are `python -m bench.imgepoch --runs 0 --probe --probe-busy N`.
JSON to bench/results/endpointcost-<UTC>.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from bench import dataset, util
from bench.endpoint import BUCKET, open_endpoint
from cachefs.devtools import sample


def _timed(ep, n: int, fn) -> dict:
    e0, t0 = util.cpu_seconds(ep.pids), time.perf_counter()
    fn()
    return {"endpoint_ms_per_request": 1000 * (util.cpu_seconds(ep.pids) - e0) / n,
            "wall_ms_per_request": 1000 * (time.perf_counter() - t0) / n}


def one_run(ep, client, keys: list[str]) -> dict:
    prefix = os.path.dirname(os.path.dirname(keys[0])) + "/"
    dirs = sorted({os.path.dirname(k) + "/" for k in keys})[:200]
    pages = -(-len(keys) // 1000)

    def flat() -> None:
        token = None
        for _ in range(pages):
            kw = {"Bucket": BUCKET, "Prefix": prefix, "MaxKeys": 1000}
            if token:
                kw["ContinuationToken"] = token
            token = client.list_objects_v2(**kw).get("NextContinuationToken")

    def per_dir() -> None:
        for d in dirs:
            client.list_objects_v2(Bucket=BUCKET, Prefix=d, Delimiter="/", MaxKeys=1000)

    def serial_gets() -> None:
        for k in keys[:300]:
            client.get_object(Bucket=BUCKET, Key=k, Range="bytes=0-4194303")["Body"].read()

    return {"flat_list_page": _timed(ep, pages, flat), "dir_list": _timed(ep, len(dirs), per_dir),
            "serial_get": _timed(ep, 300, serial_gets)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--json")
    args = p.parse_args()
    scale = dataset.SCALES["short"]
    spec = sample.DatasetSpec(num_images=args.images, num_classes=args.classes, shard_bytes=int(scale.shard_mb * 1e6))
    keys = [sample.image_key(spec, i) for i in range(spec.num_images)]
    scratch = tempfile.mkdtemp(prefix="endpointcost-", dir="/var/tmp")
    rows = []
    try:
        with open_endpoint(scratch) as ep:
            client = ep.client()
            client.create_bucket(Bucket=BUCKET)
            sample.upload(client, BUCKET, "", sample.iter_image_files(spec), 16)
            for run in range(args.runs):
                row = one_run(ep, client, keys)
                rows.append({"run": run, **row})
                print(f"run {run}: " + ", ".join(f"{name} {r['endpoint_ms_per_request']:.2f} ms endpoint CPU "
                                                 f"({r['wall_ms_per_request']:.1f} ms wall)"
                                                 for name, r in row.items()), flush=True)
            summary = {name: util.summarize([r[name]["endpoint_ms_per_request"] for r in rows])
                       for name in ("flat_list_page", "dir_list", "serial_get")}
            util.write_runs(util.results_path("endpointcost", args.json), args, ep, rows, summary)
    finally:
        util.remove_scratch(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
