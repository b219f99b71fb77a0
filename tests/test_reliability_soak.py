"""Soak (short in CI): many readers and writers for a fixed time under cache watermark pressure, a small
staging area and injected S3 errors (bench/soak.py).

Zero read or write errors, every byte right (reads, read-backs of written files, and S3 after `cachefs
flush`: exactly the files the writers left), no growth of the daemon's fds, threads or RSS after
warm-up. The long run is `python -m bench.soak --seconds 600` (docs/RELIABILITY.md);
CACHEFS_SOAK_SECONDS sets this one.
"""
from __future__ import annotations

import json
import os
import time

import pytest
from mount_helpers import list_all_keys, run_cachefs

from bench.soak import FAULTS, MOUNT_OPTIONS, check_written, curve_table, dataset, soak

SECONDS = float(os.environ.get("CACHEFS_SOAK_SECONDS", "40"))

pytestmark = pytest.mark.timeout(SECONDS + 180)


def test_soak_readers_and_writers_under_pressure_and_faults(mounter, make_bucket, fault_proxy, tmp_path, s3):
    objects = dataset()
    name = make_bucket("soak", objects)
    for spec in FAULTS:
        fault_proxy.add(spec)
    opts = [o.format(ssd=tmp_path / "ssd", staging=tmp_path / "staging") for o in MOUNT_OPTIONS]
    m = mounter.mount(name, *opts, endpoint_url=fault_proxy.url, block_size=None)
    result = soak(m.path, objects, m.pid(), SECONDS, readers=12, writers=4)
    res = run_cachefs(["flush", str(m.path)], m.env, timeout_s=120)
    assert res.returncode == 0, res.describe()
    stats = m.stats()
    print("\nRELIABILITY soak", json.dumps(result.summary()), json.dumps(fault_proxy.counts()),
          json.dumps({k: stats[k] for k in ("uploads", "upload_parts", "upload_copies", "upload_failures",
                                             "staging_full", "s3_retries", "cache_evictions")}),
          "\n" + curve_table(result))
    assert result.errors == [], result.errors[:10]
    assert check_written(s3, name, result.files) == []
    assert result.reads > 100 and result.writes > 100, result.summary()
    assert {k for k in result.files if "/ckpt/" in k} and {k for k in result.files if k.endswith(".log.1")}, \
        f"checkpoints and rotated logs expected: {sorted(result.files)}"
    assert stats["cache_evictions"] > 0, "no watermark pressure: nothing was evicted"
    assert stats["s3_retries"] > 0, f"no fault fired: {fault_proxy.counts()}"
    assert stats["uploads_pending"] == 0 and stats["staging_full"] == 0, stats
    assert result.leaks() == [], curve_table(result)


@pytest.mark.daemon_errors_ok()
def test_a_temporary_name_reused_while_the_renamed_file_still_sits_there_in_s3(mounter, make_bucket, fault_proxy, s3):
    """Found by the soak's checkpoint writers (write tmp, rename to step<k>.ckpt, again): a file renamed
    while its upload to the old name was in flight is copied from that name later; a new file under the
    old name must not be uploaded there before that copy (it was: the first checkpoint got the second's
    bytes, or its copy found nothing and was retried for ever)."""
    from cachefs.devtools.faultproxy import Fault

    bucket = make_bucket("soak-tmp-reuse")
    m = mounter.mount(bucket, "--small-sync-interval", "600", "--large-sync-interval", "600",
                      endpoint_url=fault_proxy.url)
    assert os.listdir(m.path) == []
    first, second = os.urandom(300_000), os.urandom(200_000)
    fault_proxy.add(Fault("delay", ops="put", key=r"tmp$", seconds=1.5, count=1))
    (m.path / "tmp").write_bytes(first)              # closed: its upload to "tmp" starts, slowly
    os.rename(m.path / "tmp", m.path / "a.ckpt")     # renamed while that upload is in flight
    (m.path / "tmp").write_bytes(second)             # a new file under the old name
    time.sleep(3)                                    # the first upload is done; "tmp" in S3 is the first file
    os.rename(m.path / "tmp", m.path / "b.ckpt")
    res = run_cachefs(["flush", str(m.path), "--timeout", "20"], m.env, timeout_s=60)
    assert res.returncode == 0, res.describe()
    got = {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in list_all_keys(s3, bucket)}
    assert sorted(got) == ["a.ckpt", "b.ckpt"]
    assert got["a.ckpt"] == first and got["b.ckpt"] == second
    assert (m.path / "a.ckpt").read_bytes() == first and (m.path / "b.ckpt").read_bytes() == second
