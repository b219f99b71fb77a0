"""TieredCache: placement, watermarks, eviction policies, demotion, promotion, persistence, health."""
import os
import random
import threading

import pytest

from cachefs.cache.disk import HEADER, DiskTier
from cachefs.cache.memtier import ENTRY_OVERHEAD
from cachefs.cache.spec import TierSpec, parse_promotion, parse_tier, parse_tiers
from cachefs.cache.tiered import TieredCache
from cachefs.errors import UserError
from cachefs.stats import Stats

from .tier_specs import disk_spec

BLOCK = 1000
DISK_CHARGE = BLOCK + HEADER.size
MEM_CHARGE = BLOCK + ENTRY_OVERHEAD


def key(i: int) -> bytes:
    return i.to_bytes(4, "big") * 4


def block(i: int) -> bytes:
    return random.Random(i).randbytes(BLOCK)


def make(tmp_path, meta, specs, **kw):
    kw.setdefault("max_block", BLOCK)
    cache = TieredCache.build(specs, meta, Stats(), **kw)
    cache.open()
    cache.load()
    return cache


def ssd(tmp_path, blocks, name="ssd", **kw):
    return disk_spec("ssd", (str(tmp_path / name),), blocks * DISK_CHARGE, **kw)


# -- parsing ---------------------------------------------------------------------------------------
def test_parse_tier_forms():
    t = parse_tier("ssd:/a,/b:400GiB:high=0.9:low=0.7:min_free=0.2")
    assert (t.kind, t.dirs, t.quota, t.high, t.low, t.min_free) == ("ssd", ("/a", "/b"), 400 << 30, 0.9, 0.7, 0.2)
    m = parse_tier("mem:8GiB")
    assert m.dirs == () and m.quota == 8 << 30
    assert [x.kind for x in parse_tiers("mem:1GiB;hdd:/d:1TiB")] == ["mem", "hdd"]


@pytest.mark.parametrize("bad", ["tape:/x:1G", "ssd:relative:1G", "ssd:/x", "mem:/x:1G", "ssd:/x:1G:high=2",
                                 "ssd:/x:1G:low=0.9:high=0.5", "ssd:/x:1G:colour=1", "mem:1G:min_free=0.1",
                                 "ssd:/x,/x:1G"])
def test_parse_tier_rejects(bad):
    with pytest.raises(ValueError):
        parse_tier(bad)


def test_parse_tiers_rejects_shared_directory():
    with pytest.raises(ValueError, match="two tiers"):
        parse_tiers(["ssd:/x:1G", "hdd:/x:2G"])


def test_parse_promotion():
    assert [parse_promotion(x) for x in ("never", "on-hit", "after:3")] == [0, 1, 3]
    with pytest.raises(ValueError):
        parse_promotion("sometimes")


# -- placement and watermarks ------------------------------------------------------------------------
def test_blocks_go_to_fastest_disk_tier_with_room_and_memory_is_inclusive(tmp_path, meta):
    c = make(tmp_path, meta, [TierSpec("mem", (), 2 * MEM_CHARGE, high=1.0), ssd(tmp_path, 2, high=1.0),
                              disk_spec("hdd", (str(tmp_path / "hdd"),), 10 * DISK_CHARGE)], policy="scan-resistant")
    mem, s, h = c.tiers
    for i in range(4):
        assert c.put(key(i), block(i))
    assert [s.contains(key(i)) for i in range(4)] == [True, True, False, False]
    assert [h.contains(key(i)) for i in range(4)] == [False, False, True, True]
    assert [mem.contains(key(i)) for i in range(4)] == [True, True, False, False]
    assert all(bytes(c.get(key(i))) == block(i) for i in range(4))
    assert c.block_count == 4


def test_usage_never_exceeds_quota_under_concurrent_fill(tmp_path, meta):
    c = make(tmp_path, meta, [TierSpec("mem", (), 20 * MEM_CHARGE), ssd(tmp_path, 30)], policy="lru")
    c.start()

    def fill(base):
        for i in range(base, base + 200):
            c.put(key(i), block(i))
    threads = [threading.Thread(target=fill, args=(n * 1000,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c.close()
    assert max(c.peak_ratio.values()) <= 1.0
    for t in c.tiers:
        assert t.used <= t.quota


def test_lru_evicts_in_background_to_low_watermark_and_demotes(tmp_path, meta):
    c = make(tmp_path, meta, [ssd(tmp_path, 10, high=0.8, low=0.5), disk_spec("hdd", (str(tmp_path / "h"),),
                                                                         100 * DISK_CHARGE)], policy="lru")
    s, h = c.tiers
    for i in range(10):
        c.put(key(i), block(i))
    c.get(key(0))                                # key 0 is now the most recent
    assert s.used > s.high_bytes                 # placement alone never evicts
    moved = c.evict_pass()
    assert s.used <= s.low_bytes and moved >= 4
    assert s.contains(key(0)) and not s.contains(key(1))
    assert h.contains(key(1)) and bytes(c.get(key(1))) == block(1)   # demoted, not lost
    assert c.stats.get("cache_demotions") == moved


@pytest.mark.parametrize("policy", ["lru", "scan-resistant"])
def test_cooled_blocks_leave_memory_first_and_stay_on_disk(tmp_path, meta, policy):
    """An order's reader is done with blocks 0-4 (read, then cooled); 5-9, fetched ahead of it and
    not read yet, keep their room in memory, although the reads made 0-4 the most recent."""
    c = make(tmp_path, meta, [TierSpec("mem", (), 10 * MEM_CHARGE, high=1.0, low=0.5), ssd(tmp_path, 20)],
             policy=policy, stale_after=3600.0)
    mem = c.tiers[0]
    for i in range(10):
        c.put(key(i), block(i))
    for i in range(5):
        assert bytes(c.get_nowait(key(i))) == block(i)
        c.cool(key(i))
    c.cool(key(99))                              # not cached: nothing to do
    c.evict_pass()
    assert [mem.contains(key(i)) for i in range(10)] == [False] * 5 + [True] * 5
    assert all(bytes(c.get(key(i))) == block(i) for i in range(10))     # the disk copies serve 0-4


def test_last_tier_drops(tmp_path, meta):
    c = make(tmp_path, meta, [ssd(tmp_path, 4, high=0.5, low=0.25)], policy="lru")
    for i in range(4):
        c.put(key(i), block(i))
    c.evict_pass()
    assert c.tiers[0].count == 1 and c.stats.get("cache_evictions") == 3
    assert not os.path.exists(os.path.join(str(tmp_path / "ssd"), "blocks", "v1", key(1).hex()[:2], key(1).hex()))


def cyclic_hit_ratio(cache, n_blocks, epochs=3, seed=0):
    rng = random.Random(seed)
    ratios = []
    for _ in range(epochs):
        order = list(range(n_blocks))
        rng.shuffle(order)
        hits = 0
        for i in order:
            if cache.get(key(i)) is not None:
                hits += 1
            else:
                cache.put(key(i), block(i))
                cache.evict_pass()       # the background evictor, run inline for determinism
        ratios.append(hits / n_blocks)
    return ratios


def test_scan_resistant_beats_lru_on_cyclic_epochs_larger_than_cache(tmp_path, meta):
    capacity = 50
    lru = make(tmp_path, meta, [ssd(tmp_path, capacity, name="a")], policy="lru")
    scan = make(tmp_path, meta, [ssd(tmp_path, capacity, name="b")], policy="scan-resistant")
    lru_ratios = cyclic_hit_ratio(lru, 2 * capacity)
    scan_ratios = cyclic_hit_ratio(scan, 2 * capacity)
    assert scan_ratios[1] >= 0.45 and scan_ratios[2] >= 0.45
    assert lru_ratios[1] < scan_ratios[1] and lru_ratios[2] < scan_ratios[2]


def test_scan_resistant_still_evicts_stale_blocks(tmp_path, meta):
    c = make(tmp_path, meta, [ssd(tmp_path, 10, high=0.8, low=0.5)], policy="scan-resistant", stale_after=0.0)
    for i in range(10):
        c.put(key(i), block(i))
    assert c.tiers[0].count == 8                 # admission stopped at the high watermark
    c.evict_pass()
    assert c.tiers[0].used <= c.tiers[0].low_bytes
    c2 = make(tmp_path, meta, [ssd(tmp_path, 10, name="fresh", high=0.8, low=0.5)], policy="scan-resistant")
    for i in range(10):
        c2.put(key(i), block(i))
    assert c2.evict_pass() == 0                  # nothing stale: keep everything


# -- promotion --------------------------------------------------------------------------------------
@pytest.mark.parametrize("after, hits_needed", [(0, None), (1, 1), (3, 3)])
def test_promotion_policies(tmp_path, meta, after, hits_needed):
    c = make(tmp_path, meta, [ssd(tmp_path, 1, name="fast", high=1.0), ssd(tmp_path, 10, name="slow")],
             promote_after=after)
    fast, slow = c.tiers
    c.put(key(0), block(0))                      # fills the fast tier
    c.put(key(1), block(1))                      # goes to the slow tier
    fast.remove(key(0))
    for n in range(1, 5):
        assert bytes(c.get(key(1))) == block(1)
        promoted = fast.contains(key(1))
        assert promoted == (hits_needed is not None and n >= hits_needed)
        assert slow.contains(key(1)) == (not promoted)


# -- persistence and repair -------------------------------------------------------------------------
def test_restart_reuses_disk_blocks(tmp_path, meta):
    specs = [TierSpec("mem", (), 10 * MEM_CHARGE), ssd(tmp_path, 10)]
    c = make(tmp_path, meta, specs)
    for i in range(3):
        c.put(key(i), block(i))
    c.close()
    again = make(tmp_path, meta, specs)
    assert not again.mem_tiers[0].contains(key(0))
    assert all(bytes(again.get(key(i))) == block(i) for i in range(3))
    assert again.tiers[1].used == 3 * DISK_CHARGE


def test_crash_before_index_flush_loses_nothing_and_torn_blocks_are_refetched(tmp_path, meta):
    specs = [ssd(tmp_path, 10)]
    c = make(tmp_path, meta, specs)
    c.put(key(0), block(0))
    c.put(key(1), block(1))
    torn_path = c.tiers[0].path_of(key(1))
    # "crash": no close(), no flush; then tear one file as a crash mid-write would
    with open(torn_path, "r+b") as f:
        f.seek(HEADER.size + 10)
        f.write(b"\xff" * 10)
    junk = torn_path + ".tmp.99"
    open(junk, "wb").write(b"partial")
    for d in c.tiers[0].dirs:
        d.close()                                 # the dead process's lock goes with it
    again = make(tmp_path, meta, specs)
    assert again.contains(key(0)) and again.contains(key(1))   # adopted by the scan
    assert not os.path.exists(junk)
    assert bytes(again.get(key(0))) == block(0)
    assert again.get(key(1)) is None                           # checksum catches the torn block
    assert again.stats.get("cache_corrupt") == 1 and not again.contains(key(1))


def test_two_daemons_cannot_share_a_directory(tmp_path, meta):
    make(tmp_path, meta, [ssd(tmp_path, 4)])
    with pytest.raises(UserError, match="in use"):
        make(tmp_path, meta, [ssd(tmp_path, 4)])


def test_failing_directory_is_skipped_and_comes_back(tmp_path, meta, monkeypatch):
    monkeypatch.setattr("cachefs.cache.disk.PROBE_INTERVAL_S", 0.0)
    c = make(tmp_path, meta, [disk_spec("ssd", (str(tmp_path / "d0"), str(tmp_path / "d1")), 20 * DISK_CHARGE)])
    tier: DiskTier = c.tiers[0]
    for i in range(6):
        c.put(key(i), block(i))
    broken = tier.dirs[0]
    os.rename(broken.root, broken.root + ".gone")           # the directory disappears under us
    lost = [i for i in range(6) if tier._slots[key(i)].where == 0]
    assert lost, "hashing spreads blocks over both directories"
    for i in lost:
        assert c.get(key(i)) is None                         # a miss, not an error
    for i in range(100, 110):
        c.put(key(i), block(i))                              # writes to d0 fail once, then go to d1
    assert not broken.healthy
    assert all(tier._slots[key(i)].where == 1 for i in range(100, 110) if tier.contains(key(i)))
    assert all(bytes(c.get(key(i))) == block(i) for i in range(100, 110) if tier.contains(key(i)))
    tier.probe()                                             # recreates the layout and comes back
    assert broken.healthy
    c.put(key(200), block(200))
    assert bytes(c.get(key(200))) == block(200)


def test_directory_short_of_free_space_is_not_used(tmp_path, meta):
    c = make(tmp_path, meta, [ssd(tmp_path, 10, min_free=1.0)])   # demands a 100% free filesystem
    assert not c.put(key(0), block(0))
    assert c.stats.get("cache_not_admitted") == 1
