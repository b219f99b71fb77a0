"""Every bad input to `cachefs mount`: non-zero exit within a bound, one `cachefs: error: ` line naming the
culprit, no traceback, no mount and no daemon left behind."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mount_helpers import (
    ERROR_EXIT_BOUND_S,
    cachefs_env,
    free_closed_port_url,
    is_mounted,
    mount_args,
    mount_entries,
    one_line_error,
    pids_mentioning,
    run_cachefs,
    stop_pid,
)

pytestmark = pytest.mark.timeout(120)


@dataclass
class Case:
    """One attempted mount: where, with what, and what the error line must mention."""
    url: str
    mountpoint: Path
    cache_dir: Path
    endpoint_url: str
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=cachefs_env)
    culprit: str = ""  # a regex the error line must match (case-insensitive)

    def args(self) -> list[str]:
        return mount_args(self.url, self.mountpoint, self.cache_dir, self.endpoint_url, *self.extra)


@pytest.fixture
def case(tmp_path, moto_server, make_bucket):
    bucket = make_bucket("cli-errors", {"a.txt": b"a", "d/b.txt": b"b"})
    mnt, cache = tmp_path / "case-mnt", tmp_path / "case-cache"
    mnt.mkdir()
    return Case(f"s3://{bucket}", mnt, cache, moto_server.endpoint_url)


def assert_clean_failure(c: Case, expected_mounts: int = 0, keep_pids: frozenset[int] = frozenset()) -> str:
    assert c.culprit, "each case names what the error line must mention"
    res = run_cachefs(c.args(), c.env, timeout_s=ERROR_EXIT_BOUND_S + 30)
    leftovers = [p for p in pids_mentioning(str(c.cache_dir)) if p not in keep_pids]
    for pid in leftovers:
        stop_pid(pid)
    assert res.returncode != 0, f"bad input accepted: {res.describe()}"
    assert res.elapsed_s < ERROR_EXIT_BOUND_S, f"took {res.elapsed_s:.1f} s to fail"
    assert "Traceback" not in res.stderr + res.stdout, res.describe()
    line = one_line_error(res.stderr)
    assert line is not None, f"want exactly one `cachefs: error: ` line on stderr: {res.describe()}"
    assert re.search(c.culprit, line, re.IGNORECASE), f"{line!r} does not mention {c.culprit!r}"
    if c.mountpoint.exists():
        assert len(mount_entries(c.mountpoint)) == expected_mounts, "a mount was left behind"
    assert leftovers == [], f"daemon processes left behind: {leftovers}"
    return line


def test_unknown_bucket(case):
    case.url = "s3://no-such-bucket-cachefs"
    case.culprit = "no-such-bucket-cachefs"
    assert_clean_failure(case)


def test_unreachable_endpoint(case):
    case.endpoint_url = free_closed_port_url()
    case.culprit = re.escape(case.endpoint_url.rsplit(":", 1)[1])  # the port at least
    assert_clean_failure(case)


def test_wrong_credentials(case, auth_moto):
    case.url, case.endpoint_url = f"s3://{auth_moto.bucket}", auth_moto.endpoint_url
    case.culprit = r"credential|access key|InvalidAccessKeyId|denied|forbidden|403"
    assert_clean_failure(case)


def test_missing_mount_point(case):
    case.mountpoint = case.mountpoint.parent / "not-there"
    case.culprit = re.escape(str(case.mountpoint))
    assert_clean_failure(case)


def test_mount_point_is_not_a_directory(case):
    case.mountpoint = case.mountpoint.parent / "a-file"
    case.mountpoint.write_text("x")
    case.culprit = re.escape(str(case.mountpoint))
    assert_clean_failure(case)
    assert not is_mounted(case.mountpoint)


def test_mount_point_not_empty(case):
    (case.mountpoint / "something").write_text("x")
    case.culprit = re.escape(str(case.mountpoint))
    assert_clean_failure(case)


def test_mount_point_already_mounted(case, mounter):
    first = mounter.mount(case.url[len("s3://"):])
    case.mountpoint = first.path
    case.culprit = re.escape(str(first.path))
    assert_clean_failure(case, expected_mounts=1)
    assert (first.path / "a.txt").read_bytes() == b"a", "the existing mount must keep working"


@pytest.mark.parametrize("option, value", [
    ("--block-size", "4XB"), ("--cache-size", "10 parsecs"), ("--block-size", "-1MiB"), ("--block-size", "0")])
def test_invalid_size_string(case, option, value):
    case.extra = [option, value]
    case.culprit = re.escape(option.lstrip("-"))
    assert_clean_failure(case)


@pytest.mark.parametrize("option, value", [
    ("--entry-timeout", "-1"), ("--attr-timeout", "soon"), ("--listing-ttl", "-5"), ("--negative-ttl", "x"),
    ("--file-mode", "0999"), ("--uid", "-3"), ("--log-level", "chatty"), ("--addressing-style", "sideways")])
def test_invalid_option_value(case, option, value):
    case.extra = [option, value]
    case.culprit = re.escape(option.lstrip("-"))
    assert_clean_failure(case)


def test_unknown_option(case):
    case.extra = ["--frobnicate", "3"]
    case.culprit = "frobnicate"
    assert_clean_failure(case)


def test_bad_bucket_url(case):
    case.url = "http://not-an-s3-url"
    case.culprit = re.escape(case.url)
    assert_clean_failure(case)


def test_unwritable_cache_dir(case):
    parent = case.cache_dir.parent / "regular-file"
    parent.write_text("x")
    case.cache_dir = parent / "cache"
    case.culprit = re.escape(str(parent))
    assert_clean_failure(case)


def test_credentials_file_readable_by_others(case, tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKIAX\naws_secret_access_key = y\n")
    creds.chmod(0o644)
    case.extra = ["--credentials-file", str(creds)]
    case.culprit = re.escape(str(creds)) + ".*644|644.*" + re.escape(str(creds))
    assert_clean_failure(case)


@pytest.mark.parametrize("text, culprit", [
    ('block_size = "1MiB\nthis is not toml = = =\n', None),  # bad TOML: the error names the file
    ('block_size = "1MiB"\nfrobnicate_level = 3\n', "frobnicate_level"),  # an unknown key
    ('block_size = "4XB"\n', "block.size"),  # a bad value
], ids=["bad-toml", "unknown-key", "bad-value"])
def test_bad_config_file(case, tmp_path, text, culprit):
    config = tmp_path / "cachefs.toml"
    config.write_text(text)
    case.extra = ["--config", str(config)]
    case.culprit = culprit or re.escape(str(config))
    assert_clean_failure(case)


def test_invalid_value_in_environment(case):
    case.env["CACHEFS_BLOCK_SIZE"] = "4XB"
    case.culprit = "block.size|CACHEFS_BLOCK_SIZE"
    assert_clean_failure(case)


def test_missing_config_file(case, tmp_path):
    case.extra = ["--config", str(tmp_path / "nope.toml")]
    case.culprit = re.escape(str(tmp_path / "nope.toml"))
    assert_clean_failure(case)


@pytest.mark.daemon_errors_ok(r"in use")  # the refused second daemon logs its error into the shared log
def test_cache_dir_in_use_by_another_mount(case, mounter):
    """DESIGN.md: the cache directory is locked so two daemons cannot share it."""
    first = mounter.mount(case.url[len("s3://"):])
    case.cache_dir = first.cache_dir
    case.culprit = re.escape(str(first.cache_dir))
    assert_clean_failure(case, keep_pids=frozenset({first.pid()}))
    assert (first.path / "a.txt").read_bytes() == b"a"


@pytest.mark.parametrize("argv, culprit", [
    (["mount"], "source|mountpoint"), (["mount", "s3://bucket"], "mountpoint"), (["umount"], "mountpoint"),
    (["frobnicate"], "frobnicate"), (["mount", "s3://bucket", "/tmp", "--block-size"], "block.size")],
    ids=["mount-nothing", "mount-no-mountpoint", "umount-nothing", "unknown-command", "flag-without-value"])
def test_usage_errors_are_one_line(argv, culprit):
    res = run_cachefs(argv, cachefs_env(), timeout_s=ERROR_EXIT_BOUND_S)
    assert res.returncode != 0, res.describe()
    line = one_line_error(res.stderr)
    assert line and re.search(culprit, line, re.IGNORECASE), res.describe()
