"""The fixtures and helpers of the mount tests, tested on their own (no cachefs needed).

If these fail, every other mount test's verdict is suspect: they count requests, compare bytes and
detect leftover mounts with this code.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest
from mount_helpers import (
    PYTHON,
    Request,
    first_difference,
    force_unmount,
    is_mounted,
    list_all_keys,
    log_problems,
    mount_entries,
    object_bytes,
    one_line_error,
    parse_request_line,
    pid_alive,
    pids_mentioning,
    s3_client,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


def test_object_bytes_are_deterministic_and_distinct():
    assert object_bytes("a", 1000) == object_bytes("a", 1000)
    assert object_bytes("a", 1000) != object_bytes("b", 1000)
    assert len(object_bytes(1, 0)) == 0


def test_populate_puts_every_object_with_its_bytes(s3, make_bucket):
    objects = {f"d{i % 7}/f{i}": object_bytes(i, i * 13) for i in range(200)}
    name = make_bucket("populate", objects)
    assert sorted(list_all_keys(s3, name)) == sorted(objects)
    for key in ("d0/f0", "d3/f199", "d5/f12"):
        assert s3.get_object(Bucket=name, Key=key)["Body"].read() == objects[key]


def test_request_log_counts_gets_lists_and_heads_per_bucket(s3, make_bucket, request_log):
    key = "dir with space/ünï+code%20.bin"
    name = make_bucket("reqlog", {key: object_bytes(0, 5000)})
    other = make_bucket("reqlog-other", {"x": b"x"})
    mark = request_log.mark()
    s3.get_object(Bucket=name, Key=key, Range="bytes=10-99")
    s3.get_object(Bucket=name, Key=key)
    s3.list_objects_v2(Bucket=name, Prefix="dir with space/", Delimiter="/")
    s3.head_object(Bucket=name, Key=key)
    s3.get_object(Bucket=other, Key="x")
    mine = request_log.since(mark, name)
    assert [r.method for r in mine] == ["GET", "GET", "GET", "HEAD"]
    assert [r.is_object_get for r in mine] == [True, True, False, False]
    assert [r.is_list for r in mine] == [False, False, True, False]
    assert [r.status for r in mine] == [206, 200, 200, 200]
    assert mine[0].key == key
    assert len(request_log.since(mark)) == 5
    assert request_log.since(request_log.mark(), name) == []


def test_parse_request_line_strips_ansi_and_ignores_banner():
    line = '127.0.0.1 - - [22/Nov/2026 14:47:43] "\x1b[35m\x1b[1mGET /bkt/a/b%20c HTTP/1.1\x1b[0m" 206 -'
    assert parse_request_line(line) == Request("GET", "/bkt/a/b%20c", 206)
    assert parse_request_line(" * Running on http://127.0.0.1:41079") is None
    r = parse_request_line('127.0.0.1 - - [x] "GET /bkt?list-type=2&prefix=a/ HTTP/1.1" 200 -')
    assert (r.bucket, r.key, r.is_list) == ("bkt", "", True)


def test_auth_moto_rejects_unknown_keys_and_accepts_its_own(auth_moto):
    good = s3_client(auth_moto.endpoint_url, auth_moto.key_id, auth_moto.secret)
    assert good.get_object(Bucket=auth_moto.bucket, Key="hello.txt")["Body"].read() == b"hello\n"
    bad = s3_client(auth_moto.endpoint_url)
    with pytest.raises(Exception, match="InvalidAccessKeyId"):
        bad.list_objects_v2(Bucket=auth_moto.bucket)


def test_mountinfo_helpers_see_real_mounts(tmp_path):
    assert is_mounted("/proc") and len(mount_entries("/proc")) >= 1
    assert not is_mounted(tmp_path)


def test_pids_mentioning_finds_a_process_by_unique_path(tmp_path):
    marker = str(tmp_path / "unique-marker")
    proc = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(30)", marker])
    try:
        assert wait_until(lambda: proc.pid in pids_mentioning(marker), 5)
    finally:
        proc.kill()
        proc.wait()
    assert pids_mentioning(marker) == []


def test_log_problems_finds_errors_and_tracebacks_but_honours_allowed():
    text = ("2026-11-22 INFO cachefs.daemon.core: mounted\n"
            "2026-11-22 ERROR cachefs.fs: read failed\n"
            "Traceback (most recent call last):\n"
            "2026-11-22 WARNING cachefs.cache: tier miss\n")
    assert len(log_problems(text)) == 2
    assert log_problems(text, [r"read failed", r"Traceback"]) == []
    assert log_problems("INFO no errors here, ErrorCount=0\n") == []


def test_one_line_error_and_first_difference():
    assert one_line_error("cachefs: error: bad --block-size '4XB'\n") == "cachefs: error: bad --block-size '4XB'"
    assert one_line_error("usage: cachefs ...\ncachefs: error: unrecognized arguments: --x\n") is None
    assert one_line_error("Traceback (most recent call last):\n") is None
    assert first_difference(b"abcd", b"abXd") == "lengths 4 vs 4, first difference at byte 2"
    assert first_difference(b"ab", b"abc") == "lengths 2 vs 3, first difference at byte 2"


def test_teardown_unmounts_a_hung_daemon_without_hanging(mounter, make_bucket):
    """A stopped (hung) daemon: force_unmount must neither stat the mount point nor wait on the daemon."""
    m = mounter.mount(make_bucket("hung", {"f": b"f"}))
    pid = m.pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        done = threading.Event()
        worker = threading.Thread(target=lambda: (force_unmount(m.real_path), done.set()), daemon=True)
        worker.start()
        assert done.wait(40), "force_unmount hung on a stopped daemon"
        assert not is_mounted(m.real_path)
    finally:
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid), 10)
