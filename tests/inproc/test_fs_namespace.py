"""mkdir, rmdir, unlink and rename: their errnos and what S3 holds after them."""
from __future__ import annotations

import errno
import os
import stat

import pytest

from inproc.harness import ROOT

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2     # linux/fs.h


async def test_mkdir_puts_a_marker_with_its_attributes_at_once(fs):
    attrs = await fs.mkdir("d", 0o775, ctx=fs.ctx(umask=0o002, uid=1000, gid=1000))
    assert stat.S_ISDIR(attrs.st_mode) and stat.S_IMODE(attrs.st_mode) == 0o775
    assert fs.s3_body("d/") == b""
    meta = fs.s3_meta("d/")
    assert (meta["mode"], meta["uid"], meta["gid"]) == (str(stat.S_IFDIR | 0o775), "1000", "1000")
    assert await fs.listdir("d") == []


async def test_mkdir_of_an_existing_name_is_eexist(fs):
    await fs.mkdir("d")
    await fs.write_file("f", b"")
    for name in (b"d", b"f"):
        assert await fs.errno_of(fs.ops.mkdir(ROOT, name, 0o40755, fs.ctx())) == errno.EEXIST


async def test_mkdir_below_a_file_is_enotdir_and_a_long_name_enametoolong(fs):
    f = await fs.write_file("f", b"")
    assert await fs.errno_of(fs.ops.mkdir(f, b"d", 0o40755, fs.ctx())) == errno.ENOTDIR
    assert await fs.errno_of(fs.ops.mkdir(ROOT, b"d" * 256, 0o40755, fs.ctx())) == errno.ENAMETOOLONG


async def test_rmdir_errnos(fs):
    await fs.mkdir("full")
    await fs.write_file("full/f", b"x")
    await fs.write_file("file", b"x")
    assert await fs.errno_of(fs.ops.rmdir(ROOT, b"full", fs.ctx())) == errno.ENOTEMPTY
    assert await fs.errno_of(fs.ops.rmdir(ROOT, b"file", fs.ctx())) == errno.ENOTDIR
    assert await fs.errno_of(fs.ops.rmdir(ROOT, b"missing", fs.ctx())) == errno.ENOENT
    assert await fs.exists("full") and await fs.exists("file")


async def test_rmdir_of_an_empty_directory_deletes_its_marker(fs):
    await fs.mkdir("d")
    await fs.ops.rmdir(ROOT, b"d", fs.ctx())
    assert not await fs.exists("d")
    assert fs.s3_keys() == []


async def test_unlink_errnos(fs):
    await fs.mkdir("d")
    assert await fs.errno_of(fs.ops.unlink(ROOT, b"d", fs.ctx())) == errno.EISDIR
    assert await fs.errno_of(fs.ops.unlink(ROOT, b"missing", fs.ctx())) == errno.ENOENT


async def test_unlink_deletes_the_object_and_an_emptied_directory_keeps_a_marker(fs):
    fs.put("d/only.txt", b"x")                       # d exists only as the prefix of this key
    assert await fs.listdir("d") == ["only.txt"]
    d = await fs.walk("d")
    await fs.ops.unlink(d, b"only.txt", fs.ctx())
    assert fs.s3_keys() == [fs.key("d/")]
    assert await fs.listdir("d") == []


async def test_unlink_of_a_file_not_yet_uploaded_never_reaches_s3(fs):
    await fs.write_file("tmp.txt", b"scratch")
    await fs.ops.unlink(ROOT, b"tmp.txt", fs.ctx())
    await fs.sync()
    assert fs.s3_keys() == []


async def test_rename_of_an_uploaded_file_moves_its_object(fs):
    fs.put("old.txt", b"contents")
    await fs.rename("old.txt", "new.txt")
    assert fs.s3_keys() == [fs.key("new.txt")]
    assert fs.s3_body("new.txt") == b"contents"
    assert not await fs.exists("old.txt")
    assert await fs.read_file("new.txt") == b"contents"


async def test_rename_of_a_file_not_yet_uploaded_uploads_it_once_under_the_new_name(fs):
    await fs.write_file("draft", b"v1")
    await fs.mkdir("done")
    await fs.rename("draft", "done/final")
    await fs.sync()
    assert fs.s3_keys() == [fs.key("done/"), fs.key("done/final")]
    assert fs.s3_body("done/final") == b"v1"


async def test_rename_over_an_existing_file_replaces_it(fs):
    fs.put("a", b"new")
    fs.put("b", b"old")
    await fs.rename("a", "b")
    assert await fs.listdir() == ["b"]
    assert await fs.read_file("b") == b"new"
    assert fs.s3_keys() == [fs.key("b")] and fs.s3_body("b") == b"new"


async def test_rename_of_a_directory_moves_every_object_below_it(fs):
    for name in ("src/a", "src/sub/b", "src/sub/c"):
        fs.put(name, name.encode())
    await fs.rename("src", "dst")
    assert fs.s3_keys() == [fs.key(k) for k in ("dst/a", "dst/sub/b", "dst/sub/c")]
    assert await fs.listdir("dst/sub") == ["b", "c"]
    assert await fs.read_file("dst/sub/c") == b"src/sub/c"
    assert not await fs.exists("src")


async def test_rename_of_a_directory_into_itself_is_einval(fs):
    await fs.mkdir("d")
    await fs.mkdir("d/e")
    with pytest.raises(AssertionError, match="expected an error"):
        await fs.errno_of(fs.rename("d/e", "d/e2"))         # a sibling is fine
    assert await fs.errno_of(fs.rename("d", "d/e2/inside")) == errno.EINVAL


async def test_rename_flags_noreplace_is_eexist_and_exchange_einval(fs):
    fs.put("a", b"1")
    fs.put("b", b"2")
    assert await fs.errno_of(fs.rename("a", "b", RENAME_NOREPLACE)) == errno.EEXIST
    assert await fs.errno_of(fs.rename("a", "b", RENAME_EXCHANGE)) == errno.EINVAL
    await fs.rename("a", "c", RENAME_NOREPLACE)
    assert await fs.listdir() == ["b", "c"]


async def test_rename_between_a_file_and_a_directory_and_onto_a_full_one(fs):
    fs.put("file", b"x")
    fs.put("full/x", b"x")
    await fs.mkdir("empty")
    await fs.mkdir("dir")
    assert await fs.errno_of(fs.rename("dir", "file")) == errno.ENOTDIR
    assert await fs.errno_of(fs.rename("file", "dir")) == errno.EISDIR
    assert await fs.errno_of(fs.rename("dir", "full")) == errno.ENOTEMPTY
    assert await fs.errno_of(fs.rename("missing", "x")) == errno.ENOENT
    await fs.rename("dir", "empty")                     # over an empty directory: allowed
    assert await fs.listdir() == ["empty", "file", "full"]


async def test_rename_to_a_name_over_255_bytes_is_enametoolong(fs):
    fs.put("a", b"1")
    assert await fs.errno_of(fs.rename("a", "n" * 256)) == errno.ENAMETOOLONG


async def test_a_directory_entry_change_updates_the_directory_mtime(fs):
    await fs.mkdir("d")
    before = (await fs.stat("d")).st_mtime_ns
    await fs.write_file("d/f", b"")
    created = await fs.stat("d")
    assert created.st_mtime_ns > before and created.st_ctime_ns >= created.st_mtime_ns
    await fs.ops.unlink(await fs.walk("d"), b"f", fs.ctx())
    assert (await fs.stat("d")).st_mtime_ns > created.st_mtime_ns


async def test_new_entries_in_a_set_group_id_directory_get_its_group(fs):
    await fs.mkdir("shared", 0o2775)
    await fs.setattr("shared", "gid", st_gid=4242)
    assert (await fs.stat("shared")).st_mode & stat.S_ISGID
    await fs.write_file("shared/f", b"", ctx=fs.ctx(uid=1000, gid=1000))
    await fs.mkdir("shared/sub", ctx=fs.ctx(uid=1000, gid=1000))
    for path in ("shared/f", "shared/sub"):
        a = await fs.stat(path)
        assert (a.st_uid, a.st_gid) == (1000, 4242)


@pytest.mark.fs(read_only=True)
async def test_every_change_on_a_read_only_mount_is_erofs(fs):
    fs.put("f", b"x")
    fs.put("d/g", b"x")
    f = await fs.walk("f")
    ctx = fs.ctx()
    assert stat.S_IMODE((await fs.stat("f")).st_mode) == 0o444
    calls = [fs.ops.create(ROOT, b"n", 0o100644, os.O_WRONLY, ctx), fs.ops.mkdir(ROOT, b"n", 0o40755, ctx),
             fs.ops.unlink(ROOT, b"f", ctx), fs.ops.rmdir(ROOT, b"d", ctx), fs.rename("f", "g"),
             fs.ops.symlink(ROOT, b"l", b"f", ctx), fs.ops.mknod(ROOT, b"n", 0o100644, 0, ctx),
             fs.ops.link(f, ROOT, b"h", ctx), fs.setattr("f", "mode", st_mode=0o100600),
             fs.open("f", os.O_WRONLY), fs.open("f", os.O_RDONLY | os.O_TRUNC)]
    for call in calls:
        assert await fs.errno_of(call) == errno.EROFS
    assert await fs.read_file("f") == b"x"
    assert fs.s3_keys() == [fs.key("d/g"), fs.key("f")]
