"""Is the LMDB metadata store whole? Checked at every start-up, before the daemon trusts it.

LMDB has no page checksums: a torn or bit-flipped file may open fine and then answer garbage, fail
with MDB_CORRUPTED on some later lookup, or, where a page number points past the end of a truncated
file, kill the process with SIGBUS. So the check reads every record of every sub-database and decodes
it as schema.py says, in a forked child: a crash there is a finding, not the daemon's death.

What it cannot see: a flipped byte inside a value that still decodes (a wrong size or ETag). Those do
not reach readers as wrong bytes: block contents carry their own checksums, and a wrong ETag makes S3
answer 412 (ESTALE, refreshed on the next open).
"""
from __future__ import annotations

import faulthandler
import json
import os
import select
import signal
import time

import lmdb

from cachefs.meta.schema import (
    ATTRS,
    BLOCK,
    DATABASES,
    F64,
    OWNER,
    PACKED,
    U64,
    unpack_inode,
    unpack_objmeta,
    unpack_u64,
)

CHECK_TIMEOUT_S = 300.0     # ~1.5 s per million records here; far beyond any sane store


def _check_record(db: bytes, key: bytes, value: bytes) -> None:
    if db == b"inodes":
        unpack_inode(unpack_u64(key), value)
    elif db == b"dentries":
        if len(key) <= U64.size or len(value) != U64.size:
            raise ValueError("malformed directory entry")
    elif db in (b"listings", b"negative", b"manifested"):
        if len(value) != F64.size:
            raise ValueError("malformed expiry")
    elif db == b"blocks":
        if len(key) != 16 or len(value) != BLOCK.size:
            raise ValueError("malformed block index entry")
    elif db == b"packed":
        if len(key) != 16 or len(value) != PACKED.size:
            raise ValueError("malformed packed block index entry")
    elif db == b"pending":
        json.loads(value)
    elif db == b"attrs":
        if len(value) != ATTRS.size:
            raise ValueError("malformed attributes")
    elif db == b"owners":
        if len(value) != OWNER.size:
            raise ValueError("malformed owner")
    elif db == b"objmeta":
        unpack_objmeta(value)
    elif db == b"subdirs":
        if len(value) != U64.size:
            raise ValueError("malformed subdirectory count")


def walk(path: str) -> int:
    """Read and decode every record (in this process). Returns how many; raises on any damage."""
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=len(DATABASES) + 8, map_size=64 << 30)
    try:
        records = 0
        with env.begin(buffers=False) as txn:
            for name in DATABASES:
                try:
                    db = env.open_db(name, txn=txn, create=False)
                except lmdb.NotFoundError:
                    continue                 # a sub-database this store never created yet
                for key, value in txn.cursor(db=db):
                    try:
                        _check_record(name, key, value)
                    except Exception as e:
                        raise ValueError(f"{name.decode()} record {key[:24].hex()}: {e}") from None
                    records += 1
            meta = env.open_db(b"meta", txn=txn, create=False)
            if txn.get(b"version", db=meta) is not None and txn.get(b"next_ino", db=meta) is None:
                raise ValueError("meta lacks next_ino")
        return records
    finally:
        env.close()


def check(path: str, timeout_s: float = CHECK_TIMEOUT_S) -> str | None:
    """None if the store at `path` is whole (or does not exist yet), else what is wrong, in words."""
    if not os.path.exists(os.path.join(path, "data.mdb")):
        return None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                     # the child: only lmdb and raw writes, then _exit
        try:
            os.close(r)
            faulthandler.disable()           # a crash here is an answer, not something to report
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            try:
                walk(path)
                answer = b""
            except Exception as e:
                text = str(e).replace(f"{path}: ", "").replace("\n", " ")
                answer = f"{type(e).__name__}: {text}".encode()[:2000]
            os.write(w, answer)
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return f"checking it took longer than {timeout_s:.0f} s"
            chunk = os.read(r, 4096)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"reading it crashed the checker ({signal.Signals(os.WTERMSIG(status)).name})"
    said = b"".join(chunks).decode(errors="replace")
    return said or None
