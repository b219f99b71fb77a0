"""The LMDB layout: every sub-database, its key and value encoding, in one place.

Layout version 2 (the `meta` database's b"version"). All integers big-endian so that LMDB's byte
order is numeric order; names are the raw UTF-8 bytes of one path segment.

| sub-database | key                              | value                                                  |
|--------------|----------------------------------|--------------------------------------------------------|
| meta         | b"version"                       | ASCII layout version, b"2"                              |
|              | b"identity"                      | UTF-8 "endpoint|bucket|prefix" the cache belongs to     |
|              | b"next_ino"                      | u64: next inode number to hand out (never reused)       |
| inodes       | u64 ino                          | INODE header (kind, size, mtime_ns, parent), u16 etag   |
|              |                                  | length, etag bytes, then the path (UTF-8, rest)         |
| dentries     | u64 parent ino + name            | u64 child ino                                           |
| listings     | u64 dir ino                      | f64 wall-clock expiry of the last full LIST             |
| negative     | u64 parent ino + name            | f64 wall-clock expiry of a "no such entry" answer       |
| blocks       | 16-byte xxh3-128 block key       | BLOCK: u32 size, f64 time stored, u32 directory id      |
|              |                                  | (xxh32 of the tier directory's absolute path)           |
| packed       | 16-byte xxh3-128 block key       | PACKED: BLOCK's fields, then u64 pack number, u64 offset |
|              |                                  | of its record (cache/packs.py); a key is in `blocks` or |
|              |                                  | here, never both                                        |
| pending      | u64 ino                          | JSON: {"path": current path, "remote": path S3 holds the |
|              |                                  | last upload at or null, "upload": [key, multipart id] or |
|              |                                  | null}; one per file with data not yet in S3 (staging/<ino>) |
| attrs        | u64 ino                          | ATTRS: u32 mode bits, i64 atime_ns, i64 mtime_ns, set by |
|              |                                  | create/chmod/utimens (absent: the mount's defaults)     |
| owners       | u64 ino                          | OWNER: i64 uid, i64 gid, i64 ctime_ns, set by create,   |
|              |                                  | chown, chmod, utimens here (-1: not set here)           |
| objmeta      | u64 ino                          | u16 etag length, etag, OBJMETA: u32 st_mode (0: none),  |
|              |                                  | i64 uid, i64 gid, i64 mtime_ns (-1: none), u8 whether a |
|              |                                  | symlink target follows, then the target (rest): what the|
|              |                                  | object's x-amz-meta-* said, valid while the inode's etag|
|              |                                  | is this one (namespace/attrs.py)                        |
| subdirs      | u64 dir ino                      | u64 how many subdirectories it has (st_nlink - 2), kept |
|              |                                  | by every change of `dentries`                           |
| manifested   | u64 dir ino                      | f64 wall-clock time until which the directory's listing |
|              |                                  | is a manifest's (docs/MANIFESTS.md): a name it lacks is |
|              |                                  | asked of S3, not answered "no such entry"; dropped by   |
|              |                                  | a real listing of the directory                          |

`pending`, `attrs`, `owners`, `objmeta`, `subdirs`, `manifested` and `packed` were added to layout 2 without a version
change: a cachefs that does not know them never opens them. A directory without a `subdirs` record
(one recorded by an older cachefs) counts none until it is listed again.

The `path` of an inode is its key relative to the mount's prefix: "a/b/file" for files, "a/b" for
directories, "" for the root. Its S3 key is prefix + path (+ "/" for a directory's listing prefix).
"""
from __future__ import annotations

import stat
import struct
from dataclasses import dataclass, replace

LAYOUT_VERSION = b"2"
DATABASES = (b"meta", b"inodes", b"dentries", b"listings", b"negative", b"blocks", b"pending", b"attrs",
             b"owners", b"objmeta", b"subdirs", b"manifested", b"packed")

ROOT_INO = 1            # FUSE's root inode number
FIRST_FREE_INO = 2

KIND_FILE = 1
KIND_DIR = 2

U64 = struct.Struct(">Q")
F64 = struct.Struct(">d")
INODE = struct.Struct(">BqqQ")   # kind, size, mtime_ns, parent
U16 = struct.Struct(">H")
BLOCK = struct.Struct(">IdI")    # size, stored_at, directory id
PACKED = struct.Struct(">IdIQQ")   # size, stored_at, directory id, pack number, offset
ATTRS = struct.Struct(">Iqq")    # mode bits, atime_ns, mtime_ns
OWNER = struct.Struct(">qqq")    # uid, gid, ctime_ns
OBJMETA = struct.Struct(">IqqqB")   # st_mode, uid, gid, mtime_ns, has target


@dataclass(frozen=True)
class ObjMeta:
    """What an object's x-amz-meta-* says; each field unknown when absent or unreadable."""
    mode: int = 0              # full st_mode with the file type; 0: unknown
    uid: int = -1
    gid: int = -1
    mtime_ns: int = -1
    target: bytes | None = None   # a symbolic link's target, once read (the object's body)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def perm(self) -> int | None:
        return stat.S_IMODE(self.mode) if self.mode else None

    def with_target(self, target: bytes) -> ObjMeta:
        return replace(self, target=target)


@dataclass(frozen=True)
class Inode:
    ino: int
    kind: int
    size: int
    mtime_ns: int
    parent: int
    etag: str
    path: str

    @property
    def is_dir(self) -> bool:
        return self.kind == KIND_DIR


def pack_u64(n: int) -> bytes:
    return U64.pack(n)


def unpack_u64(b: bytes) -> int:
    n: int = U64.unpack(b)[0]
    return n


def pack_f64(x: float) -> bytes:
    return F64.pack(x)


def unpack_f64(b: bytes) -> float:
    x: float = F64.unpack(b)[0]
    return x


def dentry_key(parent: int, name: bytes) -> bytes:
    return U64.pack(parent) + name


def pack_inode(i: Inode) -> bytes:
    etag = i.etag.encode()
    return INODE.pack(i.kind, i.size, i.mtime_ns, i.parent) + U16.pack(len(etag)) + etag + i.path.encode()


def unpack_inode(ino: int, raw: bytes) -> Inode:
    kind, size, mtime_ns, parent = INODE.unpack_from(raw)
    pos = INODE.size
    (n,) = U16.unpack_from(raw, pos)
    pos += U16.size
    etag = bytes(raw[pos:pos + n]).decode()
    path = bytes(raw[pos + n:]).decode()
    return Inode(ino, kind, size, mtime_ns, parent, etag, path)


def pack_objmeta(etag: str, mode: int, uid: int, gid: int, mtime_ns: int, target: bytes | None) -> bytes:
    raw = etag.encode()
    return (U16.pack(len(raw)) + raw + OBJMETA.pack(mode, uid, gid, mtime_ns, target is not None)
            + (target or b""))


def unpack_objmeta(raw: bytes) -> tuple[str, int, int, int, int, bytes | None]:
    """(etag, st_mode, uid, gid, mtime_ns, target or None)."""
    (n,) = U16.unpack_from(raw)
    etag = bytes(raw[U16.size:U16.size + n]).decode()
    pos = U16.size + n
    mode, uid, gid, mtime_ns, has_target = OBJMETA.unpack_from(raw, pos)
    target = bytes(raw[pos + OBJMETA.size:]) if has_target else None
    return etag, mode, uid, gid, mtime_ns, target
