"""Remounting with the same --cache-dir: cached metadata and blocks are reused, inode numbers are stable."""
from __future__ import annotations

import os
import time

import pytest
from mount_helpers import (
    BLOCK_SIZE,
    Mount,
    first_difference,
    inode_map,
    is_mounted,
    mount_args,
    object_bytes,
    one_line_error,
    read_all,
    run_cachefs,
    stats_delta,
    summarize,
    walk_tree,
)

pytestmark = pytest.mark.timeout(180)

BS = BLOCK_SIZE
REMOUNT_OBJECTS = {
    "a.bin": object_bytes("a", 3 * BS + 5),
    "d/b.bin": object_bytes("b", BS),
    "d/e/c.bin": object_bytes("c", 100),
    "d/empty": b"",
    "marker/": b"",
    "m/big.bin": object_bytes("big", 20 * BS + 1),
}
TTL_ARGS = ("--listing-ttl", "3600")  # listings stay valid across the remount
LISTING_TTL_EXPIRED_S = 1.5  # past a 1 s listing TTL


def read_everything(m) -> tuple[dict, dict[str, bytes]]:
    """Walk, stat and read every file: what a training epoch does."""
    tree = walk_tree(m.path)
    return tree, {rel: read_all(m / rel) for rel, kind in tree.items() if kind != "dir"}


def assert_contents_exact(contents: dict[str, bytes]) -> None:
    expected = {k: v for k, v in REMOUNT_OBJECTS.items() if not k.endswith("/")}
    assert set(contents) == set(expected)
    for rel, data in contents.items():
        assert data == expected[rel], f"{rel}: {first_difference(data, expected[rel])}"


@pytest.fixture
def warm(mounter, make_bucket):
    """A bucket read completely through one mount, which is then unmounted with `cachefs umount`."""
    name = make_bucket("remount", REMOUNT_OBJECTS)
    m = mounter.mount(name, *TTL_ARGS)
    tree, contents = read_everything(m)
    assert_contents_exact(contents)
    inodes = inode_map(m.path)
    mounter.umount(m)
    return name, m, tree, inodes


def test_remount_warm_reads_issue_no_gets(mounter, warm, request_log):
    name, first, tree, _ = warm
    mark_before_mount = request_log.mark()
    m = mounter.remount(first)
    at_mount = request_log.since(mark_before_mount, name)
    assert [r for r in at_mount if r.is_object_get] == [], f"object GETs while mounting: {summarize(at_mount)}"

    mark, before = request_log.mark(), m.stats()
    tree2, contents = read_everything(m)
    seen = request_log.since(mark, name)
    after = m.stats()

    assert tree2 == tree
    assert_contents_exact(contents)
    assert [r for r in seen if r.method == "GET"] == [], f"warm epoch went to S3: {summarize(seen)}"
    delta = stats_delta(before, after, "s3_get", "s3_list", "s3_get_bytes", "cache_hits")
    assert (delta["s3_get"], delta["s3_list"], delta["s3_get_bytes"]) == (0, 0, 0), delta
    assert delta["cache_hits"] > 0, delta


def test_remount_counters_show_cached_blocks(mounter, warm):
    """The blocks written by the first mount are counted by the second daemon from the start."""
    _, first, _, _ = warm
    m = mounter.remount(first)
    s = m.stats()
    data_bytes = sum(len(v) for v in REMOUNT_OBJECTS.values())
    assert s["cache_bytes"] >= data_bytes, s
    assert s["cache_blocks"] >= sum(-(-len(v) // BS) for v in REMOUNT_OBJECTS.values()), s


def test_inode_numbers_are_stable_across_remounts(mounter, warm):
    _, first, _, inodes = warm
    assert len(set(inodes.values())) == len(inodes), f"inode numbers not unique: {inodes}"
    m = mounter.remount(first)
    assert inode_map(m.path) == inodes
    mounter.umount(m)
    m = mounter.remount(first)
    # Looked up in another order this time: numbers must not depend on the order of first lookup.
    for rel in sorted(inodes, reverse=True):
        assert (m.path / rel).stat().st_ino == inodes[rel], rel


def test_blocks_are_reused_after_the_listing_ttl_expired(mounter, make_bucket, request_log):
    """Listings may be fetched again (TTL gone), but unchanged objects are not downloaded again."""
    name = make_bucket("remount-expired", REMOUNT_OBJECTS)
    m = mounter.mount(name, "--listing-ttl", "1", "--attr-timeout", "1", "--entry-timeout", "1")
    assert_contents_exact(read_everything(m)[1])
    mounter.umount(m)
    time.sleep(LISTING_TTL_EXPIRED_S)
    m = mounter.remount(m)
    mark = request_log.mark()
    assert_contents_exact(read_everything(m)[1])
    seen = request_log.since(mark, name)
    assert [r for r in seen if r.is_object_get] == [], f"cached blocks fetched again: {summarize(seen)}"


def test_object_changed_between_mounts_is_read_new(mounter, make_bucket, s3):
    """The cache dir holds the old bytes; after the listing TTL the new object must win (new ETag, new keys)."""
    name = make_bucket("remount-changed", REMOUNT_OBJECTS)
    m = mounter.mount(name, "--listing-ttl", "1", "--attr-timeout", "1", "--entry-timeout", "1")
    assert_contents_exact(read_everything(m)[1])
    mounter.umount(m)
    new = object_bytes("a-new", len(REMOUNT_OBJECTS["a.bin"]))  # same size: only the ETag tells
    s3.put_object(Bucket=name, Key="a.bin", Body=new)
    time.sleep(LISTING_TTL_EXPIRED_S)
    m = mounter.remount(m)
    got = read_all(m / "a.bin")
    assert got == new, first_difference(got, new)
    assert read_all(m / "d/b.bin") == REMOUNT_OBJECTS["d/b.bin"]


def test_remount_with_another_block_size_reads_exact_bytes(mounter, make_bucket):
    name = make_bucket("remount-bs", REMOUNT_OBJECTS)
    m = mounter.mount(name, *TTL_ARGS)
    assert_contents_exact(read_everything(m)[1])
    mounter.umount(m)
    m2 = mounter.mount(name, *TTL_ARGS, mountpoint=m.path, cache_dir=m.cache_dir, block_size="1MiB")
    assert_contents_exact(read_everything(m2)[1])


@pytest.mark.parametrize("what", ["bucket", "prefix"])
@pytest.mark.daemon_errors_ok(r"cache dir")  # a refused mount logs why into the cache dir's log
def test_cache_dir_reused_for_another_source_never_shows_the_old_tree(mounter, make_bucket, what):
    """Cached listings belong to one bucket/prefix: a cache dir mounted for another source either shows that
    source or is refused with one clean error line; it never shows the first source's tree."""
    first = make_bucket("source-a", {"p1/only-in-a.txt": b"a", "p2/only-in-b.txt": b"b"})
    second = first if what == "prefix" else make_bucket("source-b", {"p1/only-in-b.txt": b"b"})
    m = mounter.mount(first, *TTL_ARGS, prefix="p1")
    assert os.listdir(m.path) == ["only-in-a.txt"]
    mounter.umount(m)
    url = f"s3://{second}/{'p1' if what == 'bucket' else 'p2'}"
    other = Mount(url, m.path, m.cache_dir, mount_args(url, m.path, m.cache_dir, mounter.endpoint_url, *TTL_ARGS),
                  m.env)
    mounter.mounts.append(other)
    res = run_cachefs(other.args, other.env)
    if res.returncode != 0:
        line = one_line_error(res.stderr)
        assert line and "cache" in line, res.describe()
        assert not is_mounted(m.path)
    else:
        other.pid()
        assert os.listdir(other.path) == ["only-in-b.txt"]
        assert (other / "only-in-b.txt").read_bytes() == b"b"
