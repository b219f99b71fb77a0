"""`cachefs csi mounter`: the FUSE daemons live in a process of their own (in Kubernetes, the
mounter DaemonSet), so the gRPC node server can be killed (-9) and restarted at will: its mounts keep
serving and the new server adopts them. A new mounter (its container restarted, which ends the
daemons) is noticed and the node mounts its records again."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import grpc
import pytest
from mount_helpers import CACHEFS_SRC, PYTHON, cachefs_env, is_mounted, pid_alive, stop_pid, wait_until

from cachefs.csi.mounterd import MounterUnavailable, RemoteMounter

from .conftest import CsiServer, _unmount_leftovers, status_of
from .test_node import daemon_pid, publish_request, unpublish

Code = grpc.StatusCode
NO_CAPABILITIES = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]


class MounterProc:
    def __init__(self, root: Path):
        self.socket = root / "run" / "mounter.sock"
        self.endpoint = f"unix://{self.socket}"
        self.log_path = root / "mounter.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "a")
        env = {k: v for k, v in cachefs_env().items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        self.proc = subprocess.Popen([PYTHON, "-m", "cachefs", "csi", "mounter", "--socket", self.endpoint,
                                      "--log-level", "debug"],
                                     cwd=CACHEFS_SRC, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        assert wait_until(self._answers, 30), f"mounter did not answer:\n{self.log()}"

    def _answers(self) -> bool:
        try:
            RemoteMounter(self.endpoint).hello(timeout=2)
            return True
        except MounterUnavailable:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def cap_eff(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)


def ppid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("PPid:")).split()[1])


@pytest.fixture
def pair(moto_server):
    """A mounter and a node server that uses it, on one state directory."""
    root = Path(tempfile.mkdtemp(prefix="csim-", dir="/tmp"))
    mounter = MounterProc(root)
    mounter.start()
    server = CsiServer(root, moto_server.endpoint_url, "--mounter", mounter.endpoint)
    # As in the chart: root, but with every capability dropped (only the mounter is privileged).
    server.prefix = NO_CAPABILITIES
    server.start()
    yield mounter, server, root
    server.kill()
    if mounter.proc.poll() is None:
        mounter.proc.kill()
        mounter.proc.wait(10)
    _unmount_leftovers(root)
    shutil.rmtree(root, ignore_errors=True)


def test_node_server_killed_mounts_survive_and_are_adopted(pair, auth_moto):
    mounter, server, root = pair
    target = root / "pods" / "p1" / "mount"
    target.parent.mkdir(parents=True)
    req = publish_request(auth_moto, target, volume_id="vol-m")
    server.node.NodePublishVolume(req)
    daemon = daemon_pid(server)
    # The daemon is the mounter's (it is a child subreaper), not the node server's, and the node
    # server has no capabilities at all.
    assert ppid_of(daemon) == mounter.proc.pid
    assert cap_eff(server.proc.pid) == 0 and cap_eff(mounter.proc.pid) != 0
    assert (target / "hello.txt").read_bytes() == b"hello\n"
    # The daemon's counters reach the node server through the mounter (the warm labels' source).
    stats = RemoteMounter(mounter.endpoint).stats(str(target))
    assert stats["fuse_reads"] >= 1 and "cache_bytes" in stats

    for n in (1, 2):                                    # kill -9 the node server, start a new one
        server.restart()
        assert pid_alive(daemon) and is_mounted(target)
        assert (target / "hello.txt").read_bytes() == b"hello\n"
        assert mounter.proc.poll() is None              # the mounter survives
        assert wait_until(lambda: server.log().count("adopted 1 mounts") == n, 10), server.log()
    server.node.NodePublishVolume(req)                  # idempotent: the new server knows it
    assert daemon_pid(server) == daemon

    unpublish(server, target, "vol-m")
    assert not is_mounted(target) and not target.exists()
    # The daemon exited and the mounter reaped it (no zombie left behind).
    assert wait_until(lambda: not os.path.exists(f"/proc/{daemon}"), 10), "daemon not reaped"
    assert "Traceback" not in mounter.log()


def test_a_new_mounter_is_noticed_and_the_mounts_come_back(pair, auth_moto):
    mounter, server, root = pair
    target = root / "pods" / "p2" / "mount"
    target.parent.mkdir(parents=True)
    server.node.NodePublishVolume(publish_request(auth_moto, target, volume_id="vol-n"))
    daemon = daemon_pid(server)

    # What the end of the mounter's container does: the mounter and every daemon die at once.
    mounter.proc.send_signal(signal.SIGKILL)
    mounter.proc.wait(10)
    os.kill(daemon, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(daemon), 10)
    # Meanwhile publishes answer UNAVAILABLE (kubelet retries) and leave no record behind.
    other = root / "pods" / "p3" / "mount"
    other.parent.mkdir(parents=True)
    req = publish_request(auth_moto, other, volume_id="vol-o")
    assert status_of(server.node.NodePublishVolume, req) == Code.UNAVAILABLE
    assert len(list((server.state_dir / "volumes").iterdir())) == 1

    mounter.start()                                     # the container comes back
    assert wait_until(lambda: "remounted 1" in server.log(), 30), server.log()
    assert is_mounted(target) and (target / "hello.txt").read_bytes() == b"hello\n"
    assert daemon_pid(server) != daemon
    assert ppid_of(daemon_pid(server)) == mounter.proc.pid

    server.node.NodePublishVolume(req)                  # kubelet's retry now succeeds
    for t, vol in ((target, "vol-n"), (other, "vol-o")):
        unpublish(server, t, vol)
        assert not is_mounted(t)


def test_mounter_checks_requests_and_stops_on_sigterm(pair):
    mounter, server, root = pair
    client = RemoteMounter(mounter.endpoint)
    assert client.state(str(root / "nowhere")) == "absent"
    for bad in ({"op": "state", "target": "relative/path"}, {"op": "mount", "argv": "not a list"},
                {"op": "nonsense"}, {"op": "mount", "argv": ["s3://b", str(root / "missing")]}):
        with pytest.raises(Exception) as err:
            client.call(bad, 30)
        assert not isinstance(err.value, MounterUnavailable), bad
    assert os.stat(mounter.socket).st_mode & 0o077 == 0            # 0600: root's only
    mounter.proc.send_signal(signal.SIGTERM)
    assert mounter.proc.wait(30) == 0
    with pytest.raises(MounterUnavailable):
        client.hello()
    stop_pid(server.proc.pid)
