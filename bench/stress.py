"""Stress: the shapes that once killed the mount (issue 15), in a loop, each loop checked against S3
and a fresh mount.

Two exercisers run at once on one writable mount, every operation done the same way on a local
reference directory and the outcome (bytes, or the errno) compared:
- a tree stress (fsstress-like): PROCS processes, each in its own sub-tree, doing random creates,
  writes at offsets, truncates to large sizes, rewrites and truncates right after close, renames of
  files and directories, unlinks, mkdir/rmdir, copy_file_range and read-backs;
- a one-file stress (fsx-like): one file growing to FSX_MAX bytes, random reads (checked), writes,
  truncates, copy_file_range within the file, fsync, close/reopen.
After each loop: `cachefs flush`; S3 (read directly) must hold exactly the reference tree (files,
bytes; empty directories as markers), and a fresh mount with an EMPTY cache directory must show the
same tree. The daemon must be alive throughout (an ENOTCONN is fatal) and log no ERROR.

    python -m bench.stress --minutes 30 [--multipart|--no-multipart] [--procs 4] [--json out.json]

starts its own moto server and mount. `--multipart` uses 5 MiB parts so that large files go up as
multipart uploads; `--no-multipart` uses parts larger than any file. tests/test_reliability_stress.py
runs one short loop of each in CI.
"""
from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

MiB = 1 << 20
PROCS = 4
TREE_MAX = 12 * MiB          # sizes in the tree stress: past two 5 MiB parts (moto reads whole objects)
FSX_MAX = 24 * MiB           # the one-file stress (the report's ~50 MB; moto keeps it in memory)
OPS_PER_LOOP = 150           # per tree process per loop
FSX_OPS_PER_LOOP = 300


def mount_options(multipart: bool) -> list[str]:
    return ["--small-file-threshold", "1MiB", "--small-sync-interval", "0.5", "--large-sync-interval", "2",
            "--multipart-part-size", "5MiB" if multipart else "1GiB", "--staging-size", "2GiB",
            "--block-size", "256KiB"]


@dataclass
class Outcome:
    ops: int = 0
    mismatches: list[str] = field(default_factory=list)
    fatal: str = ""


def _errno(fn, *args):
    try:
        return fn(*args), None
    except OSError as e:
        return None, e.errno


class Pair:
    """One operation done on the mount and on the reference, outcomes compared."""

    def __init__(self, mnt: Path, ref: Path, out: Outcome, tag: str) -> None:
        self.mnt, self.ref, self.out, self.tag = mnt, ref, out, tag
        self.trace = None

    def note(self, *what) -> None:
        if self.trace is not None:
            print(time.strftime("%H:%M:%S"), *what, file=self.trace, flush=True)

    def rename(self, what: str, rel: str, new: str) -> bool:
        """A rename on both (paths relative to each root); True if the reference's succeeded."""
        self.note(what, rel, new)
        self.out.ops += 1
        _, gerr = _errno(os.rename, self.mnt / rel, self.mnt / new)
        _, werr = _errno(os.rename, self.ref / rel, self.ref / new)
        if gerr == errno.ENOTCONN:
            self.out.fatal = f"{self.tag} {what} {rel}: ENOTCONN (the daemon died)"
            raise SystemExit(2)
        if gerr != werr:
            self.out.mismatches.append(f"{self.tag} {what} {rel} -> {new}: mount {gerr} reference {werr}")
        return werr is None

    def do(self, what: str, fn, rel: str, *args):
        self.note(what, rel, *[a for a in args if not isinstance(a, bytes)])
        self.out.ops += 1
        got, gerr = _errno(fn, self.mnt / rel, *args)
        want, werr = _errno(fn, self.ref / rel, *args)
        if gerr == errno.ENOTCONN:
            self.out.fatal = f"{self.tag} {what} {rel}: ENOTCONN (the daemon died)"
            raise SystemExit(2)
        if gerr != werr or got != want:
            shown = args[:1] if args and not isinstance(args[0], bytes) else ''
            self.out.mismatches.append(f"{self.tag} {what} {rel}{shown}: "
                                       f"mount {errno.errorcode.get(gerr, gerr) if gerr else _short(got)} "
                                       f"reference {errno.errorcode.get(werr, werr) if werr else _short(want)}")
        return want


def _short(v) -> str:
    if isinstance(v, bytes):
        return f"{len(v)} bytes {hash(v) & 0xffff:04x}"
    return repr(v)


# -- the file operations (each takes a path first) ------------------------------------------------
def _write_new(path: Path, data: bytes) -> int:
    with open(path, "wb") as f:
        return f.write(data)


def _pwrite(path: Path, off: int, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def _rewrite_then_truncate(path: Path, data: bytes, size: int) -> int:
    """A checkpoint rewritten in place and truncated right after its close (the issue's race)."""
    with open(path, "wb") as f:
        f.write(data)
    os.truncate(path, size)
    return os.stat(path).st_size


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _size(path: Path) -> int:
    return os.stat(path).st_size


def _copy_range(path: Path, dst: Path, off: int, n: int, dst_off: int) -> int:
    src_fd = os.open(path, os.O_RDONLY)
    dst_fd = os.open(dst, os.O_WRONLY)
    try:
        done = 0
        while done < n:
            k = os.copy_file_range(src_fd, dst_fd, n - done, off + done, dst_off + done)
            if k == 0:
                break
            done += k
        return done
    finally:
        os.close(src_fd)
        os.close(dst_fd)


def _listdir(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def tree_worker(mnt: str, ref: str, n: int, seed: int, ops: int, q) -> None:
    out = Outcome()
    rng = random.Random(seed)
    base = f"p{n}"
    pair = Pair(Path(mnt), Path(ref), out, f"p{n}")
    pair.trace = open(os.path.join(ref, "..", f"trace-p{n}.log"), "a")   # what it did, for a failure's story
    dirs, files = [base], []
    for root in (Path(mnt), Path(ref)):
        if not (root / base).exists():
            (root / base).mkdir()
    # what exists already (an earlier loop left it)
    for d, _subdirs, names in os.walk(Path(ref) / base):
        rel = os.path.relpath(d, ref)
        if rel != base:
            dirs.append(rel)
        files += [f"{rel}/{x}" for x in names]
    counter = rng.randrange(1 << 30)
    try:
        for _ in range(ops):
            counter += 1
            op = rng.choices(["create", "write", "truncate", "rewrite", "rename", "rename_dir", "unlink", "mkdir",
                              "rmdir", "copy", "read"], [10, 10, 5, 3, 6, 2, 5, 3, 2, 3, 8])[0]
            needs_file = ("write", "truncate", "rewrite", "rename", "unlink", "copy", "read")
            if op == "create" or (not files and op in needs_file):
                rel = f"{rng.choice(dirs)}/f{counter}"
                size = rng.choice([0, 100, 5000, 300_000, 2 * MiB, rng.randrange(TREE_MAX)])
                pair.do("create", _write_new, rel, rng.randbytes(size))
                files.append(rel)
            elif op == "write":
                rel = rng.choice(files)
                off = rng.randrange(TREE_MAX)
                pair.do("pwrite", _pwrite, rel, off, rng.randbytes(rng.choice([1, 4096, 200_000, MiB])))
            elif op == "truncate":
                rel = rng.choice(files)
                pair.do("truncate", os.truncate, rel, rng.choice([0, rng.randrange(TREE_MAX), TREE_MAX]))
            elif op == "rewrite":
                rel = rng.choice(files)
                data = rng.randbytes(rng.randrange(6 * MiB, TREE_MAX))
                pair.do("rewrite+truncate", _rewrite_then_truncate, rel, data, rng.randrange(len(data)))
            elif op == "rename":
                rel = rng.choice(files)
                if rng.random() < 0.3 and len(files) > 1:
                    new = rng.choice([f for f in files if f != rel])        # over an existing file
                else:
                    new = f"{rng.choice(dirs)}/r{counter}"
                if pair.rename("rename", rel, new):
                    files.remove(rel)
                    if new not in files:
                        files.append(new)
            elif op == "rename_dir" and len(dirs) > 1:
                rel = rng.choice(dirs[1:])
                parent = rng.choice([d for d in dirs if not (d + "/").startswith(rel + "/")])
                new = f"{parent}/d{counter}"
                if pair.rename("rename_dir", rel, new):
                    dirs = [new + d[len(rel):] if (d + "/").startswith(rel + "/") else d for d in dirs]
                    files = [new + f[len(rel):] if f.startswith(rel + "/") else f for f in files]
            elif op == "unlink":
                rel = rng.choice(files)
                pair.do("unlink", os.unlink, rel)
                files.remove(rel)
            elif op == "mkdir":
                rel = f"{rng.choice(dirs)}/d{counter}"
                pair.do("mkdir", os.mkdir, rel)
                dirs.append(rel)
            elif op == "rmdir" and len(dirs) > 1:
                rel = rng.choice(dirs[1:])
                pair.do("rmdir", os.rmdir, rel)
                if not (Path(ref) / rel).exists():
                    dirs = [d for d in dirs if d != rel]
            elif op == "copy" and len(files) > 1:
                src, dst = rng.sample(files, 2)
                size = os.stat(Path(ref) / src).st_size
                off = rng.randrange(size + 1)
                pair.note("copy_file_range", src, dst, off)
                got, gerr = _errno(_copy_range, Path(mnt) / src, Path(mnt) / dst, off, min(size - off, 2 * MiB),
                                   rng.randrange(TREE_MAX // 2))
                out.ops += 1
                if gerr is None:
                    # the reference does what the mount did (a short copy is allowed by POSIX)
                    dst_off_data = _read(Path(mnt) / dst)
                    _write_new(Path(ref) / dst, dst_off_data)
                    if _read(Path(ref) / src)[off:off + got] not in dst_off_data:
                        out.mismatches.append(f"p{n} copy_file_range {src} -> {dst}: copied bytes not found")
                elif gerr == errno.ENOTCONN:
                    out.fatal = f"p{n} copy_file_range: ENOTCONN (the daemon died)"
                    raise SystemExit(2)
                else:
                    out.mismatches.append(f"p{n} copy_file_range {src} -> {dst}: {errno.errorcode.get(gerr)}")
            elif op == "read":
                pair.do("read", _read, rng.choice(files))
    except SystemExit:
        pass
    except Exception as e:     # a harness bug must be seen, not hang the run
        out.fatal = f"p{n}: harness error {type(e).__name__}: {e}"
    q.put(asdict(out))


def fsx_worker(mnt: str, ref: str, seed: int, ops: int, q) -> None:
    """One file, random reads (checked against the reference), writes, truncates, copies, fsyncs and
    reopens; the file grows up to FSX_MAX."""
    out = Outcome()
    rng = random.Random(seed)
    paths = (Path(mnt) / "fsx.bin", Path(ref) / "fsx.bin")
    for p in paths:
        if not p.exists():
            p.write_bytes(b"")
    fds = [os.open(p, os.O_RDWR) for p in paths]
    try:
        for step in range(ops):
            out.ops += 1
            size = os.fstat(fds[1]).st_size
            op = rng.choices(["read", "write", "truncate", "copy", "fsync", "reopen"], [8, 8, 2, 2, 1, 1])[0]
            where = f"fsx step {step} {op}"
            try:
                if op == "read":
                    off, n = rng.randrange(size + 1), rng.choice([1, 4096, 65536, MiB])
                    got, want = os.pread(fds[0], n, off), os.pread(fds[1], n, off)
                    if got != want:
                        out.mismatches.append(f"{where} at {off}+{n}: mount {_short(got)} reference {_short(want)}")
                elif op == "write":
                    off = rng.randrange(min(size + MiB, FSX_MAX))
                    data = rng.randbytes(min(rng.choice([1, 512, 65536, MiB]), FSX_MAX - off))
                    for fd in fds:
                        os.pwrite(fd, data, off)
                elif op == "truncate":
                    n = rng.randrange(FSX_MAX)
                    for fd in fds:
                        os.ftruncate(fd, n)
                elif op == "copy" and size > 0:
                    off = rng.randrange(size)
                    n = min(rng.choice([4096, 65536, MiB]), size - off)
                    dst = rng.randrange(FSX_MAX - n)
                    if off < dst + n and dst < off + n:
                        continue                            # overlapping ranges: EINVAL for both
                    copied = [os.copy_file_range(fd, fd, n, off, dst) for fd in fds]
                    if copied[0] != copied[1]:
                        out.mismatches.append(f"{where}: copied mount {copied[0]} reference {copied[1]}")
                elif op == "fsync":
                    for fd in fds:
                        os.fsync(fd)
                elif op == "reopen":
                    for i, fd in enumerate(fds):
                        os.close(fd)
                        fds[i] = os.open(paths[i], os.O_RDWR)
            except OSError as e:
                if e.errno == errno.ENOTCONN:
                    out.fatal = f"{where}: ENOTCONN (the daemon died)"
                    break
                out.mismatches.append(f"{where}: {e}")
    except Exception as e:
        out.fatal = f"fsx: harness error {type(e).__name__}: {e}"
    finally:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
    q.put(asdict(out))


def run_loop(mnt: Path, ref: Path, seed: int, procs: int = PROCS, ops: int = OPS_PER_LOOP,
             fsx_ops: int = FSX_OPS_PER_LOOP) -> list[dict]:
    """One loop of both exercisers; returns each worker's outcome."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    workers = [ctx.Process(target=tree_worker, args=(str(mnt), str(ref), n, seed * 100 + n, ops, q))
               for n in range(procs)]
    workers.append(ctx.Process(target=fsx_worker, args=(str(mnt), str(ref), seed * 100 + 99, fsx_ops, q)))
    for w in workers:
        w.start()
    results = [q.get(timeout=1800) for _ in workers]
    for w in workers:
        w.join(60)
    return results


def reference_objects(ref: Path) -> dict[str, bytes | None]:
    """What S3 should hold for the reference tree: files by key, empty directories as 'dir/' markers (None)."""
    want: dict[str, bytes | None] = {}
    for d, subdirs, names in os.walk(ref):
        rel = os.path.relpath(d, ref)
        for name in names:
            key = name if rel == "." else f"{rel}/{name}"
            want[key] = (Path(d) / name).read_bytes()
        if rel != "." and not subdirs and not names:
            want[rel + "/"] = None
    return want


def compare_s3(s3, bucket: str, ref: Path) -> list[str]:
    """S3 against the reference: every file's bytes; no object the reference does not have (markers
    of non-empty directories are allowed: S3 keeps them harmlessly)."""
    want = reference_objects(ref)
    have: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            have[o["Key"]] = o["Size"]
    problems = []
    for key, data in want.items():
        if key not in have:
            problems.append(f"S3 lacks {key}")
        elif data is not None and s3.get_object(Bucket=bucket, Key=key)["Body"].read() != data:
            problems.append(f"S3 holds other bytes for {key} ({have[key]} against {len(data)})")
    dirs = {os.path.relpath(d, ref) for d, _, _ in os.walk(ref)}
    for key in have:
        if key in want:
            continue
        if key.endswith("/") and key[:-1] in dirs:
            continue                     # a marker of a directory that exists
        problems.append(f"S3 holds {key}, which the writers did not leave")
    problems += [f"unfinished multipart upload of {u['Key']}" for u in
                 s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return problems


def compare_tree(mnt: Path, ref: Path) -> list[str]:
    """A mount against the reference: names, types, sizes, bytes."""
    problems = []
    for d, subdirs, names in os.walk(ref):
        rel = os.path.relpath(d, ref)
        here = mnt / rel
        try:
            seen = sorted(os.listdir(here))
        except OSError as e:
            problems.append(f"{rel}: {e}")
            continue
        if seen != sorted(subdirs + names):
            problems.append(f"{rel}: mount lists {len(seen)} names, reference {len(subdirs) + len(names)}: "
                            f"only here {sorted(set(seen) - set(subdirs + names))[:5]}, "
                            f"missing {sorted(set(subdirs + names) - set(seen))[:5]}")
        for name in names:
            try:
                if (here / name).read_bytes() != (Path(d) / name).read_bytes():
                    problems.append(f"{rel}/{name}: other bytes")
            except OSError as e:
                problems.append(f"{rel}/{name}: {e}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--multipart", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--procs", type=int, default=PROCS)
    ap.add_argument("--ops", type=int, default=OPS_PER_LOOP)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kill-every", type=int, default=0,
                    help="every Nth loop: kill -9 the daemon after the writers stop, remount with the same "
                         "cache directory (pending uploads replayed), then check")
    ap.add_argument("--json", help="write the loops' results here")
    ap.add_argument("--keep", action="store_true",
                    help="keep the scratch directory (mount, reference tree, cache, logs) after a run that passed")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from mount_helpers import cachefs_env, force_unmount, log_problems, mount_args, run_cachefs, s3_client, stop_pid

    from cachefs.devtools.devserver import MotoServer

    work = Path(tempfile.mkdtemp(prefix="cachefs-stress-"))
    loops, started, ok = [], time.monotonic(), True
    with MotoServer(log_path=str(work / "moto.log")) as moto:
        s3 = s3_client(moto.endpoint_url)
        s3.create_bucket(Bucket="stress")
        mnt, ref, cache = work / "mnt", work / "ref", work / "cache"
        mnt.mkdir()
        ref.mkdir()
        opts = mount_options(a.multipart)
        res = run_cachefs(mount_args("s3://stress", mnt, cache, moto.endpoint_url, *opts), cachefs_env())
        if res.returncode != 0:
            print(res.describe(), file=sys.stderr)
            return 1
        pid = int((cache / "cachefs.pid").read_text())
        try:
            loop = 0
            while time.monotonic() - started < a.minutes * 60:
                loop += 1
                t0 = time.monotonic()
                results = run_loop(mnt, ref, a.seed * 1000 + loop, a.procs, a.ops)
                if a.kill_every and loop % a.kill_every == 0:
                    os.kill(pid, 9)
                    stop_pid(pid)
                    force_unmount(mnt)
                    res = run_cachefs(mount_args("s3://stress", mnt, cache, moto.endpoint_url, *opts), cachefs_env())
                    if res.returncode != 0:
                        print(res.describe(), file=sys.stderr)
                        return 1
                    pid = int((cache / "cachefs.pid").read_text())
                flushed = run_cachefs(["flush", str(mnt)], cachefs_env(), timeout_s=600)
                problems = [m for r in results for m in r["mismatches"]] + [r["fatal"] for r in results if r["fatal"]]
                if flushed.returncode != 0:
                    problems.append(f"cachefs flush: {flushed.describe()}")
                problems += compare_s3(s3, "stress", ref)
                fresh_mnt, fresh_cache = work / f"fresh{loop}", work / f"fresh-cache{loop}"
                fresh_mnt.mkdir()
                res = run_cachefs(mount_args("s3://stress", fresh_mnt, fresh_cache, moto.endpoint_url,
                                             "--read-only"), cachefs_env())
                if res.returncode != 0:
                    problems.append(f"fresh mount: {res.describe()}")
                else:
                    try:
                        problems += [f"fresh mount: {p}" for p in compare_tree(fresh_mnt, ref)]
                    finally:
                        run_cachefs(["umount", str(fresh_mnt)], cachefs_env(), timeout_s=120)
                        shutil.rmtree(fresh_cache, ignore_errors=True)
                log_path = cache / "cachefs.log"
                log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
                errors = log_problems(log_text)
                entry = {"loop": loop, "seconds": round(time.monotonic() - t0, 1),
                         "ops": sum(r["ops"] for r in results), "problems": problems[:50],
                         "problem_count": len(problems), "daemon_errors": errors[:10]}
                loops.append(entry)
                print(json.dumps({k: entry[k] for k in ("loop", "seconds", "ops", "problem_count")}), flush=True)
                for p in problems[:10] + errors[:5]:
                    print("  problem:", p, flush=True)
                if problems or errors:
                    ok = False
                    break
        finally:
            force_unmount(mnt)
            stop_pid(pid)
    summary = {"multipart": a.multipart, "procs": a.procs, "kill_every": a.kill_every,
               "minutes": round((time.monotonic() - started) / 60, 1),
               "loops": len(loops), "ops": sum(x["ops"] for x in loops), "passed": ok}
    print(json.dumps(summary))
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": summary, "loops": loops}, indent=1))
    if ok and not a.keep:
        shutil.rmtree(work, ignore_errors=True)      # gigabytes after 30 minutes; a failure keeps its traces
    else:
        print(f"scratch directory kept: {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
