"""Metadata: `ls -lR` (a readdir and a stat of every entry) over a tree of N tiny files."""
from __future__ import annotations

import os
import time

from bench import util


def walk(root: str, tree: str, expected_files: int, timeout_s: float) -> dict:
    start = time.monotonic()
    out = util.run(["ls", "-lR", os.path.join(root, tree)], timeout=timeout_s)
    seconds = time.monotonic() - start
    files = sum(1 for line in out.stdout.splitlines() if line.startswith("-"))
    if files != expected_files:
        raise RuntimeError(f"ls -lR saw {files} files in {tree}, expected {expected_files}")
    return {"files": files, "seconds": seconds, "files_per_s": files / seconds}
