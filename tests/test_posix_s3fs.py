"""Interoperability with s3fs-fuse (the Debian `s3fs` package) over the same bucket on the test S3
server: what s3fs writes (mode, owner, mtime, symlinks as x-amz-meta-*) cachefs shows, and back.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time

import pytest
from mount_helpers import ACCESS_KEY_ID, SECRET_ACCESS_KEY, is_mounted, run_cachefs, wait_until

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(shutil.which("s3fs") is None, reason="the s3fs package is not installed")]

MTIME = 1_600_000_000_987_654_321
ATIME = 1_500_000_000_123_456_789


class S3fs:
    """One s3fs mount of `bucket` (path-style requests to the test server, no TLS)."""

    def __init__(self, tmp_path, endpoint_url: str, bucket: str):
        self.path = tmp_path / f"s3fs-{bucket}"
        self.path.mkdir()
        passwd = tmp_path / f"passwd-{bucket}"
        passwd.write_text(f"{ACCESS_KEY_ID}:{SECRET_ACCESS_KEY}\n")
        passwd.chmod(0o600)
        env = dict(os.environ)
        env.pop("AWS_CA_BUNDLE", None)
        # No stat cache: each check sees what S3 holds now, not what this s3fs remembers.
        res = subprocess.run(["s3fs", bucket, str(self.path), "-o", f"url={endpoint_url}", "-o",
                              "use_path_request_style", "-o", f"passwd_file={passwd}", "-o", "max_stat_cache_size=0"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert wait_until(lambda: is_mounted(self.path), 10), "s3fs did not mount"

    def umount(self) -> None:
        subprocess.run(["fusermount", "-u", str(self.path)], check=True, timeout=60)
        assert wait_until(lambda: not is_mounted(self.path), 10)


def test_what_s3fs_writes_cachefs_shows(mounter, make_bucket, moto_server, tmp_path):
    bucket = make_bucket("from-s3fs", {})
    fs = S3fs(tmp_path, moto_server.endpoint_url, bucket)
    try:
        os.mkdir(fs.path / "d")
        os.chmod(fs.path / "d", 0o750)
        os.chown(fs.path / "d", 4321, 8765)
        (fs.path / "d" / "f").write_bytes(b"written by s3fs")
        os.chmod(fs.path / "d" / "f", 0o640)
        os.chown(fs.path / "d" / "f", 1234, 5678)
        os.utime(fs.path / "d" / "f", ns=(ATIME, MTIME))
        os.symlink("f", fs.path / "d" / "ln")
        os.symlink("d/f", fs.path / "top-link")
    finally:
        fs.umount()

    m = mounter.mount(bucket, "--attr-timeout", "0")
    assert sorted(os.listdir(m.path / "d")) == ["f", "ln"]
    st = os.stat(m.path / "d")                                        # from its marker, once listed
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 8765, 0o750)
    st = os.stat(m.path / "d" / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)
    assert st.st_mtime_ns == MTIME
    ln = os.lstat(m.path / "d" / "ln")
    assert stat.S_ISLNK(ln.st_mode)
    assert os.readlink(m.path / "d" / "ln") == "f"
    assert (m.path / "d" / "ln").read_bytes() == b"written by s3fs"
    assert os.readlink(m.path / "top-link") == "d/f"                 # looked up, not listed first
    mounter.umount(m)


def test_what_cachefs_writes_s3fs_shows(mounter, make_bucket, moto_server, tmp_path):
    bucket = make_bucket("to-s3fs", {})
    m = mounter.mount(bucket, "--small-sync-interval", "0.3")
    os.mkdir(m.path / "d", 0o750)
    os.chown(m.path / "d", 4321, 8765)
    (m.path / "d" / "f").write_bytes(b"written by cachefs")
    os.chmod(m.path / "d" / "f", 0o640)
    os.chown(m.path / "d" / "f", 1234, 5678)
    os.utime(m.path / "d" / "f", ns=(ATIME, MTIME))
    os.symlink("f", m.path / "d" / "ln")
    res = run_cachefs(["flush", str(m.path)], m.env)
    assert res.returncode == 0, res.describe()
    mounter.umount(m)

    fs = S3fs(tmp_path, moto_server.endpoint_url, bucket)
    try:
        st = os.stat(fs.path / "d")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 8765, 0o750)
        st = os.stat(fs.path / "d" / "f")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)
        assert st.st_mtime_ns == MTIME
        assert (fs.path / "d" / "f").read_bytes() == b"written by cachefs"
        assert stat.S_ISLNK(os.lstat(fs.path / "d" / "ln").st_mode)
        assert os.readlink(fs.path / "d" / "ln") == "f"
    finally:
        time.sleep(0.1)
        fs.umount()
