"""The block cache under pressure: a cache smaller than the data set still returns exact bytes."""
from __future__ import annotations

import pytest

from mount_helpers import MiB, first_difference, object_bytes, read_all

pytestmark = pytest.mark.timeout(240)

CACHE_SIZE = 16 * MiB  # the smallest the daemon accepts
OBJECTS = {f"f{i}": object_bytes(f"evict{i}", 6 * MiB + 1000 * i) for i in range(4)}  # ~24 MiB > the cache


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
