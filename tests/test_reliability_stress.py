"""The stress shapes that killed the mount (issue 15), short, in CI: four processes doing random
creates, offset writes, truncates to large sizes, rewrites truncated right after close, renames of
files and directories, unlinks, mkdir/rmdir and copy_file_range, plus a one-file fsx-like run, each
operation checked against a local reference directory. After each loop S3 and a fresh mount with an
empty cache directory equal the reference; the daemon never dies. With and without multipart
uploads; the multipart run also kills the daemon (-9) and remounts between loops, so pending uploads
are replayed. The long run is `python -m bench.stress --minutes 30` (docs/RELIABILITY.md).
"""
from __future__ import annotations

import json
import os
import signal

import pytest
from mount_helpers import force_unmount, run_cachefs

from bench.stress import compare_s3, compare_tree, mount_options, run_loop


def story(problems: list[str], tmp_path, log_text: str) -> str:
    """What the workers and the daemon did with each name a problem mentions (a failure's story)."""
    names = {w.rstrip(",:") for p in problems for w in p.split() if "/" in w}
    lines = []
    for trace in sorted(tmp_path.glob("trace-p*.log")):
        lines += [f"{trace.name}: {ln}" for ln in trace.read_text().splitlines()
                  if any(n.split("/")[-1] in ln or n.rsplit("/", 1)[0] in ln for n in names)]
    lines += [ln for ln in log_text.splitlines() if any(n in ln for n in names)]
    return "\n".join(problems + ["--- story"] + lines[-80:])


LOOPS = int(os.environ.get("CACHEFS_STRESS_LOOPS", "2"))
OPS = int(os.environ.get("CACHEFS_STRESS_OPS", "80"))

pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize("multipart", [True, False], ids=["multipart", "single-put"])
def test_stress_loops_leave_s3_and_a_fresh_mount_equal_to_the_writers(mounter, make_bucket, s3, tmp_path,
                                                                      multipart):
    bucket = make_bucket(f"stress-{'mp' if multipart else 'put'}")
    m = mounter.mount(bucket, *mount_options(multipart), block_size=None)
    ref = tmp_path / "ref"
    ref.mkdir()
    stats = {}
    for loop in range(1, LOOPS + 1):
        results = run_loop(m.path, ref, seed=loop + (100 if multipart else 0), procs=4, ops=OPS, fsx_ops=2 * OPS)
        assert [r["fatal"] for r in results if r["fatal"]] == []
        problems = [x for r in results for x in r["mismatches"]]
        assert problems == [], story(problems, tmp_path, m.log_text())
        if multipart and loop == 1:          # a crash with uploads pending: the next mount replays them
            os.kill(m.pid(), signal.SIGKILL)
            force_unmount(m.real_path)
            m = mounter.remount(m)
        res = run_cachefs(["flush", str(m.path)], m.env, timeout_s=300)
        assert res.returncode == 0, res.describe()
        problems = compare_s3(s3, bucket, ref)
        assert problems == [], story(problems, tmp_path, m.log_text())
        fresh = mounter.mount(bucket, "--read-only", block_size=None)
        problems = compare_tree(fresh.path, ref)
        assert problems == [], story(problems, tmp_path, m.log_text())
        mounter.umount(fresh)
        stats = m.stats()
    print("\nRELIABILITY stress", json.dumps({k: stats.get(k) for k in (
        "uploads", "upload_parts", "upload_copies", "upload_failures")}))
    if multipart:
        assert stats["upload_parts"] > 0, "no multipart upload happened"
