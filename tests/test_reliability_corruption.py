"""Cache corruption on a real mount: flipped bytes, truncated and deleted block files, a corrupt LMDB.

Reads return the right bytes (the damaged blocks are fetched again, and only those); a damaged
metadata store is refused with one clear line, and moving it away (what the line says) rebuilds it
while the cached blocks are adopted back.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mount_helpers import (
    BLOCK_SIZE,
    first_difference,
    object_bytes,
    one_line_error,
    read_all,
    run_cachefs,
    stats_delta,
    wait_until,
)
from reliability_helpers import read_past_page_cache

pytestmark = pytest.mark.timeout(180)

DATA = {"data.bin": object_bytes("corrupt-data", 8 * BLOCK_SIZE), "small.txt": b"hello, corruption\n"}
HEADER = 32   # block file header (cache/disk.py): magic, length, xxh3, zero


def block_files(tier_dir: Path) -> list[Path]:
    return sorted(p for p in (tier_dir / "blocks" / "v1").glob("??/*") if len(p.name) == 32)


def damage(files: list[Path]) -> None:
    """Flip a payload byte of the first, truncate the second, delete the third."""
    flip, cut, gone = files[:3]
    raw = bytearray(flip.read_bytes())
    raw[HEADER + 1000] ^= 0x5A
    flip.write_bytes(bytes(raw))
    with open(cut, "r+b") as f:
        f.truncate(HEADER + 4096)
    gone.unlink()


def test_damaged_block_files_are_refetched_while_mounted_and_at_start_up(mounter, make_bucket, tmp_path):
    name = make_bucket("corrupt-blocks", DATA)
    ssd = tmp_path / "ssd"
    args = ("--cache", f"ssd:{ssd}:64MiB", "--hedging", "false")   # no memory tier: every read hits the files
    m = mounter.mount(name, *args)
    assert read_all(m / "data.bin") == DATA["data.bin"]
    assert wait_until(lambda: len(block_files(ssd)) == 8, 10), block_files(ssd)   # read-ahead may still be storing
    files = block_files(ssd)

    # while mounted: bit rot, a torn file, a file removed behind the daemon's back
    damage(files)
    before = m.stats()
    got = read_past_page_cache(m / "data.bin")
    assert got == DATA["data.bin"], first_difference(got, DATA["data.bin"])
    delta = stats_delta(before, m.stats(), "s3_get", "cache_corrupt")
    assert delta == {"s3_get": 3, "cache_corrupt": 2}, delta     # exactly the three damaged blocks
    assert wait_until(lambda: len(block_files(ssd)) == 8, 10)       # and they are cached again

    # while unmounted: the same damage, plus junk; the start-up scan and the checksums sort it out
    mounter.umount(m)
    files = block_files(ssd)
    damage(files)
    (files[3].parent / "not-a-block").write_bytes(b"junk")
    (files[3].parent / (files[3].name + ".tmp.1234")).write_bytes(b"a torn temp file")
    m = mounter.remount(m)
    got = read_past_page_cache(m / "data.bin")
    assert got == DATA["data.bin"], first_difference(got, DATA["data.bin"])
    assert m.stats()["s3_get"] == 3
    assert not list((files[3].parent).glob("not-a-block")) and not list(files[3].parent.glob("*.tmp.*"))


@pytest.mark.daemon_errors_ok(r"metadata store .* is corrupt")
def test_corrupt_metadata_store_is_refused_then_rebuilt_keeping_blocks(mounter, make_bucket, tmp_path):
    name = make_bucket("corrupt-lmdb", DATA)
    ssd = tmp_path / "ssd"
    m = mounter.mount(name, "--cache", f"ssd:{ssd}:64MiB")
    for key, data in DATA.items():
        assert read_all(m / key) == data
    mounter.umount(m)

    meta = m.cache_dir / "meta"
    mdb = meta / "data.mdb"
    raw = mdb.read_bytes()
    mdb.write_bytes(raw[:len(raw) // 2])                  # torn: pages past the end
    res = run_cachefs(m.args, m.env)
    line = one_line_error(res.stderr)
    assert res.returncode == 1 and line is not None, res.describe()
    assert "is corrupt" in line and f"mv {meta} {meta}.corrupt" in line, line
    assert "Traceback" not in m.log_text()

    mdb.write_bytes(b"\0" * 8192 + raw[8192:])            # both LMDB meta pages gone
    res = run_cachefs(m.args, m.env)
    line = one_line_error(res.stderr)
    assert res.returncode == 1 and line is not None and "MDB_INVALID" in line, res.describe()

    shutil.move(meta, f"{meta}.corrupt")                  # what the message says to do
    m = mounter.remount(m)
    for key, data in DATA.items():
        assert read_all(m / key) == data
    stats = m.stats()
    assert stats["s3_get"] == 0, "cached blocks were fetched again after the rebuild"
    assert stats["cache_blocks"] == 9
    assert "adopted 9 block files" in m.log_text()
