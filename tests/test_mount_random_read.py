"""Random cold reads through a real mount (reader/pieces.py): byte-exact for random offsets and sizes,
only the 64 KiB pieces read are fetched (read amplification from the daemon's counters), pieces are
served warm, and a corrupt piece file is fetched again, never served."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from mount_helpers import MiB, first_difference, object_bytes, run_cachefs, stats_delta, wait_until

pytestmark = pytest.mark.timeout(240)

PIECE = 64 * 1024
HEADER = 32          # block file header (cache/disk.py)
# 4 MiB blocks (the default): 64 pieces each, hot after 32. 32 MiB: moto reads the whole object per GET.
DATA = {"rand.bin": object_bytes("rand", 32 * MiB + 4321)}
SIZE = len(DATA["rand.bin"])


@pytest.fixture(scope="module")
def rand_bucket(make_bucket):
    return make_bucket("random-read", DATA)


def _random_preads(path: Path, reads: list[tuple[int, int]]) -> list[bytes]:
    """preads as a random reader does them: POSIX_FADV_RANDOM (fio's default for randread), so the
    kernel asks the daemon for what is read, not for its read-ahead window."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        return [os.pread(fd, size, off) for off, size in reads]
    finally:
        os.close(fd)


def _drop_pages(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _aligned_reads(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randrange(2 * MiB // PIECE, SIZE // PIECE - 1) * PIECE, PIECE) for _ in range(n)]


def test_random_reads_are_byte_exact(mounter, rand_bucket):
    m = mounter.mount(rand_bucket, block_size="4MiB")
    data = DATA["rand.bin"]
    rng = random.Random(11)
    reads = [(rng.randrange(0, SIZE), rng.choice((1, 4095, PIECE - 1, PIECE, PIECE + 1, 200_000, 5 * MiB)))
             for _ in range(150)]
    got = _random_preads(m / "rand.bin", [(3 * MiB, 10), *reads])
    for (off, size), chunk in zip(reads, got[1:], strict=True):
        assert chunk == data[off:off + size], (off, size, first_difference(chunk, data[off:off + size]))
    assert m.stats()["piece_reads"] > 0


def test_random_64k_reads_fetch_at_most_one_and_a_half_times_what_they_read(mounter, rand_bucket):
    """Read amplification (s3_get_bytes / fuse_read_bytes) of a random 64 KiB pattern, then the same
    reads from another open with the page cache dropped: all pieces are hits."""
    m = mounter.mount(rand_bucket, block_size="4MiB")
    data = DATA["rand.bin"]
    reads = _aligned_reads(100, seed=3)
    before = m.stats()
    got = _random_preads(m / "rand.bin", reads)
    assert got == [data[o:o + s] for o, s in reads]
    delta = stats_delta(before, m.stats(), "s3_get_bytes", "fuse_read_bytes", "piece_fetches", "cache_misses")
    assert delta["fuse_read_bytes"] >= len(set(reads)) * PIECE
    assert delta["s3_get_bytes"] <= 1.5 * delta["fuse_read_bytes"], delta
    assert delta["cache_misses"] == 0, delta                   # no whole block was fetched

    _drop_pages(m / "rand.bin")
    before = m.stats()
    assert _random_preads(m / "rand.bin", reads) == got
    delta = stats_delta(before, m.stats(), "s3_get", "piece_reads")
    assert delta["s3_get"] == 0 and delta["piece_reads"] >= len(set(reads)), delta

    # `cachefs drop` drops the pieces too: the same reads fetch them again
    res = run_cachefs(["drop", str(m.path), "rand.bin"], m.env)
    assert res.returncode == 0, res.describe()
    before = m.stats()
    assert _random_preads(m / "rand.bin", reads) == got
    assert stats_delta(before, m.stats(), "s3_get_bytes")["s3_get_bytes"] >= len(set(reads)) * PIECE


def test_warm_pieces_of_a_block_come_from_disk_in_one_hop(mounter, rand_bucket, tmp_path):
    """A disk-only cache: the first warm read of a block loads the block's other cached pieces with the
    wanted one, and the open file serves the rest of its reads in that block from them."""
    m = mounter.mount(rand_bucket, "--cache", f"ssd:{tmp_path / 'ssd'}:256MiB", block_size="4MiB")
    data = DATA["rand.bin"]
    reads = _aligned_reads(120, seed=5)
    assert _random_preads(m / "rand.bin", reads) == [data[o:o + s] for o, s in reads]
    # pieces still queued for the disk writer are served from its queue, not counted as disk hits
    assert wait_until(lambda: m.stats()["cache_queued_bytes"] == 0, 10), m.stats()
    _drop_pages(m / "rand.bin")
    before = m.stats()
    assert _random_preads(m / "rand.bin", reads) == [data[o:o + s] for o, s in reads]
    delta = stats_delta(before, m.stats(), "s3_get", "piece_reads", "piece_held_reads", "cache_hits")
    blocks = {o // (4 * MiB) for o, _ in reads}
    assert delta["s3_get"] == 0, delta
    # the kernel's page cache answers a repeated offset once it was read: piece_reads are the others
    assert delta["piece_reads"] >= len(set(reads)) - 20, delta
    assert delta["piece_held_reads"] >= delta["piece_reads"] - len(blocks), (delta, len(blocks))
    assert delta["cache_hits"] == len(set(reads)), delta        # each piece read from disk once


def test_a_corrupt_piece_is_fetched_again(mounter, rand_bucket, tmp_path):
    ssd = tmp_path / "ssd"
    m = mounter.mount(rand_bucket, "--cache", f"ssd:{ssd}:256MiB", "--hedging", "false", block_size="4MiB")
    data = DATA["rand.bin"]
    off = 9 * MiB + 5 * PIECE
    assert _random_preads(m / "rand.bin", [(20 * MiB, 1), (off, PIECE)])[1] == data[off:off + PIECE]
    packs = ssd / "blocks" / "v1" / "packs"
    def records() -> list[int]:
        """Offsets of the pieces' records in their pack (pieces are shorter than a block: packed)."""
        raw = b"".join(p.read_bytes() for p in sorted(packs.iterdir()))
        return [i for i in range(0, len(raw), 4096) if raw[i:i + 4] == b"CFP1"]
    assert wait_until(lambda: len(records()) == 2, 10), records()    # two pieces, no block
    assert not list((ssd / "blocks" / "v1").glob("??/*"))
    (pack,) = sorted(packs.iterdir())
    raw = bytearray(pack.read_bytes())
    at = next(i for i in records() if raw[i + HEADER:i + HEADER + 64] == data[off:off + 64])
    raw[at + HEADER + 1000] ^= 0x5A
    pack.write_bytes(bytes(raw))
    _drop_pages(m / "rand.bin")
    before = m.stats()
    assert _random_preads(m / "rand.bin", [(20 * MiB, 1), (off, PIECE)])[1] == data[off:off + PIECE]
    delta = stats_delta(before, m.stats(), "s3_get", "cache_corrupt")
    assert delta == {"s3_get": 1, "cache_corrupt": 1}, delta
