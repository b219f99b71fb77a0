"""`cachefs warmup`: load files into a running mount's cache before a job starts (Fluid's DataLoad).

The data goes through the mount's own read path (reading a file caches its blocks in the tiers), so
warmup needs no second S3 client, no credentials and no knowledge of block keys: either by reading
the files through the mount, or (`--in-daemon`) by asking the daemon to read them itself, which
skips the FUSE round trips and the page cache. The daemon is asked
over the control socket which files are cached already: that makes a rerun resume where the last one
stopped (and tells the truth if blocks were evicted meanwhile, which a progress file would not), and
gives the room left in the tiers, checked before loading anything.
"""
from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
import time
from dataclasses import dataclass, field

from cachefs.errors import UserError
from cachefs.ipc import control_request, find_socket
from cachefs.units import format_size

CHUNK = 1 << 20              # read size: large requests, few syscalls; the kernel splits them anyway
QUERY_BATCH = 2000           # paths per status request (well under the control socket's MAX_REQUEST)
PLAIN_INTERVAL_S = 5.0       # progress line period when stderr is not a terminal
BAR_INTERVAL_S = 0.2
DAEMON_BATCH_TIMEOUT_S = 3600.0   # one batch of files loaded by the daemon: large files over slow S3


@dataclass
class Plan:
    files: list[tuple[str, int]] = field(default_factory=list)   # (path relative to the mount, size)
    dirs: int = 0


def relative(mountpoint: str, path: str) -> str:
    """A user's path (absolute under the mount, or relative to it) as a path inside the mount."""
    full = path if os.path.isabs(path) else os.path.join(mountpoint, path)
    rel = os.path.relpath(os.path.normpath(full), mountpoint)
    if rel == ".." or rel.startswith("../"):
        raise UserError(f"{path} is not inside the mount {mountpoint}")
    return "" if rel == "." else rel


def read_file_list(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as e:
        raise UserError(f"--file-list {path}: {e.strerror}") from None


def walk(mountpoint: str, paths: list[str]) -> Plan:
    """Every file under the given paths, with its size: listing and stat-ing is the metadata warmup
    (listings land in the daemon's LMDB, attributes in the kernel's cache for entry_timeout)."""
    plan, seen = Plan(), set()
    pending = [relative(mountpoint, p) for p in paths]
    while pending:
        rel = pending.pop()
        full = os.path.join(mountpoint, rel)
        try:
            st = os.stat(full)
        except OSError as e:
            raise UserError(f"{full}: {e.strerror}") from None
        if os.path.isdir(full):
            plan.dirs += 1
            with os.scandir(full) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)
            for entry in entries:
                child = os.path.join(rel, entry.name)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(child)
                elif child not in seen:
                    seen.add(child)
                    plan.files.append((child, entry.stat(follow_symlinks=False).st_size))
        elif rel not in seen:
            seen.add(rel)
            plan.files.append((rel, st.st_size))
    return plan


def manifest_plan(mountpoint: str, manifest: str, paths: list[str]) -> Plan:
    """The files a manifest lists (docs/MANIFESTS.md), those under `paths` if any are given: no
    directory is listed and no file stat-ed, the manifest has their sizes. It must be the mount's
    dataset (bucket and prefix)."""
    from cachefs.manifest.format import read_file  # zstandard: only when a manifest is named
    m = read_file(manifest)
    source = control_request(mountpoint, "stats")["stats"].get("source", "")
    bucket, _, prefix = source.partition("://")[2].partition("/")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    if (bucket, prefix) != (m.bucket, m.prefix):
        raise UserError(f"manifest {manifest} lists {m.source}, but {mountpoint} mounts {source}")
    under = [relative(mountpoint, p) for p in paths]
    plan = Plan()
    for key, size in zip(m.keys, m.sizes, strict=True):
        if key.endswith("/") or not key or any(part in ("", ".", "..") for part in key.split("/")):
            continue                  # directory markers; keys the mount cannot show
        if not under or any(u == "" or key == u or key.startswith(u + "/") for u in under):
            plan.files.append((key, size))
    plan.dirs = len({key.rpartition("/")[0] for key, _ in plan.files})
    return plan


def cached_state(mountpoint: str, files: list[tuple[str, int]]) -> tuple[dict[str, int], dict]:
    """{path: bytes cached} and the tiers' room, from the daemon."""
    cached: dict[str, int] = {}
    capacity: dict = {}
    for i in range(0, len(files), QUERY_BATCH):
        answer = control_request(mountpoint, "cached", paths=[p for p, _ in files[i:i + QUERY_BATCH]])
        capacity = answer["capacity"]
        cached.update({p: (info or {}).get("cached", 0) for p, info in answer["files"].items()})
    return cached, capacity


class Progress:
    """A bar on a terminal (files, bytes, rate, ETA), plain lines every few seconds otherwise."""

    def __init__(self, total_files: int, total_bytes: int, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total_files, self.total_bytes = total_files, total_bytes
        self.files = self.bytes = 0
        self.written = 0         # --shared-only: bytes the shared tier did not have
        self.start = self.last = time.monotonic()
        self.lock = threading.Lock()

    def add(self, nbytes: int, file_done: bool = False) -> None:
        with self.lock:
            self.bytes += nbytes
            self.files += file_done
            now = time.monotonic()
            if now - self.last >= (BAR_INTERVAL_S if self.tty else PLAIN_INTERVAL_S):
                self.last = now
                self._show(now)

    def _show(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-6)
        rate = self.bytes / elapsed
        left = max(self.total_bytes - self.bytes, 0)
        eta = f"{left / rate:.0f} s" if rate > 0 else "?"
        text = (f"{self.files}/{self.total_files} files  {format_size(self.bytes)} of "
                f"{format_size(self.total_bytes)}  {format_size(rate)}/s  ETA {eta}")
        if self.tty:
            done = self.bytes / self.total_bytes if self.total_bytes else 1.0
            bar = "#" * int(30 * done) + "." * (30 - int(30 * done))
            self.stream.write(f"\r[{bar}] {text}\033[K" + ("\n" if final else ""))
        else:
            self.stream.write(f"warmup: {text}\n")
        self.stream.flush()

    def finish(self) -> None:
        with self.lock:
            self._show(time.monotonic(), final=True)


def load_file(path: str, progress: Progress) -> None:
    """Read a file to the end through the mount, then drop it from the page cache: the point is the
    daemon's cache, not memory the training job needs."""
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(CHUNK)
        while True:
            n = os.readv(fd, [buf])
            if n == 0:
                break
            progress.add(n)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    progress.add(0, file_done=True)


def load_through_mount(mountpoint: str, todo: list[tuple[str, int]], jobs: int, progress: Progress) -> list[str]:
    failures: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = {pool.submit(load_file, os.path.join(mountpoint, p), progress): p for p, _ in todo}
        for fut in concurrent.futures.as_completed(futures):
            try:
                fut.result()
            except OSError as e:
                failures.append(f"{futures[fut]}: {e.strerror}")
    return failures


def load_in_daemon(mountpoint: str, todo: list[tuple[str, int]], jobs: int, progress: Progress) -> list[str]:
    """The daemon reads the files itself (control op `warmup`), a batch per request for progress."""
    failures: list[str] = []
    batch = max(4 * jobs, 16)
    for i in range(0, len(todo), batch):
        answer = control_request(mountpoint, "warmup", timeout=DAEMON_BATCH_TIMEOUT_S, jobs=jobs,
                                 paths=[p for p, _ in todo[i:i + batch]])
        failures += answer["failed"] + [f"{p}: no longer exists" for p in answer["missing"]]
        progress.add(answer["bytes"])
        for _ in range(answer["files"]):
            progress.add(0, file_done=True)
    return failures


def load_shared(mountpoint: str, todo: list[tuple[str, int]], jobs: int, progress: Progress) -> list[str]:
    """--shared-only: the daemon puts the files' blocks in the shared tier (control op `warmup` with
    `shared_only`): what the tier has is skipped (a HEAD each), the rest fetched from the origin once."""
    failures: list[str] = []
    batch = max(4 * jobs, 16)
    written = 0
    for i in range(0, len(todo), batch):
        answer = control_request(mountpoint, "warmup", timeout=DAEMON_BATCH_TIMEOUT_S, jobs=jobs, shared_only=True,
                                 paths=[p for p, _ in todo[i:i + batch]])
        failures += answer["failed"] + [f"{p}: no longer exists" for p in answer["missing"]]
        written += answer.get("written_bytes", 0)
        progress.add(answer["bytes"])
        for _ in range(answer["files"]):
            progress.add(0, file_done=True)
    progress.written = written
    return failures


def run_shared(mountpoint: str, plan: Plan, jobs: int, out) -> int:
    started = time.monotonic()
    total = sum(size for _, size in plan.files)
    print(f"{len(plan.files)} files ({format_size(total)}): filling the shared cache tier", file=out)
    progress = Progress(len(plan.files), total)
    progress.written = 0
    failures = load_shared(mountpoint, plan.files, jobs, progress)
    progress.finish()
    print(f"shared tier: {format_size(progress.written)} written, {format_size(progress.bytes - progress.written)} "
          f"there already, in {time.monotonic() - started:.1f} s", file=out)
    if failures:
        for f in failures[:20]:
            print(f"warmup: failed: {f}", file=sys.stderr)
        raise UserError(f"{len(failures)} files could not be put in the shared tier (rerun to retry them)")
    return 0


def run(mountpoint: str, paths: list[str], file_list: str | None, metadata_only: bool, jobs: int,
        force: bool, in_daemon: bool = False, out=None, manifest: str | None = None,
        shared_only: bool = False) -> int:
    out = out or sys.stdout
    mountpoint = os.path.abspath(mountpoint)
    find_socket(mountpoint)          # fail early, in one line, if this is not a cachefs mount
    paths = list(paths) + (read_file_list(file_list) if file_list else [])
    started = time.monotonic()
    plan = manifest_plan(mountpoint, manifest, paths) if manifest else walk(mountpoint, paths or [""])
    total = sum(size for _, size in plan.files)
    if metadata_only:
        print(f"metadata: {plan.dirs} directories, {len(plan.files)} files ({format_size(total)}) "
              f"{'read from the manifest' if manifest else 'listed'} in {time.monotonic() - started:.1f} s", file=out)
        return 0
    if shared_only:        # the node's own cache and its room do not matter
        return run_shared(mountpoint, plan, jobs, out)
    cached, capacity = cached_state(mountpoint, plan.files)
    todo = [(p, s) for p, s in plan.files if cached.get(p, 0) < s]
    done_bytes = sum(min(cached.get(p, 0), s) for p, s in plan.files)
    need = sum(s - cached.get(p, 0) for p, s in todo)
    print(f"{len(plan.files)} files ({format_size(total)}): {len(plan.files) - len(todo)} already cached, "
          f"{format_size(done_bytes)} cached in all; to load: {len(todo)} files ({format_size(need)})", file=out)
    if need > capacity["room"]:
        what = ("stops admitting: the rest is read but not cached"
                if capacity["policy"] == "scan-resistant" else "evicts older blocks, possibly the ones just loaded")
        msg = (f"loading {format_size(need)} more does not fit: the cache can take {format_size(capacity['room'])} "
               f"more before it {what} (quota {format_size(capacity['quota'])})")
        if not force:
            raise UserError(msg + "; load less, or --force")
        print(f"warning: {msg}", file=sys.stderr)
    if not todo:
        return 0
    progress = Progress(len(todo), need)
    failures = (load_in_daemon if in_daemon else load_through_mount)(mountpoint, todo, jobs, progress)
    progress.finish()
    control_request(mountpoint, "flush")      # the block index on disk: the warm cache survives a remount
    elapsed = time.monotonic() - started
    print(f"loaded {len(todo) - len(failures)} files ({format_size(progress.bytes)}) in {elapsed:.1f} s",
          file=out)
    if failures:
        for f in failures[:20]:
            print(f"warmup: failed: {f}", file=sys.stderr)
        raise UserError(f"{len(failures)} files could not be read (rerun to retry them)")
    return 0
