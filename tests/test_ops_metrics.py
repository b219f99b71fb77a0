"""The Prometheus exporter of a real mount: scraped over HTTP while files are read through FUSE."""
from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from mount_helpers import MiB, mount_args, object_bytes, one_line_error, read_all, run_cachefs

from cachefs import metrics

DOCS = Path(__file__).resolve().parent.parent / "docs" / "METRICS.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    """{'name{labels}': value} of one scrape."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def total(sample: dict[str, float], name: str, **labels: str) -> float:
    """Sum of a metric over the series whose labels include `labels`."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in sample.items()
               if re.fullmatch(re.escape(name) + r"(\{.*\})?", k) and all(w in k for w in want))


@pytest.fixture(scope="module")
def metrics_mount(module_mounter, make_bucket):
    objects = {"data/a.bin": object_bytes("a", 3 * MiB), "data/b.bin": object_bytes("b", MiB + 7)}
    bucket = make_bucket("metrics", objects)
    port = free_port()
    # listing TTL 0: every lookup asks S3 by name (HEAD), so that a missing name makes a 404
    m = module_mounter.mount(bucket, "--metrics-addr", f"127.0.0.1:{port}", "--listing-ttl", "0")
    return m, port, objects


def test_values_move_as_reads_happen(metrics_mount):
    m, port, objects = metrics_mount
    before = scrape(port)
    assert read_all(m / "data/a.bin") == objects["data/a.bin"]
    # 256 KiB blocks are small objects: their disk copies (and cache_puts) come from the cache's
    # writer thread shortly after the reads return
    deadline = time.monotonic() + 10
    while True:
        after = scrape(port)
        if (total(after, "cachefs_cache_puts_total") - total(before, "cachefs_cache_puts_total") >= 12
                or time.monotonic() > deadline):
            break
        time.sleep(0.05)

    def moved(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("cachefs_fuse_op_seconds_count", op="read") >= 3 * MiB / (1 * MiB)
    assert moved("cachefs_fuse_op_seconds_count", op="lookup") >= 1
    assert moved("cachefs_fuse_read_bytes_total") == 3 * MiB
    assert moved("cachefs_s3_requests_total", operation="GetObject", status="206") >= 12   # 256 KiB blocks
    assert moved("cachefs_s3_request_seconds_count", operation="GetObject") >= 12
    assert moved("cachefs_s3_received_bytes_total", operation="GetObject") >= 3 * MiB
    assert moved("cachefs_cache_misses_total") >= 1
    assert moved("cachefs_cache_puts_total") >= 12
    assert total(after, "cachefs_cache_used_bytes", tier="ssd") >= 3 * MiB
    assert total(after, "cachefs_cache_quota_bytes", tier="mem") > 0
    assert total(after, "cachefs_cache_tier_up", tier="ssd") == 1
    assert total(after, "cachefs_cache_dir_up", tier="ssd") == 1

    # Read again in a new open: served by the page cache or the tiers, never by another GET.
    assert read_all(m / "data/a.bin") == objects["data/a.bin"]
    again = scrape(port)
    assert total(again, "cachefs_s3_requests_total", operation="GetObject") == \
        total(after, "cachefs_s3_requests_total", operation="GetObject")


def test_s3_status_and_fuse_errors_by_operation(metrics_mount):
    m, port, _ = metrics_mount
    before = scrape(port)
    assert not (m / "data/absent.bin").exists()          # a lookup S3 answers with 404 to HEAD
    after = scrape(port)
    assert total(after, "cachefs_s3_requests_total", operation="HeadObject", status="404") > \
        total(before, "cachefs_s3_requests_total", operation="HeadObject", status="404")


def test_the_kernel_stops_asking_for_xattrs_after_the_first_enosys(metrics_mount):
    """getxattr answers ENOSYS once; from then on the kernel answers EOPNOTSUPP itself, so `ls -l`
    (security.selinux, system.posix_acl_access of every entry) sends the daemon no getxattr."""
    m, port, _ = metrics_mount
    with pytest.raises(OSError) as err:
        os.getxattr(m / "data/a.bin", "user.nothing")
    assert err.value.errno == errno.EOPNOTSUPP
    first = scrape(port)
    asked = total(first, "cachefs_fuse_op_seconds_count", op="getxattr")
    assert asked == 1 and total(first, "cachefs_fuse_errors_total", op="getxattr", errno="ENOSYS") == 1
    for _ in range(3):
        listing = subprocess.run(["ls", "-laR", str(m.path)], capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0 and "a.bin" in listing.stdout, listing.stderr
        for name in ("data/a.bin", "data/b.bin", "data", "."):
            with pytest.raises(OSError):
                os.getxattr(m / name, "security.selinux")
    after = scrape(port)
    assert total(after, "cachefs_fuse_op_seconds_count", op="getxattr") == asked


def test_every_exported_name_is_defined_and_documented(metrics_mount):
    _, port, _ = metrics_mount
    sample = scrape(port)
    doc = DOCS.read_text()
    base = {re.sub(r"(_bucket|_count|_sum|_created)$", "", k.split("{")[0]) for k in sample}
    base = {b for b in base if b.startswith("cachefs_")}
    defined = set(metrics.ALL_NAMES)
    assert base <= defined | {n.removesuffix("_total") for n in defined}, base - defined
    missing = [n for n in metrics.ALL_NAMES if f"`{n}`" not in doc]
    assert not missing, f"not in docs/METRICS.md: {missing}"


def test_configured_address_taken_is_a_one_line_error(mounter, make_bucket):
    bucket = make_bucket("metrics-taken")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        mp, cache = mounter.fresh_dir("mnt"), mounter.fresh_dir("cache")
        res = run_cachefs(mount_args(f"s3://{bucket}", mp, cache, mounter.endpoint_url,
                                     "--metrics-addr", f"127.0.0.1:{port}"), mounter.env())
    assert res.returncode == 1, res.describe()
    line = one_line_error(res.stderr)
    assert line and f"--metrics-addr 127.0.0.1:{port}" in line and "in use" in line, res.describe()


def test_metrics_off(mounter, make_bucket):
    m = mounter.mount(make_bucket("metrics-off"), "--metrics-addr", "none")
    assert m.stats()["metrics_url"] is None
