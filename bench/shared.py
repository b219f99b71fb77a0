"""The shared cache tier (issue 19): 4 cachefs daemons with their own cache directories are 4 nodes
reading the same dataset cold, one after another and all at once, with a shared tier on Ceph RGW.

    python -m bench.shared [--runs 3] [--latency-ms 20] [--nodes 4] [--dataset-mib 1024]
                           [--object-mib 64] [--small-files 100] [-- cachefs options]

Starts Ceph RGW (bench/ceph.sh; --endpoint moto for a smoke test) with two buckets: the origin,
holding DATASET_MIB of OBJECT_MIB objects (random bytes) and SMALL_FILES files of 110 KB in a folder
of their own, and the shared tier's bucket. With --latency-ms a delaying proxy (bench/proxy.py) sits
in front of the ORIGIN only: the nodes' shared tier talks to Ceph directly (a store near the GPUs, the
origin a remote region). Per run and mode, every node is mounted afresh (empty cache) with a shared
prefix of its own for that run and mode (an empty tier):

  sequential  node 1 reads every file (4 MiB reads, as cat), its shared writes drain, then node 2,
              then 3, then 4;
  concurrent  all nodes read every file at the same moment (one thread per node, same order).

Per node: seconds, origin bytes (its `s3_get_bytes`: the mount's s3_* counters are the origin's
only), shared hits/misses/bytes and the claim counters. Goals (issue 19), printed per mode:
origin bytes / dataset <= 1.05; shared hits / the misses that were not a block's first <= 0.95 (the
nodes' node-tier misses, less one per block: a block's first miss must go to the origin); and in
the sequential mode with --latency-ms 20, node 1's seconds / the mean of nodes 2-4's >= 3.
RGW's own sent bytes (`rgw get_b`, origin and tier together) are recorded as a cross-check.
Writes bench/results/shared-<UTC timestamp>.json.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from typing import Any

from bench import util
from bench.endpoint import delaying_proxy, open_endpoint
from bench.systems import Cachefs

MiB = 1 << 20
ORIGIN = "origin-data"
SHARED = "shared-tier"
SMALL_BYTES = 110 * 1000
READ_BYTES = 4 * MiB          # as cat / dd bs=4M
DRAIN_TIMEOUT_S = 300
COUNTERS = ("s3_get", "s3_get_bytes", "cache_misses", "shared_cache_hits", "shared_cache_misses",
            "shared_cache_bytes", "shared_cache_errors", "shared_cache_writes", "shared_cache_write_skipped",
            "shared_cache_claims_won", "shared_cache_claims_lost", "shared_cache_claim_waits_served",
            "shared_cache_claim_timeouts", "shared_cache_claims_stale")
GOAL_ORIGIN_RATIO, GOAL_SHARED_RATIO, GOAL_SPEEDUP = 1.05, 0.95, 3.0


def node_class(i: int) -> type[Cachefs]:
    """Cachefs under a name of its own: its own mount point, cache directory and log."""
    return type(f"Node{i}", (Cachefs,), {"name": f"node{i}"})


def dataset(args) -> dict[str, int]:
    """key -> size of the origin's objects."""
    keys = {f"large/obj-{i:03d}.bin": args.object_mib * MiB for i in range(max(1, args.dataset_mib // args.object_mib))}
    keys.update({f"small/img-{i:05d}.jpg": SMALL_BYTES for i in range(args.small_files)})
    return keys


def fill(ep, keys: dict[str, int]) -> None:
    client = ep.client(max_pool=8)
    for bucket in (ORIGIN, SHARED):
        client.create_bucket(Bucket=bucket)
    for key, size in keys.items():
        client.put_object(Bucket=ORIGIN, Key=key, Body=os.urandom(size))

def read_all(root: str, keys: dict[str, int]) -> int:
    """Every file, start to end, in 4 MiB reads; bytes read (checked against the sizes)."""
    total = 0
    buf = bytearray(READ_BYTES)
    for key, size in keys.items():
        n = 0
        with open(os.path.join(root, key), "rb", buffering=0) as f:
            while got := f.readinto(buf):
                n += got
        if n != size:
            raise RuntimeError(f"{key}: read {n} bytes, expected {size}")
        total += n
    return total


def drained(node: Cachefs) -> bool:
    c = node.counters() or {}
    return c.get("shared_cache_queue_depth", 1) == 0


def timed_read(node: Cachefs, keys: dict[str, int], out: dict) -> None:
    t0 = time.monotonic()
    try:
        read_all(node.root, keys)
        out["seconds"] = time.monotonic() - t0
    except Exception as e:  # noqa: BLE001 - recorded in the row; the other nodes go on
        out["error"] = f"{type(e).__name__}: {e}"


def run_mode(mode: str, nodes: list[Cachefs], keys: dict[str, int], ep_pids: list[int]) -> dict:
    """One mode on freshly mounted nodes: per node figures and the goals' ratios."""
    per_node: list[dict[str, Any]] = [{"node": i + 1} for i in range(len(nodes))]
    sent0 = util.sent_bytes(ep_pids)
    t0 = time.monotonic()
    if mode == "sequential":
        for node, out in zip(nodes, per_node, strict=True):
            timed_read(node, keys, out)
            t1 = time.monotonic()
            util.wait_until(partial(drained, node), DRAIN_TIMEOUT_S, f"{node.name}'s shared writes")
            out["drain_s"] = time.monotonic() - t1
    else:
        threads = [threading.Thread(target=timed_read, args=(n, keys, out)) for n, out in zip(nodes, per_node,
                                                                                               strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for node in nodes:
            util.wait_until(partial(drained, node), DRAIN_TIMEOUT_S, f"{node.name}'s shared writes")
    wall = time.monotonic() - t0
    sent1 = util.sent_bytes(ep_pids)
    for node, out in zip(nodes, per_node, strict=True):
        c = node.counters() or {}
        out.update({k: c.get(k, 0) for k in COUNTERS})
    return {"mode": mode, "wall_s": wall, "nodes": per_node,
            "rgw_sent_mib": None if sent0 is None or sent1 is None else (sent1 - sent0) / MiB,
            **goals(mode, per_node, keys)}


def goals(mode: str, per_node: list[dict[str, Any]], keys: dict[str, int]) -> dict[str, Any]:
    size = sum(keys.values())
    block = 4 * MiB
    blocks = sum(-(-s // block) for s in keys.values())
    misses = sum(n["cache_misses"] for n in per_node)
    out: dict[str, Any] = {"dataset_mib": size / MiB, "blocks": blocks,
           "origin_ratio": sum(n["s3_get_bytes"] for n in per_node) / size,
           "shared_ratio": sum(n["shared_cache_hits"] for n in per_node) / max(1, misses - blocks)}
    secs = [n["seconds"] for n in per_node if "seconds" in n]
    if mode == "sequential" and len(secs) == len(per_node) > 1:
        out["speedup"] = secs[0] / statistics.mean(secs[1:])
    return out


def mount_nodes(nodes: list[Cachefs], shared_url: str, ep, extra: tuple[str, ...]) -> None:
    for node in nodes:
        node.umount()
    for node in nodes:
        node.extra_args = ("--shared-cache", shared_url, "--shared-cache-endpoint-url", ep.url,
                           "--shared-cache-addressing-style", "path", "--shared-cache-region", "us-east-1",
                           "--metrics-addr", "none", *extra)
        node.mount()


def print_mode(r: int, res: dict) -> None:
    print(f"run {r} {res['mode']:10s} wall {res['wall_s']:6.1f} s  origin/dataset {res['origin_ratio']:.3f}  "
          f"shared hits/later misses {res['shared_ratio']:.3f}"
          + (f"  node1/nodes2-4 {res['speedup']:.2f}x" if "speedup" in res else ""), flush=True)
    for n in res["nodes"]:
        secs = n.get("seconds", float("nan"))
        print(f"    node {n['node']}: {secs:6.2f} s  origin {n['s3_get_bytes'] / MiB:7.1f} MiB"
              f"  shared hits {n['shared_cache_hits']:5d} misses {n['shared_cache_misses']:5d}"
              f" {n['shared_cache_bytes'] / MiB:7.1f} MiB  claims won {n['shared_cache_claims_won']}"
              f" lost {n['shared_cache_claims_lost']} served {n['shared_cache_claim_waits_served']}"
              f" timeouts {n['shared_cache_claim_timeouts']}  tier errors {n['shared_cache_errors']}"
              + (f"  ERROR {n['error']}" if "error" in n else ""),
              flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--dataset-mib", type=int, default=1024, help="MiB of large objects")
    p.add_argument("--object-mib", type=int, default=64)
    p.add_argument("--small-files", type=int, default=100, help="110 KB files besides (one block each)")
    p.add_argument("--latency-ms", type=float, default=0, help="delay every ORIGIN request by this much")
    p.add_argument("--modes", default="sequential,concurrent")
    p.add_argument("--endpoint", choices=("ceph", "moto"), default="ceph")
    p.add_argument("--out", help="JSON path (default bench/results/shared-<UTC timestamp>.json)")
    p.add_argument("cachefs_args", nargs="*", help="extra cachefs mount options (after --)")
    args = p.parse_args(argv)
    keys = dataset(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cachefs-shared-", dir="/var/tmp") as scratch, \
            open_endpoint(scratch, args.endpoint) as ep, contextlib.ExitStack() as stack:
        print(f"filling s3://{ORIGIN}: {len(keys)} objects, {sum(keys.values()) / MiB:.0f} MiB", flush=True)
        fill(ep, keys)
        origin = ep
        if args.latency_ms:
            origin = stack.enter_context(delaying_proxy(ep, args.latency_ms, 0.0, 0.0,
                                                        os.path.join(scratch, "proxy.log")))
        nodes = [node_class(i + 1)(scratch, origin, ORIGIN, scratch) for i in range(args.nodes)]
        try:
            for r in range(1, args.runs + 1):
                for mode in args.modes.split(","):
                    mount_nodes(nodes, f"s3://{SHARED}/r{r}-{mode}", ep, tuple(args.cachefs_args))
                    res = run_mode(mode, nodes, keys, ep.pids)
                    res["run"] = r
                    rows.append(res)
                    print_mode(r, res)
        finally:
            for node in nodes:
                with contextlib.suppress(Exception):
                    node.umount()
    summary = {}
    for mode in args.modes.split(","):
        mine = [row for row in rows if row["mode"] == mode]
        summary[mode] = {k: util.summarize([row.get(k) for row in mine])
                         for k in ("origin_ratio", "shared_ratio", "speedup", "wall_s")
                         if any(k in row for row in mine)}
    print(f"\ngoals: origin/dataset <= {GOAL_ORIGIN_RATIO}, shared hits/later misses >= {GOAL_SHARED_RATIO}"
          + (f", node1/nodes2-4 >= {GOAL_SPEEDUP}x (sequential, --latency-ms {args.latency_ms:g})"
             if args.latency_ms else ""))
    for mode, figures in summary.items():
        for name, s in figures.items():
            if s:
                print(f"  {mode:10s} {name:13s} min {s['min']:8.3f}  median {s['median']:8.3f}  max {s['max']:8.3f}")
    util.write_runs(util.results_path("shared", args.out), args, ep, rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
