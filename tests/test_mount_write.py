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


def test_full_staging_gives_enospc_and_keeps_what_was_acknowledged(mounter, make_bucket, s3):
    bucket = make_bucket("w-enospc")
    m = mounter.mount(bucket, "--staging-size", "16MiB", "--small-sync-interval", "600",
                      "--large-sync-interval", "600")
    chunk = os.urandom(1 << 20)
    acknowledged = 0
    fd = os.open(m.path / "big.bin", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as err:
            for _ in range(20):
                acknowledged += os.write(fd, chunk)
        assert err.value.errno == errno.ENOSPC
        assert 0 < acknowledged <= 16 << 20
    finally:
        os.close(fd)
    assert wait_until(lambda: obj(s3, bucket, "big.bin") == chunk * (acknowledged >> 20), 20)
    (m.path / "after.txt").write_bytes(b"room again")     # the upload freed the staging area
    assert (m.path / "after.txt").read_bytes() == b"room again"


def test_save_to_temp_then_rename_uploads_only_the_final_name(mounter, make_bucket, s3, request_log):
    bucket = make_bucket("w-atomic-save", {"ckpt": b"old version"})
    m = mounter.mount(bucket, "--small-sync-interval", "600", "--large-sync-interval", "600")
    mark = request_log.mark()
    with open(m.path / "ckpt.tmp", "wb") as f:
        f.write(b"new version")
        os.rename(m.path / "ckpt.tmp", m.path / "ckpt")     # renamed while open and not uploaded
    assert (m.path / "ckpt").read_bytes() == b"new version"
    assert wait_until(lambda: obj(s3, bucket, "ckpt") == b"new version", 10)
    assert keys(s3, bucket) == ["ckpt"]
    assert not any(r.key == "ckpt.tmp" and r.method == "PUT" for r in request_log.since(mark, bucket))


def test_fsync_upload_waits_for_s3(mounter, make_bucket, s3):
    bucket = make_bucket("w-fsync-upload")
    m = mounter.mount(bucket, "--fsync-upload", "--small-sync-interval", "600")
    with open(m.path / "state.json", "wb") as f:
        f.write(b'{"epoch": 3}')
        f.flush()
        assert obj(s3, bucket, "state.json") is None
        os.fsync(f.fileno())
        assert obj(s3, bucket, "state.json") == b'{"epoch": 3}'


def test_chmod_and_utime_are_kept(mounter, make_bucket):
    bucket = make_bucket("w-attrs", {"a.txt": b"a"})
    m = mounter.mount(bucket)
    os.chmod(m.path / "a.txt", 0o600)
    os.utime(m.path / "a.txt", ns=(1_000_000_000_000_000_000, 1_500_000_000_000_000_000))
    st = os.stat(m.path / "a.txt")
    assert st.st_mode & 0o777 == 0o600 and st.st_mtime_ns == 1_500_000_000_000_000_000
    os.mkdir(m.path / "d", 0o700)
    assert os.stat(m.path / "d").st_mode & 0o777 == 0o700
    os.chown(m.path / "a.txt", os.getuid() + 1, -1)         # root gives a file away (POSIX)
    assert os.stat(m.path / "a.txt").st_uid == os.getuid() + 1
