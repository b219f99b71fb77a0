"""Disk tiers: blocks as files in one or more directories sharing one quota, with health checks.

A block smaller than the mount's block size (a small file, a file's tail, a random-read piece) is
appended to a pack file instead (cache/packs.py: no file created); a full-sized block
is a file of its own, as below.

Block file format (layout v1, under DIR/blocks/v1/XX/<32 hex>), shared with native/blockread.c:
    32-byte header: magic b"CFSBLK01", u64 payload length, u64 xxh3-64 of the payload, u64 zero
    payload, then zeros up to the next multiple of 4096 (O_DIRECT writes) or nothing (buffered)
A block is written straight to its final name by one native.write_block call (create with O_EXCL,
one write, close; no temp file, rename or ftruncate: docs/CACHING.md "The store per object"). That is
safe because nothing trusts a file for being there: its slot appears (Tier.put) only once the write
returned, so this process never reads a file being written; a file torn by a crash fails the size
check of the start-up scan or the checksum that every read verifies, is deleted, and the block is
fetched again. Files are written with O_DIRECT where the filesystem allows (no page-cache copy;
cache/direct.py says why).

The index (key -> size, time stored, directory id) lives in LMDB; writes to it are batched
(TieredCache.flush) because one fsynced commit per block would cap small-file throughput. Block
files whose index entry was lost in a crash are adopted back by the start-up scan.

A directory that fails (EIO, ENOSPC, read-only, removed) is marked down and skipped: its blocks are
misses, new blocks go elsewhere. It is probed every PROBE_INTERVAL_S and comes back when a probe
file can be written and read again.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

import xxhash

from cachefs import native
from cachefs.cache.packs import Packs
from cachefs.cache.spec import TierSpec
from cachefs.cache.tier import Slot, Tier
from cachefs.errors import UserError
from cachefs.stats import Stats

log = logging.getLogger(__name__)

HEADER = native.HEADER
MAGIC = native.MAGIC
LAYOUT_DIR = os.path.join("blocks", "v1")
LOCK_NAME = "blocks.lock"
PROBE_INTERVAL_S = 10.0      # how soon a repaired directory is used again
STATVFS_INTERVAL_S = 1.0     # free-space checks are cached this long (one statvfs per second)


def encode_header(payload: bytes | memoryview) -> bytes:
    return HEADER.pack(MAGIC, len(payload), xxhash.xxh3_64_intdigest(payload), 0)


def dir_id(path: str) -> int:
    """Stable 32-bit identity of a tier directory, stored with each block in the index."""
    return xxhash.xxh32_intdigest(os.path.abspath(path).encode())


class DiskDir:
    """One cache directory: its files, lock, free-space check and health."""

    def __init__(self, path: str, min_free: float, min_free_inodes: float) -> None:
        self.path = os.path.abspath(path)
        self.root = os.path.join(self.path, LAYOUT_DIR)
        self.id = dir_id(self.path)
        self.min_free = min_free
        self.min_free_inodes = min_free_inodes
        self.healthy = True
        self.direct = True           # O_DIRECT block writes, until the filesystem refuses them
        self.next_probe = 0.0
        self._space_checked = 0.0
        self._space_ok = True
        self._lock_fd: int | None = None
        self.packs = Packs(self.root)

    def open(self) -> None:
        """Create and lock the directory (start-up: a failure here is the user's to fix)."""
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            os.chmod(self.path, 0o700)
            self._make_subdirs()
            self.packs.open()
            # O_RDONLY: the lock does not keep the file system from being remounted read-only
            fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDONLY | os.O_CREAT, 0o600)
        except OSError as e:
            raise UserError(f"cache directory {self.path} is not usable: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"cache directory {self.path} is in use by another cachefs daemon") from None
        self._lock_fd = fd

    def close(self) -> None:
        self.packs.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _make_subdirs(self) -> None:
        # blocks/ and blocks/v1/ too: os.makedirs gives only the last directory its mode
        for d in (os.path.dirname(self.root), self.root):
            os.makedirs(d, mode=0o700, exist_ok=True)
            if os.stat(d).st_mode & 0o077:
                os.chmod(d, 0o700)
        for i in range(256):
            os.makedirs(os.path.join(self.root, f"{i:02x}"), mode=0o700, exist_ok=True)
        os.makedirs(self.packs.dir, mode=0o700, exist_ok=True)

    def block_path(self, key: bytes) -> str:
        h = key.hex()
        return f"{self.root}/{h[:2]}/{h}"          # os.path.join's result, in one step (the put path)

    def space_ok(self) -> bool:
        now = time.monotonic()
        if now - self._space_checked >= STATVFS_INTERVAL_S:
            self._space_checked = now
            try:
                st = os.statvfs(self.root)
                free = st.f_bavail / st.f_blocks if st.f_blocks else 1.0
                inodes = st.f_favail / st.f_files if st.f_files else 1.0
                self._space_ok = free >= self.min_free and inodes >= self.min_free_inodes
            except OSError:
                self._space_ok = False
        return self._space_ok

    def mark_full(self, err: OSError) -> None:
        """ENOSPC/EDQUOT: full, not broken. Its blocks stay readable; new ones go elsewhere (or are
        served uncached) until the next free-space check finds room (the evictor makes some)."""
        if self._space_ok:
            log.warning("writing to cache directory %s failed (%s): no new blocks there until it has room",
                        self.path, err.strerror or err)
        self._space_ok = False
        self._space_checked = time.monotonic()

    def space_changed(self) -> None:
        """A block file went: check free space anew next time (the evictor stops as soon as it may)."""
        self._space_checked = 0.0

    def mark_down(self, err: OSError) -> None:
        if self.healthy:
            log.warning("cache directory %s failed (%s): skipping it until it recovers",
                        self.path, err.strerror or err)
        self.healthy = False
        self.packs.give_up()
        self.next_probe = time.monotonic() + PROBE_INTERVAL_S

    def probe(self) -> bool:
        """Try a real write and read; bring the directory back if both work."""
        if self.healthy or time.monotonic() < self.next_probe:
            return self.healthy
        self.next_probe = time.monotonic() + PROBE_INTERVAL_S
        probe = os.path.join(self.root, ".probe")
        try:
            self._make_subdirs()
            with open(probe, "wb") as f:
                f.write(b"cachefs probe")
                f.flush()
                os.fsync(f.fileno())
            with open(probe, "rb") as f:
                ok = f.read() == b"cachefs probe"
            os.unlink(probe)
        except OSError:
            return False
        if ok:
            self._space_checked = 0.0
            self.healthy = True
            log.warning("cache directory %s is healthy again", self.path)
        return ok


class DiskTier(Tier):
    def __init__(self, spec: TierSpec, stats: Stats, dirs: list[DiskDir] | None = None, pack_below: int = 0) -> None:
        super().__init__(spec, stats)
        self.dirs = dirs or [DiskDir(d, spec.min_free, spec.min_free_inodes) for d in spec.dirs]
        self.pack_below = pack_below     # payloads shorter than this go to pack files; 0: none do
        self._pending_add: dict[bytes, tuple[int, float, int, int, int]] = {}
        self._pending_del: set[bytes] = set()
        self._index_lock = threading.Lock()

    def open(self) -> None:
        for d in self.dirs:
            d.open()

    def close(self) -> None:
        for d in self.dirs:
            d.close()

    def charge(self, payload_len: int) -> int:
        return HEADER.size + payload_len

    @property
    def usable(self) -> bool:
        for d in self.dirs:                        # not any(generator): on every put
            if d.healthy:
                return True
        return False

    def pressure(self) -> bool:
        return any(d.healthy and not d.space_ok() for d in self.dirs)

    def pressured_dirs(self) -> set[int]:
        return {i for i, d in enumerate(self.dirs) if d.healthy and not d.space_ok()}

    def probe(self) -> None:
        for d in self.dirs:
            d.probe()

    def _choose_place(self, key: bytes) -> int | None:
        n = len(self.dirs)
        start = int.from_bytes(key[:4], "big") % n    # spread by hash; skip a dir that is down or full
        for i in range(n):
            where = (start + i) % n
            d = self.dirs[where]
            if d.healthy and d.space_ok():
                return where
        return None

    def path_of(self, key: bytes) -> str | None:
        """The block's file, or its pack's (Slot.offset says where in it)."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        d = self.dirs[slot.where]
        return d.packs.path(slot.pack) if slot.pack >= 0 else d.block_path(key)

    def _read(self, key: bytes, slot: Slot) -> memoryview | None:
        d = self.dirs[slot.where]
        if not d.healthy:
            return None
        try:
            if slot.pack >= 0:
                data = d.packs.read(key, slot.pack, slot.offset, slot.size - HEADER.size)
                if data is None and self._slots.get(key) is not slot:
                    return None          # removed while being read (its hole punched): a miss
            else:
                data = native.read_block(d.block_path(key))
        except FileNotFoundError:
            self._lost(key)
            return None
        except OSError as e:
            self.stats.add("cache_errors")
            d.mark_down(e)
            return None
        if data is None:
            self.stats.add("cache_corrupt")
            log.warning("cached block %s in %s failed its checksum; dropped, fetching again", key.hex(), d.path)
            self.remove(key)
        return data

    def _lost(self, key: bytes) -> None:
        slot = self._forget(key)
        if slot is not None:
            self._removed(key, slot)

    def _write(self, key: bytes, data: bytes | memoryview, slot: Slot) -> bool:
        d = self.dirs[slot.where]
        if len(data) < self.pack_below:
            places, err = self._append(d, [(key, data)])
            if err is not None:
                self._failed(d, err)
                return False
            slot.pack, slot.offset = places[0]
            return True
        expected = HEADER.size + len(data)
        try:
            written = self._write_file(d, d.block_path(key), data)
            if written != expected:   # a full filesystem may write short, no error (the file is gone)
                raise OSError(errno.ENOSPC, f"short write ({written} of {expected} bytes)")
            return True
        except OSError as e:
            self._failed(d, e)
            return False

    def put_many(self, items: Sequence[tuple[bytes, bytes | memoryview]], limit: int) -> list[bool]:
        """put() of each (key, data): the blocks to be packed go to each directory's pack in one
        write (cache/packs.py), the others one by one."""
        done = [False] * len(items)
        batches: dict[int, list[tuple[int, bytes, bytes | memoryview, Slot]]] = {}
        for i, (key, data) in enumerate(items):
            if len(data) >= self.pack_below:
                done[i] = self.put(key, data, limit)
                continue
            slot = self._reserve(key, self.charge(len(data)), limit)
            if isinstance(slot, Slot):
                batches.setdefault(slot.where, []).append((i, key, data, slot))
            else:
                done[i] = slot
        for where, batch in batches.items():
            d = self.dirs[where]
            places: list[tuple[int, int]] = []
            err = None
            try:
                places, err = self._append(d, [(key, data) for _, key, data, _ in batch])
            finally:                 # settled whatever happened: no key left "being written"
                for n, (i, key, _, slot) in enumerate(batch):
                    if n < len(places):
                        slot.pack, slot.offset = places[n]
                    done[i] = n < len(places)
                    self._settle(key, slot, done[i])
            if err is not None:
                self._failed(d, err)
        return done

    def _failed(self, d: DiskDir, e: OSError) -> None:
        """A write to the directory failed: full (ENOSPC/EDQUOT, short writes too) or down."""
        self.stats.add("cache_errors")
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            d.mark_full(e)
        else:
            d.mark_down(e)

    def _append(self, d: DiskDir, items: list[tuple[bytes, bytes | memoryview]]
                ) -> tuple[list[tuple[int, int]], OSError | None]:
        """The blocks as records of the directory's current pack: (pack, offset) of those written,
        and the error that stopped the rest. O_DIRECT as _write_file decides it."""
        places, in_place, err = d.packs.append(items, d.direct)
        if err is not None and err.errno == errno.EINVAL and d.direct:
            self._no_direct(d, err)
            more, more_in_place, err = d.packs.append(items[len(places):], d.direct)
            places, in_place = places + more, in_place + more_in_place
        if in_place:
            self.stats.add("cache_writes_in_place", in_place)
        return places, err

    def _no_direct(self, d: DiskDir, e: OSError) -> None:
        log.info("cache directory %s does not take O_DIRECT writes (%s): writing through the page cache", d.path, e)
        d.direct = False

    def _write_file(self, d: DiskDir, path: str, data: bytes | memoryview) -> int:
        """native.write_block, O_DIRECT where the directory's filesystem takes it (EINVAL once: buffered
        from then on). A file already at the name belongs to no slot (a removal whose unlink is still to
        come or failed, or a start-up leftover): it is replaced."""
        for _ in range(2):
            try:
                written, in_place = native.write_block(path, data, d.direct)
            except FileExistsError:
                os.unlink(path)
                continue
            except OSError as e:
                if e.errno != errno.EINVAL or not d.direct:
                    raise
                self._no_direct(d, e)
                continue
            if in_place:
                self.stats.add("cache_writes_in_place")
            return int(written)
        written, _ = native.write_block(path, data, d.direct)
        return int(written)

    def _delete(self, key: bytes, slot: Slot) -> None:
        d = self.dirs[slot.where]
        if slot.pack >= 0:
            d.packs.release(slot.pack, slot.offset, slot.size - HEADER.size)
            d.space_changed()
            return
        try:
            os.unlink(d.block_path(key))
            d.space_changed()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.debug("cannot remove cache block %s: %s", key.hex(), e.strerror)

    # -- index ------------------------------------------------------------------------------
    def _stored(self, key: bytes, slot: Slot) -> None:
        with self._index_lock:
            self._pending_del.discard(key)
            self._pending_add[key] = (slot.size, slot.last_access, self.dirs[slot.where].id, slot.pack, slot.offset)

    def _removed(self, key: bytes, slot: Slot) -> None:
        with self._index_lock:
            self._pending_add.pop(key, None)
            self._pending_del.add(key)

    def take_index_changes(self) -> tuple[list[tuple[bytes, int, float, int, int, int]], list[bytes]]:
        with self._index_lock:
            added = [(k, *entry) for k, entry in self._pending_add.items()]
            removed = list(self._pending_del)
            self._pending_add.clear()
            self._pending_del.clear()
        return added, removed

    def pending_index_changes(self) -> int:
        return len(self._pending_add) + len(self._pending_del)

    def adopt_indexed(self, key: bytes, slot: Slot) -> bool:
        """Take over a block the index names (start-up); a packed one counts as live in its pack."""
        if key in self._slots:
            return True              # as adopt(): already taken over, nothing to drop
        if not self.adopt(key, slot):
            return False
        if slot.pack >= 0:
            self.dirs[slot.where].packs.adopt(slot.pack)
        return True

    def _take_packed(self, known: Callable[[bytes], bool], where: int, key: bytes, pack: int, offset: int,
                     length: int) -> bool:
        """A pack record the index lost (start-up scan): taken back unless its block is known."""
        slot = Slot(HEADER.size + length, where, 0.0, pack=pack, offset=offset)
        if known(key) or not self.adopt(key, slot, oldest=True):
            return False
        self._stored(key, slot)
        return True

    def scan(self, known: Callable[[bytes], bool]) -> tuple[int, int]:
        """Start-up repair (before serving): adopt intact block files the index lost, delete temp
        and junk files; take back pack records the index lost and punch out the space of the rest
        (packs.py). Returns (adopted, removed)."""
        adopted = removed = 0
        for where, d in enumerate(self.dirs):
            live: dict[int, list[tuple[int, int]]] = {}
            for slot in self._slots.values():
                if slot.where == where and slot.pack >= 0:
                    live.setdefault(slot.pack, []).append((slot.offset, slot.size - HEADER.size))
            taken, gone, missing = d.packs.scan(live, functools.partial(self._take_packed, known, where))
            adopted += taken
            removed += gone
            for lost in [k for k, slot in self._slots.items() if slot.where == where and slot.pack in missing]:
                self._lost(lost)         # indexed in a pack that is gone: a miss, known now
            for i in range(256):
                sub = os.path.join(d.root, f"{i:02x}")
                try:
                    names = os.listdir(sub)
                except OSError:
                    continue
                for name in names:
                    key = _key_from_name(name)
                    if key is not None and known(key):
                        continue
                    path = os.path.join(sub, name)
                    size = _intact_size(path) if key is not None else None
                    if key is not None and size is not None and self.adopt(key, Slot(size, where, 0.0), oldest=True):
                        self._stored(key, self._slots[key])
                        adopted += 1
                        continue
                    try:
                        os.unlink(path)
                        removed += 1
                    except OSError:
                        pass
        return adopted, removed


def _intact_size(path: str) -> int | None:
    """The block's charge (header + payload) if the header is well-formed and the file's size matches
    it, padding allowed (the checksum waits for a read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER.size)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if len(head) < HEADER.size:
        return None
    magic, length, _, _ = HEADER.unpack(head)
    return HEADER.size + length if magic == MAGIC and native.whole_size(size, length) else None


def _key_from_name(name: str) -> bytes | None:
    if len(name) != 32:
        return None
    try:
        return bytes.fromhex(name)
    except ValueError:
        return None

