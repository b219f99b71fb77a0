"""Configuration layers (defaults < TOML < environment < flags) and credentials, seen through real mounts."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from mount_helpers import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    MiB,
    Mount,
    cachefs_env,
    free_closed_port_url,
    is_mounted,
    mount_args,
    object_bytes,
    read_all,
    run_cachefs,
)

pytestmark = pytest.mark.timeout(120)

FILES = {"two-mib-and-one": object_bytes("cfg", 2 * MiB + 1)}


@pytest.fixture
def cfg_bucket(make_bucket):
    return make_bucket("config", FILES)


def write_toml(mounter, text: str):
    path = mounter.fresh_dir("cfg") / "cachefs.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("layers, expected_uid", [
    (("toml",), 1111), (("toml", "env"), 2222), (("toml", "env", "flag"), 3333), (("env",), 2222),
    (("toml", "flag"), 3333)], ids=lambda v: "-".join(v) if isinstance(v, tuple) else str(v))
def test_precedence_toml_env_flags(mounter, cfg_bucket, layers, expected_uid):
    extra, env = [], mounter.env()
    if "toml" in layers:
        extra += ["--config", str(write_toml(mounter, "uid = 1111\n"))]
    if "env" in layers:
        env["CACHEFS_UID"] = "2222"
    if "flag" in layers:
        extra += ["--uid", "3333"]
    m = mounter.mount(cfg_bucket, *extra, env=env)
    assert os.stat(m / "two-mib-and-one").st_uid == expected_uid
    assert os.stat(m.path).st_uid == expected_uid


@pytest.mark.parametrize("source", ["toml", "env-over-bad-toml", "flag-over-bad-env"])
def test_endpoint_url_from_each_layer(mounter, cfg_bucket, source):
    good, bad = mounter.endpoint_url, free_closed_port_url()
    env, extra, endpoint = mounter.env(), [], ""
    if source == "toml":
        extra = ["--config", str(write_toml(mounter, f'endpoint_url = "{good}"\n'))]
    elif source == "env-over-bad-toml":
        extra = ["--config", str(write_toml(mounter, f'endpoint_url = "{bad}"\n'))]
        env["CACHEFS_ENDPOINT_URL"] = good
    else:
        env["CACHEFS_ENDPOINT_URL"] = bad
        endpoint = good
    m = mounter.mount(cfg_bucket, *extra, env=env, endpoint_url=endpoint)
    assert read_all(m / "two-mib-and-one") == FILES["two-mib-and-one"]


@pytest.mark.parametrize("layer, blocks", [("toml", 3), ("env", 5)])
def test_block_size_from_toml_and_env(mounter, cfg_bucket, layer, blocks):
    """A 2 MiB + 1 file is 3 blocks of 1 MiB (TOML) or 5 of 512 KiB (the environment beats the TOML file)."""
    env = mounter.env()
    config = write_toml(mounter, 'block_size = "1MiB"\n')
    if layer == "env":
        env["CACHEFS_BLOCK_SIZE"] = "512KiB"
    m = mounter.mount(cfg_bucket, "--config", str(config), env=env, block_size=None)
    assert read_all(m / "two-mib-and-one") == FILES["two-mib-and-one"]
    assert m.stats()["cache_blocks"] == blocks, m.stats()


# ---------------------------------------------------------------- credentials (against the auth-enforcing moto)

def credentials_env(**extra: str) -> dict[str, str]:
    env = cachefs_env()
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    return {**env, **extra}


def write_credentials(mounter, auth_moto, mode: int = 0o600):
    path = mounter.fresh_dir("creds") / "credentials"
    path.write_text("[default]\naws_access_key_id = AKIABOGUSBOGUSBOGUS0\naws_secret_access_key = bogus\n\n"
                    f"[train]\naws_access_key_id = {auth_moto.key_id}\naws_secret_access_key = {auth_moto.secret}\n")
    path.chmod(mode)
    return path


def test_credentials_file_and_profile(mounter, auth_moto):
    creds = write_credentials(mounter, auth_moto)
    m = mounter.mount(auth_moto.bucket, "--credentials-file", str(creds), "--profile", "train",
                      env=credentials_env(), endpoint_url=auth_moto.endpoint_url)
    assert (m / "hello.txt").read_bytes() == b"hello\n"


def test_profile_from_the_standard_chain(mounter, auth_moto):
    creds = write_credentials(mounter, auth_moto)
    m = mounter.mount(auth_moto.bucket, "--profile", "train", endpoint_url=auth_moto.endpoint_url,
                      env=credentials_env(AWS_SHARED_CREDENTIALS_FILE=str(creds)))
    assert (m / "hello.txt").read_bytes() == b"hello\n"


def test_credentials_from_the_environment(mounter, auth_moto):
    env = credentials_env(AWS_ACCESS_KEY_ID=auth_moto.key_id, AWS_SECRET_ACCESS_KEY=auth_moto.secret)
    m = mounter.mount(auth_moto.bucket, endpoint_url=auth_moto.endpoint_url, env=env)
    assert (m / "hello.txt").read_bytes() == b"hello\n"


def test_relative_paths_are_relative_to_the_callers_directory(mounter, cfg_bucket):
    """Mount point, cache dir, config and credentials file given relative to the working directory."""
    work = mounter.fresh_dir("cwd")
    (work / "mnt").mkdir()
    (work / "cfg.toml").write_text("uid = 4242\n")
    creds = work / "creds"
    creds.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY_ID}\naws_secret_access_key = {SECRET_ACCESS_KEY}\n")
    creds.chmod(0o600)
    args = mount_args(f"s3://{cfg_bucket}", Path("mnt"), Path("cache"), mounter.endpoint_url,
                      "--config", "cfg.toml", "--credentials-file", "creds")
    m = Mount(f"s3://{cfg_bucket}", work / "mnt", work / "cache", args, credentials_env())
    mounter.mounts.append(m)  # so that the fixture unmounts it and checks its log whatever happens
    res = run_cachefs(args, m.env, cwd=work)
    assert res.returncode == 0, res.describe()
    assert read_all(m / "two-mib-and-one") == FILES["two-mib-and-one"]
    assert os.stat(m / "two-mib-and-one").st_uid == 4242
    assert m.log_path.exists()
    m.pid()
    res = run_cachefs(["umount", "mnt"], m.env, cwd=work)
    assert res.returncode == 0, res.describe()
    assert not is_mounted(work / "mnt")
