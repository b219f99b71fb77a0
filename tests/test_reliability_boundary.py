"""Bad input at the FUSE boundary (the right errno, never a crash), and a full cache (reads bypass to S3).

The daemon must answer every one of these and stay up; its log must hold no error.
"""
from __future__ import annotations

import errno
import os

import pytest
from mount_helpers import BLOCK_SIZE, MiB, errno_of, object_bytes, pid_alive, pread_exact, read_all
from reliability_helpers import read_past_page_cache

pytestmark = pytest.mark.timeout(120)

D1, D2, D3 = "d" * 250, "e" * 250, "f" * 250        # a valid key of ~760 bytes ...
DEEP = f"{D1}/{D2}/{D3}/file.bin"
OBJECTS = {
    "ok.bin": object_bytes("boundary-ok", 2 * BLOCK_SIZE + 17),
    DEEP: b"deep\n",
    # keys S3 holds that are no file name: not shown, never a crash
    "bad//double-slash": b"x", "dir/./dot": b"x", "dir/../dotdot": b"x", "dir/" + "n" * 300: b"x",
    "dir/fine.txt": b"fine\n",
}


@pytest.fixture(scope="module")
def mnt(module_mounter, make_bucket):
    return module_mounter.mount(make_bucket("boundary", OBJECTS))


def test_a_path_over_path_max_is_too_long(mnt):
    assert errno_of(os.stat, mnt / "/".join(["y" * 200] * 25)) == errno.ENAMETOOLONG   # the kernel's PATH_MAX


@pytest.mark.parametrize("length", [256, 1100])
def test_a_name_over_255_bytes_is_too_long(mnt, length):
    assert errno_of(os.stat, mnt / ("x" * length)) == errno.ENAMETOOLONG


def test_names_s3_cannot_hold_are_absent(mnt):
    assert errno_of(os.stat, os.path.join(os.fsencode(mnt.path), b"bad-\xff\xfe-utf8")) == errno.ENOENT
    assert errno_of(os.stat, mnt / D1 / D2 / D3 / ("z" * 255)) == errno.ENOENT     # key > 1024 bytes
    assert read_all(mnt / DEEP) == b"deep\n"
    assert sorted(os.listdir(mnt / "dir")) == ["fine.txt"]
    assert "bad" in os.listdir(mnt.path)
    assert os.listdir(mnt / "bad") == []          # "bad//double-slash": an empty segment, not shown


def test_huge_and_odd_offsets(mnt):
    path = mnt / "ok.bin"
    size = len(OBJECTS["ok.bin"])
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 2 ** 62) == b""
        assert errno_of(os.pread, fd, 100, 2 ** 63 - 1) == errno.EINVAL      # offset + count overflows
        assert os.pread(fd, 1 << 30, size - 5) == OBJECTS["ok.bin"][-5:]
        assert errno_of(os.pread, fd, 10, -1) == errno.EINVAL
        assert os.lseek(fd, 2 ** 62, os.SEEK_SET) == 2 ** 62 and os.read(fd, 10) == b""
        assert errno_of(os.lseek, fd, 0, os.SEEK_DATA) in (None, errno.ENXIO, errno.EINVAL)
    finally:
        os.close(fd)
    assert pread_exact(path, size - 3, 1 << 20) == OBJECTS["ok.bin"][-3:]


def test_wrong_kind_of_operation(mnt):
    assert errno_of(os.listdir, mnt / "ok.bin") == errno.ENOTDIR
    assert errno_of(os.open, mnt / "ok.bin", os.O_RDONLY | os.O_DIRECTORY) == errno.ENOTDIR
    assert errno_of(os.getxattr, mnt / "ok.bin", "user.nope") == errno.EOPNOTSUPP     # no xattrs at all
    assert errno_of(os.getxattr, mnt.path, "user.nope") == errno.EOPNOTSUPP
    assert errno_of(os.readlink, mnt / "ok.bin") == errno.EINVAL


def test_daemon_survived_all_of_it(mnt):
    assert pid_alive(mnt.pid())
    assert read_all(mnt / "ok.bin") == OBJECTS["ok.bin"]


FULL = {f"big-{i}.bin": object_bytes(f"full-{i}", MiB + i) for i in range(5)}


def test_full_cache_tier_reads_bypass_to_s3(mounter, make_bucket, small_tmpfs):
    """The only tier is a 3 MiB filesystem (quota 64 MiB): 5 MiB read twice, every byte right, the
    blocks that found no room fetched from S3 again, nothing reported to the reader."""
    name = make_bucket("full-cache", FULL)
    m = mounter.mount(name, "--cache", f"ssd:{small_tmpfs}:64MiB", "--hedging", "false")
    for key, data in FULL.items():
        assert read_all(m / key) == data
    first = m.stats()
    for key, data in FULL.items():
        assert read_past_page_cache(m / key) == data
    second = m.stats()
    st = os.statvfs(small_tmpfs)
    assert second["s3_get"] > first["s3_get"], "nothing was fetched again: was everything cached?"
    assert second["tiers"]["ssd"]["used"] <= 3 * MiB
    assert second["cache_hits"] > 0, "the blocks that fit were not served from the tier"
    assert st.f_bavail * st.f_frsize < 1 * MiB, "the tmpfs never filled up"
