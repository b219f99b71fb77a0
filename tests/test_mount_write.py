"""The write path on a real mount: create, write, read-your-writes, upload schedule, namespace changes."""
from __future__ import annotations

import errno
import os

import pytest

from mount_helpers import wait_until

FAST = ("--small-sync-interval", "0.5", "--large-sync-interval", "600")


def obj(s3, bucket, key):
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def keys(s3, bucket, prefix=""):
    r = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in r.get("Contents", ()))


def test_create_write_read_and_upload_on_close(mounter, make_bucket, s3):
    bucket = make_bucket("w-basic", {"old.txt": b"old"})
    m = mounter.mount(bucket, *FAST)
    p = m.path / "new.txt"
    with open(p, "wb") as f:
        f.write(b"hello ")
        f.write(b"world")
        f.flush()
        assert p.read_bytes() == b"hello world"            # read-your-writes while open
        assert os.stat(p).st_size == 11
    assert wait_until(lambda: obj(s3, bucket, "new.txt") == b"hello world", 10), keys(s3, bucket)
    assert p.read_bytes() == b"hello world"
    assert sorted(os.listdir(m.path)) == ["new.txt", "old.txt"]


def test_overwrite_append_truncate_existing(mounter, make_bucket, s3):
    bucket = make_bucket("w-modify", {"a.txt": b"0123456789", "b.txt": b"abc"})
    m = mounter.mount(bucket, *FAST)
    with open(m.path / "a.txt", "r+b") as f:
        f.seek(2)
        f.write(b"XY")
    with open(m.path / "b.txt", "ab") as f:
        f.write(b"def")
    os.truncate(m.path / "a.txt", 6)
    assert (m.path / "a.txt").read_bytes() == b"01XY45"
    assert (m.path / "b.txt").read_bytes() == b"abcdef"
    assert wait_until(lambda: obj(s3, bucket, "a.txt") == b"01XY45" and obj(s3, bucket, "b.txt") == b"abcdef", 10)


def test_mkdir_rename_unlink_rmdir(mounter, make_bucket, s3):
    bucket = make_bucket("w-ns", {"d/x": b"x", "d/sub/y": b"y", "f": b"f"})
    m = mounter.mount(bucket, *FAST)
    os.mkdir(m.path / "new")
    assert obj(s3, bucket, "new/") == b""
    os.rename(m.path / "f", m.path / "new" / "g")
    assert obj(s3, bucket, "new/g") == b"f" and obj(s3, bucket, "f") is None
    os.rename(m.path / "d", m.path / "e")
    assert keys(s3, bucket, "e/") == ["e/sub/y", "e/x"] and keys(s3, bucket, "d/") == []
    assert (m.path / "e" / "sub" / "y").read_bytes() == b"y"
    with pytest.raises(OSError) as err:
        os.rmdir(m.path / "e")
    assert err.value.errno == errno.ENOTEMPTY
    os.unlink(m.path / "e" / "x")
    os.unlink(m.path / "e" / "sub" / "y")
    os.rmdir(m.path / "e" / "sub")
    assert keys(s3, bucket, "e/") == ["e/"]       # emptied through the mount: it stays, as a marker
    assert sorted(os.listdir(m.path)) == ["e", "new"]
    os.rmdir(m.path / "e")
    assert keys(s3, bucket, "e/") == [] and sorted(os.listdir(m.path)) == ["new"]


def test_read_only_refuses_writes(mounter, make_bucket):
    bucket = make_bucket("w-ro", {"a": b"a"})
    m = mounter.mount(bucket, "--read-only")
    for action in (lambda: open(m.path / "b", "wb"), lambda: open(m.path / "a", "ab"),
                   lambda: os.mkdir(m.path / "d"), lambda: os.unlink(m.path / "a"),
                   lambda: os.rename(m.path / "a", m.path / "c"), lambda: os.truncate(m.path / "a", 0)):
        with pytest.raises(OSError) as err:
            action()
        assert err.value.errno == errno.EROFS
