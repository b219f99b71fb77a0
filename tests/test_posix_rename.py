"""POSIX conformance, rename (docs/SEMANTICS.md "Operations"): files and directories, over existing
names, the errno of each refused case, renameat2's RENAME_NOREPLACE and RENAME_EXCHANGE, renames of
open files, and what S3 holds afterwards.

One writable mount for the module; every test works in a directory of its own.
"""
from __future__ import annotations

import ctypes
import errno
import os

import pytest
from mount_helpers import errno_of, list_all_keys, object_bytes, wait_until
from posix_helpers import keys, mount_writable, own_dir, s3_bytes

AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old, new, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))



# Objects only S3 holds (not staged, not written through the mount), per test.
SEEDED = {
    "test_rename_a_file_only_s3_holds": {"a": object_bytes("a", 300_000)},
    "test_rename_a_directory_only_s3_holds": {"src/x": b"x", "src/deep/y": b"y", "src/deep/z/": b""},
    "test_renamed_over_refused_cases_change_nothing": {"full/f": b"f"},
    "test_rename_across_directories_keeps_the_source_directory": {"from/f": b"f"},
    "test_a_file_replaced_while_open_for_reading_stays_readable": {"target": object_bytes("t", 3 << 20),
                                                                   "source": b"new"},
}


@pytest.fixture(scope="module")
def wm(module_mounter, make_bucket):
    # No prefetch or read-ahead: a file open for reading holds in the cache only what was read.
    return mount_writable(module_mounter, make_bucket, "posix-rename", SEEDED, "--small-sync-interval", "0.3",
                          "--large-sync-interval", "600", "--prefetch-small-files", "0", "--read-ahead", "0",
                          "--kernel-read-ahead", "0")


@pytest.fixture
def d(wm, request):
    return own_dir(wm, request, SEEDED)


def uploaded(s3, wm, d, expected: dict[str, bytes], timeout=15) -> bool:
    """S3 holds exactly these keys below the test's directory, with these bytes."""
    return wait_until(lambda: keys(s3, wm, d) == sorted(expected)
                      and all(s3_bytes(s3, wm, d, k) == v for k, v in expected.items()), timeout)


def test_rename_a_file_only_s3_holds(wm, d, s3):
    data = SEEDED["test_rename_a_file_only_s3_holds"]["a"]
    ino = os.stat(d / "a").st_ino
    os.rename(d / "a", d / "b")
    assert keys(s3, wm, d) == ["b"] and s3_bytes(s3, wm, d, "b") == data      # at once: copy + delete
    assert os.stat(d / "b").st_ino == ino
    assert errno_of(os.stat, d / "a") == errno.ENOENT
    assert (d / "b").read_bytes() == data


def test_rename_a_staged_file_and_over_an_existing_one(wm, d, s3):
    (d / "old").write_bytes(b"old")
    assert uploaded(s3, wm, d, {"old": b"old"})
    with open(d / "new.tmp", "wb") as f:
        f.write(b"new")
        os.rename(d / "new.tmp", d / "old")                # replaces it, while open and not uploaded
        f.write(b" and more")
    assert os.listdir(d) == ["old"]
    assert (d / "old").read_bytes() == b"new and more"
    assert uploaded(s3, wm, d, {"old": b"new and more"})


def test_rename_across_directories_keeps_the_source_directory(wm, d, s3):
    os.makedirs(d / "to")
    assert uploaded(s3, wm, d, {"from/f": b"f", "to/": b""})     # "from" exists only through its object
    os.rename(d / "from" / "f", d / "to" / "g")
    assert os.listdir(d / "from") == [] and os.listdir(d / "to") == ["g"]
    assert uploaded(s3, wm, d, {"from/": b"", "to/": b"", "to/g": b"f"})     # "from" stays, as a marker


def test_rename_a_directory_only_s3_holds(wm, d, s3):
    os.rename(d / "src", d / "dst")
    assert keys(s3, wm, d) == ["dst/deep/y", "dst/deep/z/", "dst/x"]
    assert sorted(os.listdir(d)) == ["dst"]
    assert (d / "dst" / "deep" / "y").read_bytes() == b"y" and os.listdir(d / "dst" / "deep" / "z") == []


def test_rename_a_directory_with_a_file_open_for_writing(wm, d, s3):
    os.makedirs(d / "run1")
    with open(d / "run1" / "log", "wb") as f:
        f.write(b"epoch 1\n")
        f.flush()
        os.rename(d / "run1", d / "run2")
        f.write(b"epoch 2\n")
    assert (d / "run2" / "log").read_bytes() == b"epoch 1\nepoch 2\n"
    assert uploaded(s3, wm, d, {"run2/": b"", "run2/log": b"epoch 1\nepoch 2\n"})


def test_rename_a_directory_over_an_empty_one(wm, d, s3):
    os.makedirs(d / "a")
    os.makedirs(d / "b")
    (d / "a" / "f").write_bytes(b"f")
    os.rename(d / "a", d / "b")
    assert os.listdir(d) == ["b"] and os.listdir(d / "b") == ["f"]
    assert uploaded(s3, wm, d, {"b/": b"", "b/f": b"f"})


def test_renamed_over_refused_cases_change_nothing(wm, d, s3):
    os.makedirs(d / "dir" / "sub")
    os.makedirs(d / "empty")
    (d / "file").write_bytes(b"file")
    assert errno_of(os.rename, d / "file", d / "empty") == errno.EISDIR
    assert errno_of(os.rename, d / "dir", d / "file") == errno.ENOTDIR
    assert errno_of(os.rename, d / "dir", d / "full") == errno.ENOTEMPTY      # its object only S3 holds
    assert errno_of(os.rename, d / "empty", d / "dir") == errno.ENOTEMPTY
    assert errno_of(os.rename, d / "dir", d / "dir" / "sub" / "inner") == errno.EINVAL
    assert errno_of(os.rename, d / "absent", d / "x") == errno.ENOENT
    assert errno_of(os.rename, d / "file", d / "absent" / "x") == errno.ENOENT
    assert sorted(os.listdir(d)) == ["dir", "empty", "file", "full"]
    assert (d / "file").read_bytes() == b"file" and os.listdir(d / "full") == ["f"]
    assert uploaded(s3, wm, d, {"dir/": b"", "dir/sub/": b"", "empty/": b"", "file": b"file", "full/f": b"f"})


def test_rename_to_the_same_name_changes_nothing(wm, d, s3):
    (d / "same").write_bytes(b"same")
    assert uploaded(s3, wm, d, {"same": b"same"})
    os.rename(d / "same", d / "same")
    assert (d / "same").read_bytes() == b"same"
    assert uploaded(s3, wm, d, {"same": b"same"})


def test_rename_noreplace(wm, d, s3):
    (d / "a").write_bytes(b"a")
    (d / "b").write_bytes(b"b")
    assert errno_of(renameat2, d / "a", d / "b", RENAME_NOREPLACE) == errno.EEXIST
    assert (d / "a").read_bytes() == b"a" and (d / "b").read_bytes() == b"b"
    renameat2(d / "a", d / "c", RENAME_NOREPLACE)
    assert sorted(os.listdir(d)) == ["b", "c"]
    assert uploaded(s3, wm, d, {"b": b"b", "c": b"a"})


def test_rename_exchange_is_einval(wm, d, s3):
    (d / "a").write_bytes(b"a")
    os.makedirs(d / "x")
    assert errno_of(renameat2, d / "a", d / "x", RENAME_EXCHANGE) == errno.EINVAL
    assert sorted(os.listdir(d)) == ["a", "x"] and (d / "a").read_bytes() == b"a"
    assert uploaded(s3, wm, d, {"a": b"a", "x/": b""})


def test_rename_a_directory_while_an_upload_below_it_is_in_flight(mounter, make_bucket, s3, fault_proxy):
    """The upload lands during the copy of the directory's objects: it must end up under the new
    name, and nothing may stay under the old one."""
    from cachefs.devtools.faultproxy import Fault
    bucket = make_bucket("posix-rename-race")
    m = mounter.mount(bucket, "--small-sync-interval", "600", endpoint_url=fault_proxy.url)
    os.mkdir(m.path / "a")
    slow_put = fault_proxy.add(Fault("delay", ops="put", key=r"^a/f$", seconds=1.0, count=1))
    fault_proxy.add(Fault("delay", ops="copy", seconds=2.0, count=1))
    (m.path / "a" / "f").write_bytes(b"f")                  # closed: its upload starts at once
    assert wait_until(lambda: slow_put.fired == 1, 10)
    os.rename(m.path / "a", m.path / "b")
    assert (m.path / "b" / "f").read_bytes() == b"f"
    assert wait_until(lambda: sorted(list_all_keys(s3, bucket)) == ["b/", "b/f"], 15), list_all_keys(s3, bucket)
    assert s3.get_object(Bucket=bucket, Key="b/f")["Body"].read() == b"f"


def test_a_file_replaced_while_open_for_reading_stays_readable(wm, d, s3):
    old = SEEDED["test_a_file_replaced_while_open_for_reading_stays_readable"]["target"]
    fd = os.open(d / "target", os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 0) == old[:10]
        os.rename(d / "source", d / "target")
        assert os.pread(fd, 10, len(old) - 10) == old[-10:]          # a block never read before
        assert os.fstat(fd).st_size == len(old) and os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert (d / "target").read_bytes() == b"new"
    assert keys(s3, wm, d) == ["target"] and s3_bytes(s3, wm, d, "target") == b"new"
