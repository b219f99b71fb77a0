"""Read-only stress: the fast path (FUSE requests of prefetched files answered in C, native/fastfuse.c)
and the order prefetch under churn, checked by content.

A `--read-only` mount with short listing, entry and attribute times; at once:
- READERS processes, each its own order stream: send an order of a random sample of the keys
  (cachefs.hints), then read them in that order, whole, some twice at once, with a stat or a listing
  now and then. Every body must be one the mutator wrote for that key (each body names its key and
  version and is derived from both), and only keys the mutator deletes may be missing;
- a mutator writing to S3 directly: new versions (other sizes, some past a block) of a third of
  the keys, deletions and re-creations of them;
- the control plane: `cachefs reload` of entry_timeout (every file taken back from the C tables)
  and `cachefs drop` of files being read.
At the end the mutator stops; once the listing TTL has passed, every key must read as S3 holds it
now (its last version, or missing). The daemon must stay alive (an ENOTCONN is fatal), log no ERROR,
and the fast path must have served files (its counters), else the run proves nothing.

    python -m bench.rostress [--seconds 60] [--readers 3] [--seed 1] [--json out.json]

starts its own moto server. tests/test_reliability_rostress.py runs a short one in CI.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

BUCKET = "rostress"
DIRS, FILES = 8, 240
BLOCK = 256 * 1024
LISTING_TTL_S = 2.0
READERS = 3
SAMPLE = 48                 # files per order


def key_of(i: int) -> str:
    return f"d{i % DIRS:02d}/f{i:04d}.bin"


def mutable(key: str) -> bool:
    """The keys the mutator rewrites and deletes: a third of them."""
    return int(key[-8:-4]) % 3 == 0


def body(key: str, version: int) -> bytes:
    """A body naming its key and version, derived from both; sizes from 1 KB to past a block."""
    seed = hashlib.sha256(f"{key}|{version}".encode()).digest()
    size = 1000 + int.from_bytes(seed[:4], "big") % (BLOCK + BLOCK // 2 if version % 5 == 4 else 120_000)
    head = f"{key}|{version}|".encode()
    filler = (seed * (size // len(seed) + 1))[:max(0, size - len(head))]
    return head + filler


def check(key: str, data: bytes) -> str | None:
    """None when `data` is a body the mutator may have written for `key`, else what is wrong."""
    try:
        named, version, _ = data[:80].split(b"|", 2)
        v = int(version)
    except ValueError:
        return f"{key}: not a body of this test ({len(data)} bytes, starts {data[:40]!r})"
    if named.decode(errors="replace") != key:
        return f"{key}: the body of {named!r}"
    if v != 0 and not mutable(key):
        return f"{key}: version {v} of a key never rewritten"
    if data != body(key, v):
        return f"{key}: version {v} with wrong bytes ({len(data)} bytes, {len(body(key, v))} expected)"
    return None


def reader(mnt: str, n: int, seed: int, until: float, q) -> None:
    """Orders and reads until `until`; puts its counts and problems on `q`."""
    from cachefs import hints
    rng = random.Random(seed)
    out = {"reads": 0, "missing": 0, "stale": 0, "orders": 0, "problems": [], "fatal": None}
    keys = [key_of(i) for i in range(FILES)]
    try:
        epoch = 0
        while time.monotonic() < until and len(out["problems"]) < 20:
            order = rng.sample(keys, SAMPLE)
            epoch += 1
            try:
                hints.send_order(mnt, order, epoch=epoch, stream=f"reader{n}")
                out["orders"] += 1
            except hints.HintError as e:
                out["problems"].append(f"order: {e}")
            for key in order:
                path = os.path.join(mnt, key)
                twice = rng.random() < 0.1
                try:
                    if rng.random() < 0.05:
                        os.listdir(os.path.dirname(path))
                    if twice:                      # two opens of one file at once: C and Python may share it
                        with open(path, "rb") as a, open(path, "rb") as b:
                            datas = [a.read(), b.read()]
                    else:
                        with open(path, "rb") as f:
                            datas = [f.read()]
                    for data in datas:
                        problem = check(key, data)
                        if problem:
                            out["problems"].append(problem)
                    out["reads"] += len(datas)
                except FileNotFoundError:
                    out["missing"] += 1
                    if not mutable(key):
                        out["problems"].append(f"{key}: missing, never deleted")
                except OSError as e:
                    if e.errno == errno.ESTALE and mutable(key):
                        out["stale"] += 1      # changed in S3 since it was opened (docs/SEMANTICS.md)
                        continue
                    if e.errno == errno.ENOTCONN:
                        out["fatal"] = f"{key}: {e} (the daemon is gone)"
                        q.put(out)
                        return
                    out["problems"].append(f"{key}: {e}")
    except Exception as e:  # noqa: BLE001 - reported, not raised in a child
        out["problems"].append(f"reader {n}: {type(e).__name__}: {e}")
    q.put(out)


def mutator(s3, seed: int, stop: threading.Event, versions: dict[str, int | None]) -> None:
    """New versions, deletions and re-creations of the mutable keys, straight to S3."""
    rng = random.Random(seed)
    keys = [k for k in versions if mutable(k)]
    while not stop.wait(0.02):
        key = rng.choice(keys)
        if versions[key] is not None and rng.random() < 0.2:
            s3.delete_object(Bucket=BUCKET, Key=key)
            versions[key] = None
        else:
            v = (versions[key] or 0) + 1 if versions[key] is not None else rng.randint(1, 9) * 10
            s3.put_object(Bucket=BUCKET, Key=key, Body=body(key, v))
            versions[key] = v


def control(mnt: str, env: dict, seed: int, stop: threading.Event, counts: dict, run_cachefs) -> None:
    """`cachefs reload` of entry_timeout (the C tables emptied) and `cachefs drop` of a file."""
    rng = random.Random(seed)
    while not stop.wait(rng.uniform(0.3, 1.0)):
        if rng.random() < 0.5:
            res = run_cachefs(["reload", mnt, f"entry_timeout={rng.choice((1, 2))}"], env, timeout_s=60)
            counts["reloads"] += 1
        else:
            res = run_cachefs(["drop", mnt, os.path.join(mnt, key_of(rng.randrange(FILES)))], env, timeout_s=60)
            counts["drops"] += 1
        if res.returncode != 0 and "no such file" not in res.stderr.lower():   # dropped by the mutator
            counts["problems"].append(f"control: {res.describe()[:300]}")


def _show(data: bytes | None) -> str:
    return "missing" if data is None else f"{data[:30]!r} ({len(data)} bytes)"


def final_check(mnt: str, s3) -> list[str]:
    """Every key as S3 holds it now (the listing TTL having passed)."""
    problems = []
    for i in range(FILES):
        key = key_of(i)
        try:
            want: bytes | None = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            want = None
        try:
            with open(os.path.join(mnt, key), "rb") as f:
                got: bytes | None = f.read()
        except FileNotFoundError:
            got = None
        if got != want:
            problems.append(f"{key}: read {_show(got)}, S3 holds {_show(want)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--readers", type=int, default=READERS)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("extra", nargs="*", help="more mount options (after --), e.g. -- --fast-path false")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from mount_helpers import (
        cachefs_env,
        force_unmount,
        log_problems,
        mount_args,
        populate,
        run_cachefs,
        s3_client,
        stop_pid,
    )

    from bench.util import daemon_stats
    from cachefs.devtools.devserver import MotoServer

    work = Path(tempfile.mkdtemp(prefix="cachefs-rostress-"))
    problems: list[str] = []
    result: dict = {}
    with MotoServer(log_path=str(work / "moto.log")) as moto:
        s3 = s3_client(moto.endpoint_url)
        s3.create_bucket(Bucket=BUCKET)
        versions: dict[str, int | None] = {key_of(i): 0 for i in range(FILES)}
        populate(s3, BUCKET, {k: body(k, 0) for k in versions})
        mnt, cache = work / "mnt", work / "cache"
        mnt.mkdir()
        env = cachefs_env()
        res = run_cachefs(mount_args(f"s3://{BUCKET}", mnt, cache, moto.endpoint_url, "--read-only",
                                     "--listing-ttl", str(LISTING_TTL_S), "--entry-timeout", "1",
                                     "--attr-timeout", "1", "--negative-ttl", "1", "--block-size", "256KiB",
                                     *a.extra), env)
        if res.returncode != 0:
            print(res.describe(), file=sys.stderr)
            return 1
        pid = int((cache / "cachefs.pid").read_text())
        stop = threading.Event()
        counts: dict = {"reloads": 0, "drops": 0, "problems": []}
        threads = [threading.Thread(target=mutator, args=(s3, a.seed, stop, versions), daemon=True),
                   threading.Thread(target=control, args=(str(mnt), env, a.seed + 1, stop, counts, run_cachefs),
                                    daemon=True)]
        try:
            for t in threads:
                t.start()
            q: multiprocessing.Queue = multiprocessing.Queue()
            until = time.monotonic() + a.seconds
            procs = [multiprocessing.Process(target=reader, args=(str(mnt), n, a.seed * 100 + n, until, q))
                     for n in range(a.readers)]
            for p in procs:
                p.start()
            outs = [q.get(timeout=a.seconds + 300) for _ in procs]
            for p in procs:
                p.join(30)
            stop.set()
            for t in threads:
                t.join(120)
            problems += [p for o in outs for p in o["problems"]] + [o["fatal"] for o in outs if o["fatal"]]
            problems += counts["problems"]
            time.sleep(LISTING_TTL_S + 1.5)            # the listing and the kernel's entries expire
            if not problems:
                problems += [f"at the end: {p}" for p in final_check(str(mnt), s3)]
            stats = daemon_stats(str(mnt))
            log_path = cache / "cachefs.log"
            errors = log_problems(log_path.read_text(errors="replace") if log_path.exists() else "")
            problems += [f"daemon log: {line}" for line in errors[:10]]
            fast = {k: v for k, v in stats.items() if k.startswith("fast_")}
            if not fast.get("fast_opens") and "--fast-path" not in a.extra:
                problems.append(f"the fast path served no file: {fast}")
            result = {"seconds": a.seconds, "readers": a.readers,
                      "reads": sum(o["reads"] for o in outs), "missing": sum(o["missing"] for o in outs),
                      "stale": sum(o["stale"] for o in outs),
                      "orders": sum(o["orders"] for o in outs), "reloads": counts["reloads"],
                      "drops": counts["drops"], "mutations_left": sum(v is None or v > 0 for v in versions.values()),
                      "fast": fast, "fuse_reads": stats.get("fuse_reads", 0),
                      "order_prefetched_files": stats.get("order_prefetched_files", 0),
                      "daemon_alive": os.path.exists(f"/proc/{pid}"),
                      "problems": problems[:30], "problem_count": len(problems)}
            if not result["daemon_alive"]:
                problems.append("the daemon died")
        finally:
            stop.set()
            force_unmount(mnt)
            stop_pid(pid)
    result["passed"] = not problems
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    if result["passed"]:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"scratch directory kept: {work}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
