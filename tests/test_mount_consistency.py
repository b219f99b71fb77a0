"""Changes made in S3 behind a mount become visible once the (small) TTLs expire, never stale bytes after."""
from __future__ import annotations

import errno
import os
import time

import pytest
from mount_helpers import (
    BLOCK_SIZE,
    assert_older_handle_stale,
    first_difference,
    inode_map,
    object_bytes,
    pread_exact,
    read_all,
    relisted_behind_the_kernel,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

BS = BLOCK_SIZE
SHORT_TTLS = ("--listing-ttl", "1", "--attr-timeout", "1", "--entry-timeout", "1", "--negative-ttl", "1")
VISIBLE_WITHIN_S = 6.0  # TTL of 1 s plus generous slack for a busy 2-core machine
NEW_LAST_MODIFIED_S = 1.1  # S3 LastModified has 1 s resolution: make the change visible in st_mtime too


@pytest.fixture
def short_ttl_mount(mounter, make_bucket):
    def make(objects: dict[str, bytes]):
        name = make_bucket("consistency", objects)
        return name, mounter.mount(name, *SHORT_TTLS)
    return make


@pytest.mark.parametrize("new_size", [3 * BS + 7, 2 * BS + 100], ids=["size-changes", "same-size"])
def test_changed_object_is_read_with_its_new_bytes(short_ttl_mount, s3, new_size):
    old, new = object_bytes("old", 2 * BS + 100), object_bytes("new", new_size)
    name, m = short_ttl_mount({"d/obj.bin": old})
    path = m / "d/obj.bin"
    assert read_all(path) == old
    time.sleep(NEW_LAST_MODIFIED_S)
    s3.put_object(Bucket=name, Key="d/obj.bin", Body=new)
    last_modified = s3.head_object(Bucket=name, Key="d/obj.bin")["LastModified"].timestamp()
    assert_new_bytes_soon(path, old, new, last_modified)


def test_changed_object_known_only_by_stat_is_read_new_after_the_ttl(short_ttl_mount, s3):
    """Metadata cached (stat, no read) before the change; the first read comes after the TTLs."""
    old, new = object_bytes("old", 2 * BS + 100), object_bytes("new", 2 * BS + 100)
    name, m = short_ttl_mount({"d/obj.bin": old})
    assert os.stat(m / "d/obj.bin").st_size == len(old)
    time.sleep(NEW_LAST_MODIFIED_S)
    s3.put_object(Bucket=name, Key="d/obj.bin", Body=new)
    time.sleep(1.5)  # past every TTL (1 s)
    got = read_all(m / "d/obj.bin")
    assert got == new, first_difference(got, new)


def assert_new_bytes_soon(path, old: bytes, new: bytes, last_modified: float) -> None:
    """Reads see the old or the new bytes, never a mixture or an error, and the new ones within the TTL."""
    seen: list[str] = []
    deadline = time.monotonic() + VISIBLE_WITHIN_S
    while time.monotonic() < deadline:
        got = read_all(path)
        assert got in (old, new), f"neither old nor new bytes: vs old {first_difference(got, old)}, " \
                                  f"vs new {first_difference(got, new)}"
        seen.append("new" if got == new else "old")
        if got == new:
            break
        time.sleep(0.2)
    assert seen[-1] == "new", f"still the old bytes {VISIBLE_WITHIN_S} s after the change (TTLs are 1 s)"
    for _ in range(3):  # never back to stale bytes, through new opens or a positioned read
        assert read_all(path) == new
        assert pread_exact(path, BS, BS) == new[BS:2 * BS]
    st = os.stat(path)
    assert st.st_size == len(new)
    assert int(st.st_mtime) == int(last_modified)


def test_new_object_appears_after_the_listing_ttl(short_ttl_mount, s3):
    name, m = short_ttl_mount({"d/a": b"a"})
    assert os.listdir(m / "d") == ["a"]
    s3.put_object(Bucket=name, Key="d/b", Body=b"bee")
    s3.put_object(Bucket=name, Key="newdir/c", Body=b"sea")
    assert wait_until(lambda: sorted(os.listdir(m / "d")) == ["a", "b"], VISIBLE_WITHIN_S), os.listdir(m / "d")
    assert wait_until(lambda: "newdir" in os.listdir(m.path), VISIBLE_WITHIN_S)
    assert (m / "d/b").read_bytes() == b"bee"
    assert (m / "newdir/c").read_bytes() == b"sea"


def test_deleted_object_disappears_after_the_listing_ttl(short_ttl_mount, s3):
    name, m = short_ttl_mount({"d/a": b"a", "d/gone": b"soon gone"})
    assert sorted(os.listdir(m / "d")) == ["a", "gone"]
    s3.delete_object(Bucket=name, Key="d/gone")
    assert wait_until(lambda: os.listdir(m / "d") == ["a"], VISIBLE_WITHIN_S), os.listdir(m / "d")
    assert wait_until(lambda: not os.path.exists(m / "d/gone"), VISIBLE_WITHIN_S)


def test_negative_lookup_expires(short_ttl_mount, s3):
    name, m = short_ttl_mount({"present": b"p"})
    with pytest.raises(FileNotFoundError):
        os.stat(m / "later")
    s3.put_object(Bucket=name, Key="later", Body=b"arrived")
    assert wait_until(lambda: os.path.exists(m / "later"), VISIBLE_WITHIN_S)
    assert (m / "later").read_bytes() == b"arrived"


def test_read_of_an_object_deleted_behind_an_open_file_fails_cleanly(short_ttl_mount, s3):
    """Not a hang and not garbage: either the bytes (still cached) or an errno such as ENOENT/EIO/ESTALE."""
    name, m = short_ttl_mount({"f": object_bytes("f", 4 * BS)})
    fd = os.open(m / "f", os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 0) == object_bytes("f", 4 * BS)[:10]
        s3.delete_object(Bucket=name, Key="f")
        try:
            got = os.pread(fd, BS, 3 * BS)
            assert got == object_bytes("f", 4 * BS)[3 * BS:]
        except OSError as e:
            assert e.errno in (errno.ENOENT, errno.EIO, errno.ESTALE), repr(e)
    finally:
        os.close(fd)


def test_change_within_the_same_second_is_still_seen(mounter, bucket, s3):
    """S3's LastModified has 1 s resolution: an overwrite in the same second keeps size and mtime, only the
    ETag differs. After the TTLs, the new bytes must be read anyway (the page cache must not keep old ones)."""
    m = mounter.mount(bucket, *SHORT_TTLS)
    for attempt in range(5):  # retry until both puts land in the same second
        if attempt:
            time.sleep(1.2)   # the last attempt's listing (1 s TTL) still says this attempt's key does not exist
        time.sleep(1.05 - time.time() % 1)   # start just after a second boundary: both puts fit in one
        key = f"same-second-{attempt}"
        old, new = object_bytes(f"{key}-old", 2 * BS), object_bytes(f"{key}-new", 2 * BS)
        s3.put_object(Bucket=bucket, Key=key, Body=old)
        old_mtime = s3.head_object(Bucket=bucket, Key=key)["LastModified"]
        assert read_all(m / key) == old
        s3.put_object(Bucket=bucket, Key=key, Body=new)
        if s3.head_object(Bucket=bucket, Key=key)["LastModified"] == old_mtime:
            break
    else:
        pytest.skip("could not land two puts in the same second")
    assert wait_until(lambda: read_all(m / key) == new, VISIBLE_WITHIN_S), "old bytes still served"
    assert pread_exact(m / key, BS - 3, 6) == new[BS - 3:BS + 3]


def test_inode_numbers_survive_relisting_and_object_changes(short_ttl_mount, s3):
    """Inode numbers belong to paths: a refreshed listing or a new version of an object keeps them."""
    name, m = short_ttl_mount({"d/a": b"a", "d/b": b"b", "c": b"c"})
    before = inode_map(m.path)
    s3.put_object(Bucket=name, Key="d/a", Body=b"a, version 2")
    s3.put_object(Bucket=name, Key="d/new", Body=b"new")
    assert wait_until(lambda: "new" in os.listdir(m / "d"), VISIBLE_WITHIN_S)
    assert wait_until(lambda: (m / "d/a").read_bytes() == b"a, version 2", VISIBLE_WITHIN_S)
    after = inode_map(m.path)
    assert {k: after[k] for k in before} == before
    assert after["d/new"] not in before.values()


@pytest.mark.parametrize("fast", ["true", "false"], ids=["fast-path", "python"])
def test_a_file_grown_in_s3_is_read_whole_though_the_kernel_held_its_old_size(mounter, make_bucket, s3, fast):
    """The kernel cuts reads at the size it holds (here for an hour: --attr-timeout 3600), while a
    listing after --listing-ttl shows the object's new size to cachefs. The next open must tell the
    kernel (its attributes invalidated), else the new version is read cut at the old size: bytes of
    no version at all (bench/rostress.py found it; docs/SEMANTICS.md)."""
    old, new = object_bytes("small", 5000), object_bytes("grown", 90_000)
    name = make_bucket("resized", {"d/obj.bin": old, "d/other.bin": b"x"})
    m = mounter.mount(name, "--read-only", "--fast-path", fast, "--listing-ttl", "1", "--attr-timeout", "3600",
                      "--entry-timeout", "3600", "--metrics-addr", "none")
    path = m / "d/obj.bin"
    assert read_all(path) == old                       # the kernel holds size 5000
    s3.put_object(Bucket=name, Key="d/obj.bin", Body=new)
    relisted_behind_the_kernel(m)
    got = read_all(path)
    assert got in (old, new) and got == new, first_difference(got, new)
    assert os.stat(path).st_size == len(new)
    assert m.stats()["kernel_sizes_invalidated"] >= 1


def test_a_handle_open_on_an_old_size_reads_estale_once_the_new_one_is_opened(mounter, make_bucket, s3):
    """Two handles on two sizes of one file cannot both read whole through the kernel's one size: once
    the newer is open and its size told, the older's reads get ESTALE (as a read of a changed object
    does), not its own bytes cut at the newer size."""
    old, new = object_bytes("old-size", 40_000), object_bytes("new-size", 7000)
    name = make_bucket("two-sizes", {"d/obj.bin": old})
    m = mounter.mount(name, "--read-only", "--listing-ttl", "1", "--attr-timeout", "3600", "--entry-timeout",
                      "3600", "--metrics-addr", "none", "--prefetch-small-files", "0")
    path = m / "d/obj.bin"
    first = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(first, 100, 0) == old[:100]
        s3.put_object(Bucket=name, Key="d/obj.bin", Body=new)
        relisted_behind_the_kernel(m)
        assert_older_handle_stale(path, first, old, new)
    finally:
        os.close(first)
