"""Disk tier specs for unit tests: they must not depend on how full the host's disk is.

A disk tier takes no new blocks while its filesystem has less than `min_free` of its space free
(5% by default). The host's disk is shared, so the tests that are not about free space ask for
none; the free-space rule has its own tests (test_tiers, test_mount_tiers).
"""
from cachefs.cache.spec import TierSpec


def disk_spec(kind: str, dirs: tuple[str, ...], quota: int, **kw) -> TierSpec:
    kw.setdefault("min_free", 0.0)
    kw.setdefault("min_free_inodes", 0.0)
    return TierSpec(kind, dirs, quota, **kw)
