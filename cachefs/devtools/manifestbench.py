"""A synthetic manifest of N keys (ImageNet's shape: 1,000 class directories of JPEG names with
random sizes, MD5 ETags and mtimes), written, read back and loaded into a fresh LMDB store, each step
timed: the figures of docs/BENCHMARKS.md "Manifests (issue 18)".

    python -m cachefs.devtools.manifestbench [--keys 1000000] [--dir /var/tmp]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import tempfile
import time

from cachefs.manifest.format import Manifest, ManifestEntry, dumps, loads
from cachefs.manifest.load import tree
from cachefs.meta.bulk import load_tree
from cachefs.meta.store import MetaStore


def synthetic(n: int, seed: int = 1) -> Manifest:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        cls = f"n{(i % 1000) * 7919 % 10**8:08d}"
        key = f"train/{cls}/{cls}_{i:07d}.JPEG"
        rows.append(ManifestEntry(key, rnd.randint(20_000, 250_000), f'"{hashlib.md5(key.encode()).hexdigest()}"',
                                  1_700_000_000_000_000_000 + rnd.randint(0, 10**16)))
    return Manifest.from_entries("bucket", "datasets/imagenet/", rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the file and the LMDB store go")
    args = p.parse_args()
    m = synthetic(args.keys)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "bench.manifest")
        t = time.monotonic()
        data = dumps(m)
        with open(path, "wb") as f:
            f.write(data)
        written = time.monotonic() - t
        t = time.monotonic()
        with open(path, "rb") as f:
            back = loads(f.read())
        read = time.monotonic() - t
        assert back.keys == m.keys
        t = time.monotonic()
        dirs = tree(back)
        meta = MetaStore(os.path.join(tmp, "meta"), "bench|bucket|datasets/imagenet/")
        inodes = load_tree(meta, dirs, time.time() + 3600)
        loaded = time.monotonic() - t
        meta.close()
    print(f"{args.keys} keys: {len(data) / 1e6:.1f} MB ({len(data) / args.keys:.1f} B/key); write {written:.1f} s; "
          f"read + verify {read:.2f} s; into LMDB ({inodes} inodes, one transaction) {loaded:.1f} s; "
          f"mount start-up cost {read + loaded:.1f} s")


if __name__ == "__main__":
    main()
