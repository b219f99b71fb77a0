"""setattr: chmod, chown, utimens and truncate, shown at once and carried to the object's metadata."""
from __future__ import annotations

import errno
import os
import stat

import pyfuse3
import pytest

from cachefs.namespace.attrs import S3_MAX_OBJECT_SIZE, format_time

MTIME_NS = 1_500_000_000_123_456_789


async def _uploaded(fs, path: str, data: bytes = b"data") -> None:
    await fs.write_file(path, data)
    await fs.sync()


async def test_chmod_of_an_uploaded_file_copies_its_object_with_the_new_mode(fs):
    await _uploaded(fs, "f")
    etag = fs.store.head(fs.key("f")).etag
    attrs = await fs.setattr("f", "mode", st_mode=stat.S_IFREG | 0o600)
    assert stat.S_IMODE(attrs.st_mode) == 0o600
    assert fs.s3_meta("f")["mode"] == str(stat.S_IFREG | 0o600)
    assert fs.s3_body("f") == b"data"
    assert fs.store.head(fs.key("f")).etag != etag
    assert fs.stats.snapshot()["metadata_copies"] == 1
    assert await fs.read_file("f") == b"data"            # the new ETag is known: not ESTALE


async def test_a_chmod_that_changes_nothing_costs_no_copy(fs):
    await _uploaded(fs, "f")
    await fs.setattr("f", "mode", st_mode=stat.S_IFREG | 0o644)
    assert fs.stats.snapshot().get("metadata_copies", 0) == 0


async def test_chmod_of_a_file_not_yet_uploaded_goes_up_with_its_upload(fs):
    parent, name = await fs.split("f")
    info, _ = await fs.ops.create(parent, name, 0o100644, os.O_WRONLY, fs.ctx())
    await fs.ops.write(info.fh, 0, b"x")
    await fs.setattr("f", "mode", st_mode=stat.S_IFREG | 0o751)
    assert fs.s3_keys() == []                    # open for writing: not uploaded yet
    await fs.ops.release(info.fh)                # the last writer's close makes it due
    await fs.sync()
    assert fs.s3_meta("f")["mode"] == str(stat.S_IFREG | 0o751)
    assert fs.stats.snapshot().get("metadata_copies", 0) == 0


async def test_chown_is_shown_and_stored_in_the_objects_metadata(fs):
    await _uploaded(fs, "f")
    attrs = await fs.setattr("f", "uid", "gid", st_uid=1234, st_gid=5678)
    assert (attrs.st_uid, attrs.st_gid) == (1234, 5678)
    assert (fs.s3_meta("f")["uid"], fs.s3_meta("f")["gid"]) == ("1234", "5678")
    attrs = await fs.setattr("f", "gid", st_gid=42)             # one of the two: the other stays
    assert (attrs.st_uid, attrs.st_gid) == (1234, 42)


@pytest.mark.fs(single_owner=True, uid=1000, gid=1000)
async def test_single_owner_chown_to_another_owner_is_eperm(fs):
    await fs.write_file("f", b"")
    assert await fs.errno_of(fs.setattr("f", "uid", st_uid=1001)) == errno.EPERM
    assert await fs.errno_of(fs.setattr("f", "gid", st_gid=1001)) == errno.EPERM
    attrs = await fs.setattr("f", "uid", "gid", st_uid=1000, st_gid=1000)      # the mount's owner: fine
    assert (attrs.st_uid, attrs.st_gid) == (1000, 1000)


async def test_utimens_sets_times_that_reach_s3_and_the_next_write_replaces(fs):
    await _uploaded(fs, "f")
    attrs = await fs.setattr("f", "mtime", "atime", st_mtime_ns=MTIME_NS, st_atime_ns=MTIME_NS - 1)
    assert (attrs.st_mtime_ns, attrs.st_atime_ns) == (MTIME_NS, MTIME_NS - 1)
    assert fs.s3_meta("f")["mtime"] == format_time(MTIME_NS)
    info = await fs.open("f", os.O_WRONLY)
    await fs.ops.write(info.fh, 0, b"D")
    await fs.ops.release(info.fh)
    assert (await fs.stat("f")).st_mtime_ns > MTIME_NS       # a change's own time again


async def test_truncate_shrinks_and_grows_with_zeros(fs):
    await _uploaded(fs, "f", b"0123456789")
    assert (await fs.setattr("f", "size", st_size=4)).st_size == 4
    assert await fs.read_file("f") == b"0123"
    assert (await fs.setattr("f", "size", st_size=8)).st_size == 8
    assert await fs.read_file("f") == b"0123\0\0\0\0"
    await fs.sync()
    assert fs.s3_body("f") == b"0123\0\0\0\0"


async def test_truncate_to_zero_empties_the_object(fs):
    fs.put("f", b"contents")
    await fs.setattr("f", "size", st_size=0)
    await fs.sync()
    assert fs.s3_body("f") == b""


async def test_truncate_of_a_directory_is_eisdir_and_past_5_tib_efbig(fs):
    await fs.mkdir("d")
    await fs.write_file("f", b"")
    assert await fs.errno_of(fs.setattr("d", "size", st_size=0)) == errno.EISDIR
    assert await fs.errno_of(fs.setattr("f", "size", st_size=S3_MAX_OBJECT_SIZE + 1)) == errno.EFBIG
    assert (await fs.stat("f")).st_size == 0


async def test_chmod_and_chown_of_a_directory_go_on_its_marker(fs):
    fs.put("d/x", b"")                                  # no marker yet: the chmod makes one
    await fs.listdir("d")
    attrs = await fs.setattr("d", "mode", "uid", st_mode=stat.S_IFDIR | 0o700, st_uid=77)
    assert stat.S_IMODE(attrs.st_mode) == 0o700 and attrs.st_uid == 77
    meta = fs.s3_meta("d/")
    assert (meta["mode"], meta["uid"]) == (str(stat.S_IFDIR | 0o700), "77")
    assert "mtime" not in meta


async def test_chmod_changes_ctime_but_not_mtime(fs):
    await fs.write_file("f", b"x")
    before = await fs.stat("f")
    after = await fs.setattr("f", "mode", st_mode=stat.S_IFREG | 0o600)
    assert after.st_mtime_ns == before.st_mtime_ns
    assert after.st_ctime_ns > before.st_ctime_ns


async def test_setattr_through_an_unlinked_open_file_changes_its_staging_copy(fs):
    parent, name = await fs.split("f")
    info, attrs = await fs.ops.create(parent, name, 0o100644, os.O_RDWR, fs.ctx())
    await fs.ops.write(info.fh, 0, b"0123456789")
    await fs.ops.unlink(parent, name, fs.ctx())
    fields = fs.fields("size")
    new = pyfuse3.EntryAttributes()
    new.st_size = 3
    shown = await fs.ops.setattr(attrs.st_ino, new, fields, info.fh, fs.ctx())
    assert (shown.st_size, shown.st_nlink) == (3, 0)
    assert await fs.read_all(info.fh) == b"012"
    await fs.ops.release(info.fh)
    await fs.sync()
    assert fs.s3_keys() == []
