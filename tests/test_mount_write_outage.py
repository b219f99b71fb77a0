"""Writes during an S3 outage (through the fault proxy): they stay staged and readable, the daemon
stays up, umount refuses to drop them, and they are uploaded by themselves when S3 returns."""
from __future__ import annotations

import os

import pytest
from mount_helpers import object_bytes, run_cachefs, wait_until

pytestmark = pytest.mark.daemon_errors_ok()


def s3_bytes(s3, bucket, key):
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


@pytest.mark.parametrize("mode", ["error", "refuse"])
def test_writes_during_outage_stay_staged_and_upload_after(mounter, make_bucket, s3, fault_proxy, mode):
    bucket = make_bucket(f"w-outage-{mode}")
    m = mounter.mount(bucket, "--small-sync-interval", "0.3", "--small-file-threshold", "1MiB",
                      "--multipart-part-size", "5MiB", "--s3-max-attempts", "2",
                      endpoint_url=fault_proxy.url)
    big = object_bytes("outage-big", 11 << 20)
    pid = m.pid()
    # New names need their directory's listing (a lookup of an unknown name asks S3): list it first.
    assert os.listdir(m.path) == []
    with fault_proxy.outage(mode):
        (m.path / "log.txt").write_text("written during the outage\n")
        (m.path / "big.bin").write_bytes(big)
        assert (m.path / "log.txt").read_text() == "written during the outage\n"     # from staging
        assert wait_until(lambda: m.stats()["upload_failures"] >= 2, 30), m.stats()
        stats = m.stats()
        assert stats["uploads_pending"] == 2 and stats["uploads_pending_bytes"] == len(big) + 26
        # one of each upload class (--small-file-threshold 1MiB), both waiting since the outage began
        assert stats["uploads_pending_small"] == 1 and stats["uploads_pending_large"] == 1, stats
        assert 0 < stats["uploads_oldest_age_large_s"] <= stats["uploads_oldest_age_s"], stats
        res = run_cachefs(["umount", str(m.path), "--timeout", "2"], m.env)
        assert res.returncode == 1 and "still not uploaded" in res.stderr and "big.bin" in res.stderr, res.describe()
        assert (m.path / "big.bin").stat().st_size == len(big)        # still mounted and serving
    # S3 is back: the retries (backoff capped at 60 s, here a few seconds) upload both by themselves
    assert wait_until(lambda: s3_bytes(s3, bucket, "log.txt") == b"written during the outage\n", 60)
    assert wait_until(lambda: s3_bytes(s3, bucket, "big.bin") == big, 60)
    # the count drops once the result is recorded, just after S3 answered
    assert wait_until(lambda: m.stats()["uploads_pending"] == 0, 10) and m.pid() == pid
    mounter.umount(m)
