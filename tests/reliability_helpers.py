"""Helpers of the reliability tests (tests/test_reliability_*.py): readers in processes of their own,
so that their kernel state can be watched, and reads that bypass the kernel's page cache.

The fault proxy itself is cachefs.devtools.faultproxy (the `fault_proxy` fixture in conftest.py).
"""
from __future__ import annotations

import json
import os
import random
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


# ---------------------------------------------------------------- crashes: writers and the cache's state on disk

CRASH_WRITER = Path(__file__).with_name("crash_writer.py")


def start_crash_writer(directory: Path, seed: str) -> subprocess.Popen:
    """tests/crash_writer.py in DIRECTORY: prints "synced NAME LENGTH" once each fsync returned."""
    return subprocess.Popen([PYTHON, str(CRASH_WRITER), str(directory), seed], stdout=subprocess.PIPE, text=True)


def crash_writer_synced(out: str) -> dict[str, int]:
    """{name: longest fsynced length} from a crash writer's output."""
    synced: dict[str, int] = {}
    for line in out.splitlines():
        if line.startswith("synced "):
            _, name, length = line.split()
            synced[name] = max(synced.get(name, 0), int(length))
    return synced


def crash_writer_bytes(seed: str, name: str, length: int) -> bytes:
    return random.Random(f"{seed}/{name}").randbytes(length)      # what crash_writer.py writes to NAME


@dataclass
class CacheState:
    """What a cache directory holds: blocks (key -> payload verified?: every block file, and the pack
    records the index names; a pack record no index names cannot be told, and is lost at a restart by
    design, cache/packs.py), stray files, the LMDB block index (key -> (size, stored at, dir id[, pack,
    offset])), pending-upload records and staging file names."""
    files: dict[bytes, bool]
    file_sizes: dict[bytes, int]
    strays: list[str]
    index: dict[bytes, tuple]
    pending: dict[int, dict]
    staging: set[int]

    def index_problems(self) -> list[str]:
        """The block index against the block files: each indexed block has its file, of the indexed
        size, whose checksum verifies; each block file is indexed."""
        out = [f"indexed block {k.hex()} has no file" for k in self.index if k not in self.files]
        out += [f"block file {k.hex()} is not indexed" for k in self.files if k not in self.index]
        out += [f"block file {k.hex()} fails its checksum" for k, ok in self.files.items() if not ok]
        out += [f"block {k.hex()}: index says {v[0]} bytes, file has {self.file_sizes[k]}"
                for k, v in self.index.items() if k in self.files and v[0] != self.file_sizes[k]]
        return out + [f"stray file {s}" for s in self.strays]


def cache_state(block_dir: Path, meta_dir: Path, staging_dir: Path) -> CacheState:
    """Read a cache directory as it is (the daemon dead or alive: LMDB readers never block its writer)."""
    import lmdb

    from cachefs import native
    from cachefs.cache.disk import HEADER, LAYOUT_DIR
    from cachefs.cache.packs import PACK_DIR, Packs
    from cachefs.meta.schema import BLOCK, DATABASES, PACKED, unpack_u64

    files, sizes, strays = {}, {}, []
    root = Path(block_dir) / LAYOUT_DIR
    for sub in sorted(root.iterdir()):
        if sub.name == PACK_DIR:
            continue
        for f in sub.iterdir():
            try:
                key = bytes.fromhex(f.name) if len(f.name) == 32 else None
            except ValueError:
                key = None
            if key is None:
                strays.append(str(f.relative_to(root)))
                continue
            try:
                payload = native.read_block(str(f))
                files[key] = payload is not None
                # the block's charge (header + payload): an O_DIRECT file is padded to 4096 on disk
                sizes[key] = HEADER.size + len(payload) if payload is not None else f.stat().st_size
            except FileNotFoundError:     # evicted meanwhile
                pass
    env = lmdb.open(str(meta_dir), readonly=True, max_dbs=len(DATABASES), subdir=True)
    try:
        blocks, pend = env.open_db(b"blocks", create=False), env.open_db(b"pending", create=False)
        packed = env.open_db(b"packed", create=False)
        with env.begin() as txn:
            index = {bytes(k): BLOCK.unpack(bytes(v)) for k, v in txn.cursor(db=blocks)}
            in_packs = {bytes(k): PACKED.unpack(bytes(v)) for k, v in txn.cursor(db=packed)}
            pending = {unpack_u64(bytes(k)): json.loads(bytes(v)) for k, v in txn.cursor(db=pend)}
    finally:
        env.close()
    packs = Packs(str(root))
    for pack in packs.numbers():                       # every record, indexed or not, like the files
        for key, offset, length in packs.records(pack):
            if key in in_packs and in_packs[key][3:] != (pack, offset):
                continue                               # an older copy of the block, punched at start-up
            payload = native.read_packed(packs.path(pack), offset, length, key)
            files[key] = payload is not None
            sizes[key] = HEADER.size + length
    index.update(in_packs)
    staging = {int(n) for n in os.listdir(staging_dir) if n.isdigit()} if os.path.isdir(staging_dir) else set()
    return CacheState(files, sizes, strays, index, pending, staging)
