"""What writing cache blocks costs: block files written buffered (through the page cache) against
O_DIRECT from a reused aligned buffer (cachefs/cache/direct.py), alternated so noise hits both.

    python -m bench.blockwrite [--dir DIR] [--blocks 64] [--runs 4]

Each pass writes BLOCKS files of 4 MiB + 32-byte header into DIR (default: a temporary directory
under /var/tmp, i.e. the root filesystem, where the default cache lives) and syncs, then deletes
them. Reported per pass: the process's own system CPU seconds, the whole machine's busy CPU seconds
(kernel writeback included) and wall seconds. Writes bench/results/blockwrite-<UTC>.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from bench import util
from cachefs.cache.direct import AlignedBuffers

BLOCK = 4 << 20
HEADER = 32


def machine_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def one_pass(directory: str, blocks: int, direct: bool, payload: bytes, header: bytes) -> dict:
    bufs = AlignedBuffers(BLOCK + HEADER)
    os.sync()
    t0, busy0, wall0 = os.times(), machine_busy_s(), time.monotonic()
    for i in range(blocks):
        path = os.path.join(directory, f"b{i}")
        if direct:
            bufs.write_file(path, [header, payload])
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.writev(fd, [header, payload])
            finally:
                os.close(fd)
    os.sync()
    t1 = os.times()
    result = {"process_sys_s": t1.system - t0.system, "process_user_s": t1.user - t0.user,
              "machine_cpu_s": machine_busy_s() - busy0, "wall_s": time.monotonic() - wall0}
    for i in range(blocks):
        os.unlink(os.path.join(directory, f"b{i}"))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", help="where to write (default: a temporary directory under /var/tmp)")
    p.add_argument("--blocks", type=int, default=64)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--out", help="JSON file (default bench/results/blockwrite-<UTC>.json)")
    args = p.parse_args(argv)
    payload, header = os.urandom(BLOCK), os.urandom(HEADER)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cachefs-blockwrite-", dir=args.dir or "/var/tmp") as d:
        for run in range(args.runs):
            for direct in ((False, True) if run % 2 == 0 else (True, False)):
                r = one_pass(d, args.blocks, direct, payload, header)
                rows.append({"run": run + 1, "mode": "O_DIRECT" if direct else "buffered", **r})
                print(f"run {run + 1} {rows[-1]['mode']:9s} process sys {r['process_sys_s']:.2f} s, machine "
                      f"{r['machine_cpu_s']:.2f} CPU-s, wall {r['wall_s']:.2f} s", flush=True)
    summary = {mode: {m: util.summarize([r[m] for r in rows if r["mode"] == mode])
                      for m in ("process_sys_s", "machine_cpu_s", "wall_s")} for mode in ("buffered", "O_DIRECT")}
    mib = args.blocks * BLOCK >> 20
    for mode, s in summary.items():
        print(f"{mode:9s} ({mib} MiB): " + ", ".join(
            f"{m} {v['min']:.2f}/{v['median']:.2f}/{v['max']:.2f}" for m, v in s.items()))
    out = util.results_path("blockwrite", args.out)
    util.write_json(out, {"args": vars(args), "rows": rows, "summary": summary})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
