"""Cold sequential read of large objects through cachefs, against the backend's own parallel
ranged-GET throughput measured by this same script, pair by pair.

    python -m bench.coldread [--runs 5] [--object-mib 256] [--jobs 1] [--baseline TREE] [-- extra cachefs options]

Starts Ceph RGW (bench/ceph.sh), uploads runs x 2 objects, then for every run: the endpoint probe (4
MiB ranged GETs, 8 in flight, with pycurl, the cheapest client: bench/curlprobe.py; boto3 without
it) reads one object, and a fresh cachefs mount with an empty cache reads another with JOBS readers
(1 MiB reads; JOBS > 1: each reader its own contiguous part, like fio's offset_increment) right
after, page cache dropped. The two readings are side by side in time, so the machine's noise hits
both; the ratio of each pair is reported, with min/median/max over runs, and the CPU seconds of the
daemon and of the whole machine (this machine has 2 cores and runs the endpoint too: a cold read
here is CPU-bound).

Beside them, in every run, bench/memfs.py (the pyfuse3 ceiling: no S3, the bytes in RAM) serves an
object of the same size, page cache dropped, read the same way: what FUSE alone costs to fill the
page cache with these bytes ("fuse" in the output). From it, "bound": the ratio a FUSE filesystem
could reach at most if its S3 side cost the machine exactly what the probe costs and its FUSE side
exactly what memfs costs, at the probe's CPU utilisation: probe CPU / (probe CPU + memfs CPU), all
whole-machine CPU-seconds. This 2-core machine runs the endpoint too, so a cold read is CPU-bound
and that bound is what the 0.8 goal of issue 5 is up against.

--baseline TREE: another checkout of cachefs (say `git worktree add /tmp/old COMMIT` and its native
build, `python setup.py build_ext --inplace` there) reads a third object in each run, right after,
the two cachefs in alternating order: a before/after comparison side by side.

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

from bench import curlprobe, util
from bench.endpoint import BUCKET, open_endpoint
from bench.systems import Cachefs, MemoryFuse

MiB = 1 << 20
RANGE = 4 * MiB
PARALLEL = 8
READ = 1 * MiB
FLOOR_KEY = "cold/memfs.bin"     # the object memfs serves, under its own root


def machine_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def probe_once(client, endpoint, key: str, size: int) -> dict:
    """The backend's own rate for this object: 4 MiB ranged GETs, PARALLEL in flight, with the cheapest
    client there is (pycurl, bench/curlprobe.py; boto3 if pycurl is missing), and the machine's CPU."""
    busy, t = machine_busy_s(), time.monotonic()
    if curlprobe.unavailable() is None:
        ranges = [(key, off) for off in range(0, size, RANGE)]
        got = curlprobe.get_rate(endpoint, BUCKET, ranges, RANGE, PARALLEL, count=len(ranges))
        if got["errors"]:
            raise RuntimeError(f"probe GETs failed: {got['first_error']}")
        n, used = got["bytes"], "pycurl"
    else:
        def get(off: int) -> int:
            body = client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={off}-{min(off + RANGE, size) - 1}")["Body"]
            return len(body.read())
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            n, used = sum(pool.map(get, range(0, size, RANGE))), "boto3"
    wall = time.monotonic() - t
    return {"mib_s": n / MiB / wall, "machine_cpu_s": machine_busy_s() - busy, "client": used}


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


def fuse_bound(probe_cpu_s: float, fuse_cpu_s: float) -> float | None:
    """See the module's doc; None when the clock-tick CPU counters read nothing (a tiny object)."""
    total = probe_cpu_s + fuse_cpu_s
    return probe_cpu_s / total if total > 0 else None


def read_once(system, key: str, size: int, jobs: int) -> dict:
    """Read `key` under the mount with JOBS readers, page cache dropped first; MiB/s and CPU-s."""
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
    return {"mib_s": size / MiB / wall, "machine_cpu_s": machine_busy_s() - busy,
            "daemon_cpu_s": (util.cpu_seconds(pids) or 0) - (cpu0 or 0)}


def cachefs_once(system: Cachefs, key: str, size: int, jobs: int) -> dict:
    system.remount()
    figures = read_once(system, key, size, jobs)
    counters = system.counters() or {}
    return {**figures, **{k: counters.get(k) for k in ("s3_get", "s3_hedged", "fetch_shared", "fuse_reads")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--object-mib", type=int, default=256)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--baseline", metavar="TREE", help="also read with the cachefs of this checkout")
    p.add_argument("--endpoint", choices=("ceph", "moto"), default="ceph",
                   help="moto: a smoke test only (it reads a whole object per ranged GET)")
    p.add_argument("--out", help="JSON path (default bench/results/coldread-<UTC timestamp>.json)")
    p.add_argument("cachefs_args", nargs="*", help="extra cachefs mount options (after --)")
    args = p.parse_args(argv)
    size = args.object_mib * MiB
    rows = []
    with (tempfile.TemporaryDirectory(prefix="cachefs-coldread-") as scratch,
          open_endpoint(scratch, args.endpoint) as ep):
        client = ep.client(max_pool=PARALLEL)
        client.create_bucket(Bucket=BUCKET)
        per_run = 3 if args.baseline else 2
        keys = [f"cold/obj-{i:02d}.bin" for i in range(per_run * args.runs)]
        for k in keys:
            client.put_object(Bucket=BUCKET, Key=k, Body=os.urandom(size))
        floor_root = os.path.join(scratch, "floor")
        os.makedirs(os.path.join(floor_root, "cold"))
        with open(os.path.join(floor_root, FLOOR_KEY), "wb") as f:
            f.write(os.urandom(size))
        memfs = MemoryFuse(scratch, None, BUCKET, floor_root)
        systems = {"cachefs": Cachefs(scratch, ep, BUCKET, scratch)}
        if args.baseline:
            systems["baseline"] = Cachefs.from_tree(args.baseline, "baseline", scratch, ep, BUCKET, scratch)
        try:                       # a mount that fails still has the ones before it unmounted
            memfs.mount()
            for system in systems.values():
                system.extra_args = tuple(args.cachefs_args)
                system.mount()
            for r in range(args.runs):
                row = {"run": r + 1, "probe": probe_once(client, ep, keys[per_run * r], size),
                       "fuse": read_once(memfs, FLOOR_KEY, size, args.jobs)}
                row["bound"] = fuse_bound(row["probe"]["machine_cpu_s"], row["fuse"]["machine_cpu_s"])
                order = list(systems) if r % 2 == 0 else list(reversed(systems))
                for i, name in enumerate(order):
                    row[name] = cachefs_once(systems[name], keys[per_run * r + 1 + i], size, args.jobs)
                    row[f"ratio_{name}"] = row[name]["mib_s"] / row["probe"]["mib_s"]
                row["ratio"] = row["ratio_cachefs"]
                rows.append(row)
                pr, fu = row["probe"], row["fuse"]
                print(f"run {r + 1}: backend {pr['mib_s']:.0f} MiB/s ({pr['machine_cpu_s']:.2f} CPU-s), fuse (memfs) "
                      f"{fu['mib_s']:.0f} MiB/s ({fu['machine_cpu_s']:.2f} CPU-s, daemon {fu['daemon_cpu_s']:.2f}), "
                      f"bound {row['bound'] or 0:.2f}" + "".join(
                    f", {name} {row[name]['mib_s']:.0f} MiB/s ({row[name]['machine_cpu_s']:.2f} CPU-s, daemon "
                    f"{row[name]['daemon_cpu_s']:.2f}, {({k: row[name][k] for k in ('s3_get', 's3_hedged')})}) "
                    f"ratio {row[f'ratio_{name}']:.2f}" for name in systems), flush=True)
        finally:
            for system in [*systems.values(), memfs]:
                system.umount()
    figures = [("backend_mib_s", lambda r: r["probe"]["mib_s"]),
               ("backend_machine_cpu_s", lambda r: r["probe"]["machine_cpu_s"]),
               ("fuse_mib_s", lambda r: r["fuse"]["mib_s"]),
               ("fuse_machine_cpu_s", lambda r: r["fuse"]["machine_cpu_s"]),
               ("fuse_daemon_cpu_s", lambda r: r["fuse"]["daemon_cpu_s"]),
               ("bound", lambda r: r["bound"])]
    for name in systems:
        figures += [(f"ratio_{name}" if name != "cachefs" else "ratio", lambda r, n=name: r[f"ratio_{n}"]),
                    (f"{name}_mib_s", lambda r, n=name: r[n]["mib_s"]),
                    (f"{name}_machine_cpu_s", lambda r, n=name: r[n]["machine_cpu_s"]),
                    (f"{name}_daemon_cpu_s", lambda r, n=name: r[n]["daemon_cpu_s"])]
    summary = {name: util.summarize([get(r) for r in rows]) for name, get in figures}
    for name, s in summary.items():
        print(f"{name:24s} min {s['min']:8.2f}  median {s['median']:8.2f}  max {s['max']:8.2f}")
    util.write_runs(util.results_path("coldread", args.out), args, ep, rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
