"""Does raising the mount's kernel read-ahead and FUSE max_background help? Warm sequential reads
from the memory tier (page cache dropped before each pass), untuned (kernel defaults) vs tuned, alternating, repeated.

    python -m bench.kernel_tuning [--runs 5] [--size-mib 256]

Prints min/median/max MiB/s for both and writes bench/results/kernel-tuning-<timestamp>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from bench import util
from bench.endpoint import open_endpoint
from bench.tiers import REPO, MiB, Mount, dataset, read_all

SETTINGS = {"untuned": ["--kernel-read-ahead", "0", "--max-background", "0"],
            "tuned": ["--kernel-read-ahead", "4MiB", "--max-background", "64"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="cachefs-ktune-")
    speeds: dict[str, list[float]] = {k: [] for k in SETTINGS}
    try:
        with open_endpoint(scratch, prefer="moto") as endpoint:
            names = dataset(endpoint, "ktune", "k", 2, a.size_mib // 2 * MiB, 7)
            mounts = {k: Mount(scratch, endpoint, "ktune", "k", "--cache", f"mem:{2 * a.size_mib}MiB", *flags)
                      for k, flags in SETTINGS.items()}
            for m in mounts.values():
                m.__enter__()
            try:
                for m in mounts.values():
                    read_all(m.path, names)                       # fill the memory tier
                for _ in range(a.runs):
                    for k, m in mounts.items():
                        util.drop_page_cache()
                        secs, nbytes = read_all(m.path, names)
                        speeds[k].append(round(nbytes / MiB / secs, 1))
            finally:
                for m in mounts.values():
                    m.__exit__(None, None, None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = {k: util.summarize(v) for k, v in speeds.items()}
    ratios = [t / d for t, d in zip(speeds["tuned"], speeds["untuned"], strict=True)]
    summary["tuned / untuned"] = util.summarize([round(r, 3) for r in ratios])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = a.out or os.path.join(REPO, "bench", "results", f"kernel-tuning-{stamp}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"settings": SETTINGS, "speeds_mib_s": speeds, "summary": summary,
                   "command": "python -m bench.kernel_tuning " + " ".join(argv or sys.argv[1:])}, f, indent=1)
    print("| setting | min | median | max |\n|---|---|---|---|")
    for k, v in summary.items():
        print(f"| {k} | {v['min']:g} | {v['median']:g} | {v['max']:g} |")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
