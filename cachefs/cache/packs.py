"""Pack files: a disk tier's small blocks appended to a few large files instead of a file each.

Why: a file per block costs the kernel an inode, a directory entry and their journal on every put;
for a 110 KB image that was the largest per-file cost of a cold epoch over small files
(docs/BENCHMARKS.md, "the disk copy"). Appended to a pack, the same block is part of one pwritev.
Blocks of a full block size stay files of their own (disk.py): the file is amortised over MiBs.

Layout, under DIR/blocks/v1/packs/: files named <16 hex digits>.pack, numbered upwards, each a
sequence of records at offsets that are multiples of ALIGN (native/blockread.c writes them):
    32-byte header: magic b"CFP1", u32 payload length, u64 xxh3-64 of the payload, the 16-byte key
    then the payload, zeros up to the next ALIGN
A record is found through the block index (key -> pack, offset) and trusted only when its magic,
length, key and checksum are the ones expected: a stale index entry (a hole punched, a pack number
used again after a crash) reads as a miss, never as another block's bytes. The key in the header
lets the start-up scan take back records the index lost, as it does block files.

One pack per directory is appended to, under a lock, until PACK_BYTES; then the next. The disk
writer thread, which stores nearly all blocks, hands over everything queued at once: one pwritev
for the lot (native.append_blocks), not a write each. Removing a block punches a hole over its
record, which gives the space back to the filesystem at once; a pack with no record left, other
than the one being appended to, is deleted. Every start begins a new pack.

Start-up (scan): records the index lost (written after its last flush before a crash, or all of
them when the metadata store was rebuilt) can only be past a pack's last indexed record, or in a
pack the index does not name; only there are headers read, hopping from record to record and
skipping holes (SEEK_DATA), so a clean start reads none. What is neither indexed nor taken back is
punched out; a pack left with no record is deleted.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence

from cachefs import native

log = logging.getLogger(__name__)

PACK_DIR = "packs"
PACK_BYTES = 64 << 20          # a pack is closed at this size: few files, yet a hole-ridden one goes soon
SUFFIX = ".pack"


class Packs:
    """One cache directory's pack files."""

    def __init__(self, root: str, pack_bytes: int = PACK_BYTES) -> None:
        self.dir = os.path.join(root, PACK_DIR)
        self.pack_bytes = pack_bytes
        self._lock = threading.Lock()
        self._live: dict[int, int] = {}     # pack -> records in it that a slot names
        self._current = -1                  # the pack appended to, -1: none open
        self._fd = -1
        self._direct = False
        self._end = 0
        self._next = 0

    def open(self) -> None:
        """Create the directory (0700); numbering goes on after the highest pack there."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._next = max(self.numbers(), default=-1) + 1

    def path(self, pack: int) -> str:
        return f"{self.dir}/{pack:016x}{SUFFIX}"

    @property
    def count(self) -> int:
        return len(self._live)

    def numbers(self) -> list[int]:
        """The packs in the directory, by number."""
        try:
            return sorted(n for n in map(_number, os.listdir(self.dir)) if n is not None)
        except OSError:
            return []

    def append(self, items: Sequence[tuple[bytes, bytes | memoryview]], direct: bool
               ) -> tuple[list[tuple[int, int]], int, OSError | None]:
        """Write each (key, data) as a record, as few pwritev calls as the packs' ends allow. Returns
        the (pack, offset) of each record written, from the first on; how many were written from
        their own buffer; and the error that stopped the rest, if one did (a short write, a full
        disk, is ENOSPC; EINVAL: no O_DIRECT here), the pack then given up."""
        direct = direct and native.ACTIVE == "native"     # the Python fallback writes buffered
        places: list[tuple[int, int]] = []
        in_place = 0
        with self._lock:
            while len(places) < len(items):
                first = native.record_size(len(items[len(places)][1]))
                try:
                    if self._fd < 0 or self._direct != direct or self._end + first > self.pack_bytes:
                        self._start(direct)
                    chunk: list[tuple[bytes | memoryview, bytes]] = []
                    end = self._end
                    for key, data in items[len(places):len(places) + native.BATCH_MAX]:
                        size = native.record_size(len(data))
                        if chunk and end + size > self.pack_bytes:
                            break
                        chunk.append((data, key))
                        end += size
                    written, own = native.append_blocks(self._fd, self._end, chunk, direct)
                    if written < end - self._end:
                        raise OSError(errno.ENOSPC, f"short write ({written} of {end - self._end} bytes)")
                except OSError as e:
                    self._give_up()
                    return places, in_place, e
                places += [(self._current, offset) for offset in _offsets(self._end, chunk)]
                self._live[self._current] = self._live.get(self._current, 0) + len(chunk)
                self._end, in_place = end, in_place + own
        return places, in_place, None

    def _start(self, direct: bool) -> None:
        """Close the current pack and begin the next (under the lock)."""
        self._give_up()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | (os.O_DIRECT if direct else 0)
        while True:
            pack = self._next
            self._next += 1
            try:
                self._fd = os.open(self.path(pack), flags, 0o600)
                break
            except FileExistsError:       # left by another start: never append to it
                continue
            except FileNotFoundError:     # the directory went (removed behind our back): make it again
                os.makedirs(self.dir, mode=0o700, exist_ok=True)
                self._fd = os.open(self.path(pack), flags, 0o600)
                break
        self._current, self._direct, self._end = pack, direct, 0

    def _give_up(self) -> None:
        """Stop appending to the current pack (its records stay readable); delete it if none is live."""
        if self._fd < 0:
            return
        os.close(self._fd)
        pack, self._fd, self._current = self._current, -1, -1
        if not self._live.get(pack):
            self._live.pop(pack, None)
            self._unlink(pack)

    def close(self) -> None:
        with self._lock:
            self._give_up()

    def give_up(self) -> None:
        """The directory failed: the next append starts a new pack (the old descriptor may be stale)."""
        with self._lock:
            self._give_up()

    def read(self, key: bytes, pack: int, offset: int, length: int) -> memoryview | None:
        """The record's payload; None if it is not this key's whole record. OSError as the read raised;
        FileNotFoundError (the pack removed behind our back) also gives up appending to it."""
        try:
            return native.read_packed(self.path(pack), offset, length, key)
        except FileNotFoundError:
            if pack == self._current:
                self.give_up()
            raise

    def adopt(self, pack: int) -> None:
        """An indexed record is live again (index load, before serving). Numbering goes on past its
        pack even if the file is gone: a number the index still names is never used again, so an
        entry left over by a crash can never point into (and its removal punch) another block's record."""
        with self._lock:
            self._live[pack] = self._live.get(pack, 0) + 1
            self._next = max(self._next, pack + 1)

    def release(self, pack: int, offset: int, length: int) -> None:
        """A record's block was removed: punch its space out, or delete the pack if it was the last."""
        with self._lock:
            left = self._live.get(pack, 0) - 1
            gone = left <= 0 and pack != self._current
            if gone:
                self._live.pop(pack, None)
            else:
                self._live[pack] = max(left, 0)
        if gone:
            self._unlink(pack)
            return
        try:
            native.punch_hole(self.path(pack), offset, native.record_size(length))
        except OSError as e:       # no hole punching here: the space comes back with the pack
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOENT):
                log.debug("cannot punch out a record of pack %s: %s", self.path(pack), e.strerror)

    def _unlink(self, pack: int) -> None:
        try:
            os.unlink(self.path(pack))
        except FileNotFoundError:
            pass
        except OSError as e:
            log.debug("cannot remove pack %s: %s", self.path(pack), e.strerror)

    def scan(self, live: dict[int, list[tuple[int, int]]],
             found: Callable[[bytes, int, int, int], bool]) -> tuple[int, int, set[int]]:
        """Start-up repair, given every indexed record as pack -> [(offset, payload length)] (adopted
        already): records past a pack's last indexed one, or in a pack the index does not name, are
        offered to found(key, pack, offset, payload length), which takes a block back or not; then the
        space of whatever is neither is punched out, and packs left with no record and stray files
        are deleted. Returns (records taken back, files removed, packs the index names that are gone)."""
        taken = removed = 0
        try:
            names = os.listdir(self.dir)
        except OSError:
            return 0, 0, set()
        for name in names:
            pack = _number(name)
            records: list[tuple[int, int]] = []
            if pack is not None:
                records = sorted(live.get(pack, []))
                walked = self._walk(pack, _end_of(records[-1]) if records else 0, found)
                taken += len(walked)
                records += walked
            if pack is None or not records:        # a stray file, or a pack with no record left
                try:
                    os.unlink(os.path.join(self.dir, name))
                    removed += 1
                except OSError:
                    pass
                continue
            self._punch_gaps(pack, records)
        missing = set(live) - {n for n in map(_number, names) if n is not None}
        with self._lock:
            for pack in missing:
                self._live.pop(pack, None)
        return taken, removed, missing

    def _walk(self, pack: int, start: int, found: Callable[[bytes, int, int, int], bool]) -> list[tuple[int, int]]:
        """The records from `start` on that found() took (each counted live)."""
        taken = []
        for key, offset, length in self.records(pack, start):
            if found(key, pack, offset, length):
                taken.append((offset, length))
                self.adopt(pack)
        return taken

    def records(self, pack: int, start: int = 0) -> Iterator[tuple[bytes, int, int]]:
        """(key, offset, payload length) of each record whose header is whole, from `start` on, hopping
        from record to record and over holes (removed records); the payloads are not read."""
        try:
            fd = os.open(self.path(pack), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            size = os.fstat(fd).st_size
            at = start
            while at + native.HEADER.size <= size:
                try:
                    at = os.lseek(fd, at, os.SEEK_DATA)
                except OSError:                               # ENXIO: only holes are left
                    break
                at -= at % native.ALIGN
                head = os.pread(fd, native.HEADER.size, at).ljust(native.HEADER.size, b"\0")
                magic, length, _, key = native.PACK_HEADER.unpack(head)
                if magic == native.PACK_MAGIC and at + native.HEADER.size + length <= size:
                    yield key, at, length
                    at += native.record_size(length)
                else:
                    at += native.ALIGN
        finally:
            os.close(fd)

    def _punch_gaps(self, pack: int, records: list[tuple[int, int]]) -> None:
        path = self.path(pack)
        try:
            at = 0
            for offset, length in sorted(records):
                if offset > at:
                    native.punch_hole(path, at, offset - at)
                at = max(at, _end_of((offset, length)))
            if os.stat(path).st_size > at:
                os.truncate(path, at)             # never appended to again
        except OSError as e:
            log.debug("cannot punch out unindexed records of %s: %s", path, e.strerror)


def _offsets(start: int, chunk: list[tuple[bytes | memoryview, bytes]]) -> list[int]:
    out = []
    for data, _ in chunk:
        out.append(start)
        start += native.record_size(len(data))
    return out


def _end_of(record: tuple[int, int]) -> int:
    offset, length = record
    return offset + native.record_size(length)


def _number(name: str) -> int | None:
    if len(name) != 16 + len(SUFFIX) or not name.endswith(SUFFIX):
        return None
    try:
        return int(name[:16], 16)
    except ValueError:
        return None
