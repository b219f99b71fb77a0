"""symlink/readlink (stored as s3fs stores them) and extended attributes (none)."""
from __future__ import annotations

import errno
import stat

import pytest

from inproc.harness import ROOT

LINK_MODE = str(stat.S_IFLNK | 0o777)


async def test_symlink_puts_an_object_with_the_target_as_body_and_readlink_reads_it(fs):
    attrs = await fs.ops.symlink(ROOT, b"link", b"some/target", fs.ctx(uid=1000, gid=1000))
    assert stat.S_ISLNK(attrs.st_mode) and attrs.st_size == len(b"some/target")
    assert (attrs.st_uid, attrs.st_gid) == (1000, 1000)
    assert fs.s3_body("link") == b"some/target"                  # at once, like a directory marker
    assert fs.s3_meta("link")["mode"] == LINK_MODE
    assert await fs.ops.readlink(attrs.st_ino, fs.ctx()) == b"some/target"


async def test_readlink_of_a_regular_file_is_einval(fs):
    ino = await fs.write_file("f", b"not a link")
    assert await fs.errno_of(fs.ops.readlink(ino, fs.ctx())) == errno.EINVAL


@pytest.mark.parametrize("name, target, code", [
    (b"l", b"", errno.ENOENT),
    (b"l", b"t" * 4096, errno.ENAMETOOLONG),
    (b"n" * 256, b"t", errno.ENAMETOOLONG),
    (b"bad\xff", b"t", errno.EINVAL),
    (b"taken", b"t", errno.EEXIST),
])
async def test_symlink_errnos(fs, name, target, code):
    fs.put("taken", b"")
    assert await fs.errno_of(fs.ops.symlink(ROOT, name, target, fs.ctx())) == code
    assert fs.s3_keys() == [fs.key("taken")]


async def test_symlink_below_a_file_is_enotdir(fs):
    f = await fs.write_file("f", b"")
    assert await fs.errno_of(fs.ops.symlink(f, b"l", b"t", fs.ctx())) == errno.ENOTDIR


async def test_a_link_s3fs_made_is_a_link_here_and_survives_a_rename(fs):
    fs.put("s3fs-link", b"../elsewhere", mode=LINK_MODE)     # small: HEADed once when listed
    assert await fs.listdir() == ["s3fs-link"]
    a = await fs.stat("s3fs-link")
    assert stat.S_ISLNK(a.st_mode)
    assert await fs.ops.readlink(a.st_ino, fs.ctx()) == b"../elsewhere"
    await fs.rename("s3fs-link", "moved")
    assert fs.s3_meta("moved")["mode"] == LINK_MODE
    moved = await fs.stat("moved")
    assert stat.S_ISLNK(moved.st_mode)
    assert await fs.ops.readlink(moved.st_ino, fs.ctx()) == b"../elsewhere"


async def test_every_xattr_request_is_enosys_so_the_kernel_stops_sending_them(fs):
    """None are kept: ENOSYS sets the kernel's no_getxattr/no_listxattr/... and it answers
    EOPNOTSUPP itself from then on, without a request (tests/test_ops_metrics.py sees that)."""
    ino = await fs.write_file("f", b"x")
    for inode in (ROOT, ino):
        for name in (b"user.cachefs.stats", b"user.other", b"security.selinux", b"system.posix_acl_access"):
            assert await fs.errno_of(fs.ops.getxattr(inode, name, fs.ctx())) == errno.ENOSYS
        assert await fs.errno_of(fs.ops.listxattr(inode, fs.ctx())) == errno.ENOSYS
        assert await fs.errno_of(fs.ops.setxattr(inode, b"user.x", b"v", fs.ctx())) == errno.ENOSYS
        assert await fs.errno_of(fs.ops.removexattr(inode, b"user.x", fs.ctx())) == errno.ENOSYS
