"""Soak (short in CI): many readers for a fixed time under watermark pressure and injected S3 errors.

Zero errors, every byte right, no growth of the daemon's fds, threads or RSS after warm-up. The long
run is `python -m bench.soak --seconds 600` (docs/RELIABILITY.md); CACHEFS_SOAK_SECONDS sets this one.
"""
from __future__ import annotations

import json
import os

import pytest

from bench.soak import FAULTS, MOUNT_OPTIONS, curve_table, dataset, soak

SECONDS = float(os.environ.get("CACHEFS_SOAK_SECONDS", "40"))

pytestmark = pytest.mark.timeout(SECONDS + 150)


def test_soak_many_readers_under_pressure_and_faults(mounter, make_bucket, fault_proxy, tmp_path):
    objects = dataset()
    name = make_bucket("soak", objects)
    for spec in FAULTS:
        fault_proxy.add(spec)
    opts = [o.format(ssd=tmp_path / "ssd") for o in MOUNT_OPTIONS]
    m = mounter.mount(name, *opts, endpoint_url=fault_proxy.url, block_size=None)
    result = soak(m.path, objects, m.pid(), SECONDS, readers=16)
    stats = m.stats()
    print("\nRELIABILITY soak", json.dumps(result.summary()), "\n" + curve_table(result))
    assert result.errors == [], result.errors[:10]
    assert result.reads > 100, result.summary()
    assert stats["cache_evictions"] > 0, "no watermark pressure: nothing was evicted"
    assert stats["s3_retries"] > 0, f"no fault fired: {fault_proxy.counts()}"
    assert result.leaks() == [], curve_table(result)
