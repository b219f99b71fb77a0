"""DiskCache: blocks as files in one directory, with a size limit, LRU eviction and checksums.

File format (layout v1, under CACHE_DIR/blocks/v1/XX/<32 hex>):
    32-byte header: magic b"CFSBLK01", u64 payload length, u64 xxh3-64 of the payload, u64 zero
    payload
A block is written to a temp file and renamed, so a reader sees a whole file or none; a file torn
by a crash fails its length or checksum check, is deleted, and the block is fetched again.

The index (key -> size, time stored) lives in LMDB; puts are batched into it (flush()) because one
fsynced commit per block would cap small-file throughput. Blocks whose files exist but whose index
entry was lost in a crash are adopted by the start-up scan, so a crash loses no cached data.
Recency is kept in memory only: no LMDB write per read (a field lesson).
"""
from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import OrderedDict

import xxhash

from ..meta.store import MetaStore
from ..stats import Stats
from .base import BlockCache

log = logging.getLogger(__name__)

HEADER = struct.Struct(">8sQQQ")
MAGIC = b"CFSBLK01"
LAYOUT_DIR = os.path.join("blocks", "v1")
# Index writes are batched: at most this many blocks are only in memory (and adopted back by the
# start-up scan if we crash).
INDEX_BATCH = 256


def encode_header(payload: bytes | memoryview) -> bytes:
    return HEADER.pack(MAGIC, len(payload), xxhash.xxh3_64_intdigest(payload), 0)


def verify(raw: bytes) -> memoryview | None:
    """The payload of a block file's bytes if header and checksum hold, else None."""
    if len(raw) < HEADER.size:
        return None
    magic, length, checksum, _ = HEADER.unpack_from(raw)
    payload = memoryview(raw)[HEADER.size:]
    if magic != MAGIC or length != len(payload) or xxhash.xxh3_64_intdigest(payload) != checksum:
        return None
    return payload


class DiskCache(BlockCache):
    def __init__(self, cache_dir: str, capacity: int, meta: MetaStore, stats: Stats) -> None:
        self.root = os.path.join(cache_dir, LAYOUT_DIR)
        self.capacity = capacity
        self.meta = meta
        self.stats = stats
        self._lock = threading.Lock()
        self._lru: OrderedDict[bytes, int] = OrderedDict()   # key -> bytes on disk, oldest first
        self._used = 0
        self._pending_add: dict[bytes, tuple[int, float]] = {}
        self._pending_del: set[bytes] = set()
        for i in range(256):
            os.makedirs(os.path.join(self.root, f"{i:02x}"), mode=0o700, exist_ok=True)
        for key, size, _ in sorted(meta.block_index(), key=lambda e: e[2]):
            self._lru[key] = size
            self._used += size

    def path(self, key: bytes) -> str:
        h = key.hex()
        return os.path.join(self.root, h[:2], h)

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def block_count(self) -> int:
        return len(self._lru)

    def contains(self, key: bytes) -> bool:
        return key in self._lru

    # -- read -------------------------------------------------------------------------------
    def get(self, key: bytes) -> memoryview | None:
        if key not in self._lru:
            return None
        try:
            with open(self.path(key), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            self._forget(key)
            return None
        except OSError as e:
            self.stats.add("cache_errors")
            log.warning("cache read of %s failed (%s); fetching from S3 instead", key.hex(), e.strerror)
            return None
        payload = verify(raw)
        if payload is None:
            self.stats.add("cache_corrupt")
            log.warning("cached block %s failed its checksum; dropped, fetching again", key.hex())
            self._drop(key)
            return None
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
        return payload

    # -- write ------------------------------------------------------------------------------
    def put(self, key: bytes, data: bytes | memoryview) -> None:
        size = HEADER.size + len(data)
        if size > self.capacity:
            return
        with self._lock:
            if key in self._lru:
                return
            victims = []
            while self._used + size > self.capacity and self._lru:
                victim, vsize = self._lru.popitem(last=False)
                self._used -= vsize
                self._note_removed(victim)
                victims.append(victim)
            self._lru[key] = size        # reserve before writing: usage never exceeds capacity
            self._used += size
        for victim in victims:
            self._unlink(victim)
        self.stats.add("cache_evictions", len(victims))
        if not self._write(key, data):
            with self._lock:
                if self._lru.pop(key, None) is not None:
                    self._used -= size
            return
        self.stats.add("cache_puts")
        with self._lock:
            self._pending_del.discard(key)
            self._pending_add[key] = (size, time.time())
            full = len(self._pending_add) + len(self._pending_del) >= INDEX_BATCH
        if full:
            self.flush()

    def _write(self, key: bytes, data: bytes | memoryview) -> bool:
        final = self.path(key)
        tmp = f"{final}.tmp.{threading.get_ident()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.writev(fd, [encode_header(data), data])
            finally:
                os.close(fd)
            os.rename(tmp, final)
            return True
        except OSError as e:
            self.stats.add("cache_errors")
            log.warning("cannot write cache block %s (%s); serving it uncached", key.hex(), e.strerror)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False

    # -- removal ----------------------------------------------------------------------------
    def _note_removed(self, key: bytes) -> None:
        """Under the lock: the index must forget `key` at the next flush."""
        self._pending_add.pop(key, None)
        self._pending_del.add(key)

    def _forget(self, key: bytes) -> None:
        with self._lock:
            size = self._lru.pop(key, None)
            if size is not None:
                self._used -= size
                self._note_removed(key)

    def _drop(self, key: bytes) -> None:
        self._forget(key)
        self._unlink(key)

    def _unlink(self, key: bytes) -> None:
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove cache block %s: %s", key.hex(), e.strerror)

    # -- index persistence ------------------------------------------------------------------
    def flush(self) -> None:
        with self._lock:
            added = [(k, s, t) for k, (s, t) in self._pending_add.items()]
            removed = list(self._pending_del)
            self._pending_add.clear()
            self._pending_del.clear()
        if added or removed:
            self.meta.update_block_index(added, removed)

    def scan(self) -> tuple[int, int]:
        """Start-up repair: adopt intact block files the index lost, delete temp and junk files.

        Returns (adopted, removed). Runs before the mount serves requests (it deletes temp files).
        """
        adopted = removed = 0
        for i in range(256):
            sub = os.path.join(self.root, f"{i:02x}")
            try:
                names = os.listdir(sub)
            except OSError:
                continue
            for name in names:
                path = os.path.join(sub, name)
                key = _key_from_name(name)
                if key is not None and key in self._lru:
                    continue
                if key is not None and self._adopt(key, path):
                    adopted += 1
                    continue
                try:
                    os.unlink(path)
                    removed += 1
                except OSError:
                    pass
        self.flush()
        if adopted or removed:
            log.info("cache scan: adopted %d block files, removed %d stray files", adopted, removed)
        return adopted, removed

    def _adopt(self, key: bytes, path: str) -> bool:
        try:
            with open(path, "rb") as f:
                head = f.read(HEADER.size)
                size = os.fstat(f.fileno()).st_size
        except OSError:
            return False
        if len(head) < HEADER.size:
            return False
        magic, length, _, _ = HEADER.unpack(head)
        if magic != MAGIC or length + HEADER.size != size:
            return False
        with self._lock:
            if key in self._lru or self._used + size > self.capacity:
                return key in self._lru
            self._lru[key] = size
            self._lru.move_to_end(key, last=False)  # unknown age: first to go
            self._used += size
            self._pending_add[key] = (size, 0.0)
        return True

    def close(self) -> None:
        self.flush()


def _key_from_name(name: str) -> bytes | None:
    if len(name) != 32:
        return None
    try:
        return bytes.fromhex(name)
    except ValueError:
        return None
