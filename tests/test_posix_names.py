"""POSIX conformance, names and directories (docs/SEMANTICS.md "Mapping objects to files",
"Operations", "Errors"): lookup, readdir, which names can be created and which errno the others get,
mkdir, statfs, extended attributes, and the operations S3 cannot hold (symlink, link, mknod).

One writable mount for the module; every test works in a directory of its own.
"""
from __future__ import annotations

import errno
import os
import re
import stat

import pytest
from mount_helpers import errno_of, list_all_keys, wait_until

NAMES = ["with space", "ünïcødé ✓", "per%cent+plus", "q?mark#hash", "back\\slash", "x" * 255, "-dash", ".hidden"]


@pytest.fixture(scope="module")
def wm(module_mounter, make_bucket):
    bucket = make_bucket("posix-names", {"listed/a": b"a", "listed/sub/b": b"bb", "listed/empty/": b"",
                                         "shadow": b"file hidden by the directory", "shadow/inside": b"i"})
    m = module_mounter.mount(bucket, "--small-sync-interval", "0.3")
    m.bucket = bucket
    return m


@pytest.fixture
def d(wm, request):
    path = wm.path / re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
    os.mkdir(path)
    return path



def test_names_s3_can_hold_round_trip_to_keys(wm, d, s3):
    for name in NAMES:
        (d / name).write_bytes(name.encode())
    os.mkdir(d / "a dir ✓")
    assert sorted(os.listdir(d)) == sorted(NAMES + ["a dir ✓"])
    for name in NAMES:
        assert (d / name).read_bytes() == name.encode()
    expected = sorted([f"{d.name}/{n}" for n in NAMES] + [f"{d.name}/a dir ✓/"])
    assert sorted(k for k in list_all_keys(s3, wm.bucket, d.name + "/") if k != d.name + "/") == expected


def test_names_too_long_or_not_utf8_are_refused(wm, d, s3):
    long = d / ("y" * 256)
    assert errno_of(os.open, long, os.O_WRONLY | os.O_CREAT, 0o644) == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, long) == errno.ENAMETOOLONG
    bad = os.fsencode(d) + b"/bad-\xff-name"
    assert errno_of(os.open, bad, os.O_WRONLY | os.O_CREAT, 0o644) == errno.EINVAL
    assert errno_of(os.mkdir, bad) == errno.EINVAL
    (d / "ok").write_bytes(b"ok")
    assert errno_of(os.rename, d / "ok", long) == errno.ENAMETOOLONG
    assert errno_of(os.rename, os.fsencode(d / "ok"), bad) == errno.EINVAL
    assert os.listdir(d) == ["ok"]
    assert wait_until(lambda: list_all_keys(s3, wm.bucket, d.name + "/") == [f"{d.name}/", f"{d.name}/ok"], 10)


def test_lookup_errors(wm, d):
    (d / "file").write_bytes(b"f")
    assert errno_of(os.stat, d / "absent") == errno.ENOENT
    assert errno_of(os.stat, d / "file" / "below") == errno.ENOTDIR
    assert errno_of(os.open, d / "absent", os.O_RDONLY) == errno.ENOENT
    assert errno_of(os.listdir, d / "file") == errno.ENOTDIR
    assert errno_of(os.mkdir, d / "absent" / "x") == errno.ENOENT


def test_stat_of_files_and_directories(wm):
    st = os.stat(wm.path / "listed" / "sub" / "b")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
    assert (st.st_size, st.st_nlink, st.st_blocks) == (2, 1, 1)
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    for directory in ("listed", "listed/sub", "listed/empty"):
        st = os.stat(wm.path / directory)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755 and st.st_nlink == 2, directory
    assert os.path.isdir(wm.path / "shadow")          # a directory wins over the object of the same name
    assert os.listdir(wm.path / "shadow") == ["inside"]


def test_readdir_shows_changes_at_once_with_stable_inodes(wm, d):
    (d / "one").write_bytes(b"1")
    os.mkdir(d / "two")
    with os.scandir(d) as it:
        entries = {e.name: (e.inode(), e.is_dir(follow_symlinks=False)) for e in it}
    assert entries == {"one": (os.stat(d / "one").st_ino, False), "two": (os.stat(d / "two").st_ino, True)}
    os.unlink(d / "one")
    assert os.listdir(d) == ["two"]
    assert sorted(os.listdir(wm.path / "listed")) == ["a", "empty", "sub"]
    assert os.listdir(wm.path / "listed" / "empty") == []


def test_readdir_is_stable_while_the_handle_is_open(wm, d):
    for i in range(50):
        (d / f"f{i:02d}").write_bytes(b"")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = os.listdir(fd)
        for i in range(50, 60):
            (d / f"f{i:02d}").write_bytes(b"")
        assert sorted(os.listdir(fd)) == sorted(first)     # rewinds the same handle: same entries
    finally:
        os.close(fd)
    assert len(os.listdir(d)) == 60


def test_mkdir_errors_and_marker(wm, d, s3):
    os.mkdir(d / "new", 0o750)
    assert s3.get_object(Bucket=wm.bucket, Key=f"{d.name}/new/")["ContentLength"] == 0
    assert stat.S_IMODE(os.stat(d / "new").st_mode) == 0o750
    (d / "file").write_bytes(b"")
    assert errno_of(os.mkdir, d / "new") == errno.EEXIST
    assert errno_of(os.mkdir, d / "file") == errno.EEXIST
    assert errno_of(os.mkdir, wm.path / "listed" / "sub") == errno.EEXIST     # known only from S3


def test_statfs_reports_a_large_fixed_capacity(wm):
    sv = os.statvfs(wm.path)
    assert sv.f_namemax == 255
    assert sv.f_blocks * sv.f_frsize >= 1 << 50 and sv.f_bavail == sv.f_bfree == sv.f_blocks
    assert sv.f_files >= 1 << 32
    assert os.statvfs(wm.path / "listed") == sv


def test_extended_attributes_are_not_supported(wm, d):
    """None are kept (docs/SEMANTICS.md): EOPNOTSUPP for every name, like a filesystem without
    xattrs; the kernel answers it itself after the daemon's first ENOSYS."""
    (d / "f").write_bytes(b"f")
    for p in (d / "f", d, wm.path):
        for name in ("user.other", "user.cachefs.stats", "security.selinux"):
            assert errno_of(os.getxattr, p, name) == errno.EOPNOTSUPP, (p, name)
        # The ACL names are the kernel's own: "no ACL", as on any filesystem without one
        assert errno_of(os.getxattr, p, "system.posix_acl_access") == errno.ENODATA, p
        assert errno_of(os.setxattr, p, "user.other", b"v") == errno.EOPNOTSUPP, p
        assert errno_of(os.removexattr, p, "user.other") == errno.EOPNOTSUPP, p
        assert errno_of(os.listxattr, p) == errno.EOPNOTSUPP, p


def test_link_and_special_files_are_eperm(wm, d, s3):
    """EPERM: what link(2) and mknod(2) give where the filesystem cannot hold them (symlinks are
    objects with S_IFLNK metadata: test_posix_meta.py)."""
    (d / "target").write_bytes(b"t")
    assert errno_of(os.link, d / "target", d / "hard") == errno.EPERM
    assert errno_of(os.mkfifo, d / "fifo") == errno.EPERM
    assert errno_of(os.mknod, d / "sock", stat.S_IFSOCK | 0o644) == errno.EPERM
    assert os.listdir(d) == ["target"]
    assert os.stat(d / "target").st_nlink == 1


def test_mknod_of_a_regular_file_makes_an_empty_one(wm, d, s3):
    os.mknod(d / "plain", stat.S_IFREG | 0o600)
    st = os.stat(d / "plain")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 0
    assert wait_until(lambda: f"{d.name}/plain" in list_all_keys(s3, wm.bucket, d.name + "/"), 10)
    assert errno_of(os.mknod, d / "plain", stat.S_IFREG | 0o600) == errno.EEXIST
