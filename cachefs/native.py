"""Block file reads: the C extension (cachefs._native) when it is built, else plain Python.

The single import point for the rest of cachefs:
    ACTIVE                       "native" or "python": which implementation read_block/read_ranges are
    read_block(path, verify)     a whole block file's payload as a memoryview, or None if its magic,
                                 length or (with verify) xxh3-64 is wrong; OSError on I/O errors
    read_ranges([(path, off, n)]) payload bytes [off, off+n) of each (already verified) block file
                                 (each range a tuple; off counts from the payload start),
                                 concatenated into one buffer; OSError on I/O errors or a short read
    buffer(n, headroom)          a writable buffer of n bytes to receive into (an S3 body); with the C
                                 extension, in recycled memory when n is near the pool's chunk size,
                                 after `headroom` bytes of room for a block file header
    write_framed(fd, data, hdr)  header + such a buffer written to an O_DIRECT file from the buffer's
                                 own memory (C only; None: not possible, copy instead)
    write_block(path, data, direct)  create a block file (O_EXCL) of data in one write, checksum
                                 included, GIL released; (bytes written, in place); file removed
                                 on failure. The fallback writes buffered whatever `direct` says
    append_blocks(fd, off, [(data, key)], direct)  pack records (cache/packs.py) written back to back
                                 from `off` of an open pack file in one pwritev, each zero-padded to
                                 ALIGN, checksums included, GIL released; at most BATCH_MAX;
                                 (bytes written with padding, how many from their own buffer)
    read_packed(path, off, n, key, verify)  a pack record's payload, or None unless its magic,
                                 length, key and (with verify) xxh3-64 are the ones asked for
    punch_hole(path, off, n)     give that range of a file back to the filesystem (its size kept)
    set_pool(chunk, keep, fill)  recycle block-sized allocations (C only): at most `keep` free chunks,
                                 with `fill` mapped and touched now
    pool_stats()                 {chunk, keep, free, mapped, reused} of that recycling
The C version reads with one preadv per file into a buffer it owns, with the GIL
released for the syscalls and the hash, so a FUSE read spanning two blocks needs no join; a
block-sized file is read whole with O_DIRECT into a recycled chunk (docs/CACHING.md).
The Python versions (py_read_block, py_read_ranges) give identical results; tests compare them.

CACHEFS_NO_NATIVE=1 in the environment forces the fallback (to compare, or to rule the C out).
"""
from __future__ import annotations

import errno
import os
import struct

import xxhash

# Block file layout v1 (the format cache/disk.py writes; native/blockread.c hard-codes the same):
# magic, u64 payload length, u64 xxh3-64 of the payload (seed 0), u64 zero; then the payload, and
# possibly zeros up to the next multiple of ALIGN (an O_DIRECT write is not truncated: whole_size).
HEADER = struct.Struct(">8sQQQ")
MAGIC = b"CFSBLK01"
ALIGN = 4096
# A pack record (cache/packs.py): magic, u32 payload length, u64 xxh3-64 of the payload, the 16-byte
# block key; the payload; zeros up to the next ALIGN.
PACK_HEADER = struct.Struct(">4sIQ16s")
PACK_MAGIC = b"CFP1"


def whole_size(size: int, length: int) -> bool:
    """A file of `size` bytes whose header says `length` payload bytes is whole: header + payload
    exactly, or that padded with zeros to the next ALIGN (native/blockread.c has the same rule)."""
    return size in (HEADER.size + length, record_size(length))


def py_read_block(path: str, verify: bool = True) -> memoryview | None:
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < HEADER.size:
        return None
    magic, length, checksum, _ = HEADER.unpack_from(raw)
    if magic != MAGIC or not whole_size(len(raw), length):
        return None
    payload = memoryview(raw)[HEADER.size:HEADER.size + length]
    if verify and xxhash.xxh3_64_intdigest(payload) != checksum:
        return None
    return payload


def py_read_ranges(ranges: list[tuple[str, int, int]]) -> memoryview:
    if any(offset < 0 or length < 0 for _, offset, length in ranges):   # before any I/O, as in C
        raise ValueError("read_ranges: offset and length must be >= 0 and fit a file")
    view = memoryview(bytearray(sum(length for _, _, length in ranges)))
    pos = 0
    for path, offset, length in ranges:
        with open(path, "rb", buffering=0) as f:
            f.seek(HEADER.size + offset)
            got = 0
            while got < length:      # a raw read may return fewer bytes than asked
                n = f.readinto(view[pos + got:pos + length])
                if not n:
                    raise OSError(errno.EIO, "short read of a cached block", path)
                got += n
        pos += length
    return view.toreadonly()


def py_write_block(path: str, data, direct: bool = False) -> tuple[int, bool]:
    """write_block without the C extension: buffered (no aligned buffer to write from), exact size."""
    header = HEADER.pack(MAGIC, len(data), xxhash.xxh3_64_intdigest(data), 0)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    written = -1
    try:
        written = os.writev(fd, [header, data])
        if 0 < written < len(header) + len(data):      # short (a full disk?): one more try at the rest
            written += os.write(fd, (header + bytes(data))[written:])
    finally:
        os.close(fd)
        if written < len(header) + len(data):
            os.unlink(path)
    return written, False


def record_size(length: int) -> int:
    """Header and a `length`-byte payload padded to ALIGN: a pack record, or an O_DIRECT block file."""
    return -(-(HEADER.size + length) // ALIGN) * ALIGN


BATCH_MAX = 256     # records per append_blocks call


def py_append_blocks(fd: int, offset: int, items, direct: bool = False) -> tuple[int, int]:
    """append_blocks without the C extension: one pwritev of the records, buffered."""
    if len(items) > BATCH_MAX:
        raise ValueError("append_blocks: at most 256 records at once")
    if offset % ALIGN:
        raise ValueError("append_blocks: offset must be a multiple of 4096")
    parts = []
    for data, key in items:
        if len(key) != 16:
            raise ValueError("the block key must be 16 bytes")
        parts += [PACK_HEADER.pack(PACK_MAGIC, len(data), xxhash.xxh3_64_intdigest(data), key), data,
                  bytes(record_size(len(data)) - HEADER.size - len(data))]
    return os.pwritev(fd, parts, offset), 0


def py_read_packed(path: str, offset: int, length: int, key: bytes, verify: bool = True) -> memoryview | None:
    if len(key) != 16:
        raise ValueError("the block key must be 16 bytes")
    if offset < 0 or length < 0:
        raise ValueError("read_packed: offset and length must be >= 0")
    with open(path, "rb", buffering=0) as f:
        raw = os.pread(f.fileno(), HEADER.size + length, offset)
    if len(raw) != HEADER.size + length:
        return None
    magic, got_length, checksum, got_key = PACK_HEADER.unpack_from(raw)
    payload = memoryview(raw)[HEADER.size:]
    if magic != PACK_MAGIC or got_length != length or got_key != key:
        return None
    if verify and xxhash.xxh3_64_intdigest(payload) != checksum:
        return None
    return payload


def py_punch_hole(path: str, offset: int, length: int) -> None:
    import ctypes  # only without the C extension
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if libc.fallocate(fd, 3, ctypes.c_int64(offset), ctypes.c_int64(length)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def _load_native():
    if os.environ.get("CACHEFS_NO_NATIVE", "") not in ("", "0"):
        return None
    try:
        from cachefs import _native
    except ImportError:      # not built (no compiler or no xxhash.h at install time)
        return None
    return _native


_native = _load_native()
ACTIVE = "python" if _native is None else "native"
read_block = py_read_block if _native is None else _native.read_block
read_ranges = py_read_ranges if _native is None else _native.read_ranges
write_block = py_write_block if _native is None else _native.write_block
append_blocks = py_append_blocks if _native is None else _native.append_blocks
read_packed = py_read_packed if _native is None else _native.read_packed
punch_hole = py_punch_hole if _native is None else _native.punch_hole


def buffer(n: int, headroom: int = 0):
    """A writable buffer of n bytes; with the C extension, `headroom` bytes of its memory come
    before them (room for a block file's header: write_framed)."""
    return bytearray(n) if _native is None else _native.buffer(n, headroom)


def write_framed(fd: int, data, header: bytes) -> int | None:
    """Write header + data to fd (an O_DIRECT file) straight from the recycled chunk `data` was
    received into (buffer(n, headroom=len(header))): no copy into an aligned buffer. Returns the
    bytes of header + data written, or None, writing nothing, when `data` is not such a buffer as a
    whole (the caller copies instead). OSError on a write error."""
    if (_native is None or not isinstance(data, memoryview) or not isinstance(data.obj, _native.Buffer)
            or data.nbytes != len(data.obj)):
        return None
    return _native.write_framed(fd, data.obj, header)


def set_pool(chunk: int, keep: int, fill: bool = False) -> None:
    if _native is not None:
        _native.set_pool(chunk, keep)
        if fill:
            _native.fill_pool()


def pool_stats() -> dict:
    if _native is None:
        return {"chunk": 0, "keep": 0, "free": 0, "mapped": 0, "reused": 0}
    return _native.pool_stats()
