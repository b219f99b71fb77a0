"""Shared helpers for the real-mount integration tests (moto's S3 server + `python -m cachefs`).

Nothing here knows about pytest fixtures; conftest.py wires these into fixtures. Everything that
touches the outside world (subprocesses, /proc, the moto request log) lives here so that each test
reads as: arrange objects in S3, mount, look at the mount, assert on bytes and counts.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import botocore.config

from cachefs.ipc import control_request

REPO_ROOT = Path(__file__).resolve().parent.parent
# Where `python -m cachefs` is run from (its package is imported from there): another checkout, or a
# deliberately broken copy when checking that these tests can fail.
CACHEFS_SRC = Path(os.environ.get("CACHEFS_TESTS_SRC", REPO_ROOT))
PYTHON = sys.executable
REGION = "us-east-1"
# moto (without INITIAL_NO_AUTH_ACTION_COUNT) accepts any key pair; these only need to look valid.
ACCESS_KEY_ID = "AKIACACHEFSTESTS0001"
SECRET_ACCESS_KEY = "cachefs-tests-secret-key-not-a-real-secret"

KiB = 1024
MiB = 1024 * KiB
BLOCK_SIZE = 256 * KiB  # small, so that moderate objects (moto reads whole objects per GET) span many blocks
BLOCK_SIZE_ARG = "256KiB"

MOUNT_TIMEOUT_S = 60.0  # generous: 2 noisy cores, cold imports of boto3/trio/pyfuse3
ERROR_EXIT_BOUND_S = 30.0  # the contract: every bad input fails within a bounded time
DAEMON_EXIT_TIMEOUT_S = 15.0
LOG_SETTLE_S = 0.3  # werkzeug writes its access-log line just after the response; wait for quiet


# ---------------------------------------------------------------- object data and S3 population

def object_bytes(seed: int | str, size: int) -> bytes:
    """Deterministic pseudo-random bytes: a failing comparison can be reproduced from the seed."""
    return random.Random(seed).randbytes(size)


def s3_client(endpoint_url: str, key_id: str = ACCESS_KEY_ID, secret: str = SECRET_ACCESS_KEY,
              service: str = "s3"):
    cfg = botocore.config.Config(max_pool_connections=32, retries={"max_attempts": 3, "mode": "standard"},
                                 s3={"addressing_style": "path"})
    return boto3.client(service, endpoint_url=endpoint_url, region_name=REGION, aws_access_key_id=key_id,
                        aws_secret_access_key=secret, config=cfg, verify=False)


def fast_path_store(url: str, bucket: str, **kw):
    """The daemon's S3Store as the fast-path tests use it: path style, 2 attempts, a 10 s deadline."""
    from cachefs.store.s3 import S3Store
    return S3Store(bucket, endpoint_url=url, region=REGION, addressing_style="path", max_attempts=2,
                   read_deadline=10.0, **kw)


@contextlib.contextmanager
def signed_store(monkeypatch, auth_moto, secret: str):
    """fast_path_store against the moto that checks signatures, with this secret in the environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", auth_moto.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    store = fast_path_store(auth_moto.endpoint_url, auth_moto.bucket)
    try:
        yield store
    finally:
        store.close()


def populate(s3, bucket: str, objects: dict[str, bytes], workers: int = 16) -> None:
    """Put every object, in parallel (boto3 clients are thread-safe; 10k puts take ~30 s on moto)."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(s3.put_object, Bucket=bucket, Key=k, Body=v) for k, v in objects.items()]
        for f in futures:
            f.result()


def list_all_keys(s3, bucket: str, prefix: str = "") -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


# ---------------------------------------------------------------- moto's request log

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REQUEST = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+" (?P<status>\d{3})')


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # raw request target, percent-encoded, with query
    status: int

    @property
    def _split(self):
        return urllib.parse.urlsplit(self.target)

    @property
    def bucket(self) -> str:
        return urllib.parse.unquote(self._split.path).lstrip("/").split("/", 1)[0]

    @property
    def key(self) -> str:
        parts = urllib.parse.unquote(self._split.path).lstrip("/").split("/", 1)
        return parts[1] if len(parts) > 1 else ""

    @property
    def is_object_get(self) -> bool:
        return self.method == "GET" and self.key != ""

    @property
    def is_list(self) -> bool:
        return self.method == "GET" and self.key == "" and self.bucket != ""


def parse_request_line(line: str) -> Request | None:
    m = _REQUEST.search(_ANSI.sub("", line))
    if not m:
        return None
    return Request(m["method"], m["target"], int(m["status"]))


class RequestLog:
    """Counts what was asked of moto, from its one-line-per-request access log.

    `mark()` returns a position; `since(mark, bucket)` the requests logged after it. Tests use their
    own bucket, so filtering by bucket isolates them from each other on a shared server.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def settle(self, quiet_s: float = LOG_SETTLE_S, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        size = self._size()
        while time.monotonic() < deadline:
            time.sleep(quiet_s)
            new = self._size()
            if new == size:
                return
            size = new

    def mark(self) -> int:
        self.settle()
        return self._size()

    def since(self, mark: int, bucket: str | None = None) -> list[Request]:
        self.settle()
        with open(self.path, "rb") as f:
            f.seek(mark)
            text = f.read().decode("utf-8", "replace")
        reqs = [r for r in map(parse_request_line, text.splitlines()) if r is not None]
        return [r for r in reqs if bucket is None or r.bucket == bucket]


def summarize(requests: list[Request]) -> str:
    return ", ".join(f"{r.method} {r.target} {r.status}" for r in requests[:20]) + (
        f" ... ({len(requests)} in all)" if len(requests) > 20 else "")


# ---------------------------------------------------------------- mounts, processes, /proc

def _unescape_mountinfo(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field_)


def canonical(path: Path | str) -> str:
    """Absolute, with symlinks resolved in the parent only: stat-ing a mount point asks its daemon, which
    hangs if the daemon does (so teardown never stats a mount point; see Mount.real_path for symlinks)."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def mount_entries(path: Path | str) -> list[str]:
    """The /proc/self/mountinfo lines whose mount point is `path` (one per stacked mount)."""
    target = canonical(path)
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if _unescape_mountinfo(line.split()[4]) == target]


def is_mounted(path: Path | str) -> bool:
    return bool(mount_entries(path))


def force_unmount(path: Path | str) -> None:
    """fusermount3 -u, then a lazy -uz as the fallback: never leave a mount behind a test."""
    path = canonical(path)
    for flags in (["-u"], ["-uz"]):
        if not is_mounted(path):
            return
        try:
            subprocess.run(["fusermount3", *flags, str(path)], capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:  # a hung daemon: the lazy unmount comes next
            continue
        wait_until(lambda: not is_mounted(path), 5)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def stop_pid(pid: int, timeout_s: float = DAEMON_EXIT_TIMEOUT_S) -> None:
    """SIGTERM then SIGKILL one daemon this test started (by its pid, never by name)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pid_alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        wait_until(lambda: not pid_alive(pid), timeout_s)


def pids_mentioning(arg: str) -> list[int]:
    """Processes with `arg` (a unique tmp path) as one whole command-line argument: leftover daemons."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if os.fsencode(arg) in argv and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def free_closed_port_url() -> str:
    """An http URL on loopback where nothing listens (connection refused, not a timeout)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def cachefs_env(endpoint_url: str | None = None, **extra: str) -> dict[str, str]:
    """A clean environment for `python -m cachefs`: our credentials, no CA bundle, no stray config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CACHEFS_"))}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
               AWS_DEFAULT_REGION=REGION, AWS_EC2_METADATA_DISABLED="true",
               AWS_SHARED_CREDENTIALS_FILE="/nonexistent/cachefs-tests/credentials",
               AWS_CONFIG_FILE="/nonexistent/cachefs-tests/config")
    env.update(extra)
    return env


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    elapsed_s: float

    def describe(self) -> str:
        return (f"exit {self.returncode} after {self.elapsed_s:.1f} s\n--- stdout\n{self.stdout}"
                f"\n--- stderr\n{self.stderr}")


def run_cachefs(args: list[str], env: dict[str, str], timeout_s: float = MOUNT_TIMEOUT_S,
                cwd: Path | None = None) -> Result:
    """Run `python -m cachefs ARGS`; the background daemon must not keep our pipes open."""
    if cwd is not None:  # relative paths in ARGS: import the package from CACHEFS_SRC all the same
        env = {**env, "PYTHONPATH": str(CACHEFS_SRC)}
    start = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "cachefs", *args], cwd=cwd or CACHEFS_SRC, env=env, capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def mount_args(url: str, mountpoint: Path, cache_dir: Path, endpoint_url: str, *extra: str) -> list[str]:
    """The usual mount command line; an empty endpoint_url leaves --endpoint-url to config/env."""
    endpoint = ["--endpoint-url", endpoint_url] if endpoint_url else []
    return ["mount", url, str(mountpoint), *endpoint, "--region", REGION, "--addressing-style", "path",
            "--cache-dir", str(cache_dir), *extra]


_PROBLEM = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b|Traceback \(most recent call last\)")


def log_problems(text: str, allowed: list[str] = ()) -> list[str]:
    """Lines of a daemon log that report an error, except those matching an `allowed` regex."""
    return [line for line in text.splitlines()
            if _PROBLEM.search(line) and not any(re.search(a, line) for a in allowed)]


@dataclass
class Mount:
    """One mounted cachefs: its mount point, cache dir and the daemon's view of itself."""
    url: str
    path: Path
    cache_dir: Path
    args: list[str]
    env: dict[str, str]
    pids: set[int] = field(default_factory=set)
    real_path: Path | None = None  # the mount point with symlinks resolved, taken before mounting

    def __post_init__(self):
        if self.real_path is None:
            self.real_path = Path(os.path.realpath(self.path))

    @property
    def log_path(self) -> Path:
        return self.cache_dir / "cachefs.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def pid(self) -> int:
        pid = int((self.cache_dir / "cachefs.pid").read_text().strip())
        self.pids.add(pid)
        return pid

    def stats(self) -> dict:
        return control_request(str(self.path), "stats")["stats"]

    def __truediv__(self, rel: str) -> Path:
        return self.path / rel


def stats_delta(before: dict, after: dict, *names: str) -> dict[str, int]:
    return {n: after[n] - before[n] for n in names}


# ---------------------------------------------------------------- the file tree seen through a mount

def walk_tree(root: Path) -> dict[str, object]:
    """{relative path: "dir" | size} for everything under a mount (lstat, never following)."""
    tree: dict[str, object] = {}
    def fail(err: OSError):
        raise err

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            tree[rel] = "dir" if os.path.isdir(full) and not os.path.islink(full) else st.st_size
    return tree


def inode_map(root: Path) -> dict[str, int]:
    out = {".": os.stat(root).st_ino}
    for rel in walk_tree(root):
        out[rel] = os.lstat(os.path.join(root, rel)).st_ino
    return out


def read_all(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def pread_exact(path: Path, offset: int, size: int) -> bytes:
    """One pread, then more until EOF or `size` bytes: what a well-behaved reader sees."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks, got = [], 0
        while got < size:
            chunk = os.pread(fd, size - got, offset + got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def run_threads(target, args_list: list[tuple], timeout_s: float = 120.0) -> None:
    """Run target(*args) in one thread per args tuple, all at once; fail if any is still running after."""
    threads = [threading.Thread(target=target, args=args) for args in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    assert not any(t.is_alive() for t in threads), "a reader thread hung"


def first_difference(a: bytes, b: bytes) -> str:
    """A short description of where two byte strings differ, for assertion messages."""
    if a == b:
        return "equal"
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"lengths {len(a)} vs {len(b)}, first difference at byte {n}"


def one_line_error(stderr: str) -> str | None:
    """The single `cachefs: error: ` line the contract promises, or None if stderr is anything else."""
    lines = stderr.strip("\n").splitlines()
    if len(lines) == 1 and lines[0].startswith("cachefs: error: "):
        return lines[0]
    return None


def errno_of(fn, *args, **kwargs) -> int | None:
    """The errno `fn(*args)` fails with, or None if it succeeds: for tests of error answers."""
    try:
        fn(*args, **kwargs)
    except OSError as e:
        return e.errno
    return None


def relisted_behind_the_kernel(m, directory: str = "d") -> None:
    """`directory` listed anew once its listing is stale (mounted with --listing-ttl 1), by a lookup
    of a name it lacks: cachefs learns its objects' new sizes, the kernel is told nothing (a listdir
    would tell it: READDIRPLUS)."""
    resized = m.stats().get("files_resized_in_s3", 0)
    time.sleep(1.5)
    assert not os.path.exists(m / directory / "absent.bin")
    # the LIST answered and its listing committed: the new size recorded
    assert wait_until(lambda: m.stats().get("files_resized_in_s3", 0) > resized, 10), m.stats()


def assert_older_handle_stale(path: Path, first: int, old: bytes, new: bytes) -> None:
    """Open the new version of `path` (its pages unread): `first`, a handle open on the `old` size,
    must then read ESTALE, not `old` cut at the new size; the new handle reads `new` whole."""
    second = os.open(path, os.O_RDONLY)
    try:
        assert os.stat(path).st_size == len(new)
        try:
            os.pread(first, len(old), 0)
        except OSError as e:
            assert e.errno == errno.ESTALE, e
        else:
            raise AssertionError("the handle on the old size read on")
        assert os.pread(second, len(new), 0) == new
    finally:
        os.close(second)
