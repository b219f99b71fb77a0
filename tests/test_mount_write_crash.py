"""SIGKILL of the daemon while it writes and uploads, N times: after each remount with the same cache
directory every fsynced byte reaches S3, and no multipart upload is left behind."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

from mount_helpers import PYTHON, force_unmount, run_cachefs, wait_until

ROUNDS = int(os.environ.get("CACHEFS_CRASH_ROUNDS", "5"))
WRITER = Path(__file__).with_name("crash_writer.py")
OPTIONS = ("--small-sync-interval", "0.2", "--small-file-threshold", "1MiB", "--large-sync-interval", "0.3",
           "--multipart-part-size", "5MiB")


def expected(seed: str, name: str, length: int) -> bytes:
    return random.Random(f"{seed}/{name}").randbytes(length)      # as crash_writer.py makes it


def test_sigkill_loses_nothing_fsynced(mounter, make_bucket, s3):
    bucket = make_bucket("w-crash")
    m = mounter.mount(bucket, *OPTIONS)
    rng = random.Random(7)
    synced: dict[str, tuple[str, int]] = {}       # key -> (seed, fsynced length)
    for rnd in range(ROUNDS):
        seed = f"r{rnd}"
        os.makedirs(m.path / seed)
        writer = subprocess.Popen([PYTHON, str(WRITER), str(m.path / seed), seed], stdout=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.5, 2.5))
        os.kill(m.pid(), signal.SIGKILL)
        out, _ = writer.communicate(timeout=60)
        for line in out.splitlines():
            if line.startswith("synced "):
                _, name, length = line.split()
                synced[f"{seed}/{name}"] = (seed, int(length))
        force_unmount(m.real_path)
        m = mounter.remount(m)
    res = run_cachefs(["flush", str(m.path)], m.env, timeout_s=120)
    assert res.returncode == 0, res.describe()
    assert synced, "the writer never got an fsync through"
    for key, (seed, length) in sorted(synced.items()):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        want = expected(seed, key.split("/")[1], length)
        assert len(body) >= length and body[:length] == want, f"{key}: S3 has {len(body)} bytes, fsynced {length}"
        assert (m.path / key).read_bytes()[:length] == want
    log = m.log_text()
    assert log.count("pending upload") >= ROUNDS - 1, "the restarts found nothing to replay"
    assert wait_until(lambda: s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == [], 10), \
        s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
