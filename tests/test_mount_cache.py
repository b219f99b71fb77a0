"""The block cache under pressure: a cache smaller than the data set still returns exact bytes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from mount_helpers import MiB, first_difference, object_bytes, read_all, run_threads

pytestmark = pytest.mark.timeout(240)

CACHE_SIZE = 16 * MiB  # the smallest the daemon accepts
OBJECTS = {f"f{i}": object_bytes(f"evict{i}", 5 * MiB + 1000 * i) for i in range(4)}  # ~20 MiB > the cache


def read_exact(m, keys) -> None:
    for k in keys:
        got = read_all(m / k)
        assert got == OBJECTS[k], f"{k}: {first_difference(got, OBJECTS[k])}"


def test_reads_stay_exact_when_the_cache_is_smaller_than_the_data(mounter, make_bucket):
    name = make_bucket("evict", OBJECTS)
    m = mounter.mount(name, "--cache-size", "16MiB", block_size="1MiB")
    read_exact(m, sorted(OBJECTS))
    assert m.stats()["cache_bytes"] <= CACHE_SIZE, m.stats()
    mounter.umount(m)
    m = mounter.remount(m)  # a new kernel page cache: every byte comes through the daemon again
    read_exact(m, sorted(OBJECTS, reverse=True))
    s = m.stats()
    assert s["cache_bytes"] <= CACHE_SIZE, s
    assert s["s3_get"] > 0, f"the data cannot all have been cached in {CACHE_SIZE} bytes: {s}"


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_to_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [_flip_middle_byte, _truncate_to_half], ids=["bit-flip", "truncated"])
@pytest.mark.daemon_errors_ok(r"checksum|corrupt|mismatch")  # whatever the daemon says about the damage
def test_damaged_cache_blocks_are_refetched_not_served(mounter, make_bucket, request_log, damage):
    """DESIGN.md: every cached block carries a checksum checked on read; a mismatch drops it and refetches."""
    data = object_bytes("damaged", 2 * MiB + 500_000)  # 3 blocks
    name = make_bucket("damaged", {"f": data})
    m = mounter.mount(name, block_size="1MiB")
    assert read_all(m / "f") == data
    mounter.umount(m)
    block_files = [p for p in (m.cache_dir / "blocks").rglob("*") if p.is_file() and p.stat().st_size > 1000]
    assert block_files, f"no block files under {m.cache_dir / 'blocks'}"
    for p in block_files:
        damage(p)
    m = mounter.remount(m)
    mark = request_log.mark()
    got = read_all(m / "f")
    assert got == data, first_difference(got, data)
    assert any(r.is_object_get for r in request_log.since(mark, name)), "damaged blocks were not fetched again"


SMALL_FILES = {f"img/{i:03d}.jpg": object_bytes(f"packed{i}", 3000 + 997 * i) for i in range(40)}


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "a-file-each"])
def test_small_blocks_are_packed_and_read_again_after_a_restart(mounter, make_bucket, tmp_path, packed):
    """cache/packs.py: a block shorter than the block size is a record in a pack file (a full-sized
    block stays a file of its own); after a restart every one is read from there, no GET."""
    big = object_bytes("packed-big", 2 * MiB + 5000)          # two full blocks and a tail
    name = make_bucket("packs", {**SMALL_FILES, "big.bin": big})
    ssd = tmp_path / "ssd"
    args = ("--cache", f"ssd:{ssd}:64MiB", "--hedging", "false", "--pack-small-blocks", str(packed).lower())
    m = mounter.mount(name, *args, block_size="1MiB")
    for k, v in SMALL_FILES.items():
        assert read_all(m / k) == v, k
    assert read_all(m / "big.bin") == big
    mounter.umount(m)                                          # the index flushed
    files = [p for p in (ssd / "blocks" / "v1").glob("??/*")]
    packs = list((ssd / "blocks" / "v1" / "packs").iterdir())
    if packed:
        assert len(files) == 2 and len(packs) == 1, (files, packs)
        raw = packs[0].read_bytes()
        assert sum(1 for i in range(0, len(raw), 4096) if raw[i:i + 4] == b"CFP1") == len(SMALL_FILES) + 1
    else:
        assert len(files) == len(SMALL_FILES) + 3 and packs == [], (len(files), packs)
    m = mounter.remount(m)
    for k, v in SMALL_FILES.items():
        assert read_all(m / k) == v, k
    assert read_all(m / "big.bin") == big
    s = m.stats()
    assert s["s3_get"] == 0 and s["cache_corrupt"] == 0, s


def test_packed_small_files_under_eviction_stay_exact_and_their_space_comes_back(mounter, make_bucket, tmp_path):
    """LRU eviction of packed blocks while four readers read and the disk writer appends: holes
    punched and emptied packs deleted under them, every byte exact, nothing counted corrupt."""
    import random
    files = {f"d{i % 7}/{i:03d}.bin": object_bytes(f"evict-packed{i}", 60_000 + 331 * i) for i in range(300)}
    name = make_bucket("packs-evict", files)                       # ~27 MB through a 16 MiB tier
    ssd = tmp_path / "ssd"
    m = mounter.mount(name, "--cache", f"ssd:{ssd}:16MiB", "--eviction-policy", "lru", "--hedging", "false",
                      block_size="256KiB")
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        keys = sorted(files)
        for _ in range(2):
            rng.shuffle(keys)
            for k in keys[:150]:
                with open(m / k, "rb") as f:            # past the kernel's page cache: each open reads anew
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                    got = f.read()
                if got != files[k]:
                    errors.append(f"{k}: {first_difference(got, files[k])}")

    run_threads(reader, [(i,) for i in range(4)], 180)
    assert errors == [], errors[:5]
    s = m.stats()
    assert s["cache_evictions"] > 0 and s["cache_corrupt"] == 0, s
    mounter.umount(m)
    on_disk = sum(p.stat().st_blocks * 512 for p in (ssd / "blocks" / "v1" / "packs").iterdir())
    assert on_disk <= 17 * MiB, on_disk                            # punched holes and deleted packs
