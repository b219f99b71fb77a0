"""Helpers of the reliability tests (tests/test_reliability_*.py): readers in processes of their own,
so that their kernel state can be watched, and reads that bypass the kernel's page cache.

The fault proxy itself is cachefs.devtools.faultproxy (the `fault_proxy` fixture in conftest.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mount_helpers import PYTHON

# Reads a range of a file and prints what happened as one JSON line: the errno a reader sees, and how long.
_READER = r"""
import errno, hashlib, json, os, sys, time
path, offset, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.monotonic()
try:
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, size, offset)
    finally:
        os.close(fd)
    out = {"ok": True, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
except OSError as e:
    out = {"ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno))}
out["elapsed"] = time.monotonic() - t0
print(json.dumps(out), flush=True)
"""


@dataclass
class Reader:
    proc: subprocess.Popen
    started: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def result(self, timeout_s: float) -> dict:
        out, _ = self.proc.communicate(timeout=timeout_s)
        return json.loads(out.strip().splitlines()[-1])


def start_reader(path: Path, offset: int = 0, size: int = 1 << 20) -> Reader:
    """One pread in a new process (its own file descriptor, its own kernel task to watch)."""
    proc = subprocess.Popen([PYTHON, "-c", _READER, str(path), str(offset), str(size)],
                            stdout=subprocess.PIPE, text=True)
    return Reader(proc, time.monotonic())


def proc_state(pid: int) -> str | None:
    """The one-letter scheduler state (R, S, D, Z ...) of a process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def watch_states(readers: list[Reader], until_s: float, interval_s: float = 0.05) -> dict[int, list[str]]:
    """Sample the readers' states until they have all exited or `until_s` seconds passed."""
    states: dict[int, list[str]] = {r.pid: [] for r in readers}
    deadline = time.monotonic() + until_s
    while time.monotonic() < deadline:
        alive = False
        for r in readers:
            st = proc_state(r.pid) if r.proc.poll() is None else None
            if st is not None:
                states[r.pid].append(st)
                alive = alive or st != "Z"
        if not alive:
            break
        time.sleep(interval_s)
    return states


def read_past_page_cache(path: Path) -> bytes:
    """Read a file from the daemon, not from the kernel's page cache (this file's pages dropped first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
