"""Tiered-cache benchmark (issue 4): eviction-policy hit ratios over cyclic epochs, warm throughput
per tier against the pyfuse3 ceiling, peak usage / quota under a concurrent fill, daemon RSS against
the memory tier's budget.

    python -m bench.tiers [--endpoint moto|ceph] [--runs 3] [--scale 1.0]

Prints a markdown table and writes bench/results/tiers-<timestamp>.json. Hit ratios and usage do
not depend on the endpoint's speed, so moto (quick to start) is the default; throughput is measured
warm, where the endpoint is not involved.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from bench import util
from bench.endpoint import open_endpoint
from bench.systems import MemoryFuse

MiB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READ_CHUNK = MiB


def cachefs(args: list[str], env: dict) -> None:
    r = subprocess.run([sys.executable, "-m", "cachefs", *args], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"cachefs {' '.join(args[:1])} failed: {r.stderr.strip()}")


class Mount:
    """One cachefs mount with its own empty cache, unmounted on exit."""

    def __init__(self, scratch: str, endpoint, bucket: str, prefix: str, *flags: str) -> None:
        self.base = tempfile.mkdtemp(dir=scratch, prefix="mnt-")
        self.path = os.path.join(self.base, "mnt")
        self.cache_dir = os.path.join(self.base, "cache")
        os.makedirs(self.path)
        self.env = endpoint.env()
        # No prefetch: these figures compare what the tiers and policies keep, so a block is a hit
        # only because a policy kept it (a prefetched file would count as a hit in a cold epoch).
        self.args = ["mount", f"s3://{bucket}/{prefix}", self.path, "--endpoint-url", endpoint.url,
                     "--addressing-style", "path", "--cache-dir", self.cache_dir, "--prefetch-small-files", "0",
                     *flags]

    def __enter__(self) -> Mount:
        cachefs(self.args, self.env)
        return self

    def __exit__(self, *exc) -> None:
        cachefs(["umount", self.path], self.env)
        shutil.rmtree(self.base, ignore_errors=True)

    def stats(self) -> dict:
        return util.daemon_stats(self.path)

    def pid(self) -> int:
        with open(os.path.join(self.cache_dir, "cachefs.pid")) as f:
            return int(f.read())


def read_file(path: str) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_CHUNK):
            n += len(chunk)
    return n


def read_all(root: str, names: list[str], workers: int = 1) -> tuple[float, int]:
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(read_file, [os.path.join(root, n) for n in names]))
    return time.perf_counter() - t0, total


def upload(endpoint, bucket: str, prefix: str, files: dict[str, int], seed: int) -> None:
    client = endpoint.client()
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass

    def put(item):
        name, size = item
        client.put_object(Bucket=bucket, Key=prefix + name, Body=random.Random(f"{seed}{name}").randbytes(size))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files.items()))


def dataset(endpoint, bucket: str, prefix: str, n: int, size: int, seed: int) -> list[str]:
    """Upload n objects of `size` bytes under prefix/; returns their names (relative to it)."""
    names = [f"{i:05d}.bin" for i in range(n)]
    upload(endpoint, bucket, "", {f"{prefix}/{name}": size for name in names}, seed)
    return names


# ---------------------------------------------------------------- A: eviction policies
def policy_hit_ratios(scratch, endpoint, bucket, scale: float) -> dict:
    n_files = max(16, int(96 * scale))
    cache_mib = n_files // 2                       # dataset = 2 x the cache
    dataset(endpoint, bucket, "p", n_files, MiB, 1)
    out = {}
    for policy in ("lru", "scan-resistant"):
        with Mount(scratch, endpoint, bucket, "p", "--cache", f"ssd:{scratch}/policy-{policy}:{cache_mib}MiB",
                   "--block-size", "1MiB", "--eviction-policy", policy) as m:
            ratios = []
            names = sorted(os.listdir(m.path))
            for epoch in range(3):
                random.Random(epoch).shuffle(names)
                util.drop_page_cache()
                before = m.stats()
                read_all(m.path, names)
                after = m.stats()
                hits = after["cache_hits"] - before["cache_hits"]
                misses = after["cache_misses"] - before["cache_misses"]
                ratios.append(round(hits / (hits + misses), 4))
            out[policy] = ratios
        shutil.rmtree(f"{scratch}/policy-{policy}", ignore_errors=True)
    out["dataset_mib"], out["cache_mib"] = n_files, cache_mib
    return out


# ---------------------------------------------------------------- B: warm throughput per tier
def tier_throughput(scratch, endpoint, bucket, scale: float) -> dict:
    n, size = 4, max(8, int(64 * scale)) * MiB
    names = dataset(endpoint, bucket, "t", n, size, 2)
    local = os.path.join(scratch, "local-t")
    os.makedirs(local, exist_ok=True)
    for name in names:
        with open(os.path.join(local, name), "wb") as f:
            f.write(random.Random(f"2t/{name}").randbytes(size))
    out = {}
    total_mib = n * size // MiB
    configs = {"mem": ["--cache", f"mem:{2 * total_mib}MiB"],
               "ssd": ["--cache", f"ssd:{scratch}/tp-ssd:{2 * total_mib}MiB"]}
    for tier, flags in configs.items():
        with Mount(scratch, endpoint, bucket, "t", *flags) as m:
            read_all(m.path, names)                    # cold: fills the tier
            util.drop_page_cache()
            secs, nbytes = read_all(m.path, names)     # warm in the tier, not in the page cache
            out[tier] = round(nbytes / MiB / secs, 1)
            assert m.stats()["s3_get"] > 0
        shutil.rmtree(f"{scratch}/tp-ssd", ignore_errors=True)
    ceiling = MemoryFuse(scratch, None, bucket, local)
    ceiling.mount()
    try:
        util.drop_page_cache()
        secs, nbytes = read_all(ceiling.root, names)
        out["ceiling"] = round(nbytes / MiB / secs, 1)
    finally:
        ceiling.umount()
    for tier in configs:
        out[f"{tier}_vs_ceiling"] = round(out[tier] / out["ceiling"], 3)
    return out


# ---------------------------------------------------------------- C + D: fill and memory
def fill_and_memory(scratch, endpoint, bucket, scale: float) -> dict:
    n, size = 32, max(2, int(8 * scale)) * MiB
    names = dataset(endpoint, bucket, "f", n, size, 3)
    total_mib = n * size // MiB
    mem_mib, ssd_mib = max(8, total_mib // 4), max(8, total_mib // 3)
    # --read-ahead 0: blocks of a sequential stream skip the memory tier (TieredCache.put), and this
    # part measures how full each tier gets, so every block is made to go through memory too.
    with Mount(scratch, endpoint, bucket, "f", "--cache", f"mem:{mem_mib}MiB:high=0.9:low=0.7",
               "--cache", f"ssd:{scratch}/fill-ssd:{ssd_mib}MiB:high=0.9:low=0.7",
               "--eviction-policy", "lru", "--read-ahead", "0") as m:
        pid = m.pid()
        util.reset_peak_rss([pid])
        for _ in range(2):
            util.drop_page_cache()
            read_all(m.path, names, workers=4)
        tiers = m.stats()["tiers"]
        peak = util.peak_rss_mib([pid])
    shutil.rmtree(f"{scratch}/fill-ssd", ignore_errors=True)
    return {"dataset_mib": total_mib, "mem_quota_mib": mem_mib, "ssd_quota_mib": ssd_mib,
            "peak_usage_over_quota": {k: v["peak_ratio"] for k, v in tiers.items()},
            "daemon_peak_rss_mib": round(peak, 1), "rss_minus_mem_quota_mib": round(peak - mem_mib, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", choices=("moto", "ceph"), default="moto")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--scale", type=float, default=1.0, help="dataset size factor (tests use a small one)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_path = a.out or os.path.join(REPO, "bench", "results", f"tiers-{stamp}.json")
    scratch = tempfile.mkdtemp(prefix="cachefs-tiers-")
    runs = []
    try:
        with open_endpoint(scratch, prefer=a.endpoint) as endpoint:
            for run in range(a.runs):
                bucket = f"tiers-{run}"
                runs.append({"policy": policy_hit_ratios(scratch, endpoint, bucket, a.scale),
                             "throughput": tier_throughput(scratch, endpoint, bucket, a.scale),
                             "fill": fill_and_memory(scratch, endpoint, bucket, a.scale)})
                print(json.dumps(runs[-1]), flush=True)
            result = {"endpoint": endpoint.kind, "note": endpoint.note, "runs": runs,
                      "machine": {"nproc": os.cpu_count(), "kernel": os.uname().release},
                      "command": "python -m bench.tiers " + " ".join(argv if argv is not None else sys.argv[1:])}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["summary"] = summarize(runs)
    util.write_json(out_path, result)
    print(table(result["summary"]))
    print(f"\nwrote {out_path}")
    return 0


def summarize(runs: list[dict]) -> dict:
    def col(get):
        return util.summarize([get(r) for r in runs])
    s = {}
    for policy in ("lru", "scan-resistant"):
        for epoch in (1, 2, 3):
            s[f"hit ratio, {policy}, epoch {epoch}"] = col(lambda r: r["policy"][policy][epoch - 1])
    for key in ("mem", "ssd", "ceiling", "mem_vs_ceiling", "ssd_vs_ceiling"):
        s[f"warm MiB/s: {key}"] = col(lambda r: r["throughput"][key])
    for tier in ("mem", "ssd"):
        s[f"peak usage / quota: {tier}"] = col(lambda r: r["fill"]["peak_usage_over_quota"][tier])
    s["daemon peak RSS MiB"] = col(lambda r: r["fill"]["daemon_peak_rss_mib"])
    s["RSS - mem quota MiB"] = col(lambda r: r["fill"]["rss_minus_mem_quota_mib"])
    return s


def table(summary: dict) -> str:
    lines = ["| figure | min | median | max | runs |", "|---|---|---|---|---|"]
    for name, v in summary.items():
        if v:
            lines.append(f"| {name} | {v['min']:g} | {v['median']:g} | {v['max']:g} | {v['n']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
