"""Metadata: `ls -lR` (a readdir and a stat of every entry) over a tree of N tiny files.

`walk` is the step bench/run.py measures for every system. Run as a module, it compares cachefs
with another checkout of itself side by side (the idea of bench/coldread.py --baseline):

    python -m bench.metadata [--files 10000] [--runs 3] [--baseline TREE] [--rclone] [--manifest]
                             [--endpoint ceph|moto]

Uploads the tree bench/dataset.py makes for the metadata walk (100 files a directory), then, in
every run and for each cachefs in alternating order: a fresh mount with an empty cache (cold: every
directory is listed from S3), `ls -lR` of the tree, then `ls -lR` twice more (warm: from LMDB and the
kernel's caches). Besides the seconds, the FUSE requests that reached the daemon during the warm
walks, per file, by operation (its Prometheus exporter's cachefs_fuse_op_seconds_count), and the
daemon's CPU seconds. --rclone: rclone's mount (bench/systems.py, its defaults there) walks too, the
goal's yardstick (issue 17: warm at most 2x rclone, cold at most rclone). --manifest: the bucket's
manifest is built once (`cachefs manifest build`), and "cachefs+manifest" (cachefs mounted with it)
walks too; its LIST and HEAD requests during the cold walk are counted (issue 18: none, and the cold
walk at most 2x the warm one).
Writes bench/results/metadata-<UTC timestamp>.json and prints a table.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from bench import util
from bench.dataset import meta_tree
from bench.endpoint import BUCKET, open_endpoint
from bench.systems import Cachefs, Rclone, System

OP_COUNT = re.compile(r'^cachefs_fuse_op_seconds_count\{op="([a-z_]+)"\} ([0-9.e+]+)$', re.M)


def walk(root: str, tree: str, expected_files: int, timeout_s: float) -> dict:
    start = time.monotonic()
    out = util.run(["ls", "-lR", os.path.join(root, tree)], timeout=timeout_s)
    seconds = time.monotonic() - start
    files = sum(1 for line in out.stdout.splitlines() if line.startswith("-"))
    if files != expected_files:
        raise RuntimeError(f"ls -lR saw {files} files in {tree}, expected {expected_files}")
    return {"files": files, "seconds": seconds, "files_per_s": files / seconds}


def fuse_ops(port: int) -> dict[str, float]:
    """{operation: requests served so far} from the daemon's exporter."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {op: float(n) for op, n in OP_COUNT.findall(text)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(system: System, port: int | None, tree: str, files: int, timeout_s: float) -> dict:
    system.remount()                     # an empty cache and no kernel dentries: cold
    pids = system.pids()
    cpu0 = util.cpu_seconds(pids) or 0.0
    counters0 = system.counters() or {}
    cold = walk(system.root, tree, files, timeout_s)
    cpu1 = util.cpu_seconds(pids) or 0.0
    counters1 = system.counters() or {}
    requests = {k: counters1[k] - counters0.get(k, 0) for k in ("s3_list", "s3_head") if k in counters1}
    before = fuse_ops(port) if port else {}
    warm = [walk(system.root, tree, files, timeout_s) for _ in range(2)]
    cpu2 = util.cpu_seconds(pids) or 0.0
    after = fuse_ops(port) if port else {}
    per_file = {op: (after[op] - before.get(op, 0.0)) / (2 * files) for op in after
                if after[op] > before.get(op, 0.0)}
    return {"cold_s": cold["seconds"], "warm_s": min(w["seconds"] for w in warm),
            "cold_daemon_cpu_s": cpu1 - cpu0, "warm_daemon_cpu_s": (cpu2 - cpu1) / 2, "warm_ops_per_file": per_file,
            **{f"cold_{k}": v for k, v in requests.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=10000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--baseline", metavar="TREE", help="also walk with the cachefs of this checkout")
    p.add_argument("--rclone", action="store_true", help="also walk through rclone's mount")
    p.add_argument("--manifest", action="store_true", help="also walk cachefs mounted with the bucket's manifest")
    p.add_argument("--endpoint", choices=("ceph", "moto"), default="ceph")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one `ls -lR` may take")
    p.add_argument("--out", help="JSON path (default bench/results/metadata-<UTC timestamp>.json)")
    p.add_argument("cachefs_args", nargs="*", help="extra cachefs mount options (after --)")
    args = p.parse_args(argv)
    tree = f"meta{args.files}"
    rows = []
    with (tempfile.TemporaryDirectory(prefix="cachefs-metadata-") as scratch,
          open_endpoint(scratch, args.endpoint) as ep):
        client = ep.client(max_pool=16)
        client.create_bucket(Bucket=BUCKET)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda item: client.put_object(Bucket=BUCKET, Key=item[0], Body=item[1]),
                          meta_tree(args.files)))
        systems: dict[str, System] = {"cachefs": Cachefs(scratch, ep, BUCKET, scratch)}
        if args.baseline:
            systems["baseline"] = Cachefs.from_tree(args.baseline, "baseline", scratch, ep, BUCKET, scratch)
        if args.manifest:
            systems["cachefs+manifest"] = type("CachefsManifest", (Cachefs,), {"name": "cachefs-manifest"})(
                scratch, ep, BUCKET, scratch)
        ports: dict[str, int | None] = {name: free_port() for name in systems}
        for name, system in systems.items():
            assert isinstance(system, Cachefs)
            system.extra_args = ("--metrics-addr", f"127.0.0.1:{ports[name]}", *args.cachefs_args)
        if args.manifest:
            path = os.path.join(scratch, "dataset.manifest")
            util.build_manifest(ep, BUCKET, path)
            systems["cachefs+manifest"].extra_args += ("--manifest", path)
        if args.rclone:
            systems["rclone"], ports["rclone"] = Rclone(scratch, ep, BUCKET, scratch), None
        try:
            for r in range(args.runs):
                row: dict = {"run": r + 1}
                for name in (list(systems) if r % 2 == 0 else list(reversed(systems))):
                    row[name] = measure(systems[name], ports[name], tree, args.files, args.timeout)
                    c = row[name]
                    ops = ", ".join(f"{op} {n:.3f}" for op, n in sorted(c["warm_ops_per_file"].items()))
                    print(f"run {r + 1} {name:8}: cold {c['cold_s']:.2f} s (daemon {c['cold_daemon_cpu_s']:.2f} "
                          f"CPU-s, {c.get('cold_s3_list', '-')} LISTs, {c.get('cold_s3_head', '-')} HEADs), warm "
                          f"{c['warm_s']:.2f} s (daemon {c['warm_daemon_cpu_s']:.2f} CPU-s); "
                          f"warm FUSE requests per file: {ops}", flush=True)
                rows.append(row)
        finally:
            for system in systems.values():
                system.umount()
    summary = {f"{name}_{m}": util.summarize([r[name][m] for r in rows])
               for name in systems for m in ("cold_s", "warm_s", "cold_daemon_cpu_s", "warm_daemon_cpu_s")}
    for name, s in summary.items():
        print(f"{name:32s} min {s['min']:7.2f}  median {s['median']:7.2f}  max {s['max']:7.2f}")
    util.write_runs(util.results_path("metadata", args.out), args, ep, rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
