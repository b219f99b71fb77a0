"""POSIX conformance, unlink and rmdir (docs/SEMANTICS.md "Operations"): S3 deletes at once, a
pending upload dropped, a file unlinked while open still readable and writable through its
descriptors, a name reused while the old file is open, and rmdir's errno.

One writable mount for the module; every test works in a directory of its own.
"""
from __future__ import annotations

import errno
import os

import pytest
from mount_helpers import errno_of, object_bytes, wait_until
from posix_helpers import keys, mount_writable, own_dir, s3_bytes

KiB, MiB = 1 << 10, 1 << 20

SEEDED = {
    "test_unlink_deletes_in_s3_at_once": {"a": b"a", "sub/b": b"b"},
    "test_rmdir_refuses_a_directory_with_objects_only_s3_holds": {"full/x": b"x"},
    "test_unlink_while_open_for_reading": {"big.bin": object_bytes("big", 3 * MiB)},
    "test_unlink_while_open_for_writing_an_object_s3_holds": {"obj": b"in S3"},
    "test_unlink_while_open_for_reading_after_another_handle_wrote": {"f": b"v1"},
}


@pytest.fixture(scope="module")
def wm(module_mounter, make_bucket):
    # --small-sync-interval 600: nothing is uploaded before its writer closes it (or an fsync asks).
    # No prefetch or read-ahead: a file open for reading holds in the cache only what was read.
    return mount_writable(module_mounter, make_bucket, "posix-unlink", SEEDED, "--small-sync-interval", "600",
                          "--large-sync-interval", "600", "--prefetch-small-files", "0", "--read-ahead", "0",
                          "--kernel-read-ahead", "0")


@pytest.fixture
def d(wm, request):
    return own_dir(wm, request, SEEDED)


def test_unlink_deletes_in_s3_at_once(wm, d, s3):
    os.unlink(d / "a")
    assert keys(s3, wm, d) == ["sub/b"]
    os.unlink(d / "sub" / "b")
    assert keys(s3, wm, d) == ["sub/"]                      # the emptied directory stays, as a marker
    assert errno_of(os.stat, d / "a") == errno.ENOENT and os.listdir(d / "sub") == []
    assert errno_of(os.unlink, d / "a") == errno.ENOENT
    assert errno_of(os.unlink, d / "sub") == errno.EISDIR
    os.rmdir(d / "sub")
    assert keys(s3, wm, d) == [] and os.listdir(d) == []


def test_unlink_drops_a_pending_upload(wm, d, s3):
    with open(d / "never", "wb") as f:
        f.write(b"x" * 1000)
        f.flush()
        os.unlink(d / "never")
    (d / "marker").write_bytes(b"m")                       # uploaded on close, after the other one would be
    assert wait_until(lambda: keys(s3, wm, d) == ["marker"], 10)
    assert keys(s3, wm, d) == ["marker"]


def test_unlink_while_open_for_writing_keeps_the_descriptor_working(wm, d, s3):
    fd = os.open(d / "tmp", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"before unlink;")
        os.unlink(d / "tmp")
        assert errno_of(os.stat, d / "tmp") == errno.ENOENT and os.listdir(d) == []
        os.write(fd, b" after unlink")
        assert os.pread(fd, 100, 0) == b"before unlink; after unlink"
        assert os.fstat(fd).st_size == 27 and os.fstat(fd).st_nlink == 0
        os.ftruncate(fd, 6)
        assert os.pread(fd, 100, 0) == b"before"
        os.fsync(fd)
    finally:
        os.close(fd)
    (d / "after").write_bytes(b"after")
    assert wait_until(lambda: keys(s3, wm, d) == ["after"], 10)
    assert keys(s3, wm, d) == ["after"]
    staged = [p for p in wm.cache_dir.rglob("*") if "staging" in p.parts and p.is_file()]
    assert all(p.read_bytes() != b"before" for p in staged), "the unlinked file's staging copy was kept"


def test_unlink_while_open_for_writing_an_object_s3_holds(wm, d, s3):
    fd = os.open(d / "obj", os.O_RDWR | os.O_APPEND)
    try:
        os.unlink(d / "obj")
        assert s3_bytes(s3, wm, d, "obj") is None
        os.write(fd, b", appended")
        assert os.pread(fd, 100, 0) == b"in S3, appended"
    finally:
        os.close(fd)
    (d / "after").write_bytes(b"after")
    assert wait_until(lambda: keys(s3, wm, d) == ["after"], 10)


def test_name_reused_while_the_unlinked_file_is_open(wm, d, s3):
    old = os.open(d / "name", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(old, b"old file")
        os.unlink(d / "name")
        with open(d / "name", "wb") as f:
            f.write(b"new file")
        os.write(old, b", still writable")
        assert os.pread(old, 100, 0) == b"old file, still writable"
        assert (d / "name").read_bytes() == b"new file"
        assert os.fstat(old).st_ino != os.stat(d / "name").st_ino
    finally:
        os.close(old)
    assert wait_until(lambda: s3_bytes(s3, wm, d, "name") == b"new file", 10)
    assert (d / "name").read_bytes() == b"new file"


def test_unlink_while_open_for_reading(wm, d, s3):
    """POSIX: the open file stays readable after its name is gone, also the parts never read."""
    data = SEEDED["test_unlink_while_open_for_reading"]["big.bin"]
    fd = os.open(d / "big.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 0) == data[:10]
        os.unlink(d / "big.bin")
        assert s3_bytes(s3, wm, d, "big.bin") is None                # deleted in S3 at once
        assert os.pread(fd, 10, 3 * MiB - 10) == data[-10:]          # a block never read before
        assert os.fstat(fd).st_size == 3 * MiB and os.fstat(fd).st_nlink == 0
        assert errno_of(os.stat, d / "big.bin") == errno.ENOENT
    finally:
        os.close(fd)


def test_unlink_while_open_for_reading_after_another_handle_wrote(wm, d):
    reader = os.open(d / "f", os.O_RDONLY)              # an object only S3 holds: nothing staged
    try:
        with open(d / "f", "r+b") as w:                 # the same file, staged by a writer
            w.write(b"v2")
            os.unlink(d / "f")
        assert os.pread(reader, 10, 0) == b"v2"          # one file: the reader sees the write
    finally:
        os.close(reader)


def test_rmdir_errors(wm, d, s3):
    os.makedirs(d / "full")
    (d / "full" / "f").write_bytes(b"f")
    (d / "file").write_bytes(b"")
    assert errno_of(os.rmdir, d / "full") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, d / "file") == errno.ENOTDIR
    assert errno_of(os.rmdir, d / "absent") == errno.ENOENT
    assert errno_of(os.rmdir, wm.path) in (errno.EBUSY, errno.EPERM, errno.EACCES)   # the mount point
    os.unlink(d / "full" / "f")
    os.rmdir(d / "full")
    assert sorted(os.listdir(d)) == ["file"]
    assert wait_until(lambda: keys(s3, wm, d) == ["file"], 10)


def test_rmdir_refuses_a_directory_with_objects_only_s3_holds(wm, d, s3):
    assert errno_of(os.rmdir, d / "full") == errno.ENOTEMPTY
    assert keys(s3, wm, d) == ["full/x"]
