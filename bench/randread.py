"""Cold random 64 KiB reads through cachefs: fio's IOPS and the read amplification the daemon's counters
show, optionally beside another checkout's cachefs (before/after, side by side).

    python -m bench.randread [--runs 3] [--object-mib 256] [--ios 1000] [--baseline TREE] [--warm N]
                             [-- cachefs options]

Starts Ceph RGW (bench/ceph.sh; --endpoint moto for a smoke test), uploads one object per system and
run, then for every run and system (alternating the order): a fresh mount with an empty cache, page
cache dropped, `fio --rw=randread --bs=64k` (bench/fio/randread.fio: psync, one job, IOS reads at the
same offsets every run) on that object. Amplification: s3_get_bytes / fuse_read_bytes (what the
daemon fetched per byte the kernel asked of it) and s3_get_bytes / fio's bytes (per byte fio read:
the kernel's own read-ahead included). Writes bench/results/randread-<UTC timestamp>.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

from bench import fio_bench, util
from bench.endpoint import BUCKET, open_endpoint
from bench.systems import Cachefs

MiB = 1 << 20
COUNTERS = ("s3_get", "s3_get_bytes", "fuse_reads", "fuse_read_bytes", "piece_fetches", "piece_fills",
            "cache_misses")


def fio_once(system: Cachefs, key: str, ios: int, warm: bool = False) -> dict:
    """fio on a fresh mount (cold), or again on the same mount with the page cache dropped (warm:
    make bench's warm-disk state, the daemon's memory and disk tiers hold what the cold pass read)."""
    if not warm:
        system.remount()
        os.listdir(os.path.join(system.root, os.path.dirname(key)))     # metadata is not what is measured
    util.drop_page_cache()
    before, pids = system.counters() or {}, system.pids()
    cpu0 = util.cpu_seconds(pids) or 0.0
    out = util.run(["fio", "--output-format=json", "randread.fio"], timeout=600,
                   env=dict(os.environ, RUNTIME="300", FILENAME=os.path.join(system.root, key), IOS=str(ios)),
                   cwd=fio_bench.FIO_DIR)
    figures = fio_bench.parse_fio(out.stdout)
    after = system.counters() or {}
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in COUNTERS}
    fetched = delta["s3_get_bytes"]
    return {**figures, **delta, "daemon_cpu_s": (util.cpu_seconds(pids) or 0.0) - cpu0,
            "amplification_daemon": fetched / max(1, delta["fuse_read_bytes"]),
            "amplification_fio": fetched / max(1, figures["io_mib"] * MiB),
            "kernel_request_kib": delta["fuse_read_bytes"] / max(1, delta["fuse_reads"]) / 1024}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--object-mib", type=int, default=256)
    p.add_argument("--ios", type=int, default=1000)
    p.add_argument("--baseline", metavar="TREE", help="also read with the cachefs of this checkout")
    p.add_argument("--endpoint", choices=("ceph", "moto"), default="ceph")
    p.add_argument("--warm", type=int, default=0, metavar="N",
                   help="after each cold pass, N warm passes on the same mount (page cache dropped first)")
    p.add_argument("--out", help="JSON path (default bench/results/randread-<UTC timestamp>.json)")
    p.add_argument("cachefs_args", nargs="*", help="extra cachefs mount options (after --)")
    args = p.parse_args(argv)
    rows = []
    with (tempfile.TemporaryDirectory(prefix="cachefs-randread-") as scratch,
          open_endpoint(scratch, args.endpoint) as ep):
        client = ep.client(max_pool=8)
        client.create_bucket(Bucket=BUCKET)
        systems = {"cachefs": Cachefs(scratch, ep, BUCKET, scratch)}
        if args.baseline:
            systems["baseline"] = Cachefs.from_tree(args.baseline, "baseline", scratch, ep, BUCKET, scratch)
        keys = {(name, r): f"rand/{name}-{r}.bin" for name in systems for r in range(args.runs)}
        for k in keys.values():
            client.put_object(Bucket=BUCKET, Key=k, Body=os.urandom(args.object_mib * MiB))
        try:
            for system in systems.values():
                system.extra_args = tuple(args.cachefs_args)
                system.mount()
            for r in range(args.runs):
                row: dict = {"run": r + 1}
                order = list(systems) if r % 2 == 0 else list(reversed(systems))
                for name in order:
                    row[name] = res = fio_once(systems[name], keys[(name, r)], args.ios)
                    print(f"run {r + 1} {name}: {res['iops']:.0f} IOPS, amplification {res['amplification_daemon']:.2f}"
                          f" (daemon) {res['amplification_fio']:.2f} (fio), kernel requests "
                          f"{res['kernel_request_kib']:.0f} KiB, {res['s3_get']} GETs, daemon CPU "
                          f"{res['daemon_cpu_s']:.2f} s", flush=True)
                    warm = [fio_once(systems[name], keys[(name, r)], args.ios, warm=True) for _ in range(args.warm)]
                    if warm:
                        res["warm_iops"] = statistics.median(w["iops"] for w in warm)
                        res["warm_daemon_cpu_s"] = statistics.median(w["daemon_cpu_s"] for w in warm)
                        print(f"run {r + 1} {name} warm: {[round(w['iops']) for w in warm]} IOPS, daemon CPU "
                              f"{res['warm_daemon_cpu_s']:.3f} s", flush=True)
                rows.append(row)
        finally:
            for system in systems.values():
                system.umount()
    summary = {f"{name}_{fig}": util.summarize([row[name][fig] for row in rows])
               for name in systems for fig in ("iops", "amplification_daemon", "amplification_fio",
                                                "kernel_request_kib", "daemon_cpu_s", "lat_ms_mean")}
    if args.warm:
        summary.update({f"{name}_{fig}": util.summarize([row[name][fig] for row in rows])
                        for name in systems for fig in ("warm_iops", "warm_daemon_cpu_s")})
    for name, s in summary.items():
        print(f"{name:34s} min {s['min']:8.2f}  median {s['median']:8.2f}  max {s['max']:8.2f}")
    util.write_runs(util.results_path("randread", args.out), args, ep, rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
