"""The manifest file: a dataset's keys, sizes, ETags and mtimes, listed once, loaded by many mounts.

Layout (docs/MANIFESTS.md), integers little-endian:

    b"CFSMANIF" | u32 format version | u32 header length | header (JSON, UTF-8)
    | u64 body length | body (one zstd frame) | u64 xxh3-64 of every byte before it

The header says where the listing came from (bucket and prefix, not the endpoint: a dataset copied
between endpoints keeps its manifest), when it was made (UTC) and how many entries it has. The body,
once decompressed, is columns rather than records, each a packed array or one blob, entries sorted
by key:

    u32 key length (bytes) x N | keys (UTF-8, concatenated) | u64 size x N | i64 mtime_ns x N
    | u16 ETag length x N | ETags (ASCII, concatenated)

Columns compress far better than records (sorted keys share their prefixes, sizes sit beside sizes)
and load with a handful of C calls instead of one Python call per field: a million entries read in
about a second (docs/BENCHMARKS.md "Manifests").
"""
from __future__ import annotations

import json
import os
import struct
import sys
import time
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from typing import NamedTuple

import xxhash
import zstandard

from cachefs.errors import UserError

MAGIC = b"CFSMANIF"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<8sII")      # magic, format version, header length
U64 = struct.Struct("<Q")
# Level 9: a build happens once per dataset version and costs a few seconds more than level 3 for a
# million keys; the file shrinks ~10%. Decompression speed does not depend on the level.
ZSTD_LEVEL = 9
MAX_HEADER = 1 << 20                   # a header is a few hundred bytes; anything larger is damage


class ManifestError(UserError):
    """A manifest that cannot be used: not one, damaged, of another version, dataset or age."""


class ManifestEntry(NamedTuple):
    key: str          # relative to the dataset prefix; a key ending in '/' is a directory marker
    size: int
    etag: str
    mtime_ns: int


@dataclass
class Manifest:
    bucket: str
    prefix: str                        # '' or ending in '/', as Config.prefix
    created: float                     # Unix time (UTC) of the listing
    keys: list[str] = field(default_factory=list)
    sizes: array = field(default_factory=lambda: array("Q"))
    etags: list[str] = field(default_factory=list)
    mtimes: array = field(default_factory=lambda: array("q"))

    @classmethod
    def from_entries(cls, bucket: str, prefix: str, entries: list[ManifestEntry],
                     created: float | None = None) -> Manifest:
        ordered = sorted(entries)
        return cls(bucket, prefix, time.time() if created is None else created, [e.key for e in ordered],
                   array("Q", [e.size for e in ordered]), [e.etag for e in ordered],
                   array("q", [e.mtime_ns for e in ordered]))

    def __len__(self) -> int:
        return len(self.keys)

    def entries(self) -> list[ManifestEntry]:
        return [ManifestEntry(*row) for row in zip(self.keys, self.sizes, self.etags, self.mtimes, strict=True)]

    @property
    def source(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def created_utc(self) -> str:
        return datetime.fromtimestamp(self.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _packed(values: array) -> bytes:
    if sys.byteorder == "big":         # the file is little-endian everywhere
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _unpacked(typecode: str, raw: bytes | memoryview) -> array:
    values = array(typecode)
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def dumps(m: Manifest) -> bytes:
    keys = [k.encode() for k in m.keys]
    etags = [e.encode() for e in m.etags]
    body = b"".join((_packed(array("I", map(len, keys))), b"".join(keys), _packed(m.sizes), _packed(m.mtimes),
                     _packed(array("H", map(len, etags))), b"".join(etags)))
    header = json.dumps({"bucket": m.bucket, "prefix": m.prefix, "created": m.created_utc,
                         "created_unix": m.created, "count": len(m.keys), "compression": "zstd",
                         "body_bytes": len(body)}, sort_keys=True).encode()
    packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(body)
    out = PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header)) + header + U64.pack(len(packed)) + packed
    return out + U64.pack(xxhash.xxh3_64_intdigest(out))


def loads(data: bytes | memoryview, name: str = "manifest") -> Manifest:
    """Parse and verify a manifest; ManifestError naming `name` and the cause if it is not usable."""
    view = memoryview(data)

    def bad(why: str) -> ManifestError:
        return ManifestError(f"{name} is not a usable cachefs manifest: {why}")

    if len(view) < PREAMBLE.size or bytes(view[:len(MAGIC)]) != MAGIC:
        raise bad("no manifest header (wrong file?)")
    _, version, header_len = PREAMBLE.unpack_from(view)
    if version != FORMAT_VERSION:
        raise bad(f"format version {version}, this cachefs reads version {FORMAT_VERSION}")
    body_at = PREAMBLE.size + header_len + U64.size
    if header_len > MAX_HEADER or len(view) < body_at + U64.size:
        raise bad("truncated")
    (body_len,) = U64.unpack_from(view, body_at - U64.size)
    if len(view) != body_at + body_len + U64.size:
        raise bad(f"truncated or padded ({len(view)} bytes, the header says {body_at + body_len + U64.size})")
    (checksum,) = U64.unpack_from(view, body_at + body_len)
    if xxhash.xxh3_64_intdigest(view[:body_at + body_len]) != checksum:
        raise bad("checksum mismatch (damaged)")
    try:
        header = json.loads(bytes(view[PREAMBLE.size:PREAMBLE.size + header_len]))
        count, body_bytes = int(header["count"]), int(header["body_bytes"])
        m = Manifest(str(header["bucket"]), str(header["prefix"]), float(header["created_unix"]))
        body = zstandard.ZstdDecompressor().decompress(view[body_at:body_at + body_len],
                                                       max_output_size=body_bytes)
        _columns(m, memoryview(body), count)
    except (ValueError, KeyError, TypeError, zstandard.ZstdError) as e:
        raise bad(f"malformed ({e})") from None
    return m


def _columns(m: Manifest, body: memoryview, count: int) -> None:
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(body):
            raise ValueError("body shorter than its columns")
        pos += n
        return body[pos - n:pos]

    key_lens = _unpacked("I", take(4 * count))
    m.keys = _split(take(sum(key_lens)), key_lens)
    m.sizes = _unpacked("Q", take(8 * count))
    m.mtimes = _unpacked("q", take(8 * count))
    etag_lens = _unpacked("H", take(2 * count))
    m.etags = _split(take(sum(etag_lens)), etag_lens)
    if pos != len(body):
        raise ValueError("body longer than its columns")


def _split(blob: memoryview, lengths: array) -> list[str]:
    raw = bytes(blob)
    ends = list(accumulate(lengths))
    starts = [0, *ends[:-1]] if ends else []
    text = raw.decode()
    if len(text) == len(raw):          # ASCII (most datasets): byte offsets are character offsets
        return [text[a:b] for a, b in zip(starts, ends, strict=True)]
    return [raw[a:b].decode() for a, b in zip(starts, ends, strict=True)]


def read_file(path: str) -> Manifest:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ManifestError(f"manifest {path}: {e.strerror}") from None
    return loads(data, f"manifest {path}")


def write_file(m: Manifest, path: str) -> int:
    """Write atomically (temp file + rename); returns the file's size."""
    data = dumps(m)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UserError(f"cannot write manifest {path}: {e.strerror}") from None
    return len(data)
