"""`make demo`: the main job on the embedded default endpoint.

Starts moto's S3 server on 127.0.0.1, uploads a generated training set (TFRecord shards of ~128 MB
and a few thousand ~110 KB image files), mounts it with cachefs, reads everything cold, then warm
from the disk cache (page cache dropped), then warm from the page cache, checks every byte, and
prints MB/s, files/s, the cache hit ratio and the S3 GETs of each pass. Then it writes like a training
job (a checkpoint and a log), waits until S3 holds both, and checks them there.

moto answers a ranged GET by reading the whole object, so the cold figures here measure moto more
than cachefs; bench/ measures against Ceph RGW.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time

import xxhash

from cachefs.devtools.devserver import MotoServer
from cachefs.devtools.sample import DatasetSpec, iter_image_files, iter_tfrecord_shards, upload
from cachefs.ipc import control_request

BUCKET = "cachefs-demo"
READ_CHUNK = 4 << 20        # what a TFRecord reader asks for at a time
FILE_READERS = 8            # like DataLoader workers reading image files in parallel


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)          # plain HTTP on loopback
    env.setdefault("AWS_ACCESS_KEY_ID", "demo")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "demo-secret")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return env


def drop_page_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def stats(mnt: str) -> dict[str, int]:
    stats: dict[str, int] = control_request(mnt, "stats")["stats"]
    return stats


def _read_file(path: str) -> tuple[int, str]:
    h = xxhash.xxh64()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def read_pass(mnt: str, keys: list[str], workers: int) -> tuple[float, int, dict[str, str]]:
    """Read every key through the mount; returns (seconds, bytes, digests)."""
    t0 = time.perf_counter()
    digests: dict[str, str] = {}
    total = 0
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for key, (n, digest) in zip(keys, pool.map(_read_file, [os.path.join(mnt, k) for k in keys]), strict=True):
            digests[key] = digest
            total += n
    return time.perf_counter() - t0, total, digests


def walk(mnt: str, top: str) -> list[str]:
    out = []
    for root, _, files in os.walk(os.path.join(mnt, top)):
        out += [os.path.relpath(os.path.join(root, f), mnt) for f in files]
    return sorted(out)


def run(args: argparse.Namespace) -> int:
    env = _env()
    os.environ.update(env)
    os.environ.pop("AWS_CA_BUNDLE", None)
    import boto3

    work = tempfile.mkdtemp(prefix="cachefs-demo-")
    mnt, cache = os.path.join(work, "mnt"), os.path.join(work, "cache")
    os.makedirs(mnt)
    shard_spec = DatasetSpec(num_images=args.shard_images, shard_bytes=int(args.shard_mb * 1e6))
    file_spec = DatasetSpec(num_images=args.files, seed=shard_spec.seed + 1)
    expected: dict[str, str] = {}
    mounted = False
    with MotoServer(log_path=os.path.join(work, "s3.log")) as server:
        try:
            print(f"S3 endpoint (moto) at {server.endpoint_url}; work dir {work}")
            client = boto3.client("s3", endpoint_url=server.endpoint_url)
            client.create_bucket(Bucket=BUCKET)
            t0 = time.perf_counter()
            for items in (iter_tfrecord_shards(shard_spec), iter_image_files(file_spec)):
                def remember(items=items):
                    for key, data in items:
                        expected[key] = xxhash.xxh64_hexdigest(data)
                        yield key, data
                upload(client, BUCKET, "", remember())
            print(f"uploaded {len(expected)} objects in {time.perf_counter() - t0:.1f} s")

            cmd = [sys.executable, "-m", "cachefs", "mount", f"s3://{BUCKET}", mnt,
                   "--endpoint-url", server.endpoint_url, "--addressing-style", "path",
                   "--cache-dir", cache, "--cache-size", args.cache_size]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stderr.strip(), file=sys.stderr)
                return 1
            mounted = True
            shards, files = walk(mnt, "tfrecord"), walk(mnt, "images")
            print(f"mounted s3://{BUCKET} on {mnt}: {len(shards)} shards, {len(files)} image files\n")
            rows = []
            for label, drop in (("cold", True), ("warm (disk cache)", True), ("warm (page cache)", False)):
                dropped = drop_page_cache() if drop else False
                for kind, keys, workers in (("shards", shards, 1), ("files", files, FILE_READERS)):
                    before = stats(mnt)
                    secs, nbytes, digests = read_pass(mnt, keys, workers)
                    after = stats(mnt)
                    bad = [k for k in keys if digests[k] != expected[k]]
                    if bad:
                        print(f"MISMATCH: {len(bad)} files differ from S3, e.g. {bad[0]}", file=sys.stderr)
                        return 1
                    hits = after["cache_hits"] - before["cache_hits"]
                    misses = after["cache_misses"] - before["cache_misses"]
                    lookups = hits + misses
                    rows.append((label + ("" if dropped or not drop else " *"), kind, nbytes / 1e6 / secs,
                                 len(keys) / secs, f"{hits / lookups:.2f}" if lookups else "page cache",
                                 after["s3_get"] - before["s3_get"], secs))
            _print_table(rows)
            if not os.access("/proc/sys/vm/drop_caches", os.W_OK):
                print("* page cache could not be dropped (not root): warm (disk cache) may be page-cache warm")
            final = stats(mnt)
            print(f"\ncache: {final['cache_blocks']} blocks, {final['cache_bytes'] / 1e6:.0f} MB on disk; "
                  f"S3: {final['s3_get']} GETs, {final['s3_get_bytes'] / 1e6:.0f} MB; every byte verified")
            if write_pass(mnt, client, env, args.checkpoint_mb) != 0:
                return 1
        finally:
            if mounted:
                subprocess.run([sys.executable, "-m", "cachefs", "umount", mnt], env=env, check=False)
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    return 0


def write_pass(mnt: str, client, env: dict[str, str], checkpoint_mb: int) -> int:
    """Write a checkpoint and append a log like a training job; time the writes and the uploads."""
    run_dir = os.path.join(mnt, "runs", "demo")
    os.makedirs(run_dir, exist_ok=True)
    chunk = os.urandom(1 << 20)
    t0 = time.perf_counter()
    with open(os.path.join(run_dir, "model.ckpt"), "wb") as f:
        for _ in range(checkpoint_mb):
            f.write(chunk)
        os.fsync(f.fileno())
    write_s = time.perf_counter() - t0
    lines = [f"step {i} loss {1 / (i + 1):.4f}\n" for i in range(2000)]
    t1 = time.perf_counter()
    with open(os.path.join(run_dir, "train.log"), "a") as log:
        for line in lines:
            log.write(line)
            log.flush()
    log_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cachefs", "flush", mnt], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr.strip(), file=sys.stderr)
        return 1
    upload_s = time.perf_counter() - t2
    head = client.head_object(Bucket=BUCKET, Key="runs/demo/model.ckpt")
    body = client.get_object(Bucket=BUCKET, Key="runs/demo/train.log")["Body"].read()
    if head["ContentLength"] != checkpoint_mb << 20 or body != "".join(lines).encode():
        print("MISMATCH: what S3 holds differs from what was written", file=sys.stderr)
        return 1
    print(f"\nwrites: checkpoint {checkpoint_mb} MiB at {checkpoint_mb / write_s:.0f} MiB/s (fsync included), "
          f"log {len(lines) / log_s:.0f} lines/s; both in S3 {upload_s:.1f} s after the last close "
          "(cachefs flush); S3 copies verified")
    return 0


def _print_table(rows) -> None:
    head = f"{'pass':<20} {'data':<7} {'MB/s':>9} {'files/s':>9} {'hit ratio':>10} {'S3 GETs':>8} {'seconds':>8}"
    print(head)
    print("-" * len(head))
    for label, kind, mbps, fps, ratio, gets, secs in rows:
        print(f"{label:<20} {kind:<7} {mbps:>9.1f} {fps:>9.1f} {ratio:>10} {gets:>8} {secs:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cachefs.devtools.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--shard-images", type=int, default=3400, help="images packed into TFRecord shards")
    p.add_argument("--shard-mb", type=float, default=128.0, help="target shard size in MB")
    p.add_argument("--files", type=int, default=3000, help="number of ~110 KB image files")
    p.add_argument("--cache-size", default="4GiB")
    p.add_argument("--checkpoint-mb", type=int, default=256, help="size of the checkpoint the job writes")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
