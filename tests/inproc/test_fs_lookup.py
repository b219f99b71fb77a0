"""lookup, getattr, readdir and statfs: what the kernel is told about objects S3 holds."""
from __future__ import annotations

import errno
import stat

import pytest

from inproc.harness import BLOCK, ROOT


async def test_lookup_of_a_missing_name_is_a_cacheable_negative_entry(fs):
    attrs = await fs.ops.lookup(ROOT, b"nothing", fs.ctx())
    assert attrs.st_ino == 0
    assert attrs.entry_timeout == fs.cfg.negative_ttl


async def test_lookup_of_a_name_over_255_bytes_is_enametoolong(fs):
    assert await fs.errno_of(fs.ops.lookup(ROOT, b"n" * 256, fs.ctx())) == errno.ENAMETOOLONG
    assert (await fs.ops.lookup(ROOT, b"n" * 255, fs.ctx())).st_ino == 0     # the limit itself is a name


async def test_objects_show_as_files_and_key_prefixes_as_directories(fs):
    fs.put("top.bin", b"x" * 1000)
    fs.put("a/b/deep.txt", b"deep")
    top = await fs.stat("top.bin")
    assert stat.S_ISREG(top.st_mode) and stat.S_IMODE(top.st_mode) == 0o644
    assert top.st_size == 1000 and top.st_blocks == 2 and top.st_nlink == 1
    assert (top.st_uid, top.st_gid) == (fs.cfg.uid, fs.cfg.gid)
    a = await fs.stat("a")
    assert stat.S_ISDIR(a.st_mode) and stat.S_IMODE(a.st_mode) == 0o755
    assert await fs.listdir("a") == ["b"]
    assert (await fs.stat("a")).st_nlink == 3      # its entry, its ".", and b's ".."
    assert (await fs.stat("a/b/deep.txt")).st_size == 4
    assert a.entry_timeout == fs.cfg.entry_timeout and a.attr_timeout == fs.cfg.attr_timeout


async def test_keys_outside_the_prefix_are_not_shown(fs):
    fs.store.put("elsewhere.txt", b"not ours")
    fs.store.put("data-other/x", b"nor this")
    fs.put("mine.txt", b"ours")
    assert await fs.listdir() == ["mine.txt"]


@pytest.mark.fs(metadata_head_all=True)
async def test_s3fs_metadata_gives_mode_owner_and_mtime(fs):
    fs.put("f", b"data", mode=str(stat.S_IFREG | 0o640), uid="1234", gid="99", mtime="1600000000.5")
    assert await fs.listdir() == ["f"]
    a = await fs.stat("f")
    assert stat.S_IMODE(a.st_mode) == 0o640
    assert (a.st_uid, a.st_gid) == (1234, 99)
    assert a.st_mtime_ns == 1_600_000_000_500_000_000


@pytest.mark.fs(single_owner=True, uid=4321, gid=4322, metadata_head_all=True)
async def test_single_owner_ignores_the_objects_owners(fs):
    fs.put("f", b"data", uid="1234", gid="99")
    await fs.listdir()
    a = await fs.stat("f")
    assert (a.st_uid, a.st_gid) == (4321, 4322)


async def test_readdir_gives_names_in_order_with_their_attributes(fs):
    for name in ("b.txt", "a.txt", "c/x"):
        fs.put(name, b"1234")
    entries = await fs.readdir()
    assert [n for n, _, _ in entries] == [b"a.txt", b"b.txt", b"c"]
    assert [nxt for _, _, nxt in entries] == [1, 2, 3]
    by_name = {n: a for n, a, _ in entries}
    assert by_name[b"a.txt"].st_size == 4 and stat.S_ISDIR(by_name[b"c"].st_mode)
    assert by_name[b"a.txt"].st_ino == (await fs.stat("a.txt")).st_ino


async def test_readdir_stops_when_the_buffer_is_full_and_resumes_at_the_offset(fs):
    names = [f"f{i:02d}" for i in range(10)]
    for name in names:
        fs.put(name, b"")
    first = await fs.readdir(room=4)
    assert [n.decode() for n, _, _ in first] == names[:4]
    rest = await fs.readdir(start=first[-1][2])
    assert [n.decode() for n, _, _ in rest] == names[4:]


async def test_getattr_of_an_unknown_inode_is_enoent(fs):
    assert await fs.errno_of(fs.ops.getattr(10**9, fs.ctx())) == errno.ENOENT


async def test_a_file_removed_from_s3_disappears_on_the_next_listing(fs):
    fs.put("gone.txt", b"x")
    fs.put("kept.txt", b"y")
    assert await fs.listdir() == ["gone.txt", "kept.txt"]
    fs.store.delete(fs.key("gone.txt"))
    fs.meta.expire_listings()            # the listing TTL passed
    assert await fs.listdir() == ["kept.txt"]
    assert not await fs.exists("gone.txt")


async def test_statfs_reports_a_large_stable_filesystem(fs):
    s = await fs.ops.statfs(fs.ctx())
    assert s.f_bsize == BLOCK and s.f_frsize == 4096 and s.f_namemax == 255
    assert s.f_blocks == s.f_bfree == s.f_bavail == 1 << 40
    assert s.f_files == s.f_ffree == 1 << 32
