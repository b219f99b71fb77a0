"""The shared cache tier on real mounts: two daemons with their own cache directories are two nodes;
moto's server is both the origin (one bucket) and the shared store (another bucket), request-counted.
Fill once, read everywhere; the conditional PUT race; corrupt, truncated and foreign shared objects;
a dead or stalled shared tier; an origin object changed between nodes; warmup --shared-only; gc;
claims: nodes reading at once fetch each block from the origin once, stale claims, a failing claim path."""
from __future__ import annotations

import threading
import time

import pytest
from mount_helpers import (
    REGION,
    KiB,
    MiB,
    first_difference,
    free_closed_port_url,
    list_all_keys,
    object_bytes,
    read_all,
    run_cachefs,
    wait_until,
)

from cachefs.cache.shared import BlockId, object_name
from cachefs.cache.shared_claims import CLAIM_SUFFIX, claim_body
from cachefs.devtools.faultproxy import Fault

pytestmark = pytest.mark.timeout(240)

BLOCK = 256 * KiB            # mount_helpers.BLOCK_SIZE_ARG, the mounter's default
DATA = {
    "small-a": object_bytes("sa", 3000),
    "dir/small-b": object_bytes("sb", 100 * KiB),
    "dir/big": object_bytes("big", 1 * MiB + 12345),      # 5 blocks
}
BLOCKS = {k: -(-len(v) // BLOCK) for k, v in DATA.items()}
NBLOCKS = sum(BLOCKS.values())
PREFIX = "tier"


def shared_args(shared_bucket: str, endpoint: str, *extra: str) -> list[str]:
    return ["--shared-cache", f"s3://{shared_bucket}/{PREFIX}", "--shared-cache-endpoint-url", endpoint,
            "--shared-cache-addressing-style", "path", "--shared-cache-region", REGION,
            "--metrics-addr", "none", *extra]


def read_everything(m, data=DATA) -> None:
    for k, want in data.items():
        got = read_all(m / k)
        assert got == want, f"{k}: {first_difference(got, want)}"


def drained(m, writes: int | None = None) -> bool:
    s = m.stats()
    return s["shared_cache_queue_depth"] == 0 and (writes is None or s["shared_cache_writes"] == writes)


def origin_gets(request_log, mark, bucket) -> list:
    return [r for r in request_log.since(mark, bucket) if r.is_object_get]


def shared_objects(s3, bucket) -> dict[str, bytes]:
    """The shared blocks (not the claims: tests/unit/test_shared_tier.py, the claim tests below)."""
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in list_all_keys(s3, bucket, PREFIX + "/")
            if not k.endswith(CLAIM_SUFFIX)}


@pytest.fixture
def two_buckets(make_bucket):
    return make_bucket("shared-origin", DATA), make_bucket("shared-tier")


def test_fill_once_read_everywhere(mounter, two_buckets, moto_server, request_log, s3):
    origin, shared = two_buckets
    args = shared_args(shared, moto_server.endpoint_url)
    node1 = mounter.mount(origin, *args)
    mark = request_log.mark()
    read_everything(node1)
    assert wait_until(lambda: drained(node1, NBLOCKS), 15), node1.stats()
    s1 = node1.stats()
    assert s1["s3_get_bytes"] == sum(map(len, DATA.values())), "node 1 read the dataset once from the origin"
    assert s1["shared_cache_misses"] == NBLOCKS and s1["shared_cache_hits"] == 0
    assert len(shared_objects(s3, shared)) == NBLOCKS
    assert len(origin_gets(request_log, mark, origin)) == NBLOCKS

    node2 = mounter.mount(origin, *args)
    node3 = mounter.mount(origin, *args)
    mark = request_log.mark()
    read_everything(node2)
    read_everything(node3)
    assert origin_gets(request_log, mark, origin) == [], "nodes 2 and 3 read nothing from the origin"
    for node in (node2, node3):
        s = node.stats()
        assert (s["s3_get"], s["shared_cache_hits"], s["shared_cache_misses"]) == (0, NBLOCKS, 0), s
        assert s["shared_cache_bytes"] == sum(map(len, DATA.values()))
        assert s["shared_cache_writes"] == 0 and s["shared_cache_errors"] == 0
    shown = run_cachefs(["stats", str(node2.path)], node2.env)
    assert f"shared tier s3://{shared}/{PREFIX}: hits {NBLOCKS} " in shown.stdout, shown.describe()
    # the shared copies are in node 2's own tiers now: a second read asks neither store
    mark = request_log.mark()
    read_everything(node2)
    assert request_log.since(mark, shared) == [] and origin_gets(request_log, mark, origin) == []


def test_conditional_put_race_writes_each_block_once(mounter, two_buckets, fault_proxy, s3):
    """Both nodes miss every block in the shared tier (its GETs answer 404) and both offer every
    block: the conditional PUT lets exactly one write of each through."""
    origin, shared = two_buckets
    fault_proxy.add(Fault("error", ops="get", key=rf"^{PREFIX}/", status=404, code="NoSuchKey"))
    args = shared_args(shared, fault_proxy.url, "--shared-cache-claim-wait", "0")    # the race itself
    nodes = [mounter.mount(origin, *args), mounter.mount(origin, *args)]
    threads = [threading.Thread(target=read_everything, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert wait_until(lambda: all(drained(n) for n in nodes), 15)
    stats = [n.stats() for n in nodes]
    writes = sum(s["shared_cache_writes"] for s in stats)
    conflicts = sum(s["shared_cache_write_conflicts"] for s in stats)
    assert (writes, conflicts) == (NBLOCKS, NBLOCKS), stats
    puts = [r for r in fault_proxy.seen("put") if r.bucket == shared]
    assert len(puts) == 2 * NBLOCKS and sorted(r.status for r in puts) == [200] * NBLOCKS + [412] * NBLOCKS, puts
    assert len(shared_objects(s3, shared)) == NBLOCKS
    for n in nodes:
        read_everything(n)


def test_corrupt_truncated_and_foreign_objects_are_misses_and_deleted(mounter, two_buckets, moto_server,
                                                                       request_log, s3):
    origin, shared = two_buckets
    args = shared_args(shared, moto_server.endpoint_url)
    node1 = mounter.mount(origin, *args)
    read_everything(node1)
    assert wait_until(lambda: drained(node1, NBLOCKS), 15), node1.stats()
    good = shared_objects(s3, shared)
    names = sorted(good)
    corrupt, truncated, foreign = names[:3]
    flipped = bytearray(good[corrupt])
    flipped[-7] ^= 0x55
    s3.put_object(Bucket=shared, Key=corrupt, Body=bytes(flipped))
    s3.put_object(Bucket=shared, Key=truncated, Body=good[truncated][:len(good[truncated]) // 2])
    s3.put_object(Bucket=shared, Key=foreign, Body=good[names[3]])     # another block's whole object

    node2 = mounter.mount(origin, *args)
    mark = request_log.mark()
    read_everything(node2)
    assert wait_until(lambda: drained(node2), 15)
    s = node2.stats()
    assert (s["shared_cache_corrupt"], s["shared_cache_hits"]) == (3, NBLOCKS - 3), s
    assert len(origin_gets(request_log, mark, origin)) == 3, "only the three bad blocks came from the origin"
    after = shared_objects(s3, shared)
    for name in (corrupt, truncated, foreign):
        assert after.get(name) in (None, good[name]), f"{name}: the bad object is still there"
    log = node2.log_text()
    assert log.count("is not usable") == 3, log


def test_a_dead_shared_tier_changes_nothing_but_speed(mounter, two_buckets):
    origin, _ = two_buckets
    node = mounter.mount(origin, *shared_args("nowhere", free_closed_port_url(), "--shared-cache-deadline", "0.5"))
    t0 = time.monotonic()
    read_everything(node)
    assert time.monotonic() - t0 < 10
    s = node.stats()
    assert s["shared_cache_errors"] >= 3 and s["shared_cache_hits"] == 0
    assert s["shared_cache_down"] == 1


def test_a_stalled_shared_tier_falls_back_within_its_deadline(mounter, two_buckets, fault_proxy, moto_server):
    origin, shared = two_buckets
    filler = mounter.mount(origin, *shared_args(shared, moto_server.endpoint_url))
    read_everything(filler)
    assert wait_until(lambda: drained(filler, NBLOCKS), 15)
    node = mounter.mount(origin, *shared_args(shared, fault_proxy.url, "--shared-cache-deadline", "0.5"))
    with fault_proxy.outage("blackhole"):
        t0 = time.monotonic()
        read_everything(node)
        took = time.monotonic() - t0
    assert took < 10, took
    s = node.stats()
    assert s["shared_cache_hits"] == 0 and s["shared_cache_errors"] >= 3 and s["s3_get"] >= NBLOCKS
    # slow (500 ms a request, the case) but within the default 1 s deadline: served by the
    # shared tier, bytes verified, only slower
    node2 = mounter.mount(origin, *shared_args(shared, fault_proxy.url))
    with fault_proxy.fault(Fault("delay", ops="get", seconds=0.5)):
        read_everything(node2)
    assert node2.stats()["shared_cache_hits"] == NBLOCKS


def test_an_origin_object_changed_between_nodes_is_never_served_stale(mounter, two_buckets, moto_server, s3):
    origin, shared = two_buckets
    args = shared_args(shared, moto_server.endpoint_url)
    node1 = mounter.mount(origin, *args)
    read_everything(node1)
    assert wait_until(lambda: drained(node1, NBLOCKS), 15)
    new = object_bytes("big-v2", len(DATA["dir/big"]))          # same size, other bytes, new ETag
    s3.put_object(Bucket=origin, Key="dir/big", Body=new)
    node2 = mounter.mount(origin, *args)
    read_everything(node2, {**DATA, "dir/big": new})
    s = node2.stats()
    assert s["shared_cache_hits"] == NBLOCKS - BLOCKS["dir/big"], s
    assert s["shared_cache_misses"] == BLOCKS["dir/big"]


def test_warmup_shared_only_fills_the_tier_for_other_nodes(mounter, two_buckets, moto_server, request_log, s3):
    origin, shared = two_buckets
    args = shared_args(shared, moto_server.endpoint_url)
    filler = mounter.mount(origin, *args)
    res = run_cachefs(["warmup", str(filler.path), "--shared-only"], filler.env)
    assert res.returncode == 0, res.describe()
    assert "written" in res.stdout, res.stdout
    assert len(shared_objects(s3, shared)) == NBLOCKS
    assert filler.stats()["cache_blocks"] == 0, "the filling node keeps nothing of it"
    again = run_cachefs(["warmup", str(filler.path), "--shared-only"], filler.env)
    assert again.returncode == 0 and "0 B written" in again.stdout, again.describe()

    node = mounter.mount(origin, *args)
    mark = request_log.mark()
    read_everything(node)
    assert origin_gets(request_log, mark, origin) == []
    assert node.stats()["shared_cache_hits"] == NBLOCKS


def test_gc_keeps_the_tier_under_its_size_while_nodes_read(mounter, two_buckets, moto_server, s3, request_log):
    origin, shared = two_buckets
    args = shared_args(shared, moto_server.endpoint_url)
    node1 = mounter.mount(origin, *args)
    read_everything(node1)
    assert wait_until(lambda: drained(node1, NBLOCKS), 15)
    before = shared_objects(s3, shared)
    limit = sum(map(len, before.values())) // 2
    res = run_cachefs(["shared-cache", "gc", f"s3://{shared}/{PREFIX}", "--max-size", str(limit),
                       "--shared-cache-endpoint-url", moto_server.endpoint_url,
                       "--shared-cache-addressing-style", "path", "--shared-cache-region", REGION], node1.env)
    assert res.returncode == 0, res.describe()
    after = shared_objects(s3, shared)
    assert 0 < len(after) < len(before) and sum(map(len, after.values())) <= limit, res.stdout
    assert "deleted" in res.stdout
    node2 = mounter.mount(origin, *args)       # reads what is left from the tier, the rest from the origin
    mark = request_log.mark()
    read_everything(node2)
    s = node2.stats()
    assert s["shared_cache_hits"] == len(after) and s["shared_cache_corrupt"] == 0
    assert len(origin_gets(request_log, mark, origin)) == NBLOCKS - len(after)


# -- claims: nodes missing a block at once fetch it from the origin once --------------------------
def read_at_once(nodes, data=DATA) -> float:
    """All nodes read `data` at the same moment (threads); the seconds it took."""
    start = threading.Barrier(len(nodes))
    errors: list[BaseException] = []

    def read(n) -> None:
        start.wait()
        try:
            read_everything(n, data)
        except BaseException as e:  # noqa: BLE001 - raised in the test's thread below
            errors.append(e)
    threads = [threading.Thread(target=read, args=(n,)) for n in nodes]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return time.monotonic() - t0


def claims_left(s3, bucket) -> list[str]:
    return [k for k in list_all_keys(s3, bucket, PREFIX + "/") if k.endswith(CLAIM_SUFFIX)]


def test_nodes_reading_at_once_fetch_each_block_from_the_origin_once(mounter, make_bucket, fault_proxy,
                                                                    moto_server, request_log, s3):
    """Three nodes read the same files at the same moment; the origin answers in 0.3 s (its GETs
    delayed by the proxy), so every node misses every block in the shared tier before any node has
    written it: without claims each block would come from the origin three times."""
    data = {**DATA, "dir/big2": object_bytes("big2", 1 * MiB)}
    blocks = sum(-(-len(v) // BLOCK) for v in data.values())
    size = sum(map(len, data.values()))
    origin, shared = make_bucket("claims-origin", data), make_bucket("claims-tier")
    fault_proxy.add(Fault("delay", ops="get", seconds=0.3))
    args = shared_args(shared, moto_server.endpoint_url)          # the shared tier direct, the origin slow
    nodes = [mounter.mount(origin, *args, endpoint_url=fault_proxy.url) for _ in range(3)]
    mark = request_log.mark()
    read_at_once(nodes, data)
    stats = [n.stats() for n in nodes]
    origin_bytes = sum(s["s3_get_bytes"] for s in stats)
    assert origin_bytes <= 1.1 * size, (origin_bytes, size, stats)
    assert len(origin_gets(request_log, mark, origin)) <= blocks + 1
    total = {k: sum(s[k] for s in stats) for k in ("shared_cache_claims_won", "shared_cache_claims_lost",
                                                   "shared_cache_claim_waits_served", "shared_cache_claim_timeouts")}
    assert total["shared_cache_claims_won"] == blocks and total["shared_cache_claim_timeouts"] == 0, total
    assert total["shared_cache_claims_lost"] >= blocks, "the nodes did miss at the same time"
    assert sum(s["shared_cache_hits"] for s in stats) == 2 * blocks
    assert wait_until(lambda: claims_left(s3, shared) == [], 15), "the winners delete their claims"
    assert len(shared_objects(s3, shared)) == blocks


def test_a_stale_claim_does_not_hold_reads_beyond_the_wait(mounter, two_buckets, moto_server, s3):
    """Claims of a node that died an hour ago (and one that is not a claim at all) on every block:
    the reader takes them over a quarter into its wait, not at its end, and fetches the blocks."""
    origin, shared = two_buckets
    names = []
    for key, body in DATA.items():
        etag = s3.head_object(Bucket=origin, Key=key)["ETag"]
        for i in range(-(-len(body) // BLOCK)):
            ident = BlockId(moto_server.endpoint_url.rstrip("/"), origin, key, etag, BLOCK, i).encode()
            names.append(object_name(PREFIX + "/", ident))
    for i, name in enumerate(names):
        body = b"not a claim" if i == 0 else claim_body(now=time.time() - 3600)
        s3.put_object(Bucket=shared, Key=name + CLAIM_SUFFIX, Body=body)
    node = mounter.mount(origin, *shared_args(shared, moto_server.endpoint_url, "--shared-cache-claim-wait", "2"))
    t0 = time.monotonic()
    for k, want in DATA.items():            # one file after another: at most a quarter-wait per block
        assert read_all(node / k) == want
    took = time.monotonic() - t0
    s = node.stats()
    assert (s["shared_cache_claims_lost"], s["shared_cache_claims_stale"], s["shared_cache_claims_won"]) == \
        (NBLOCKS, NBLOCKS, NBLOCKS), s
    assert s["shared_cache_claim_timeouts"] == 0
    assert took < 0.5 * 2 * len(DATA) + 2, took       # a whole wait per block would be >= 2 s a file
    assert wait_until(lambda: drained(node, NBLOCKS) and claims_left(s3, shared) == [], 15), node.stats()
    assert "is stale" in node.log_text()


def test_the_claim_path_reads_correctly_when_the_shared_tier_fails(mounter, two_buckets, fault_proxy, s3):
    """Every block a shared miss (GETs answer 404), and (1) claim PUTs failing (503), then (2) claims
    won but the claimed blocks never written (their PUTs fail), then (3) the tier stalled: the bytes
    are right, from the origin, within bounded time."""
    origin, shared = two_buckets
    fault_proxy.add(Fault("error", ops="get", key=rf"^{PREFIX}/", status=404, code="NoSuchKey"))
    claim_put = fault_proxy.add(Fault("error", ops="put", key=r"\.claim$", status=503, code="SlowDown"))
    args = shared_args(shared, fault_proxy.url, "--shared-cache-deadline", "0.5", "--shared-cache-claim-wait", "0.5")
    pair = [mounter.mount(origin, *args), mounter.mount(origin, *args)]
    assert read_at_once(pair) < 20
    for s in (n.stats() for n in pair):
        assert s["shared_cache_claims_won"] == s["shared_cache_claims_lost"] == 0, s
        assert s["shared_cache_errors"] >= 1 and s["s3_get"] >= NBLOCKS, s
    for n in pair:
        mounter.umount(n)       # their read-ahead must not claim blocks once the fault is gone

    fault_proxy.remove(claim_put)
    fault_proxy.add(Fault("error", ops="put", key=r"[0-9a-f]$", status=500, code="InternalError"))
    pair = [mounter.mount(origin, *args), mounter.mount(origin, *args)]
    assert read_at_once(pair) < 20
    stats = [n.stats() for n in pair]
    assert sum(s["shared_cache_claims_won"] for s in stats) >= NBLOCKS // 2, stats     # most, under load
    assert sum(s["shared_cache_claim_waits_served"] for s in stats) == 0
    assert sum(s["shared_cache_write_errors"] for s in stats) >= 1
    assert wait_until(lambda: claims_left(s3, shared) == [], 15), "failed claims are released"
    for n in pair:
        mounter.umount(n)

    node = mounter.mount(origin, *args)
    with fault_proxy.outage("blackhole"):
        t0 = time.monotonic()
        read_everything(node)
        assert time.monotonic() - t0 < 15
    assert node.stats()["shared_cache_hits"] == 0
