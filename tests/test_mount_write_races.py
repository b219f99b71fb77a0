"""Regressions of issue 15 on a real mount: what the mount shows is what S3 gets.

Each test is one of the defects the external exercisers found: a truncate right after the close of a
multipart file (the session it aborted under the running upload ended the daemon), checkpoint
rotation after a remount (the copy's new ETag was not recorded: ESTALE), a rename over a file whose
upload was still in flight (its clean-up deleted the rename's copy), and the object of a file that
was replaced and then unlinked (left behind in S3).
"""
from __future__ import annotations

import os

from mount_helpers import run_cachefs

MiB = 1 << 20
OPTIONS = ("--small-sync-interval", "0.3", "--large-sync-interval", "1", "--multipart-part-size", "5MiB")


def flush(m) -> None:
    res = run_cachefs(["flush", str(m.path)], m.env, timeout_s=120)
    assert res.returncode == 0, res.describe()


def keys(s3, bucket) -> dict[str, bytes]:
    out = {}
    for o in s3.list_objects_v2(Bucket=bucket).get("Contents", ()):
        out[o["Key"]] = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def test_truncate_and_rewrite_right_after_close_of_a_multipart_file(mounter, make_bucket, s3):
    bucket = make_bucket("race-trunc")
    m = mounter.mount(bucket, *OPTIONS)
    data = os.urandom(17 * MiB)
    for i in range(3):
        p = m.path / f"ckpt{i}"
        p.write_bytes(data)                       # close: a 4-part upload starts
        os.truncate(p, 11 * MiB - i)               # at once: parts change under the upload
        with open(p, "r+b") as f:
            f.seek(3 * MiB)
            f.write(b"rewritten")
    flush(m)
    want = bytearray(data[:11 * MiB])
    want[3 * MiB:3 * MiB + 9] = b"rewritten"
    got = keys(s3, bucket)
    for i in range(3):
        assert got[f"ckpt{i}"] == bytes(want[:11 * MiB - i]), f"ckpt{i}"
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert (m.path / "ckpt0").read_bytes() == bytes(want)


def test_checkpoint_rotation_after_remounts_is_not_stale(mounter, make_bucket, s3):
    bucket = make_bucket("race-rotate")
    m = mounter.mount(bucket, *OPTIONS)
    data = os.urandom(12 * MiB)                   # multipart: a copy gets another ETag
    (m.path / "ckpt").write_bytes(data)
    flush(m)
    mounter.umount(m)
    m = mounter.remount(m)
    os.rename(m.path / "ckpt", m.path / "ckpt-prev")
    flush(m)
    mounter.umount(m)
    m = mounter.remount(m)
    assert (m.path / "ckpt-prev").read_bytes() == data
    assert sorted(keys(s3, bucket)) == ["ckpt-prev"]


def test_rename_over_a_file_being_uploaded_keeps_the_renamed_file(mounter, make_bucket, s3):
    bucket = make_bucket("race-over")
    m = mounter.mount(bucket, *OPTIONS)
    old = os.urandom(3 * MiB)
    (m.path / "a").write_bytes(old)
    flush(m)
    for i in range(5):
        new = os.urandom(2 * MiB + i)
        (m.path / "b").write_bytes(new)           # its upload starts at close
        os.rename(m.path / "a", m.path / "b")     # over it, at once: a copy to its name
        assert (m.path / "b").read_bytes() == old
        os.rename(m.path / "b", m.path / "a")
    flush(m)
    assert keys(s3, bucket) == {"a": old}


def test_a_replaced_file_unlinked_before_its_upload_leaves_nothing(mounter, make_bucket, s3):
    bucket = make_bucket("race-replaced", {"keep": b"k"})
    m = mounter.mount(bucket, "--small-sync-interval", "30", "--large-sync-interval", "30")
    (m.path / "x").write_bytes(b"first")
    flush(m)
    with open(m.path / "y", "wb") as f:           # open: staged, not uploaded before its close
        f.write(b"second")
        f.flush()
        os.rename(m.path / "y", m.path / "x")      # S3 still holds "first" at x
        os.unlink(m.path / "x")
    flush(m)
    assert keys(s3, bucket) == {"keep": b"k"}
    assert sorted(os.listdir(m.path)) == ["keep"]
