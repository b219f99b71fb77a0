"""The fast path on a real read-only mount (cachefs/fastpath.py, native/fastfuse.c): files the order
prefetch has whole in memory are looked up, opened, read and released in C, with the right bytes;
their opens still move the order on; a file read once is read again through Python from the cache;
an object changed in S3 is not answered from the old copy once its listing is stale; and
--fast-path false leaves every request to Python."""
from __future__ import annotations

import os
import time

import pytest
from mount_helpers import (
    assert_older_handle_stale,
    object_bytes,
    read_all,
    relisted_behind_the_kernel,
    run_cachefs,
    run_threads,
    wait_until,
)

from cachefs.hints import send_order

FILES = [f"train/c{d}/img-{i:02d}.jpg" for d in range(3) for i in range(8)]     # 24 small files
OBJECTS = {key: object_bytes(key, 3000 + 7 * i) for i, key in enumerate(FILES)}
QUIET = ("--read-only", "--metrics-addr", "none", "--prefetch-small-files", "0", "--hedging", "false")

pytestmark = pytest.mark.skipif(
    not __import__("importlib.util").util.find_spec("cachefs._fastfuse"), reason="cachefs._fastfuse not built")


def prefetched(m, n: int) -> None:
    assert wait_until(lambda: m.stats()["order_prefetched_files"] == n, 30), m.stats()


def test_files_fetched_for_an_order_are_served_in_c(mounter, make_bucket, request_log):
    bucket = make_bucket("fast-path", OBJECTS)
    m = mounter.mount(bucket, *QUIET)
    send_order(str(m.path), FILES)
    prefetched(m, len(FILES))
    mark = request_log.mark()
    for key in FILES:
        assert read_all(m / key) == OBJECTS[key]
    s = m.stats()
    assert s["fast_opens"] == len(FILES) and s["fast_releases"] == len(FILES), s
    assert s["fast_lookups"] == len(FILES) and s["fast_read_bytes"] == sum(map(len, OBJECTS.values())), s
    assert s["fuse_reads"] == 0, s                          # not one read went through Python
    assert s["fast_held_bytes"] == 0, s                     # read once: the bytes let go
    assert wait_until(lambda: m.stats()["order_opens_matched"] == len(FILES), 10), m.stats()
    # Read again: the kernel keeps the pages of the version read through C, or Python serves them
    # from the cache tiers; no GET either way, and the bytes are the same.
    for key in FILES:
        assert read_all(m / key) == OBJECTS[key]
    assert [r for r in request_log.since(mark, bucket) if r.is_object_get] == []
    assert m.stats()["fast_opens"] == len(FILES)


def test_fast_path_false_leaves_every_request_to_python(mounter, make_bucket):
    bucket = make_bucket("fast-path-off", OBJECTS)
    m = mounter.mount(bucket, *QUIET, "--fast-path", "false")
    send_order(str(m.path), FILES)
    prefetched(m, len(FILES))
    for key in FILES:
        assert read_all(m / key) == OBJECTS[key]
    s = m.stats()
    assert "fast_opens" not in s and s["fuse_reads"] >= len(FILES), s


def test_a_writable_mount_has_no_fast_path(mounter, make_bucket):
    bucket = make_bucket("fast-path-rw", OBJECTS)
    m = mounter.mount(bucket, *QUIET[1:])
    send_order(str(m.path), FILES[:4])
    prefetched(m, 4)
    assert read_all(m / FILES[0]) == OBJECTS[FILES[0]]
    assert "fast_opens" not in m.stats()


def test_an_object_changed_in_s3_is_not_served_from_the_old_copy_after_its_listing_expired(
        mounter, make_bucket, s3):
    bucket = make_bucket("fast-path-changed", OBJECTS)
    m = mounter.mount(bucket, *QUIET, "--listing-ttl", "2")
    key = FILES[5]
    send_order(str(m.path), [key])
    prefetched(m, 1)
    assert m.stats()["fast_held_bytes"] == len(OBJECTS[key])
    changed = b"a new version, of another size"
    s3.put_object(Bucket=bucket, Key=key, Body=changed)
    time.sleep(2.5)                  # the listing the copy was answered under is stale now
    assert read_all(m / key) == changed
    assert m.stats()["fast_opens"] == 0


def test_files_a_directory_prefetch_fetched_are_served_in_c(mounter, make_bucket):
    """No order: two opens in a directory prefetch the rest of it, which the C then answers."""
    bucket = make_bucket("fast-path-dir", OBJECTS)
    m = mounter.mount(bucket, "--read-only", "--metrics-addr", "none", "--hedging", "false")
    files = [k for k in FILES if k.startswith("train/c1/")]
    for key in files[:2]:
        assert read_all(m / key) == OBJECTS[key]
    rest = sum(len(OBJECTS[k]) for k in files[2:])
    assert wait_until(lambda: m.stats()["fast_held_bytes"] == rest, 30), m.stats()
    for key in files[2:]:
        assert read_all(m / key) == OBJECTS[key]
    s = m.stats()
    assert s["fast_opens"] == len(files) - 2 and s["fast_held_bytes"] == 0, s


def test_a_reload_of_the_kernel_timeouts_takes_every_file_back(mounter, make_bucket):
    """Its entries carry the timeouts they were handed with: a reload of them empties the tables."""
    bucket = make_bucket("fast-path-reload", OBJECTS)
    m = mounter.mount(bucket, *QUIET)
    send_order(str(m.path), FILES[:3])
    prefetched(m, 3)
    assert m.stats()["fast_held_bytes"] == sum(len(OBJECTS[k]) for k in FILES[:3])
    res = run_cachefs(["reload", str(m.path), "attr_timeout=30"], m.env)
    assert res.returncode == 0, res.describe()
    assert m.stats()["fast_held_bytes"] == 0
    assert read_all(m / FILES[0]) == OBJECTS[FILES[0]]
    assert m.stats()["fast_opens"] == 0


def test_readers_racing_over_the_same_files_get_the_right_bytes(mounter, make_bucket):
    """Eight threads read every file, shuffled, three times over, while the order's files are being
    handed over: C and Python answer the same files at once (first opens, second opens, handles
    still reading after the bytes were let go), and every read is whole and right."""
    import random

    bucket = make_bucket("fast-path-race", OBJECTS)
    m = mounter.mount(bucket, *QUIET)
    send_order(str(m.path), FILES)
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(3):
            for key in rng.sample(FILES, len(FILES)):
                data = read_all(m / key)
                if data != OBJECTS[key]:
                    errors.append(f"{key}: {len(data)} bytes")

    run_threads(reader, [(i,) for i in range(8)], 120)
    assert not errors, errors[:5]
    s = m.stats()
    assert s["fast_opens"] > 0 and s["fast_opens"] == s["fast_releases"], s
    # Every file was read once at least: by the C (let go at its release) or by Python (let go at
    # its open, or never held if Python opened it before the hand-over).
    assert s["fast_held_bytes"] == 0, s
    assert m.pid()                               # the daemon is still there


def test_a_handle_the_c_opened_on_an_old_size_reads_estale_once_python_opens_the_new_one(mounter, make_bucket, s3):
    """As tests/test_mount_consistency.py's two-sizes test, the older handle being the C's: its
    reads get ESTALE, not its bytes cut at the new size the kernel was told."""
    old, new = object_bytes("c-old", 40_000), object_bytes("c-new", 7000)
    bucket = make_bucket("fast-two-sizes", {"d/obj.bin": old})
    m = mounter.mount(bucket, *QUIET, "--listing-ttl", "1", "--attr-timeout", "3600", "--entry-timeout", "3600")
    path = m / "d/obj.bin"
    send_order(str(m.path), ["d/obj.bin"])
    prefetched(m, 1)
    first = os.open(path, os.O_RDONLY)
    try:
        assert m.stats()["fast_opens"] == 1
        assert os.pread(first, 100, 0) == old[:100]
        s3.put_object(Bucket=bucket, Key="d/obj.bin", Body=new)
        relisted_behind_the_kernel(m)
        assert_older_handle_stale(path, first, old, new)     # through Python: the C forgot the old one
    finally:
        os.close(first)
