"""create, open, write, read, flush, fsync, release and mknod/link: file contents and what lands in S3."""
from __future__ import annotations

import errno
import os
import stat

import pytest

from cachefs.namespace.attrs import S3_MAX_OBJECT_SIZE
from inproc.harness import BLOCK, ROOT


async def test_written_bytes_read_back_at_once_and_reach_s3_after_the_close(fs):
    info, attrs = await fs.ops.create(ROOT, b"new.txt", 0o100644, os.O_WRONLY, fs.ctx())
    ino = attrs.st_ino
    await fs.ops.write(info.fh, 0, b"hello world")
    assert await fs.read_file("new.txt") == b"hello world"
    assert fs.s3_body("new.txt") is None                  # open for writing: not due yet
    await fs.ops.release(info.fh)
    await fs.sync()
    assert fs.s3_body("new.txt") == b"hello world"
    meta = fs.s3_meta("new.txt")
    assert meta["mode"] == str(stat.S_IFREG | 0o644)
    assert (meta["uid"], meta["gid"]) == (str(os.getuid()), str(os.getgid()))
    assert (await fs.ops.getattr(ino, fs.ctx())).st_size == 11


async def test_create_applies_the_umask_and_makes_the_caller_the_owner(fs):
    await fs.write_file("private", b"", mode=0o666, ctx=fs.ctx(umask=0o077, uid=1000, gid=1001))
    a = await fs.stat("private")
    assert stat.S_IMODE(a.st_mode) == 0o600
    assert (a.st_uid, a.st_gid) == (1000, 1001)
    await fs.sync()
    assert fs.s3_meta("private")["mode"] == str(stat.S_IFREG | 0o600)
    assert (fs.s3_meta("private")["uid"], fs.s3_meta("private")["gid"]) == ("1000", "1001")


@pytest.mark.parametrize("name, code", [(b"n" * 256, errno.ENAMETOOLONG), (b"bad\xff", errno.EINVAL)])
async def test_create_refuses_names_s3_cannot_hold(fs, name, code):
    call = fs.ops.create(ROOT, name, stat.S_IFREG | 0o644, os.O_WRONLY, fs.ctx())
    assert await fs.errno_of(call) == code


async def test_create_over_a_directory_is_eisdir_and_below_a_file_enotdir(fs):
    await fs.mkdir("d")
    await fs.write_file("f", b"x")
    assert await fs.errno_of(fs.ops.create(ROOT, b"d", 0o100644, os.O_WRONLY, fs.ctx())) == errno.EISDIR
    f = await fs.walk("f")
    assert await fs.errno_of(fs.ops.create(f, b"x", 0o100644, os.O_WRONLY, fs.ctx())) == errno.ENOTDIR


async def test_writes_at_offsets_overwrite_extend_and_leave_holes_of_zeros(fs):
    parent, name = await fs.split("f")
    info, _ = await fs.ops.create(parent, name, 0o100644, os.O_RDWR, fs.ctx())
    await fs.ops.write(info.fh, 0, b"a" * 100)
    await fs.ops.write(info.fh, 50, b"b" * 10)
    await fs.ops.write(info.fh, 200, b"c")
    expected = b"a" * 50 + b"b" * 10 + b"a" * 40 + b"\0" * 100 + b"c"
    assert (await fs.stat("f")).st_size == 201
    assert await fs.read_all(info.fh) == expected
    await fs.ops.release(info.fh)
    await fs.sync()
    assert fs.s3_body("f") == expected


async def test_a_write_past_s3s_largest_object_is_efbig(fs):
    parent, name = await fs.split("f")
    info, _ = await fs.ops.create(parent, name, 0o100644, os.O_WRONLY, fs.ctx())
    assert await fs.errno_of(fs.ops.write(info.fh, S3_MAX_OBJECT_SIZE, b"x")) == errno.EFBIG
    assert await fs.ops.write(info.fh, 0, b"fits") == 4
    await fs.ops.release(info.fh)


async def test_a_write_to_a_handle_open_for_reading_is_ebadf(fs):
    fs.put("f", b"contents")
    info = await fs.open("f", os.O_RDONLY)
    assert await fs.errno_of(fs.ops.write(info.fh, 0, b"x")) == errno.EBADF
    await fs.ops.release(info.fh)
    assert fs.s3_body("f") == b"contents"


async def test_flush_is_enosys_so_the_kernel_stops_sending_it(fs):
    info, _ = await fs.ops.create(ROOT, b"f", 0o100644, os.O_WRONLY, fs.ctx())
    assert await fs.errno_of(fs.ops.flush(info.fh)) == errno.ENOSYS
    await fs.ops.release(info.fh)


async def test_open_of_a_directory_is_eisdir(fs):
    await fs.mkdir("d")
    assert await fs.errno_of(fs.open("d")) == errno.EISDIR


async def test_reads_are_byte_exact_across_blocks(fs):
    data = os.urandom(3 * BLOCK + 1234)
    fs.put("big.bin", data)
    info = await fs.open("big.bin")
    for off, size in ((0, 10), (BLOCK - 5, 10), (2 * BLOCK, BLOCK), (3 * BLOCK + 1000, 4096), (len(data), 10)):
        assert bytes(await fs.ops.read(info.fh, off, size)) == data[off:off + size]
    await fs.ops.release(info.fh)
    assert await fs.read_file("big.bin") == data


async def test_open_with_o_trunc_empties_the_file_in_s3_too(fs):
    fs.put("f", b"old contents")
    info = await fs.open("f", os.O_WRONLY | os.O_TRUNC)
    assert (await fs.stat("f")).st_size == 0
    await fs.ops.release(info.fh)
    await fs.sync()
    assert fs.s3_body("f") == b""


async def test_the_page_cache_is_kept_only_for_the_version_it_holds(fs):
    fs.put("f", b"v1")
    first = await fs.open("f")
    await fs.ops.release(first.fh)
    again = await fs.open("f")
    await fs.ops.release(again.fh)
    assert (first.keep_cache, again.keep_cache) == (False, True)
    writer = await fs.open("f", os.O_WRONLY)
    assert writer.keep_cache is False
    await fs.ops.write(writer.fh, 0, b"v2")
    await fs.ops.release(writer.fh)
    await fs.sync()
    after = await fs.open("f")
    assert after.keep_cache is False and await fs.read_all(after.fh) == b"v2"
    await fs.ops.release(after.fh)


@pytest.mark.fs(fsync_upload=True)
async def test_fsync_with_fsync_upload_returns_once_s3_holds_the_file(fs):
    info, _ = await fs.ops.create(ROOT, b"f", 0o100644, os.O_WRONLY, fs.ctx())
    await fs.ops.write(info.fh, 0, b"durable")
    await fs.ops.fsync(info.fh, False)
    assert fs.s3_body("f") == b"durable"
    await fs.ops.release(info.fh)


@pytest.mark.fs(prefetch_small_files=0, read_ahead=0)
async def test_an_object_replaced_in_s3_while_open_is_estale_not_stale_bytes(fs):
    fs.put("f", b"a" * (2 * BLOCK))
    await fs.listdir()
    info = await fs.open("f")
    assert bytes(await fs.ops.read(info.fh, 0, 10)) == b"a" * 10
    fs.put("f", b"b" * (2 * BLOCK))                  # another client overwrote it
    assert await fs.errno_of(fs.ops.read(info.fh, BLOCK, 10)) == errno.ESTALE
    await fs.ops.release(info.fh)
    assert await fs.read_file("f") == b"b" * (2 * BLOCK)   # the next open sees the new version


@pytest.mark.fs(prefetch_small_files=0, read_ahead=0)
async def test_an_object_deleted_in_s3_while_open_is_enoent(fs):
    fs.put("f", b"a" * (2 * BLOCK))
    info = await fs.open("f")
    fs.store.delete(fs.key("f"))
    assert await fs.errno_of(fs.ops.read(info.fh, BLOCK, 10)) == errno.ENOENT
    await fs.ops.release(info.fh)


async def test_mknod_makes_an_empty_regular_file_and_refuses_others(fs):
    attrs = await fs.ops.mknod(ROOT, b"empty", stat.S_IFREG | 0o640, 0, fs.ctx())
    assert stat.S_ISREG(attrs.st_mode) and attrs.st_size == 0
    for kind in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFSOCK):
        assert await fs.errno_of(fs.ops.mknod(ROOT, b"odd", kind | 0o644, 0, fs.ctx())) == errno.EPERM
    await fs.sync()
    assert fs.s3_body("empty") == b"" and fs.s3_body("odd") is None


async def test_hard_links_are_eperm(fs):
    ino = await fs.write_file("f", b"x")
    assert await fs.errno_of(fs.ops.link(ino, ROOT, b"g", fs.ctx())) == errno.EPERM
    assert not await fs.exists("g")


async def test_an_unlinked_open_file_stays_readable_with_nlink_0(fs):
    fs.put("f", b"still here")
    info = await fs.open("f")
    ino = await fs.walk("f")
    await fs.ops.unlink(ROOT, b"f", fs.ctx())
    assert not await fs.exists("f")
    assert fs.s3_body("f") is None
    assert (await fs.ops.getattr(ino, fs.ctx())).st_nlink == 0
    assert await fs.read_all(info.fh) == b"still here"
    await fs.ops.release(info.fh)


async def test_another_mount_sees_an_uploaded_file_with_its_attributes(fs):
    await fs.write_file("shared.txt", b"across nodes", mode=0o600, ctx=fs.ctx(uid=1000, gid=1000, umask=0))
    await fs.sync()
    other = fs.other_mount(metadata_head_all=True)
    assert await other.listdir() == ["shared.txt"]
    a = await other.stat("shared.txt")
    assert (stat.S_IMODE(a.st_mode), a.st_uid, a.st_gid, a.st_size) == (0o600, 1000, 1000, 12)
    assert await other.read_file("shared.txt") == b"across nodes"
