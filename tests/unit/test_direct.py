"""Block files written with O_DIRECT (cache/direct.py): exact bytes and length, no page-cache copy,
and buffered writes where the filesystem refuses O_DIRECT."""
import errno
import os
import subprocess

import pytest

from cachefs import native
from cachefs.cache.direct import ALIGN, AlignedBuffers, DirectUnsupported
from cachefs.cache.disk import HEADER, DiskTier
from cachefs.cache.tier import Slot
from cachefs.stats import Stats

from .tier_specs import disk_spec


def direct_capable(path) -> bool:
    try:
        os.close(os.open(os.path.join(path, ".d"), os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
        return True
    except OSError:
        return False


def resident_pages(path: str) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "PAGES", path],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


@pytest.mark.parametrize("size", [1, ALIGN - 32, ALIGN, ALIGN + 1, 4 * 1024 * 1024 - 32, 4 * 1024 * 1024])
def test_lengths_that_are_not_aligned_are_written_exactly(tmp_path, size):
    if not direct_capable(tmp_path):
        pytest.skip("no O_DIRECT under the test's temporary directory")
    bufs = AlignedBuffers(4 * 1024 * 1024 + 32)
    head, payload = b"H" * 32, os.urandom(size)
    path = str(tmp_path / "f")
    assert bufs.write_file(path, [head, payload]) == 32 + size
    with open(path, "rb") as f:
        assert f.read() == head + payload
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_direct_write_leaves_nothing_in_the_page_cache(tmp_path):
    if not direct_capable(tmp_path):
        pytest.skip("no O_DIRECT under the test's temporary directory")
    path = str(tmp_path / "f")
    AlignedBuffers(1 << 20).write_file(path, [os.urandom(1 << 20)])
    assert resident_pages(path) == 0
    with open(path, "wb") as f:            # the same bytes written buffered stay resident
        f.write(os.urandom(1 << 20))
    assert resident_pages(path) > 0


def test_too_large_for_the_buffer_is_refused_not_truncated(tmp_path):
    with pytest.raises(DirectUnsupported):
        AlignedBuffers(ALIGN).write_file(str(tmp_path / "f"), [b"x" * (ALIGN + 1)])
    assert not (tmp_path / "f").exists()


def test_tier_falls_back_to_buffered_writes_where_o_direct_is_refused(tmp_path, monkeypatch):
    """A filesystem that refuses O_DIRECT answers EINVAL (tmpfs before Linux 6.6, some network and
    FUSE filesystems): the directory switches to buffered writes once, and the block is stored and
    read back all the same."""
    real_write = native.write_block
    refused = []

    def no_direct(path, data, direct):
        if direct:
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(path, data, direct)

    monkeypatch.setattr(native, "write_block", no_direct)
    tier = DiskTier(disk_spec("ssd", (str(tmp_path / "c"),), 1 << 30), Stats())
    tier.open()
    for i in range(3):
        data = os.urandom(100_000 + i)
        slot = Slot(size=len(data) + HEADER.size)
        assert tier._write(bytes([i]) * 16, data, slot)
        assert bytes(tier._read(bytes([i]) * 16, slot)) == data
    assert len(refused) == 1, "asked again after the filesystem said no"
    assert tier.dirs[0].direct is False and tier.dirs[0].healthy
    tier.close()


def test_tier_writes_direct_where_it_can(tmp_path):
    if not direct_capable(tmp_path):
        pytest.skip("no O_DIRECT under the test's temporary directory")
    tier = DiskTier(disk_spec("ssd", (str(tmp_path / "c"),), 1 << 30), Stats())
    tier.open()
    from cachefs.cache.tier import Slot
    data = os.urandom(3 * ALIGN + 5)
    slot = Slot(size=len(data) + HEADER.size)
    assert tier._write(b"q" * 16, data, slot)
    assert tier.dirs[0].direct is True
    path = tier.dirs[0].block_path(b"q" * 16)
    padded = -(-(HEADER.size + len(data)) // ALIGN) * ALIGN      # O_DIRECT: padded, not truncated
    expected = padded if native.ACTIVE == "native" else HEADER.size + len(data)
    assert os.path.getsize(path) == expected and resident_pages(path) == 0
    assert bytes(tier._read(b"q" * 16, slot)) == data
    tier.close()
