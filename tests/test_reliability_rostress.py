"""bench/rostress.py in CI: a read-only mount whose objects change in S3 while readers with order
hints read them (the fast path serving some), the control plane reloading and dropping; every byte
read must belong to one version of its object, and the mount must live (the full run is
`python -m bench.rostress --seconds 600`, docs/RELIABILITY.md)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)


def test_read_only_stress_short_run(tmp_path):
    out = tmp_path / "rostress.json"
    proc = subprocess.run([sys.executable, "-m", "bench.rostress", "--seconds", "20", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["passed"] and result["daemon_alive"], result
    assert result["reads"] > 1000 and result["reloads"] and result["drops"], result
    if __import__("importlib.util").util.find_spec("cachefs._fastfuse"):
        assert result["fast"]["fast_opens"] > 0, result      # the C answered some of them
