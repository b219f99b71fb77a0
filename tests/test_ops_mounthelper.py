"""`mount -t fuse.cachefs`, an fstab line and the option translation of /sbin/mount.fuse.cachefs."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from mount_helpers import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    is_mounted,
    object_bytes,
    pid_alive,
    read_all,
    run_cachefs,
    wait_until,
)

from cachefs.cli.mounthelper import parse_argv, translate
from cachefs.cli.ops import HELPER_PATH
from cachefs.errors import UserError


def test_translate_options():
    assert translate("rw,nosuid,nodev,_netdev,x-systemd.automount,endpoint_url=http://h:1,allow_other,"
                     "cache=mem:1GiB,cache=ssd:/nvme:10GiB,config=/etc/c.toml") == [
        "--endpoint-url", "http://h:1", "--allow-other", "--cache", "mem:1GiB", "--cache", "ssd:/nvme:10GiB",
        "--config", "/etc/c.toml"]
    assert translate("block-size=1MiB") == ["--block-size", "1MiB"]
    assert translate("ro,noatime") == ["--read-only"]        # mount -o ro: a read-only mount
    for bad, why in (("aws_secret_access_key=x", "credentials"), ("password=x", "credentials"),
                     ("bogus=1", "unknown"), ("block_size", "needs a value")):
        with pytest.raises(UserError, match=why):
            translate(bad)


def test_parse_argv_forms():
    assert parse_argv(["s3://b/p", "/mnt", "-o", "rw,region=x"]) == ("s3://b/p", "/mnt", "rw,region=x")
    assert parse_argv(["cachefs#s3://b", "/mnt", "-n", "-oro"]) == ("s3://b", "/mnt", "ro")


@pytest.fixture
def installed_helper():
    """The real /sbin path (mount(8) looks nowhere else); a helper that was there is put back."""
    old = Path(HELPER_PATH).read_bytes() if os.path.exists(HELPER_PATH) else None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CACHEFS_"))}
    res = run_cachefs(["install-mount-helper"], env)
    assert res.returncode == 0, res.describe()
    yield HELPER_PATH
    if old is None:
        os.unlink(HELPER_PATH)
    else:
        Path(HELPER_PATH).write_bytes(old)


@pytest.fixture
def creds_file(tmp_path):
    p = tmp_path / "credentials"
    p.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY_ID}\naws_secret_access_key = {SECRET_ACCESS_KEY}\n")
    p.chmod(0o600)
    return p


def _bare_env() -> dict:
    """What mount(8) run by systemd would see: no AWS_* variables, credentials only from the file."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def _umount(mp: Path, cache: Path) -> None:
    pid = int((cache / "cachefs.pid").read_text())
    subprocess.run(["umount", str(mp)], check=True, timeout=30)
    assert wait_until(lambda: not pid_alive(pid), 15), "daemon still running after umount"


@pytest.mark.parametrize("how", ["mount -t", "fstab"])
def test_mount_command(how, installed_helper, creds_file, make_bucket, moto_server, tmp_path):
    data = object_bytes("helper", 70_000)
    bucket = make_bucket("helper", {"p/x/data.bin": data})
    mp, cache = tmp_path / "mnt", tmp_path / "cache"
    mp.mkdir()
    opts = (f"endpoint_url={moto_server.endpoint_url},region={REGION},addressing_style=path,"
            f"credentials_file={creds_file},cache_dir={cache},metrics_addr=none,_netdev,nofail")
    if how == "mount -t":
        cmd = ["mount", "-t", "fuse.cachefs", f"s3://{bucket}/p", str(mp), "-o", opts]
    else:
        fstab = tmp_path / "fstab"
        fstab.write_text(f"# test\ns3://{bucket}/p  {mp}  fuse.cachefs  {opts}  0 0\n")
        cmd = ["mount", "--fstab", str(fstab), str(mp)]
    res = subprocess.run(cmd, env=_bare_env(), capture_output=True, text=True, timeout=90)
    try:
        assert res.returncode == 0, f"{cmd}: {res.stdout}{res.stderr}\n{(cache / 'cachefs.log').read_text()}"
        assert is_mounted(mp)
        assert read_all(mp / "x/data.bin") == data
        mountinfo = Path("/proc/self/mountinfo").read_text()
        assert SECRET_ACCESS_KEY not in mountinfo
        assert SECRET_ACCESS_KEY not in (cache / "cachefs.log").read_text()
    finally:
        if is_mounted(mp):
            _umount(mp, cache)
    assert not is_mounted(mp)


def test_bad_option_is_one_line(installed_helper, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    res = subprocess.run(["mount", "-t", "fuse.cachefs", "s3://b", str(mp), "-o", "secret_key=abc"],
                         env=_bare_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "credentials do not belong in mount options" in res.stderr, res.stderr
