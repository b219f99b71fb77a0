"""bench/writes.py on a tiny input against moto, so that the write benchmark cannot rot: every system
that can run here writes a 4 MiB checkpoint and a second of log lines, and its figures come out.
Speed is measured, not asserted. A peer whose binary is missing is skipped; cachefs is checked only
when its mount accepts writes (a mount that answers EROFS is reported as skipped by the harness)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE_MIB = 4
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
                                reason="the harness mounts FUSE filesystems and drops caches: needs root")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-writes")
    proc = subprocess.run([sys.executable, "-m", "bench.writes", "--endpoint", "moto", "--runs", "1",
                           "--size", str(SIZE_MIB), "--append-seconds", "1", "--open-wait", "2",
                           "--systems", "cachefs,s3fs,rclone", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "results.json") as f:
        res = json.load(f)
    res["_md"] = (out / "results.md").read_text()
    res["_stdout"] = proc.stdout
    return res


def row(res, system, job):
    found = [r for r in res["rows"] if r["system"] == system and r["job"] == job]
    assert len(found) == 1, (system, job, [r.get("error") for r in res["rows"] if r["system"] == system])
    assert not found[0].get("error"), found[0]["error"]
    return found[0]


@pytest.mark.timeout(300)
def test_the_endpoint_pace_is_measured(results):
    assert results["endpoint"]["kind"] == "moto"
    assert row(results, "endpoint", "put")["mib_s"] > 0
    assert "MiB/s**" in results["_md"] and "| figure |" in results["_md"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("system", ["s3fs", "rclone", "cachefs"])
def test_every_figure_comes_out(results, system):
    binary = {"s3fs": "s3fs", "rclone": "rclone"}.get(system)
    if binary and not shutil.which(binary):
        assert "not installed" in results["skipped"][system]
        pytest.skip(f"{binary} is not installed")
    if system in results["skipped"]:
        note = results["skipped"][system]
        assert system == "cachefs" and "EROFS" in note, note  # only a read-only cachefs may be skipped
        pytest.skip(f"cachefs: {note}")
    ckpt = row(results, system, "checkpoint")
    assert ckpt["size_mib"] == SIZE_MIB and ckpt["mib_s"] > 0 and ckpt["end_to_end_mib_s"] > 0
    assert ckpt["s3_after_close_s"] >= 0 and ckpt["open_to_s3_s"] >= ckpt["write_s"]
    assert ckpt["put_requests"] >= 1 and ckpt["etag_parts"] >= 1  # counted from moto's request log
    logs = row(results, system, "appends")
    assert logs["lines"] > 0 and logs["lines_per_s"] > 0 and logs["line_ms_p99"] >= logs["line_ms_p50"] > 0
    assert logs["in_s3_while_open"] in (0, 1) and logs["s3_after_close_s"] >= 0
    assert logs["s3_behind_max_s"] >= logs["s3_behind_median_s"] >= 0  # S3 sampled while the writer wrote
    assert logs["put_requests"] >= 1
    assert f"`{system}` =" in results["_md"]
    assert system in results["_md"].split("| figure |", 1)[1].splitlines()[0]
