"""bench/tiers.py on a tiny input, so that the harness cannot rot (the figures are not checked
against goals here: speed is measured, not asserted)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_tiers_benchmark_runs_and_writes_its_figures(tmp_path):
    out = tmp_path / "tiers.json"
    r = subprocess.run([sys.executable, "-m", "bench.tiers", "--runs", "1", "--scale", "0.1", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    run = result["runs"][0]
    assert set(run["policy"]) >= {"lru", "scan-resistant"} and len(run["policy"]["lru"]) == 3
    assert run["policy"]["scan-resistant"][0] == 0.0            # epoch 1 is cold
    assert run["policy"]["scan-resistant"][1] > run["policy"]["lru"][1]
    assert all(run["throughput"][k] > 0 for k in ("mem", "ssd", "ceiling"))
    assert all(0 < v <= 1.0 for v in run["fill"]["peak_usage_over_quota"].values())
    assert run["fill"]["daemon_peak_rss_mib"] > 0
    assert "| hit ratio, scan-resistant, epoch 2 |" in r.stdout


@pytest.mark.timeout(120)
def test_blockwrite_benchmark_runs_and_writes_its_figures(tmp_path):
    out = tmp_path / "blockwrite.json"
    r = subprocess.run([sys.executable, "-m", "bench.blockwrite", "--blocks", "2", "--runs", "2", "--dir",
                        str(tmp_path), "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {row["mode"] for row in result["rows"]} == {"buffered", "O_DIRECT"} and len(result["rows"]) == 4
    assert all(result["summary"][m]["wall_s"]["median"] > 0 for m in ("buffered", "O_DIRECT"))


@pytest.mark.timeout(300)
def test_coldread_benchmark_compares_a_baseline_tree_side_by_side(tmp_path):
    """bench/coldread.py --baseline on moto (a smoke test: moto's figures mean nothing), with this
    tree as its own baseline: both mounts read their own object each run, and memfs (the FUSE floor)
its own; every figure is written."""
    out = tmp_path / "coldread.json"
    r = subprocess.run([sys.executable, "-m", "bench.coldread", "--runs", "2", "--object-mib", "8",
                        "--endpoint", "moto",
                        "--baseline", str(REPO), "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 2
    for row in result["rows"]:
        for name in ("cachefs", "baseline"):
            assert row[name]["mib_s"] > 0 and row[name]["s3_get"] >= 2      # 8 MiB: two 4 MiB blocks at least
    assert {"ratio", "ratio_baseline", "baseline_daemon_cpu_s", "fuse_mib_s", "bound"} <= set(result["summary"])
    for row in result["rows"]:       # memfs read its object; CPU is counted in clock ticks: 8 MiB may read 0
        assert row["fuse"]["mib_s"] > 0 and row["fuse"]["machine_cpu_s"] >= 0
        assert row["bound"] is None or 0 <= row["bound"] <= 1
    assert "baseline" in r.stdout and "ratio" in r.stdout
