"""Read-ahead for the small-file workload on a real mount, counted in the S3 server's request log:
directories listed in the background on their first lookup, small files fetched whole on open."""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request

import pytest
from mount_helpers import MiB, object_bytes, read_all, summarize, wait_until

pytestmark = pytest.mark.timeout(240)

FILES = 60


@pytest.mark.parametrize("tiers", [(), ("--cache", "mem:64MiB")], ids=["memory+disk", "memory-only"])
def test_a_loader_opening_paths_without_listing_pays_one_listing_per_directory(mounter, make_bucket,
                                                                               request_log, tiers):
    """The loader opens paths from a file list and never lists: HEAD + LIST per file without
    directory listings; with them, the first lookup in a directory lists it and that answers the rest.
    After two opens in a directory its other small files are fetched ahead: still one GET each. On a
    mount without a disk tier too (its room was counted on the disk tiers alone: none prefetched)."""
    objects = {f"train/c{d}/{i:03d}.jpg": object_bytes(f"img{d}.{i}", 20_000 + i) for d in range(2)
               for i in range(FILES)}
    name = make_bucket("dirprefetch", objects)
    m = mounter.mount(name, "--hedging", "false", *tiers)     # a straggler's duplicate GET would blur the count
    mark = request_log.mark()
    for key in sorted(objects):                     # one path at a time, like a loader's worker
        assert read_all(m / key) == objects[key], key
    seen = request_log.since(mark, name)
    heads = [r for r in seen if r.method == "HEAD"]
    lists = [r for r in seen if r.is_list]
    gets = [r for r in seen if r.is_object_get]
    # One by one this is 2 x 120 requests; with listings one LIST per directory (root, train, c0, c1)
    assert len(heads) + len(lists) <= 6, summarize(heads + lists)
    assert len(gets) == len(objects), summarize(gets)
    s = m.stats()
    assert s["dir_prefetches"] == 2 and s["cache_hits"] > 0, s


@pytest.mark.parametrize("threshold,expect_gets", [("4MiB", 3), ("0", 0)])
def test_open_of_a_small_file_fetches_it_whole_before_any_read(mounter, make_bucket, request_log,
                                                               threshold, expect_gets):
    data = object_bytes("whole", 2 * MiB + 300_000)      # 3 blocks of 1 MiB
    name = make_bucket("wholefile", {"f": data})
    m = mounter.mount(name, "--prefetch-small-files", threshold, "--hedging", "false", block_size="1MiB")
    os.stat(m / "f")
    mark = request_log.mark()
    fd = os.open(m / "f", os.O_RDONLY)
    try:
        def object_gets():
            return [r for r in request_log.since(mark, name) if r.is_object_get]
        if expect_gets:
            assert wait_until(lambda: len(object_gets()) >= expect_gets, 10.0), summarize(object_gets())
        else:
            request_log.settle(quiet_s=0.5)
        assert len(object_gets()) == expect_gets, summarize(object_gets())
        got = b""
        while chunk := os.read(fd, 1 << 20):
            got += chunk
    finally:
        os.close(fd)
    assert got == data
    if expect_gets:                                       # the read found every block at hand
        assert len(object_gets()) == expect_gets, summarize(object_gets())


def test_a_reopen_that_keeps_the_page_cache_prefetches_nothing(mounter, make_bucket, tmp_path):
    """A warm epoch: the kernel keeps its pages of the version it read, so the open starts no
    prefetch (not even from the disk tier); with the pages dropped, the reads still get every block,
    on demand from the disk tier."""
    data = object_bytes("again", 2 * MiB + 300_000)       # 3 blocks of 1 MiB
    name = make_bucket("reopen", {"f": data})
    m = mounter.mount(name, "--cache", f"ssd:{tmp_path / 'ssd'}:64MiB", "--prefetch-small-files", "4MiB",
                      block_size="1MiB")
    assert read_all(m / "f") == data
    first = m.stats()
    assert first["readahead_blocks"] == 3                 # the first open fetched it whole
    assert read_all(m / "f") == data                      # the kernel's pages, kept
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
    with open(m / "f", "rb") as f:
        time.sleep(0.5)                                   # a prefetch would have started by now
        opened = m.stats()
        assert opened["readahead_blocks"] == 3 and opened["readahead_disk_blocks"] == first["readahead_disk_blocks"]
        assert f.read() == data                           # the pages are gone: the disk tier
    again = m.stats()
    assert again["s3_get"] == first["s3_get"] and again["cache_hits"] >= first["cache_hits"] + 1, again


def test_read_ahead_is_a_size_rounded_to_blocks(mounter, make_bucket):
    data = object_bytes("seq", 12 * MiB)
    name = make_bucket("readaheadsize", {"big": data})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = mounter.mount(name, "--read-ahead", "3.5MiB", "--metrics-addr", f"127.0.0.1:{port}", block_size="1MiB")
    assert read_all(m / "big") == data
    assert 0 < m.stats()["readahead_blocks"] <= 12
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    gauge = [line for line in text.splitlines() if line.startswith("cachefs_readahead_window_bytes ")]
    assert gauge and float(gauge[0].split()[1]) == 3 * MiB, gauge
