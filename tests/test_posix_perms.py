"""POSIX conformance, ownership, permissions, times and read-only mounts (docs/SEMANTICS.md "Mapping
objects to files", "Errors"): the kernel checks the mount's modes (default_permissions) for other
users (allow_other), chmod and utimens reach S3 (test_posix_meta.py has the rest), chown only to
the mount's owner under --single-owner, and every change on a --read-only mount is EROFS.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest
from mount_helpers import errno_of

NOBODY = 65534
T1, T2 = 1_000_000_000_123_456_789, 1_200_000_000_987_654_321



def as_nobody(fn, *args) -> int | None:
    """Run fn(*args) in a forked child as user and group nobody; its errno (None: it worked)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                       # the child: only os calls, then _exit
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = errno_of(fn, *args) or 0
            os.write(w, str(code).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        out = os.read(r, 64)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert out, "the child died before reporting"
    return int(out) or None


def write_file(path, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_file(path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def shared(module_mounter, make_bucket):
    """A writable --allow-other --single-owner mount on a mount point other users can reach."""
    public = Path(tempfile.mkdtemp(prefix="cachefs-posix-", dir="/tmp"))
    public.chmod(0o755)
    (public / "mnt").mkdir()
    bucket = make_bucket("posix-perms", {"data/ro.txt": b"readable", "data/secret.txt": b"secret",
                                         "times/remote": b"r"})
    m = module_mounter.mount(bucket, "--allow-other", "--single-owner", "--small-sync-interval", "0.3",
                             "--listing-ttl", "1", "--attr-timeout", "0", "--entry-timeout", "0",
                             "--negative-ttl", "0", mountpoint=public / "mnt")
    m.bucket = bucket
    yield m
    module_mounter.umount(m)
    shutil.rmtree(public, ignore_errors=True)


def test_other_users_get_what_the_modes_allow(shared):
    data = shared.path / "data"
    assert as_nobody(read_file, data / "ro.txt") is None                    # 0644: others read
    assert as_nobody(write_file, data / "ro.txt", b"x", os.O_WRONLY) == errno.EACCES
    assert as_nobody(os.truncate, data / "ro.txt", 0) == errno.EACCES
    assert as_nobody(write_file, data / "new", b"x") == errno.EACCES         # 0755 directory
    assert as_nobody(os.unlink, data / "ro.txt") == errno.EACCES
    assert as_nobody(os.mkdir, data / "d") == errno.EACCES
    assert as_nobody(os.rename, data / "ro.txt", data / "moved") == errno.EACCES
    assert as_nobody(os.chmod, data / "ro.txt", 0o666) == errno.EPERM        # not the owner
    assert as_nobody(os.utime, data / "ro.txt", None) == errno.EACCES        # "now" needs write access
    assert as_nobody(os.utime, data / "ro.txt", (1, 1)) == errno.EPERM       # explicit times: the owner only
    assert sorted(os.listdir(data)) == ["ro.txt", "secret.txt"]
    assert read_file(data / "ro.txt") == b"readable"


def test_chmod_changes_what_other_users_may_do(shared):
    data = shared.path / "data"
    os.chmod(data / "secret.txt", 0o600)
    assert stat.S_IMODE(os.stat(data / "secret.txt").st_mode) == 0o600
    assert as_nobody(read_file, data / "secret.txt") == errno.EACCES
    assert read_file(data / "secret.txt") == b"secret"                       # the owner still reads it
    os.mkdir(data / "drop", 0o777)
    os.chmod(data / "drop", 0o777)                                           # past the umask
    assert as_nobody(write_file, data / "drop" / "by-nobody", b"hi") is None
    st = os.stat(data / "drop" / "by-nobody")
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())              # one owner for the whole mount
    assert read_file(data / "drop" / "by-nobody") == b"hi"


def test_chown_only_to_the_mounts_owner(shared):
    p = shared.path / "data" / "ro.txt"
    os.chown(p, os.getuid(), os.getgid())                                    # a no-op, allowed
    assert errno_of(os.chown, p, os.getuid() + 1, -1) == errno.EPERM
    assert errno_of(os.chown, p, -1, os.getgid() + 1) == errno.EPERM
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_utime_of_an_object_s3_holds_is_kept_after_it_is_listed_again(shared):
    p = shared.path / "times" / "remote"
    os.utime(p, ns=(T1, T2))
    os.chmod(p, 0o640)
    assert os.stat(p).st_mtime_ns == T2
    time.sleep(1.2)                                   # past --listing-ttl 1: the next lookup lists again
    assert os.listdir(shared.path / "times") == ["remote"]
    st = os.stat(p)
    assert (st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == (T2, 0o640)


def test_mtime_follows_writes_after_a_utime(shared):
    p = shared.path / "times" / "written"
    write_file(p, b"one")
    os.utime(p, ns=(T1, T2))
    assert os.stat(p).st_mtime_ns == T2
    before = time.time_ns()
    write_file(p, b"two", os.O_WRONLY | os.O_APPEND)
    assert os.stat(p).st_mtime_ns >= before
    time.sleep(1.2)                                   # uploaded, listed again: still the write's time
    assert "written" in os.listdir(shared.path / "times")
    assert os.stat(p).st_mtime_ns >= before


@pytest.fixture(scope="module")
def ro(module_mounter, make_bucket):
    bucket = make_bucket("posix-ro", {"a.txt": b"a", "dir/b.txt": b"b", "empty/": b""})
    return module_mounter.mount(bucket, "--read-only")


def test_read_only_mount_defaults(ro):
    assert stat.S_IMODE(os.stat(ro.path / "a.txt").st_mode) == 0o444
    assert stat.S_IMODE(os.stat(ro.path / "dir").st_mode) == 0o555
    assert read_file(ro.path / "a.txt") == b"a"
    assert os.statvfs(ro.path).f_flag & os.ST_RDONLY


@pytest.mark.parametrize("action", [
    "create", "open-write", "open-trunc", "append", "mkdir", "unlink", "rmdir", "rename", "rename-dir",
    "truncate", "chmod", "chown", "utime", "setxattr", "symlink", "link", "mknod"])
def test_read_only_mount_refuses_every_change(ro, action):
    p = ro.path
    do = {
        "create": lambda: os.open(p / "new", os.O_WRONLY | os.O_CREAT, 0o644),
        "open-write": lambda: os.open(p / "a.txt", os.O_WRONLY),
        "open-trunc": lambda: os.open(p / "a.txt", os.O_RDONLY | os.O_TRUNC),
        "append": lambda: os.open(p / "a.txt", os.O_WRONLY | os.O_APPEND),
        "mkdir": lambda: os.mkdir(p / "newdir"),
        "unlink": lambda: os.unlink(p / "a.txt"),
        "rmdir": lambda: os.rmdir(p / "empty"),
        "rename": lambda: os.rename(p / "a.txt", p / "c.txt"),
        "rename-dir": lambda: os.rename(p / "dir", p / "dir2"),
        "truncate": lambda: os.truncate(p / "a.txt", 0),
        "chmod": lambda: os.chmod(p / "a.txt", 0o600),
        "chown": lambda: os.chown(p / "a.txt", os.getuid(), os.getgid()),
        "utime": lambda: os.utime(p / "a.txt", (1, 1)),
        "setxattr": lambda: os.setxattr(p / "a.txt", "user.x", b"1"),
        "symlink": lambda: os.symlink("a.txt", p / "s"),
        "link": lambda: os.link(p / "a.txt", p / "l"),
        "mknod": lambda: os.mknod(p / "n", stat.S_IFREG | 0o644),
    }[action]
    assert errno_of(do) == errno.EROFS
    assert sorted(os.listdir(p)) == ["a.txt", "dir", "empty"] and read_file(p / "a.txt") == b"a"
    assert stat.S_IMODE(os.stat(p / "a.txt").st_mode) == 0o444


def test_chmod_and_times_reach_s3(mounter, make_bucket):
    """Kept in this node's LMDB and in the object's metadata: a remount with the same cache
    directory shows them, and so does one with a new cache directory."""
    bucket = make_bucket("posix-perms-remount", {"f": b"f"})
    m = mounter.mount(bucket)
    os.chmod(m.path / "f", 0o600)
    os.utime(m.path / "f", ns=(T1, T2))
    mounter.umount(m)
    again = mounter.remount(m)
    st = os.stat(again.path / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o600, T2)
    mounter.umount(again)
    fresh = mounter.mount(bucket)
    st = os.stat(fresh.path / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o600, T2)
