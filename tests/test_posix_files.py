"""POSIX conformance, regular files (docs/SEMANTICS.md "Operations", "Writes"): read and write at any
offset, holes, large offsets, append from two descriptors, O_TRUNC, O_EXCL, truncate and ftruncate,
fsync/fdatasync, sizes and times; and what S3 holds once the file is closed.

One writable mount for the module; every test works in a directory of its own.
"""
from __future__ import annotations

import errno
import os
import time

import pytest
from mount_helpers import object_bytes, wait_until
from posix_helpers import mount_writable, own_dir

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
STAGING = 2 * GiB     # small enough that a write past it is cheap to attempt


def s3_bytes(s3, bucket, key):
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


# Objects only S3 holds, put before the mount lists anything (a directory listed or made through
# the mount does not show keys put behind its back until its listing expires): test -> {name: bytes}.
SEEDED = {
    "test_append_to_an_object_only_s3_holds": {"remote.log": b"from S3\n"},
    "test_o_trunc_empties_the_file_in_s3_too": {"written": b"old content", "untouched": b"old content"},
    "test_truncate_of_a_closed_file_reaches_s3": {n: b"0123456789" for n in ("zero", "shorter", "longer")},
    "test_overwrite_in_the_middle_of_an_object_only_s3_holds": {"mid.bin": object_bytes("mid", 600 * KiB)},
    "test_o_excl_refuses_existing_names": {"in-s3": b"x"},
    "test_utime_sets_times_of_files_and_directories": {"remote": b"r"},
}


@pytest.fixture(scope="module")
def wm(module_mounter, make_bucket):
    return mount_writable(module_mounter, make_bucket, "posix-files", SEEDED, "--small-sync-interval", "0.3",
                          "--large-sync-interval", "600", "--staging-size", str(STAGING),
                          extra_objects={"seed/existing.bin": object_bytes("existing", 300 * KiB),
                                         "seed/small.txt": b"0123456789"})


@pytest.fixture
def d(wm, request):
    """A directory of the test's own: made through the mount, or holding its SEEDED objects."""
    return own_dir(wm, request, SEEDED)


def key(d, name):
    return f"{d.name}/{name}"     # every test directory is at the top of the bucket


def in_s3(s3, wm, k, expected, timeout=15):
    """S3 holds exactly `expected` at key `k` (uploads follow the close within a second here)."""
    return wait_until(lambda: s3_bytes(s3, wm.bucket, k) == expected, timeout)


def test_write_at_offsets_leaves_zero_filled_holes(wm, d, s3):
    p = d / "holes.bin"
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        assert os.pwrite(fd, b"head", 0) == 4
        assert os.pwrite(fd, b"middle", 1 * MiB + 3) == 6
        assert os.pwrite(fd, b"tail", 3 * MiB - 4) == 4
        assert os.fstat(fd).st_size == 3 * MiB
        assert os.pread(fd, 16, 1 * MiB) == b"\0\0\0middle" + b"\0" * 7
        assert os.pread(fd, 8, 100) == b"\0" * 8
    finally:
        os.close(fd)
    expected = bytearray(3 * MiB)
    expected[0:4] = b"head"
    expected[MiB + 3:MiB + 9] = b"middle"
    expected[-4:] = b"tail"
    assert p.read_bytes() == expected
    assert in_s3(s3, wm, key(d, "holes.bin"), bytes(expected))


def test_reads_past_eof_return_what_there_is(wm, d):
    p = d / "short.txt"
    p.write_bytes(b"0123456789")
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 6) == b"6789"
        assert os.pread(fd, 100, 10) == b""
        assert os.pread(fd, 100, 1 << 40) == b""
    finally:
        os.close(fd)
    seeded = wm.path / "seed" / "existing.bin"            # a file only S3 holds, read through the cache
    fd = os.open(seeded, os.O_RDONLY)
    try:
        assert os.pread(fd, 1 * MiB, 300 * KiB - 10) == object_bytes("existing", 300 * KiB)[-10:]
        assert os.pread(fd, 10, 300 * KiB + 5) == b""
    finally:
        os.close(fd)


def test_large_offset_and_the_staging_limit(wm, d, s3):
    """A write far into a file makes a hole of that size; holes count against --staging-size
    (S3 objects are not sparse), so a write past the limit is ENOSPC and changes nothing."""
    p = d / "far.bin"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.pwrite(fd, b"X", GiB - 1) == 1
        assert os.fstat(fd).st_size == GiB
        assert os.pread(fd, 4, GiB - 2) == b"\0X"
        assert os.pread(fd, 4, GiB // 2) == b"\0" * 4
        with pytest.raises(OSError) as err:
            os.pwrite(fd, b"Y", 4 * GiB)                   # 4 GiB > --staging-size 2 GiB
        assert err.value.errno == errno.ENOSPC
        assert os.fstat(fd).st_size == GiB
        os.ftruncate(fd, 5)                                # nothing large is uploaded
        assert os.fstat(fd).st_size == 5
    finally:
        os.close(fd)
    assert in_s3(s3, wm, key(d, "far.bin"), b"\0" * 5)


def test_append_from_two_descriptors_never_overwrites(wm, d, s3):
    p = d / "log.txt"
    a = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    b = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        lines = []
        for i in range(20):
            line = f"line {i} from {'ab'[i % 2]}\n".encode()
            os.write(a if i % 2 == 0 else b, line)
            lines.append(line)
        os.lseek(a, 0, os.SEEK_SET)                        # O_APPEND ignores the position
        os.write(a, b"last\n")
        lines.append(b"last\n")
    finally:
        os.close(a)
        os.close(b)
    assert p.read_bytes() == b"".join(lines)
    assert in_s3(s3, wm, key(d, "log.txt"), b"".join(lines))


def test_append_to_an_object_only_s3_holds(wm, d, s3):
    with open(d / "remote.log", "ab") as f:
        f.write(b"appended\n")
    assert (d / "remote.log").read_bytes() == b"from S3\nappended\n"
    assert in_s3(s3, wm, key(d, "remote.log"), b"from S3\nappended\n")


def test_o_trunc_empties_the_file_in_s3_too(wm, d, s3):
    """Opening with O_TRUNC is a change even when nothing is written after it."""
    with open(d / "written", "wb") as f:
        f.write(b"new")
    fd = os.open(d / "untouched", os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert (d / "written").read_bytes() == b"new"
    assert (d / "untouched").read_bytes() == b""
    assert in_s3(s3, wm, key(d, "written"), b"new")
    assert in_s3(s3, wm, key(d, "untouched"), b"")


def test_truncate_of_a_closed_file_reaches_s3(wm, d, s3):
    os.truncate(d / "zero", 0)
    os.truncate(d / "shorter", 4)
    os.truncate(d / "longer", 12)
    assert [os.stat(d / n).st_size for n in ("zero", "shorter", "longer")] == [0, 4, 12]
    assert (d / "longer").read_bytes() == b"0123456789\0\0"
    assert in_s3(s3, wm, key(d, "zero"), b"")
    assert in_s3(s3, wm, key(d, "shorter"), b"0123")
    assert in_s3(s3, wm, key(d, "longer"), b"0123456789\0\0")


def test_ftruncate_grows_with_zeros_and_shrinks(wm, d, s3):
    p = d / "t.bin"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"abcdef")
        os.ftruncate(fd, 3)
        assert os.pread(fd, 10, 0) == b"abc"
        os.ftruncate(fd, 700 * KiB)                        # across several cache blocks
        assert os.fstat(fd).st_size == 700 * KiB
        assert os.pread(fd, 700 * KiB, 0) == b"abc" + b"\0" * (700 * KiB - 3)
        os.pwrite(fd, b"Z", 500 * KiB)
        os.ftruncate(fd, 500 * KiB + 1)
        os.ftruncate(fd, 0)                                # then back to nothing, then a little
        os.write(fd, b"end")                               # at the descriptor's offset (6): a hole before it
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    assert size == 6 + 3
    expected = b"\0" * 6 + b"end"
    assert p.read_bytes() == expected
    assert in_s3(s3, wm, key(d, "t.bin"), expected)


def test_overwrite_in_the_middle_of_an_object_only_s3_holds(wm, d, s3):
    original = SEEDED["test_overwrite_in_the_middle_of_an_object_only_s3_holds"]["mid.bin"]
    reader = os.open(d / "mid.bin", os.O_RDONLY)            # opened before the write
    try:
        assert os.pread(reader, 16, 300 * KiB) == original[300 * KiB:300 * KiB + 16]
        with open(d / "mid.bin", "r+b") as f:
            f.seek(300 * KiB)
            f.write(b"X" * 16)
        assert os.pread(reader, 16, 300 * KiB) == b"X" * 16   # read-your-writes through the old handle
    finally:
        os.close(reader)
    expected = original[:300 * KiB] + b"X" * 16 + original[300 * KiB + 16:]
    assert (d / "mid.bin").read_bytes() == expected
    assert in_s3(s3, wm, key(d, "mid.bin"), expected)


def test_o_excl_refuses_existing_names(wm, d, s3):
    (d / "made-here").write_bytes(b"y")
    os.mkdir(d / "dir")
    for name in ("in-s3", "made-here", "dir"):
        with pytest.raises(OSError) as err:
            os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        assert err.value.errno == errno.EEXIST, name
    assert (d / "in-s3").read_bytes() == b"x" and (d / "made-here").read_bytes() == b"y"
    fd = os.open(d / "fresh", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    assert in_s3(s3, wm, key(d, "fresh"), b"")             # an empty file is an empty object


def test_open_a_directory_for_writing_is_eisdir(wm, d):
    with pytest.raises(OSError) as err:
        os.open(d, os.O_WRONLY)
    assert err.value.errno == errno.EISDIR
    with pytest.raises(OSError) as err:
        os.open(d, os.O_RDWR | os.O_TRUNC)
    assert err.value.errno == errno.EISDIR


def test_fsync_and_fdatasync_make_the_staging_copy_durable(wm, d):
    p = d / "ckpt.bin"
    data = object_bytes("ckpt", 200 * KiB)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
        os.pwrite(fd, b"more", len(data))
        os.fdatasync(fd)
        ino = os.fstat(fd).st_ino
        staged = [f for f in wm.cache_dir.rglob(str(ino)) if "staging" in f.parts]
        assert len(staged) == 1, list(wm.cache_dir.rglob(str(ino)))
        assert staged[0].read_bytes() == data + b"more"
    finally:
        os.close(fd)
    fd = os.open(wm.path / "seed" / "small.txt", os.O_RDONLY)   # nothing written: fsync is a no-op
    try:
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def test_size_blocks_and_mtime_follow_writes(wm, d):
    p = d / "grow.bin"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        st0 = os.fstat(fd)
        assert (st0.st_size, st0.st_blocks) == (0, 0)
        time.sleep(0.05)
        before = time.time_ns()
        os.write(fd, b"x" * 1000)
        st1 = os.stat(p)
        assert st1.st_size == 1000 and st1.st_blocks == 2      # 512-byte units, rounded up
        assert st1.st_mtime_ns >= before > st0.st_mtime_ns
        time.sleep(0.05)
        os.ftruncate(fd, 10_000)
        st2 = os.stat(p)
        assert st2.st_size == 10_000 and st2.st_blocks == 20
        assert st2.st_mtime_ns > st1.st_mtime_ns
    finally:
        os.close(fd)
    assert os.stat(p).st_mtime_ns == st2.st_mtime_ns           # close changes nothing


def test_utime_sets_times_of_files_and_directories(wm, d, s3):
    (d / "f").write_bytes(b"f")
    for p in (d / "f", d / "remote", d):
        os.utime(p, ns=(1_000_000_000_123_456_789, 1_200_000_000_987_654_321))
        st = os.stat(p)
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000_123_456_789, 1_200_000_000_987_654_321), p
    before = time.time_ns()
    os.utime(d / "f")                                          # "now"
    assert os.stat(d / "f").st_mtime_ns >= before - 10_000_000
    assert (d / "remote").read_bytes() == b"r"                 # times only: the content is untouched
