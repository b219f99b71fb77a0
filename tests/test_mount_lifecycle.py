"""Starting and stopping the daemon: ready on return, `umount`, SIGTERM, --foreground, ownership flags."""
from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import threading
import time

import pytest
from mount_helpers import (
    BLOCK_SIZE,
    CACHEFS_SRC,
    DAEMON_EXIT_TIMEOUT_S,
    MOUNT_TIMEOUT_S,
    PYTHON,
    force_unmount,
    is_mounted,
    log_problems,
    mount_args,
    mount_entries,
    object_bytes,
    one_line_error,
    pid_alive,
    read_all,
    run_cachefs,
    stop_pid,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

OBJECTS = {"f.bin": object_bytes("f", 3 * BLOCK_SIZE + 1), "d/g.txt": b"g"}


@pytest.fixture
def lifecycle_bucket(make_bucket):
    return make_bucket("lifecycle", OBJECTS)


def test_mount_is_ready_when_the_command_returns(mounter, lifecycle_bucket):
    m = mounter.mount(lifecycle_bucket)
    assert sorted(os.listdir(m.path)) == ["d", "f.bin"]
    assert read_all(m / "f.bin") == OBJECTS["f.bin"]
    assert pid_alive(m.pid()), "cachefs.pid does not name a running daemon"
    assert m.log_path.exists(), "no cachefs.log in the cache dir"


def test_umount_waits_for_the_daemon_and_frees_the_mount_point(mounter, lifecycle_bucket):
    m = mounter.mount(lifecycle_bucket)
    pid = m.pid()
    mounter.umount(m)  # asserts exit 0, no mount, daemon gone
    assert not pid_alive(pid)
    assert os.listdir(m.path) == [], "the mount point should be the empty directory again"
    m2 = mounter.remount(m)
    assert (m2 / "d/g.txt").read_bytes() == b"g"


def test_mount_point_with_spaces_and_unicode(mounter, lifecycle_bucket):
    """/proc/self/mountinfo escapes spaces as \\040: finding our own mount must still work."""
    m = mounter.mount(lifecycle_bucket, mountpoint=mounter.fresh_dir("mnt with spaces ünï\t"))
    assert (m / "d/g.txt").read_bytes() == b"g"
    pid = m.pid()
    res = run_cachefs(["umount", f"{m.path}/"], m.env)  # a trailing slash names the same mount point
    assert res.returncode == 0, res.describe()
    assert not is_mounted(m.path) and not pid_alive(pid)


@pytest.mark.parametrize("target", ["plain-dir", "missing"])
def test_umount_of_something_that_is_not_a_cachefs_mount_fails(mounter, target):
    path = mounter.fresh_dir("plain") if target == "plain-dir" else mounter.tmp_path / "does-not-exist"
    res = run_cachefs(["umount", str(path)], mounter.env(), timeout_s=30)
    assert res.returncode != 0, res.describe()
    line = one_line_error(res.stderr)
    assert line and str(path) in line, res.describe()


def test_umount_refuses_a_mount_that_is_not_cachefs(mounter):
    """/proc is a mount, just not ours: umount must not touch it."""
    res = run_cachefs(["umount", "/proc"], mounter.env(), timeout_s=30)
    assert res.returncode != 0, res.describe()
    assert one_line_error(res.stderr), res.describe()
    assert is_mounted("/proc")


def test_sigterm_unmounts_cleanly(mounter, lifecycle_bucket):
    m = mounter.mount(lifecycle_bucket)
    assert read_all(m / "f.bin") == OBJECTS["f.bin"]
    pid = m.pid()
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not pid_alive(pid), DAEMON_EXIT_TIMEOUT_S), "daemon ignored SIGTERM"
    assert not is_mounted(m.path), "daemon exited on SIGTERM but left its mount behind"
    assert os.listdir(m.path) == []


def test_sigterm_while_a_file_is_open(mounter, lifecycle_bucket):
    """The daemon still exits and the mount goes (lazily); closing the orphaned descriptor may say ENOTCONN."""
    m = mounter.mount(lifecycle_bucket)
    fd = os.open(m / "f.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 0) == OBJECTS["f.bin"][:10]
        pid = m.pid()
        os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: not pid_alive(pid), DAEMON_EXIT_TIMEOUT_S), "daemon ignored SIGTERM"
        assert wait_until(lambda: not is_mounted(m.path), 5), "mount left behind"
    finally:
        try:
            os.close(fd)
        except OSError as e:
            assert e.errno == errno.ENOTCONN, repr(e)


def test_foreground_runs_until_unmounted(mounter, lifecycle_bucket):
    mnt, cache = mounter.fresh_dir("mnt"), mounter.fresh_dir("cache")
    args = mount_args(f"s3://{lifecycle_bucket}", mnt, cache, mounter.endpoint_url, "--foreground")
    output = cache / "foreground.out"  # --foreground logs to stderr: a file, so a full pipe cannot block it
    with open(output, "wb") as out:
        proc = subprocess.Popen([PYTHON, "-m", "cachefs", *args], cwd=CACHEFS_SRC, env=mounter.env(),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: is_mounted(mnt) or proc.poll() is not None, MOUNT_TIMEOUT_S)
        assert proc.poll() is None, f"--foreground exited with {proc.returncode}: {output.read_text()}"
        assert (mnt / "d/g.txt").read_bytes() == b"g"
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=30)
        assert proc.wait(DAEMON_EXIT_TIMEOUT_S) == 0, output.read_text()
        assert log_problems(output.read_text()) == [], output.read_text()
    finally:
        force_unmount(mnt)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_ownership_and_mode_flags(mounter, lifecycle_bucket):
    m = mounter.mount(lifecycle_bucket, "--uid", "1234", "--gid", "4321", "--file-mode", "0440",
                      "--dir-mode", "0550")
    for rel, mode, kind in (("f.bin", 0o440, stat.S_IFREG), ("d", 0o550, stat.S_IFDIR),
                            ("d/g.txt", 0o440, stat.S_IFREG), (".", 0o550, stat.S_IFDIR)):
        st = os.stat(m / rel)
        assert (st.st_uid, st.st_gid) == (1234, 4321), rel
        assert stat.S_IFMT(st.st_mode) == kind and stat.S_IMODE(st.st_mode) == mode, (rel, oct(st.st_mode))


@pytest.mark.parametrize("option, value", [
    ("--block-size", "1MiB"), ("--block-size", "512KiB"), ("--block-size", "131072"),
    ("--cache-size", "1G"), ("--cache-size", "10GiB"), ("--cache-size", "64MiB"), ("--cache-size", str(100 * 2**20))])
def test_size_strings_are_accepted(mounter, lifecycle_bucket, option, value):
    extra = (option, value) if option != "--block-size" else ()
    m = mounter.mount(lifecycle_bucket, *extra, block_size=value if option == "--block-size" else "256KiB")
    assert read_all(m / "f.bin") == OBJECTS["f.bin"]


def test_umount_while_a_file_is_open_does_not_hang(mounter, lifecycle_bucket):
    """Either it unmounts (and the daemon exits) or it refuses with one line and the mount keeps working."""
    m = mounter.mount(lifecycle_bucket)
    with open(m / "d/g.txt", "rb") as f:
        res = run_cachefs(["umount", str(m.path)], m.env, timeout_s=60)
        assert res.elapsed_s < 30, res.describe()
        if res.returncode == 0:
            assert not is_mounted(m.path) and not pid_alive(m.pid())
        else:
            assert one_line_error(res.stderr), res.describe()
            assert f.read() == b"g" and (m / "f.bin").read_bytes() == OBJECTS["f.bin"]
    if is_mounted(m.path):
        mounter.umount(m)


def test_after_sigkill_umount_cleans_up_and_the_cache_dir_can_be_mounted_again(mounter, lifecycle_bucket):
    """A crashed daemon leaves a dead mount (ENOTCONN) and a cache dir whose lock holder is gone."""
    m = mounter.mount(lifecycle_bucket)
    assert read_all(m / "f.bin") == OBJECTS["f.bin"]
    pid = m.pid()
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), 10)
    res = run_cachefs(["umount", str(m.path)], m.env, timeout_s=60)
    assert res.returncode == 0, f"umount of a crashed cachefs mount: {res.describe()}"
    assert not is_mounted(m.path)
    m2 = mounter.remount(m)
    assert read_all(m2 / "f.bin") == OBJECTS["f.bin"]
    assert sorted(os.listdir(m2.path)) == ["d", "f.bin"]


def test_mount_point_given_through_a_symlink(mounter, lifecycle_bucket):
    """`/data -> /mnt/data` style: mount and umount by the symlink's name both work."""
    real = mounter.fresh_dir("real-mnt")
    link = mounter.tmp_path / "link-to-mnt"
    link.symlink_to(real)
    m = mounter.mount(lifecycle_bucket, mountpoint=link)
    assert (link / "d/g.txt").read_bytes() == b"g"
    assert is_mounted(real)
    pid = m.pid()
    res = run_cachefs(["umount", str(link)], m.env, timeout_s=60)
    assert res.returncode == 0, res.describe()
    assert not is_mounted(real) and wait_until(lambda: not pid_alive(pid), 5)


def test_two_concurrent_mounts_on_one_mount_point(mounter, lifecycle_bucket):
    """Exactly one wins; the other fails with one line. Never two stacked mounts."""
    mnt = mounter.fresh_dir("mnt")
    caches = [mounter.fresh_dir("cache"), mounter.fresh_dir("cache")]
    procs = [subprocess.Popen([PYTHON, "-m", "cachefs",
                               *mount_args(f"s3://{lifecycle_bucket}", mnt, c, mounter.endpoint_url)],
                              cwd=CACHEFS_SRC, env=mounter.env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in caches]
    results = [(p.wait(MOUNT_TIMEOUT_S), p.communicate()[1]) for p in procs]
    pids = [int((c / "cachefs.pid").read_text()) for c in caches if (c / "cachefs.pid").exists()]
    try:
        entries = mount_entries(mnt)
        assert sorted(rc == 0 for rc, _ in results) == [False, True], results
        assert len(entries) == 1, f"stacked mounts: {entries}"
        assert one_line_error(next(err for rc, err in results if rc != 0)), results
        assert (mnt / "d/g.txt").read_bytes() == b"g"
    finally:
        while is_mounted(mnt):
            force_unmount(mnt)
        for pid in pids:
            stop_pid(pid)


def test_sigterm_during_cold_reads_exits_cleanly(mounter, make_bucket):
    """Reads in flight (S3 fetches, read-ahead) when SIGTERM arrives: the daemon still exits promptly, unmounts,
    and logs no error or traceback; the readers get their bytes or an error, never wrong bytes."""
    data = {f"f{i}": object_bytes(f"inflight{i}", 3 * 1024 * 1024) for i in range(4)}
    m = mounter.mount(make_bucket("inflight", data))
    results: list[str] = []

    def reader(key: str) -> None:
        try:
            results.append("ok" if read_all(m / key) == data[key] else f"{key}: WRONG BYTES")
        except OSError as e:
            results.append(f"error {e.errno}")

    threads = [threading.Thread(target=reader, args=(k,)) for k in data]
    for t in threads:
        t.start()
    time.sleep(0.3)
    pid = m.pid()
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not pid_alive(pid), DAEMON_EXIT_TIMEOUT_S), "daemon did not exit on SIGTERM"
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a reader hung after the daemon exited"
    assert not any("WRONG" in r for r in results), results
    assert wait_until(lambda: not is_mounted(m.path), 5)
