"""S3 outage on a real mount: every request to S3 fails (the fault proxy black-holes or refuses them).

Reads of uncached data get EIO within the configured bound and no reader stays in uninterruptible
sleep; cached data keeps being served; the daemon stays up and recovers by itself when S3 is back.
The figures the test measures are printed (`-s`) and recorded in docs/RELIABILITY.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
from mount_helpers import BLOCK_SIZE, KiB, MiB, force_unmount, object_bytes, pid_alive, read_all, stop_pid
from reliability_helpers import read_past_page_cache, start_reader, watch_states

pytestmark = pytest.mark.timeout(150)

DEADLINE_S = 3.0
# The bound a reader may wait: one deadline (the kernel's immediate second request for the page its
# read-ahead failed to get fails at once: the range just failed), plus scheduling slack.
EIO_BOUND_S = DEADLINE_S + 2.5
RECOVERY_BOUND_S = 6.0    # the breaker probes once a second; one probe read, plus slack

CACHED = object_bytes("outage-cached", 2 * MiB + 5)
COLD = {f"cold-{i}.bin": object_bytes(f"outage-cold-{i}", 512 * KiB + i) for i in range(12)}
OBJECTS = {"cached.bin": CACHED, **COLD}
OPTIONS = ("--s3-read-deadline", str(DEADLINE_S), "--s3-read-timeout", "2", "--s3-connect-timeout", "1",
           "--max-idle-threads", "4", "--read-ahead", "1MiB")


def force_cleanup(m) -> None:
    pid = m.pid()
    force_unmount(m.real_path)
    stop_pid(pid)


@pytest.mark.parametrize("mode", ["blackhole", "refuse"])
def test_outage_eio_within_bound_cached_data_served_and_recovery(mounter, make_bucket, fault_proxy, mode):
    name = make_bucket(f"outage-{mode}", OBJECTS)
    m = mounter.mount(name, *OPTIONS, endpoint_url=fault_proxy.url)
    for key in OBJECTS:                       # names known before the outage (kernel + LMDB)
        os.stat(m / key)
    assert read_all(m / "cached.bin") == CACHED
    pid = m.pid()
    figures: dict = {"mode": mode, "deadline_s": DEADLINE_S}

    with fault_proxy.outage(mode):
        # one reader of uncached data
        r = start_reader(m / "cold-0.bin")
        states = watch_states([r], EIO_BOUND_S + 5)
        res = r.result(5)
        figures["first_eio_s"] = round(res["elapsed"], 2)
        assert res == {**res, "ok": False, "errno": "EIO"}, res
        assert res["elapsed"] < EIO_BOUND_S, f"EIO after {res['elapsed']:.1f} s, bound {EIO_BOUND_S} s"
        assert states[r.pid] == [] or states[r.pid][-1] in ("Z", "S", "R", "D")

        # cached data is still served, by the daemon (not just the page cache)
        before = m.stats()
        assert read_past_page_cache(m / "cached.bin") == CACHED
        after = m.stats()
        assert after["fuse_reads"] > before["fuse_reads"] and after["s3_get"] == before["s3_get"]

        # many readers at once, more than the daemon has worker threads (4): all EIO within the bound
        readers = [start_reader(m / f"cold-{i}.bin") for i in range(1, 12)]
        states = watch_states(readers, EIO_BOUND_S + 5)
        results = [rd.result(5) for rd in readers]
        figures["concurrent_eio_s"] = sorted(round(x["elapsed"], 2) for x in results)
        assert all(x["ok"] is False and x["errno"] == "EIO" for x in results), results
        slowest = max(x["elapsed"] for x in results)
        assert slowest < EIO_BOUND_S, figures
        # nobody left in uninterruptible sleep once the bound has passed
        assert all(proc_gone for proc_gone in (rd.proc.poll() is not None for rd in readers))
        figures["d_state_samples"] = sum(s.count("D") for s in states.values())
        assert pid_alive(pid), "the daemon died during the outage"
        stats = m.stats()
        figures["failed_fast"] = stats.get("s3_errors", 0)

    # S3 is back: the daemon notices by itself (no remount, no command)
    t0 = time.monotonic()
    while True:
        res = start_reader(m / "cold-0.bin").result(EIO_BOUND_S + 5)
        if res["ok"]:
            break
        assert time.monotonic() - t0 < RECOVERY_BOUND_S, f"no recovery after {time.monotonic() - t0:.1f} s: {res}"
        time.sleep(0.2)
    figures["recovery_s"] = round(time.monotonic() - t0, 2)
    assert res["sha256"] == hashlib.sha256(COLD["cold-0.bin"]).hexdigest()
    assert read_all(m / "cold-5.bin") == COLD["cold-5.bin"]
    assert pid_alive(pid)
    log = m.log_text()
    assert "unreachable" in log and "answers again" in log, log[-3000:]
    print("\nRELIABILITY outage", json.dumps(figures))


def test_multi_block_read_error_is_expected(mounter, make_bucket, fault_proxy):
    name = make_bucket("outage-group", {"two-blocks.bin": object_bytes("two", 2 * BLOCK_SIZE)})
    m = mounter.mount(name, "--s3-read-deadline", "2", "--read-ahead", "0", endpoint_url=fault_proxy.url)
    os.stat(m / "two-blocks.bin")
    offsets = mounter.log_offsets()
    with fault_proxy.outage("error"):
        res = start_reader(m / "two-blocks.bin", BLOCK_SIZE - 4096, 8192).result(30)   # spans both blocks
    assert res["errno"] == "EIO", res
    problems = mounter.daemon_log_problems([], offsets)
    assert problems == [], problems
