"""The control socket and the commands that use it (stats, flush, drop, reload), on a real mount."""
from __future__ import annotations

import json
import os
import socket
import stat

import pytest
from mount_helpers import MiB, object_bytes, one_line_error, read_all, run_cachefs

from cachefs import ipc
from cachefs.errors import UserError

OBJECTS = {"d/one.bin": object_bytes("one", MiB), "d/two.bin": object_bytes("two", MiB // 2),
           "top.txt": b"hello\n"}


@pytest.fixture(scope="module")
def mnt(module_mounter, make_bucket):
    return module_mounter.mount(make_bucket("control", OBJECTS), "--metrics-addr", "none")


def cachefs(m, *args):
    return run_cachefs(list(args), m.env)


def test_stats_table_and_json(mnt):
    assert read_all(mnt / "top.txt") == b"hello\n"
    table = cachefs(mnt, "stats", str(mnt.path))
    assert table.returncode == 0, table.describe()
    for word in ("tier", "ssd", "mem", "hit ratio", "S3: GET", "pending uploads"):
        assert word in table.stdout, table.stdout
    js = cachefs(mnt, "stats", str(mnt.path), "--json")
    data = json.loads(js.stdout)
    assert data["s3_get"] >= 1 and set(data["tiers"]) == {"mem", "ssd"}
    assert data["control_socket"] == ipc.find_socket(str(mnt.path))


def test_the_socket_is_found_from_the_mount_alone(mnt):
    """No registry entry (another XDG_RUNTIME_DIR, the CSI mounter's container): the path follows
    from the mount's user_id= and the mount point. A socket someone else owns is not taken."""
    from cachefs import mounts
    path = ipc.find_socket(str(mnt.path))
    saved = mounts.lookup(str(mnt.path))
    mounts.unregister(str(mnt.path))
    try:
        assert ipc.find_socket(str(mnt.path)) == path
        assert cachefs(mnt, "stats", str(mnt.path), "--json").returncode == 0
    finally:
        if saved is not None:
            mounts.register(str(mnt.path), saved)
    owner = os.stat(path).st_uid
    os.chown(path, owner + 12345, -1)
    try:
        with pytest.raises(UserError, match="cannot find the control socket"):
            ipc.find_socket(str(mnt.path))
    finally:
        os.chown(path, owner, -1)


def test_socket_is_owner_only(mnt):
    path = ipc.find_socket(str(mnt.path))
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


def test_other_uid_is_refused_by_peer_credentials(mnt):
    """Even with the file permissions opened up, the daemon checks who is on the other end."""
    path = ipc.find_socket(str(mnt.path))
    parent = os.path.dirname(path)
    old_dir, old_sock = os.stat(parent).st_mode, os.stat(path).st_mode
    os.chmod(parent, 0o711)
    os.chmod(path, 0o666)
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(10)
                    s.connect(path)
                    s.sendall(b'{"op": "stats"}\n')
                    os.write(w, s.recv(65536))
            except BaseException as e:
                os.write(w, json.dumps({"child": repr(e)}).encode())
            finally:
                os._exit(0)
        os.close(w)
        answer = b""
        while chunk := os.read(r, 65536):
            answer += chunk
        os.waitpid(pid, 0)
    finally:
        os.chmod(parent, stat.S_IMODE(old_dir))
        os.chmod(path, stat.S_IMODE(old_sock))
    reply = json.loads(answer)
    assert "child" not in reply, reply
    assert reply["ok"] is False and "permission denied" in reply["error"]
    assert "stats" not in reply


def test_flush(mnt):
    res = cachefs(mnt, "flush", str(mnt.path))
    assert res.returncode == 0 and "flushed" in res.stdout, res.describe()


def test_drop_makes_the_next_read_fetch_again(mnt):
    assert read_all(mnt / "d/one.bin") == OBJECTS["d/one.bin"]
    warm = mnt.stats()["s3_get"]
    assert read_all(mnt / "d/one.bin") == OBJECTS["d/one.bin"]
    assert mnt.stats()["s3_get"] == warm
    res = cachefs(mnt, "drop", str(mnt.path), "d")
    assert res.returncode == 0, res.describe()
    assert "of 2 files" in res.stdout and not res.stdout.startswith("dropped 0 "), res.stdout
    assert read_all(mnt / "d/one.bin") == OBJECTS["d/one.bin"]
    assert mnt.stats()["s3_get"] >= warm + 4          # 1 MiB in 256 KiB blocks


def test_drop_of_a_missing_path_is_one_line(mnt):
    res = cachefs(mnt, "drop", str(mnt.path), "nope/none")
    assert res.returncode == 1 and one_line_error(res.stderr) and "no such file" in res.stderr, res.describe()


def test_reload_safe_settings_only(mnt):
    res = cachefs(mnt, "reload", str(mnt.path), "read_ahead=20MiB", "log_level=debug")
    assert res.returncode == 0 and f"read_ahead={20 << 20}" in res.stdout, res.describe()
    cachefs(mnt, "reload", str(mnt.path), "log_level=info")
    bad = cachefs(mnt, "reload", str(mnt.path), "block_size=1MiB")
    assert bad.returncode == 1 and "cannot change block_size while mounted" in bad.stderr, bad.describe()
    assert one_line_error(bad.stderr), bad.describe()
    invalid = cachefs(mnt, "reload", str(mnt.path), "read_ahead=many")
    assert invalid.returncode == 1 and "read_ahead" in invalid.stderr, invalid.describe()


def test_not_a_cachefs_mount(mnt, tmp_path):
    res = cachefs(mnt, "stats", str(tmp_path))
    assert res.returncode == 1 and one_line_error(res.stderr) and "not a cachefs mount" in res.stderr
