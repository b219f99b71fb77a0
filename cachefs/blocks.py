"""Block math and block identity.

A file is cut into fixed-size blocks; block i covers bytes [i*bs, min((i+1)*bs, size)). A block's
key hashes everything that decides its bytes, so a changed object (new ETag) or another block size
can never be served stale bytes from the cache.
"""
from __future__ import annotations

import xxhash


def block_range(index: int, block_size: int, file_size: int) -> tuple[int, int]:
    """[start, end) byte range of block `index` of a file of `file_size` bytes."""
    start = index * block_size
    return start, min(start + block_size, file_size)


def blocks_for(offset: int, length: int, block_size: int, file_size: int) -> range:
    """Indexes of the blocks a read of `length` bytes at `offset` touches (clipped at EOF)."""
    end = min(offset + length, file_size)
    if length <= 0 or offset >= end:
        return range(0)
    return range(offset // block_size, (end - 1) // block_size + 1)


def block_count(file_size: int, block_size: int) -> int:
    return -(-file_size // block_size)


def block_key(bucket: str, key: str, etag: str, block_size: int, index: int) -> bytes:
    """16-byte identity of one block of one version of one object."""
    return xxhash.xxh3_128_digest(f"{bucket}\0{key}\0{etag}\0{block_size}\0{index}".encode())


def piece_key(block: bytes, piece_size: int, index: int) -> bytes:
    """16-byte identity of piece `index` (bytes [index*piece_size, ...) of the block) of the block
    whose key is `block`: a random read caches the part of a block it fetched under its own key,
    checksummed by the tiers like a block, and never mistaken for the block or another piece size."""
    return xxhash.xxh3_128_digest(b"piece\0%b\0%d\0%d" % (block, piece_size, index))
