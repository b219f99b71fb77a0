"""POSIX attributes S3 can hold (docs/SEMANTICS.md "Attributes in S3"): symbolic links, owners, modes
and mtimes as x-amz-meta-* in s3fs's convention, what a change of them costs (a CopyObject and a new
ETag, never ESTALE), directory link counts, parent directory times, ctime, EFBIG, and the errno of
what S3 cannot hold (hard links, FIFOs, device nodes).
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
from mount_helpers import errno_of, read_all, run_cachefs, wait_until

from cachefs.namespace.attrs import parse_time

pytestmark = pytest.mark.timeout(240)

T1, T2 = 1_000_000_000_123_456_789, 1_200_000_000_987_654_321
TiB = 1 << 40


def head_meta(s3, bucket, key) -> dict[str, str]:
    return s3.head_object(Bucket=bucket, Key=key)["Metadata"]


def flush(m) -> None:
    res = run_cachefs(["flush", str(m.path)], m.env)
    assert res.returncode == 0, res.describe()


def mount(mounter, bucket, *extra):
    return mounter.mount(bucket, "--small-sync-interval", "0.3", "--attr-timeout", "0", "--entry-timeout", "0",
                         "--negative-ttl", "0", *extra)


def test_symlink_life_cycle_survives_a_new_cache_directory(mounter, make_bucket, s3):
    bucket = make_bucket("links", {"data/file.txt": b"hello"})
    m = mount(mounter, bucket)
    link = m.path / "data" / "ln"
    os.symlink("file.txt", link)
    assert os.readlink(link) == "file.txt"
    st = os.lstat(link)
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("file.txt")
    assert read_all(link) == b"hello"                                   # followed by the kernel
    assert errno_of(os.symlink, "other", link) == errno.EEXIST
    # In S3 at once, as s3fs stores a link: the body is the target, the mode has S_IFLNK.
    assert s3.get_object(Bucket=bucket, Key="data/ln")["Body"].read() == b"file.txt"
    assert int(head_meta(s3, bucket, "data/ln")["mode"]) == stat.S_IFLNK | 0o777
    # utimensat(AT_SYMLINK_NOFOLLOW): the link's own times, in S3 too; the target's stay.
    target_mtime = os.stat(m.path / "data" / "file.txt").st_mtime_ns
    os.utime(link, ns=(T1, T2), follow_symlinks=False)
    assert os.lstat(link).st_mtime_ns == T2
    assert os.stat(m.path / "data" / "file.txt").st_mtime_ns == target_mtime
    assert head_meta(s3, bucket, "data/ln")["mtime"] == "1200000000.987654321"
    os.rename(link, m.path / "data" / "ln2")
    assert os.readlink(m.path / "data" / "ln2") == "file.txt"
    assert stat.S_ISLNK(os.lstat(m.path / "data" / "ln2").st_mode)
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]) == ["data/file.txt", "data/ln2"]
    os.symlink("data/file.txt", m.path / "top")                      # in the root directory too
    mounter.umount(m)

    other = mount(mounter, bucket)                                      # a new cache directory
    assert sorted(os.listdir(other.path / "data")) == ["file.txt", "ln2"]
    st = os.lstat(other.path / "data" / "ln2")
    assert stat.S_ISLNK(st.st_mode) and st.st_mtime_ns == T2
    assert os.readlink(other.path / "data" / "ln2") == "file.txt"
    assert os.readlink(other.path / "top") == "data/file.txt"
    assert read_all(other.path / "top") == b"hello"
    os.unlink(other.path / "data" / "ln2")
    assert not os.path.lexists(other.path / "data" / "ln2")
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]) == ["data/file.txt", "top"]


def test_modes_owners_and_times_land_in_s3_and_a_change_is_a_copy(mounter, make_bucket, s3, request_log):
    bucket = make_bucket("meta", {})
    m = mount(mounter, bucket)
    f = m.path / "f.bin"
    data = os.urandom(3000)                         # above --metadata-head-size: no HEAD when listed
    fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o640)
    os.write(fd, data)
    os.close(fd)
    os.chmod(f, 0o640)                              # past the umask
    os.utime(f, ns=(T1, T2))
    flush(m)
    meta = head_meta(s3, bucket, "f.bin")           # a new upload carries them
    assert meta == {"mode": str(stat.S_IFREG | 0o640), "uid": str(os.getuid()), "gid": str(os.getgid()),
                    "mtime": "1200000000.987654321"}, meta
    # chown and chmod of an uploaded file: one CopyObject each, the file keeps working.
    etag = s3.head_object(Bucket=bucket, Key="f.bin")["ETag"]
    ctime = os.stat(f).st_ctime_ns
    time.sleep(0.01)
    mark = request_log.mark()
    os.chown(f, 1234, 5678)
    os.chmod(f, 0o600)
    puts = [r for r in request_log.since(mark, bucket) if r.method == "PUT"]
    assert len(puts) == 2, puts
    st = os.stat(f)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o600)
    assert st.st_ctime_ns > ctime and st.st_mtime_ns == T2              # ctime moves, mtime does not
    head = s3.head_object(Bucket=bucket, Key="f.bin")
    assert head["Metadata"] == {"mode": str(stat.S_IFREG | 0o600), "uid": "1234", "gid": "5678",
                                "mtime": "1200000000.987654321"}, head["Metadata"]
    assert head["ETag"] != etag or True            # S3 may keep an ETag for a copy; moto makes one anew
    assert read_all(f) == data                      # no ESTALE: the new ETag is recorded
    with open(f, "rb") as handle:                   # also through a handle opened before a change
        os.chmod(f, 0o644)
        assert handle.read() == data
    mark = request_log.mark()
    os.chown(f, 1234, 5678)                         # what it has already: no copy
    os.chmod(f, 0o644)
    assert [r for r in request_log.since(mark, bucket) if r.method == "PUT"] == []
    mounter.umount(m)

    again = mount(mounter, bucket)                  # a new cache directory: 3000 bytes are not HEADed
    st = os.stat(again.path / "f.bin")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.getuid(), 0o644)   # the mount's defaults
    assert read_all(again.path / "f.bin") == data
    mounter.umount(again)

    full = mount(mounter, bucket, "--metadata-head-all")
    st = os.stat(full.path / "f.bin")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (1234, 5678, 0o644, T2)
    assert read_all(full.path / "f.bin") == data
    mounter.umount(full)          # not the teardown's fusermount -u right after the close (its RELEASE)


def test_attributes_a_new_file_has_already_cost_no_copy(mounter, make_bucket, s3, request_log):
    """`cp -a` and `rsync -a` set owner and mode right after the close: those the file has are no
    request; a new mtime is one copy once the upload is done."""
    bucket = make_bucket("cp-a", {})
    m = mount(mounter, bucket)
    mark = request_log.mark()
    for i in range(3):
        p = m.path / f"f{i}"
        p.write_bytes(b"x" * 10)
        os.chown(p, os.getuid(), os.getgid())
        os.chmod(p, stat.S_IMODE(os.stat(p).st_mode))
    flush(m)
    puts = [r for r in request_log.since(mark, bucket) if r.method == "PUT"]
    assert len(puts) == 3, puts                      # the uploads, nothing else
    os.utime(m.path / "f0", ns=(T1, T2))
    assert head_meta(s3, bucket, "f0")["mtime"] == "1200000000.987654321"


def test_chown_by_root_and_the_single_owner_flag(mounter, make_bucket, s3):
    bucket = make_bucket("owners", {"theirs": b"x"})
    s3.copy_object(Bucket=bucket, Key="theirs", CopySource={"Bucket": bucket, "Key": "theirs"},
                   Metadata={"uid": "1234", "gid": "5678", "mode": str(stat.S_IFREG | 0o600)},
                   MetadataDirective="REPLACE")
    m = mount(mounter, bucket)
    st = os.stat(m.path / "theirs")                  # tiny: HEADed when its directory was listed
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o600)
    (m.path / "mine").write_bytes(b"y")
    os.chown(m.path / "mine", 42, -1)
    os.chown(m.path / "mine", -1, 43)                                 # chgrp
    assert (os.stat(m.path / "mine").st_uid, os.stat(m.path / "mine").st_gid) == (42, 43)
    flush(m)
    assert head_meta(s3, bucket, "mine")["uid"] == "42" and head_meta(s3, bucket, "mine")["gid"] == "43"
    mounter.umount(m)

    single = mount(mounter, bucket, "--single-owner")
    for name in ("theirs", "mine"):
        st = os.stat(single.path / name)
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), name
    assert stat.S_IMODE(os.stat(single.path / "theirs").st_mode) == 0o600     # modes still count
    assert errno_of(os.chown, single.path / "mine", 7, -1) == errno.EPERM
    assert errno_of(os.chown, single.path / "mine", -1, 7) == errno.EPERM
    os.chown(single.path / "mine", os.getuid(), os.getgid())                  # a no-op, allowed


def test_directory_link_counts_and_parent_times(mounter, make_bucket):
    bucket = make_bucket("dirs", {"x/1/f": b"", "x/2/f": b"", "x/f": b"", "x/3/": b""})
    m = mount(mounter, bucket)
    assert sorted(os.listdir(m.path / "x")) == ["1", "2", "3", "f"]
    assert os.stat(m.path / "x").st_nlink == 2 + 3                    # as its listing says
    d = m.path / "d"
    os.mkdir(d)
    assert os.stat(d).st_nlink == 2
    before = os.stat(d)
    time.sleep(0.01)
    os.mkdir(d / "a")
    os.mkdir(d / "b")
    st = os.stat(d)
    assert st.st_nlink == 4
    assert st.st_mtime_ns > before.st_mtime_ns and st.st_ctime_ns > before.st_ctime_ns
    for change in (lambda: os.rmdir(d / "b"),
                   lambda: (d / "file").write_bytes(b"z"),
                   lambda: os.rename(d / "file", d / "moved"),
                   lambda: os.unlink(d / "moved"),
                   lambda: os.symlink("t", d / "ln")):
        last = os.stat(d).st_mtime_ns
        time.sleep(0.01)
        change()
        assert os.stat(d).st_mtime_ns > last, change
    assert os.stat(d).st_nlink == 3
    before = os.stat(m.path / "x")
    time.sleep(0.01)
    os.rename(d / "a", m.path / "x" / "a")                            # both parents change
    assert os.stat(d).st_nlink == 2 and os.stat(m.path / "x").st_nlink == 2 + 4
    assert os.stat(m.path / "x").st_mtime_ns > before.st_mtime_ns


def test_ctime_on_chmod_of_a_directory_and_a_new_file(mounter, make_bucket):
    m = mount(mounter, make_bucket("ctime", {}))
    (m.path / "f").write_bytes(b"1")
    os.mkdir(m.path / "d")
    for p in (m.path / "f", m.path / "d"):
        st = os.stat(p)
        time.sleep(0.01)
        os.chmod(p, 0o700)
        after = os.stat(p)
        assert after.st_ctime_ns > st.st_ctime_ns and after.st_mtime_ns == st.st_mtime_ns, p


def test_sizes_past_the_s3_object_limit_are_efbig_and_unsupported_types_eperm(mounter, make_bucket):
    m = mount(mounter, make_bucket("limits", {}))
    f = m.path / "f"
    f.write_bytes(b"abc")
    assert errno_of(os.truncate, f, 5 * TiB + 1) == errno.EFBIG
    fd = os.open(f, os.O_WRONLY)
    try:
        assert errno_of(os.ftruncate, fd, 6 * TiB) == errno.EFBIG
        assert errno_of(os.pwrite, fd, b"x", 5 * TiB) == errno.EFBIG
    finally:
        os.close(fd)
    assert f.read_bytes() == b"abc"
    assert errno_of(os.link, f, m.path / "hard") == errno.EPERM
    assert errno_of(os.mkfifo, m.path / "fifo") == errno.EPERM
    assert errno_of(os.mknod, m.path / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 3)) == errno.EPERM
    assert errno_of(os.mknod, m.path / "sock", stat.S_IFSOCK | 0o600) == errno.EPERM
    assert sorted(os.listdir(m.path)) == ["f"]


@pytest.fixture
def public_dir():
    """A mount point other users can reach (pytest's tmp_path is root's alone); a test asks for it
    before `mounter`, so that it is removed after the unmount."""
    public = Path(tempfile.mkdtemp(prefix="cachefs-posix-meta-", dir="/tmp"))
    public.chmod(0o755)
    (public / "mnt").mkdir()
    yield public / "mnt"
    shutil.rmtree(public, ignore_errors=True)


def test_chown_by_the_owner_follows_posix(public_dir, mounter, make_bucket):   # public_dir goes last
    """Not root: the owner may give the file to a group it is in, never to another user or to a
    group it is not in (the kernel's check, default_permissions)."""
    from test_posix_perms import NOBODY, as_nobody
    m = mounter.mount(make_bucket("chown-owner", {}), "--allow-other", "--attr-timeout", "0",
                      "--entry-timeout", "0", mountpoint=public_dir)
    os.chmod(m.path, 0o777)
    f = m.path / "f"
    f.write_bytes(b"x")
    os.chown(f, NOBODY, 0)
    assert as_nobody(os.chown, f, -1, NOBODY) is None                  # a group of its own
    assert os.stat(f).st_gid == NOBODY
    assert as_nobody(os.chown, f, -1, 0) == errno.EPERM                 # not its group
    assert as_nobody(os.chown, f, 0, -1) == errno.EPERM                 # not its to give away
    assert as_nobody(os.chmod, f, 0o600) is None
    assert (os.stat(f).st_uid, os.stat(f).st_gid, stat.S_IMODE(os.stat(f).st_mode)) == (NOBODY, NOBODY, 0o600)
    assert as_nobody(os.symlink, "f", m.path / "by-nobody") is None
    assert os.lstat(m.path / "by-nobody").st_uid == NOBODY              # links belong to their creator


def test_chmod_while_a_large_file_is_written_reaches_s3(mounter, make_bucket, s3):
    """A large file written sequentially has its multipart session opened early, with the
    attributes of that moment: a chmod meanwhile is copied onto the object after its upload."""
    bucket = make_bucket("eager-meta", {})
    m = mount(mounter, bucket, "--small-file-threshold", "1MiB", "--multipart-part-size", "5MiB",
              "--large-sync-interval", "600")
    f = m.path / "ckpt"
    chunk = os.urandom(1 << 20)
    with open(f, "wb") as out:
        for i in range(12):
            out.write(chunk)
            out.flush()
            if i == 7:                      # a part is complete: the session opens
                assert wait_until(lambda: s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), 15)
                os.chmod(f, 0o600)
                os.chown(f, 1234, 5678)
    flush(m)
    st = os.stat(f)
    assert wait_until(lambda: head_meta(s3, bucket, "ckpt").get("mode") == str(stat.S_IFREG | 0o600), 15), \
        head_meta(s3, bucket, "ckpt")
    meta = head_meta(s3, bucket, "ckpt")
    assert (meta["uid"], meta["gid"]) == ("1234", "5678")
    assert parse_time(meta["mtime"]) == st.st_mtime_ns
    assert read_all(f) == chunk * 12
    assert m.stats()["metadata_copies"] == 1          # the early session's attributes were outdated


def test_directory_mode_and_owner_live_on_its_marker(mounter, make_bucket, s3, request_log):
    bucket = make_bucket("dir-meta", {})
    m = mount(mounter, bucket)
    mark = request_log.mark()
    os.mkdir(m.path / "plain")                                  # the defaults: one PUT, as before
    assert len([r for r in request_log.since(mark, bucket) if r.method == "PUT"]) == 1
    os.mkdir(m.path / "private", 0o700)
    os.mkdir(m.path / "theirs")
    os.chown(m.path / "theirs", 1234, 5678)
    (m.path / "theirs" / "f").write_bytes(b"f")
    meta = head_meta(s3, bucket, "private/")
    assert int(meta["mode"]) == stat.S_IFDIR | 0o700 and "mtime" not in meta
    assert head_meta(s3, bucket, "theirs/")["uid"] == "1234"
    mounter.umount(m)

    again = mount(mounter, bucket)                              # a new cache directory
    for name, want in (("private", (os.getuid(), 0o700)), ("theirs", (1234, 0o755)), ("plain", (os.getuid(), 0o755))):
        os.listdir(again.path / name)                           # its marker is read when it is listed
        st = os.stat(again.path / name)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == want, name


def test_a_tree_copied_with_its_attributes_costs_no_extra_request(mounter, make_bucket, request_log):
    """What `cp -a` and `tar -x` do to a directory (mkdir, chown and chmod to what it has, utimens)
    costs its one marker PUT."""
    bucket = make_bucket("cp-a-dirs", {})
    m = mount(mounter, bucket)
    mark = request_log.mark()
    d = m.path / "d"
    os.mkdir(d)
    os.chown(d, os.getuid(), os.getgid())
    os.chmod(d, 0o755)
    os.utime(d, ns=(T1, T2))
    assert os.stat(d).st_mtime_ns == T2
    puts = [r for r in request_log.since(mark, bucket) if r.method == "PUT"]
    assert len(puts) == 1, puts


def test_a_read_learns_the_metadata_without_a_request(mounter, make_bucket, s3, request_log):
    """A GET's answer carries x-amz-meta-*: a file above --metadata-head-size shows its owner,
    mode and mtime once it was read, with no HEAD."""
    bucket = make_bucket("get-meta", {})
    data = os.urandom(3000)
    s3.put_object(Bucket=bucket, Key="d/f", Body=data, Metadata={
        "mode": str(stat.S_IFREG | 0o600), "uid": "1234", "gid": "5678", "mtime": "1600000000.5"})
    m = mount(mounter, bucket)
    mark = request_log.mark()
    assert os.listdir(m.path / "d") == ["f"]
    st = os.stat(m.path / "d" / "f")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.getuid(), 0o644)      # not known yet
    assert read_all(m.path / "d" / "f") == data
    st = os.stat(m.path / "d" / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o600)
    assert st.st_mtime_ns == 1_600_000_000_500_000_000
    assert [r for r in request_log.since(mark, bucket) if r.method == "HEAD"] == []
