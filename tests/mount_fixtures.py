"""Fixtures of the real-mount tiers (a pytest plugin, loaded by tests/conftest.py): moto's S3 server,
buckets, and cachefs mounts.

Nothing here starts until a test asks for it: moto's server starts with the first test that needs a
bucket or a mount, so the unit and in-process tiers never start it.

Every mount made through the `mounter` fixture is unmounted and its daemon stopped at teardown, even
when the test failed, and the test fails if the daemon logged an error it did not declare with
`@pytest.mark.daemon_errors_ok(regex, ...)`.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import json
import subprocess
import uuid
from pathlib import Path

import pytest
from mount_helpers import (
    ACCESS_KEY_ID,
    BLOCK_SIZE_ARG,
    DAEMON_EXIT_TIMEOUT_S,
    SECRET_ACCESS_KEY,
    Mount,
    RequestLog,
    cachefs_env,
    force_unmount,
    is_mounted,
    log_problems,
    mount_args,
    pid_alive,
    populate,
    run_cachefs,
    s3_client,
    stop_pid,
    wait_until,
)

from cachefs.devtools.devserver import MotoServer

# Every moto server this session started (tests/conftest.py checks the fast tiers started none).
MOTO_STARTED: list[str] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "daemon_errors_ok(*regex): daemon log lines matching these are expected")
    config.addinivalue_line("markers", "prefill(hint, objects_factory): fill this bucket in the background early")


# ---------------------------------------------------------------- moto

@pytest.fixture
def aws_env(monkeypatch):
    """The test server's credentials in the environment, and nothing from the machine's AWS files:
    what a store built in the test process (not a mount) reads."""
    for name, value in (("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID), ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
                        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"), ("AWS_CONFIG_FILE", "/nonexistent"),
                        ("AWS_EC2_METADATA_DISABLED", "true")):
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("moto") / "requests.log"
    with MotoServer(log_path=str(log)) as server:
        MOTO_STARTED.append(server.endpoint_url)
        yield server


@pytest.fixture(scope="session")
def request_log(moto_server) -> RequestLog:
    return RequestLog(Path(moto_server.log_path))


@pytest.fixture(scope="session")
def s3(moto_server):
    return s3_client(moto_server.endpoint_url)


_bucket_counter = itertools.count()


def unique_bucket_name(hint: str) -> str:
    clean = "".join(c if c.isalnum() else "-" for c in hint.lower())[:30].strip("-") or "b"
    return f"{clean}-{next(_bucket_counter)}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def make_bucket(s3):
    """make_bucket(hint, {key: bytes}) -> a new bucket name, populated; one bucket per test or module."""
    def make(hint: str, objects: dict[str, bytes] | None = None) -> str:
        name = unique_bucket_name(hint)
        s3.create_bucket(Bucket=name)
        populate(s3, name, objects or {})
        return name
    return make


@pytest.fixture(scope="session")
def prefilled(request, make_bucket):
    """Buckets too slow to fill in line (10k puts take 30-80 s on moto), filled in a background thread that
    starts with the session, so that the filling overlaps the tests that run first.

    prefilled(hint, objects_factory) -> bucket name, waiting for the fill to finish."""
    futures: dict[str, concurrent.futures.Future] = {}
    pool = concurrent.futures.ThreadPoolExecutor(1)

    def start(hint: str, objects_factory) -> None:
        if hint not in futures:
            futures[hint] = pool.submit(lambda: make_bucket(hint, objects_factory()))

    def get(hint: str, objects_factory) -> str:
        start(hint, objects_factory)
        return futures[hint].result()

    get.start = start
    yield get
    pool.shutdown(wait=True)


@pytest.fixture(scope="session", autouse=True)
def _start_slow_fills(request):
    """Kick off the fills that some selected test will need (those with a `prefill` marker). Only
    then is `prefilled` (and with it moto) asked for: a session without such a test starts neither."""
    marks = [mark for item in request.session.items for mark in item.iter_markers("prefill")]
    if not marks:
        return
    prefilled = request.getfixturevalue("prefilled")
    for mark in marks:
        prefilled.start(*mark.args)


@pytest.fixture
def bucket(request, make_bucket) -> str:
    """An empty bucket of the test's own."""
    return make_bucket(request.node.name)


@pytest.fixture(scope="session")
def auth_moto(tmp_path_factory):
    """A second moto server that enforces credentials: only the IAM key it issued works."""
    log = tmp_path_factory.mktemp("moto-auth") / "requests.log"
    with MotoServer(log_path=str(log), env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as server:
        MOTO_STARTED.append(server.endpoint_url)
        iam = s3_client(server.endpoint_url, service="iam")
        iam.create_user(UserName="cachefs")
        iam.put_user_policy(UserName="cachefs", PolicyName="s3-all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="cachefs")["AccessKey"]
        server.key_id, server.secret = key["AccessKeyId"], key["SecretAccessKey"]
        good = s3_client(server.endpoint_url, server.key_id, server.secret)
        server.bucket = unique_bucket_name("auth")
        good.create_bucket(Bucket=server.bucket)
        populate(good, server.bucket, {"hello.txt": b"hello\n"})
        yield server


# ---------------------------------------------------------------- mounts

class Mounter:
    """Mounts cachefs in subprocesses, each in its own tmp dir, and always cleans up after itself."""

    def __init__(self, tmp_path: Path, endpoint_url: str):
        self.tmp_path = tmp_path
        self.endpoint_url = endpoint_url
        self.mounts: list[Mount] = []
        self._n = itertools.count()

    def fresh_dir(self, name: str) -> Path:
        d = self.tmp_path / f"{name}{next(self._n)}"
        d.mkdir(parents=True)
        return d

    def env(self, **extra: str) -> dict[str, str]:
        return cachefs_env(**extra)

    def mount(self, bucket: str, *extra: str, prefix: str = "", mountpoint: Path | None = None,
              cache_dir: Path | None = None, env: dict[str, str] | None = None,
              endpoint_url: str | None = None, block_size: str | None = BLOCK_SIZE_ARG) -> Mount:
        """Mount s3://bucket[/prefix]; `endpoint_url=""` or `block_size=None` leave those flags out."""
        url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        mountpoint = mountpoint or self.fresh_dir("mnt")
        cache_dir = cache_dir or self.fresh_dir("cache")
        if block_size:
            extra = ("--block-size", block_size, *extra)
        endpoint = self.endpoint_url if endpoint_url is None else endpoint_url
        args = mount_args(url, mountpoint, cache_dir, endpoint, *extra)
        return self._run(Mount(url, mountpoint, cache_dir, args, env or self.env()))

    def remount(self, m: Mount) -> Mount:
        """The same mount command again: same URL, options, mount point and cache dir."""
        return self._run(Mount(m.url, m.path, m.cache_dir, m.args, m.env))

    def _run(self, m: Mount) -> Mount:
        self.mounts.append(m)
        res = run_cachefs(m.args, m.env)
        if res.returncode != 0:
            raise AssertionError(f"`cachefs {' '.join(m.args)}` failed: {res.describe()}\n"
                                 f"--- daemon log (tail)\n{m.log_text()[-4000:]}")
        assert is_mounted(m.real_path), f"mount exited 0 but {m.path} is not mounted yet: {res.describe()}"
        m.pid()
        return m

    def umount(self, m: Mount) -> None:
        """`cachefs umount`, which must return only once the daemon has exited."""
        pid = m.pid()
        res = run_cachefs(["umount", str(m.path)], m.env)
        assert res.returncode == 0, f"umount failed: {res.describe()}"
        assert not is_mounted(m.real_path), "umount returned but the mount is still there"
        assert wait_until(lambda: not pid_alive(pid), 2.0), f"umount returned but daemon {pid} is still running"

    def cleanup(self) -> list[str]:
        """Unmount everything, stop every daemon we started; return what went wrong."""
        problems = []
        for m in self.mounts:
            try:
                m.pid()  # also the daemons of mounts that failed half-way
            except (OSError, ValueError):
                pass
            if is_mounted(m.real_path):
                force_unmount(m.real_path)
                if is_mounted(m.real_path):
                    problems.append(f"{m.real_path} still mounted after fusermount3 -u and -uz")
        for m in self.mounts:
            for pid in m.pids:
                if not wait_until(lambda pid=pid: not pid_alive(pid), DAEMON_EXIT_TIMEOUT_S):
                    problems.append(f"daemon {pid} did not exit after its mount was gone; killed it")
                    stop_pid(pid)
        return problems

    def log_offsets(self) -> dict[Path, int]:
        """Where each daemon log ends now: check only what is written after this."""
        return {m.cache_dir: len(m.log_text()) for m in self.mounts}

    def daemon_log_problems(self, allowed: list[str], since: dict[Path, int] | None = None) -> list[str]:
        seen, problems = set(), []
        for m in self.mounts:
            if m.cache_dir in seen:
                continue
            seen.add(m.cache_dir)
            text = m.log_text()[(since or {}).get(m.cache_dir, 0):]
            problems += [f"{m.log_path}: {line}" for line in log_problems(text, allowed)]
        return problems


def allowed_errors(node) -> list[str]:
    return [rx for mark in node.iter_markers("daemon_errors_ok") for rx in mark.args]


def finish(m: Mounter, allowed: list[str], since: dict[Path, int] | None = None) -> None:
    """Unmount and stop everything; fail if that went wrong or a daemon logged an unexpected error."""
    problems = m.cleanup()
    problems += m.daemon_log_problems(allowed, since)
    if problems:
        pytest.fail("after the test:\n" + "\n".join(problems[:40]), pytrace=False)


@pytest.fixture
def mounter(request, tmp_path, moto_server):
    m = Mounter(tmp_path, moto_server.endpoint_url)
    yield m
    finish(m, allowed_errors(request.node))


@pytest.fixture(scope="module")
def module_mounter(request, tmp_path_factory, moto_server):
    """Mounts shared by the tests of one module (read-only tests that need no cold cache).

    A test that uses them fails if a daemon logged an error during it (`_shared_mount_guard`); here, at
    the end of the module, only the shutdown is checked."""
    m = Mounter(tmp_path_factory.mktemp("shared"), moto_server.endpoint_url)
    yield m
    finish(m, allowed_errors(request.node), m.log_offsets())


@pytest.fixture(autouse=True)
def _shared_mount_guard(request):
    if "module_mounter" not in request.fixturenames:
        yield
        return
    module_mounter = request.getfixturevalue("module_mounter")
    before = module_mounter.log_offsets()
    yield
    problems = module_mounter.daemon_log_problems(allowed_errors(request.node), before)
    if problems:
        pytest.fail("daemon logged during the test:\n" + "\n".join(problems[:40]), pytrace=False)


# ---------------------------------------------------------------- faults

@pytest.fixture
def fault_proxy(moto_server):
    """A fault-injecting HTTP proxy in front of moto (cachefs.devtools.faultproxy): mount with
    `mounter.mount(bucket, endpoint_url=fault_proxy.url)`, then add faults or outages at run time and
    count what reached it (`fault_proxy.seen(op, key)`). Stopped, with every fault removed, at teardown."""
    from cachefs.devtools.faultproxy import FaultProxy
    with FaultProxy(moto_server.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MiB tmpfs (mode 0700) for full-disk scenarios; skips where mounting is not allowed."""
    path = tmp_path / "tmpfs"
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)
