"""The shared cache tier on real mounts: two daemons with their own cache directories are two nodes;
moto's server is both the origin (one bucket) and the shared store (another bucket), request-counted.
Fill once, read everywhere; the conditional PUT race; corrupt, truncated and foreign shared objects;
a dead or stalled shared tier; an origin object changed between nodes; warmup --shared-only; gc."""
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
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in list_all_keys(s3, bucket, PREFIX + "/")}


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
    args = shared_args(shared, fault_proxy.url)
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
    # slow (0.3 s a request) but within the deadline: served by the shared tier, only slower
    node2 = mounter.mount(origin, *shared_args(shared, fault_proxy.url, "--shared-cache-deadline", "1"))
    with fault_proxy.fault(Fault("delay", ops="get", seconds=0.3)):
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
