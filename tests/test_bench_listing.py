"""bench/listing.py on moto (a smoke test: moto's figures mean nothing): both listing paths run,
list the same number of requests, and every figure is written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_listing_benchmark_compares_the_fast_path_with_boto3(tmp_path):
    out = tmp_path / "listing.json"
    r = subprocess.run([sys.executable, "-m", "bench.listing", "--runs", "2", "--dirs", "5", "--per-dir", "3",
                        "--endpoint", "moto", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=170)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["objects"] == 15
    for workload, requests in (("dir", 5), ("flat", 1)):
        cells = result["raw"][workload]
        assert len(cells["fast"]) == len(cells["boto3"]) == 2
        assert all(c["requests"] == requests and c["cpu_ms"] >= 0 and c["wall_ms"] > 0
                   for c in cells["fast"] + cells["boto3"])
        assert result["summary"][workload]["boto3_over_fast_cpu"]["n"] == 2
    assert "boto3 / fast CPU" in r.stdout
