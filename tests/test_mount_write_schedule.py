"""When written data reaches S3: the small-file and large-file schedules, counted in requests."""
from __future__ import annotations

import os
import time

from mount_helpers import object_bytes, run_cachefs, wait_until


def s3_bytes(s3, bucket, key):
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def uploads_of(requests, key):
    """(plain PUTs, multipart creates, part PUTs) of one key."""
    mine = [r for r in requests if r.key == key]
    parts = [r for r in mine if r.method == "PUT" and "partNumber=" in r.target]
    puts = [r for r in mine if r.method == "PUT" and "partNumber=" not in r.target]
    creates = [r for r in mine if r.method == "POST" and "uploads" in r.target and "uploadId" not in r.target]
    return len(puts), len(creates), len(parts)


def test_growing_log_reaches_s3_while_open(mounter, make_bucket, s3):
    bucket = make_bucket("w-log")
    m = mounter.mount(bucket, "--small-sync-interval", "1", "--large-sync-interval", "600")
    lines = []
    with open(m.path / "train.log", "a") as log:
        start = time.monotonic()
        seen_open = None
        while time.monotonic() - start < 6:
            lines.append(f"step {len(lines)} loss 0.{len(lines):04d}\n")
            log.write(lines[-1])
            log.flush()
            got = s3_bytes(s3, bucket, "train.log")
            if got and seen_open is None:
                seen_open = (time.monotonic() - start, got)
            time.sleep(0.1)
        assert seen_open is not None, "the log never reached S3 while it was open and growing"
        first_s, first = seen_open
        assert first_s < 3.5, f"first upload {first_s:.1f} s after the first line (interval 1 s)"
        assert "".join(lines).encode().startswith(first)
        # still open: a later upload carries later lines
        assert wait_until(lambda: len(s3_bytes(s3, bucket, "train.log") or b"") > len(first), 5)
    assert wait_until(lambda: s3_bytes(s3, bucket, "train.log") == "".join(lines).encode(), 5)


def test_large_checkpoint_is_uploaded_once_on_close(mounter, make_bucket, s3, request_log):
    bucket = make_bucket("w-ckpt")
    m = mounter.mount(bucket, "--small-file-threshold", "1MiB", "--multipart-part-size", "5MiB",
                      "--small-sync-interval", "0.2", "--large-sync-interval", "600")
    data = object_bytes("ckpt", 12 << 20)
    mark = request_log.mark()
    with open(m.path / "model.ckpt", "wb") as f:
        for off in range(0, len(data), 64 << 10):
            f.write(data[off:off + (64 << 10)])
        f.flush()
        time.sleep(1.0)          # many small-interval ticks while open: a large file must wait
        assert s3_bytes(s3, bucket, "model.ckpt") is None
    assert wait_until(lambda: s3_bytes(s3, bucket, "model.ckpt") == data, 20)
    puts, creates, parts = uploads_of(request_log.since(mark, bucket), "model.ckpt")
    assert (puts, creates, parts) == (0, 1, 3), f"PUTs {puts}, multipart uploads {creates}, parts {parts}"


def test_small_file_rewritten_many_times_is_uploaded_once(mounter, make_bucket, s3, request_log):
    bucket = make_bucket("w-small")
    m = mounter.mount(bucket, "--small-sync-interval", "2")
    mark = request_log.mark()
    with open(m.path / "metrics.json", "w") as f:
        for i in range(200):
            f.seek(0)
            f.write(f'{{"step": {i:05d}}}')
            f.flush()
    assert wait_until(lambda: s3_bytes(s3, bucket, "metrics.json") == b'{"step": 00199}', 10)
    time.sleep(0.5)
    puts, creates, parts = uploads_of(request_log.since(mark, bucket), "metrics.json")
    assert (puts, creates) == (1, 0), f"PUTs {puts}, multipart {creates}"


def test_flush_and_umount_wait_for_uploads(mounter, make_bucket, s3):
    bucket = make_bucket("w-flush")
    m = mounter.mount(bucket, "--small-sync-interval", "600", "--large-sync-interval", "600",
                      "--small-file-threshold", "1MiB", "--multipart-part-size", "5MiB")
    with open(m.path / "open.txt", "w") as f:
        f.write("kept open")
        f.flush()
        time.sleep(0.5)
        assert s3_bytes(s3, bucket, "open.txt") is None       # 600 s interval: not yet
        res = run_cachefs(["flush", str(m.path)], m.env)
        assert res.returncode == 0 and "every written file is in S3" in res.stdout, res.describe()
        assert s3_bytes(s3, bucket, "open.txt") == b"kept open"
    big = object_bytes("big", 11 << 20)
    (m.path / "big.bin").write_bytes(big)      # closed: its multipart upload starts now
    mounter.umount(m)                          # ... and umount returns only when it is done
    assert s3_bytes(s3, bucket, "big.bin") == big
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_unlink_during_upload_leaves_nothing(mounter, make_bucket, s3):
    bucket = make_bucket("w-unlink")
    m = mounter.mount(bucket, "--small-file-threshold", "1MiB", "--multipart-part-size", "5MiB")
    (m.path / "gone.bin").write_bytes(object_bytes("gone", 11 << 20))
    os.unlink(m.path / "gone.bin")              # its upload is in flight
    (m.path / "kept.txt").write_text("kept")
    assert run_cachefs(["flush", str(m.path)], m.env).returncode == 0
    time.sleep(1.0)
    assert s3_bytes(s3, bucket, "gone.bin") is None
    assert s3_bytes(s3, bucket, "kept.txt") == b"kept"
    assert sorted(os.listdir(m.path)) == ["kept.txt"]
    kept = (m.path / "kept.txt").stat().st_ino
    assert os.listdir(m.cache_dir / "staging") == [str(kept)]     # only the uploaded copy kept for reads
