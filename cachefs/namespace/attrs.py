"""POSIX attributes in S3 object user metadata, in s3fs-fuse's convention (docs/SEMANTICS.md).

What cachefs writes on every upload, and reads from every HEAD answer:

| x-amz-meta- | value                                                  | who agrees                |
|-------------|--------------------------------------------------------|---------------------------|
| mode        | decimal st_mode, file type bits included (33188 = 0100644) | s3fs; rclone writes octal |
| uid, gid    | decimal                                                | s3fs, rclone              |
| mtime       | seconds since the epoch, "sec.nnnnnnnnn" (s3fs 1.90)   | s3fs, rclone (float secs) |

A symbolic link is an object whose body is the target and whose mode has S_IFLNK, as s3fs stores it.

Reading is lenient, so buckets written by rclone show their modes too: a mode with a leading 0, or
too large to be a decimal st_mode (rclone's "100664"), is octal; an mtime may be RFC 3339.
"""
from __future__ import annotations

import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from cachefs.meta.schema import ObjMeta  # the record of what is parsed and encoded here (objmeta database)

MODE, UID, GID, MTIME = "mode", "uid", "gid", "mtime"
# S3's largest object (5 TiB): a file cannot grow past it (EFBIG, as for a filesystem's own limit).
S3_MAX_OBJECT_SIZE = 5 << 40
# The longest symbolic link target Linux makes (PATH_MAX less the terminating NUL).
SYMLINK_MAX = 4095
_ID_MAX = 2**32 - 2          # (uid_t)-1 means "no change" to chown; never an owner


NO_META = ObjMeta()


def _mode(text: str) -> int:
    text = text.strip()
    value = int(text, 10)
    if text.startswith("0") and len(text) > 1 or value > 0o177777:
        value = int(text, 8)          # rclone's octal "0100664" / "100664"
    if not 0 < value <= 0o177777:
        raise ValueError(text)
    return value


def _id(text: str) -> int:
    value = int(text.strip(), 10)
    if not 0 <= value <= _ID_MAX:
        raise ValueError(text)
    return value


def parse_time(text: str) -> int:
    """'1600000000.987654321' (s3fs), '1600000000' or '1.6e9' (float seconds), or RFC 3339 -> ns."""
    text = text.strip()
    try:
        return int(Decimal(text) * 1_000_000_000)
    except InvalidOperation:
        pass
    t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def format_time(ns: int) -> str:
    """ns -> 'sec.nnnnnnnnn', what s3fs 1.90 writes (and reads)."""
    sec, frac = divmod(ns, 1_000_000_000)
    return f"{sec}.{frac:09d}"


def parse(meta: dict[str, str] | None) -> ObjMeta:
    """The attributes in an object's user metadata (names lower-case, without x-amz-meta-).
    A value that cannot be read is ignored, as if absent."""
    if not meta:
        return NO_META
    fields: dict[str, Any] = {}
    for name, key, fn in (("mode", MODE, _mode), ("uid", UID, _id), ("gid", GID, _id),
                          ("mtime_ns", MTIME, parse_time)):
        if key in meta:
            try:
                fields[name] = fn(meta[key])
            except (ValueError, OverflowError, ArithmeticError):
                pass
    return ObjMeta(**fields)


def encode(mode: int, uid: int, gid: int, mtime_ns: int) -> dict[str, str]:
    """The user metadata of an object: `mode` is the full st_mode (type bits included)."""
    return {MODE: str(mode), UID: str(uid), GID: str(gid), MTIME: format_time(mtime_ns)}
