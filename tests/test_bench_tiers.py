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
