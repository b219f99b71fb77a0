"""Cold sequential read of large objects through cachefs, against the backend's own parallel
ranged-GET throughput measured by this same script, pair by pair.

    python -m bench.coldread [--runs 5] [--object-mib 256] [--jobs 1] [-- extra cachefs options]

Starts Ceph RGW (bench/ceph.sh), uploads runs x 2 objects, then for every run: the endpoint probe
(4 MiB ranged GETs, 8 in flight, boto3; bench/probe.py's method) reads one object, and a fresh
cachefs mount with an empty cache reads another with JOBS readers (1 MiB reads; JOBS > 1: each
reader its own contiguous part, like fio's offset_increment) right after, page cache dropped. The
two readings are side by side in time, so the machine's noise hits both; the ratio of each pair is
reported, with min/median/max over runs, and the CPU seconds of the daemon and of the whole machine
(this machine has 2 cores and runs the endpoint too: a cold read here is CPU-bound).

Writes bench/results/coldread-<UTC timestamp>.json and prints a table.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import tempfile
import threading
import time

from bench import util
from bench.endpoint import BUCKET, open_endpoint
from bench.systems import Cachefs

MiB = 1 << 20
RANGE = 4 * MiB
PARALLEL = 8
READ = 1 * MiB


def machine_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def probe_once(client, key: str, size: int) -> dict:
    def get(off: int) -> int:
        body = client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={off}-{min(off + RANGE, size) - 1}")["Body"]
        return len(body.read())
    busy, t = machine_busy_s(), time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        n = sum(pool.map(get, range(0, size, RANGE)))
    wall = time.monotonic() - t
    return {"mib_s": n / MiB / wall, "machine_cpu_s": machine_busy_s() - busy}


def read_part(path: str, start: int, length: int) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while n < length:
            b = f.read(min(READ, length - n))
            if not b:
                break
            n += len(b)
    return n


def cachefs_once(system: Cachefs, key: str, size: int, jobs: int) -> dict:
    system.remount()
    os.listdir(os.path.join(system.root, os.path.dirname(key)))     # metadata is not what is measured
    util.drop_page_cache()
    pids = system.pids()
    cpu0, busy, t = util.cpu_seconds(pids), machine_busy_s(), time.monotonic()
    part = -(-size // jobs)
    done = [0] * jobs

    def reader(i: int) -> None:
        done[i] = read_part(os.path.join(system.root, key), i * part, min(part, size - i * part))
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(jobs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - t
    if sum(done) != size:
        raise RuntimeError(f"read {sum(done)} of {size} bytes of {key}")
    counters = system.counters() or {}
    return {"mib_s": size / MiB / wall, "machine_cpu_s": machine_busy_s() - busy,
            "daemon_cpu_s": (util.cpu_seconds(pids) or 0) - (cpu0 or 0),
            **{k: counters.get(k) for k in ("s3_get", "s3_hedged", "fetch_shared", "fuse_reads")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--object-mib", type=int, default=256)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("cachefs_args", nargs="*", help="extra cachefs mount options (after --)")
    args = p.parse_args(argv)
    size = args.object_mib * MiB
    rows = []
    with tempfile.TemporaryDirectory(prefix="cachefs-coldread-") as scratch, open_endpoint(scratch) as ep:
        client = ep.client(max_pool=PARALLEL)
        client.create_bucket(Bucket=BUCKET)
        keys = [f"cold/obj-{i:02d}.bin" for i in range(2 * args.runs)]
        for k in keys:
            client.put_object(Bucket=BUCKET, Key=k, Body=os.urandom(size))
        system = Cachefs(scratch, ep, BUCKET, scratch)
        system.extra_args = tuple(args.cachefs_args)
        system.mount()
        try:
            for r in range(args.runs):
                pr = probe_once(client, keys[2 * r], size)
                cf = cachefs_once(system, keys[2 * r + 1], size, args.jobs)
                rows.append({"run": r + 1, "probe": pr, "cachefs": cf, "ratio": cf["mib_s"] / pr["mib_s"]})
                print(f"run {r + 1}: backend {pr['mib_s']:.0f} MiB/s ({pr['machine_cpu_s']:.2f} CPU-s), cachefs "
                      f"{cf['mib_s']:.0f} MiB/s ({cf['machine_cpu_s']:.2f} CPU-s, daemon {cf['daemon_cpu_s']:.2f}), "
                      f"ratio {rows[-1]['ratio']:.2f}  {({k: cf[k] for k in ('s3_get', 's3_hedged')})}", flush=True)
        finally:
            system.umount()
    summary = {name: util.summarize([get(r) for r in rows]) for name, get in (
        ("ratio", lambda r: r["ratio"]), ("backend_mib_s", lambda r: r["probe"]["mib_s"]),
        ("cachefs_mib_s", lambda r: r["cachefs"]["mib_s"]),
        ("backend_machine_cpu_s", lambda r: r["probe"]["machine_cpu_s"]),
        ("cachefs_machine_cpu_s", lambda r: r["cachefs"]["machine_cpu_s"]),
        ("cachefs_daemon_cpu_s", lambda r: r["cachefs"]["daemon_cpu_s"]))}
    for name, s in summary.items():
        print(f"{name:24s} min {s['min']:8.2f}  median {s['median']:8.2f}  max {s['max']:8.2f}")
    out = os.path.join(os.path.dirname(__file__), "results",
                       time.strftime("coldread-%Y%m%dT%H%M%SZ.json", time.gmtime()))
    util.write_json(out, {"args": vars(args), "endpoint": ep.kind, "rows": rows, "summary": summary,
                          "cpus": os.cpu_count(), "loadavg": os.getloadavg()})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
