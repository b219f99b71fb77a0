"""A real `cachefs csi` server in a subprocess on a Unix socket, and gRPC stubs to talk to it."""
from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import grpc
import pytest
from mount_helpers import (
    CACHEFS_SRC,
    PYTHON,
    REGION,
    cachefs_env,
    force_unmount,
    is_mounted,
    pid_alive,
    stop_pid,
    wait_until,
)

from cachefs.csi.proto import pb, rpc

START_TIMEOUT_S = 30.0


def free_port_block(n: int = 4) -> int:
    """The first of `n` consecutive loopback ports that are free now (for the daemons' exporters).
    Below the kernel's ephemeral range: a port picked there can be taken by any outgoing
    connection's source port before the daemon binds it (a CI run failed so: EADDRINUSE)."""
    low, _ = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(max(1024, low - 12000), low - n)
        if all(_port_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no block of free ports")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class CsiServer:
    """One `cachefs csi --mode all` process; `restart()` kills it (SIGKILL, like a crashed container
    process) and starts another on the same state, as a DaemonSet would."""

    def __init__(self, root: Path, endpoint_url: str, *extra: str):
        self.root = root
        self.socket = root / "csi.sock"
        self.state_dir = root / "state"
        self.cache_root = root / "cache"
        self.log_path = root / "server.log"
        self.args = ["-m", "cachefs", "csi", "--endpoint", f"unix://{self.socket}", "--mode", "all",
                     "--node-id", "node-a", "--state-dir", str(self.state_dir),
                     "--cache-root", str(self.cache_root), "--cache-size", "64MiB",
                     "--endpoint-url", endpoint_url, "--region", REGION, "--addressing-style", "path",
                     "--metrics-port-base", str(free_port_block()), "--metrics-ports", "4", *extra]
        # No AWS keys in the server's environment: every S3 credential arrives as a CSI secret.
        self.env = {k: v for k, v in cachefs_env().items()
                    if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        self.proc: subprocess.Popen | None = None
        self.channel: grpc.Channel | None = None
        self.prefix: list[str] = []          # e.g. setpriv, to run the server without capabilities

    def start(self) -> None:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([*self.prefix, PYTHON, *self.args], cwd=CACHEFS_SRC, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        try:
            grpc.channel_ready_future(self.channel).result(timeout=START_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            raise AssertionError(f"csi server did not listen within {START_TIMEOUT_S} s:\n{self.log()}") from None
        self.identity = rpc.IdentityStub(self.channel)
        self.node = rpc.NodeStub(self.channel)
        self.controller = rpc.ControllerStub(self.channel)

    def kill(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        if self.channel is not None:
            self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def restart(self) -> None:
        self.kill()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def slot_dirs(self) -> list[Path]:
        return sorted(p for p in self.cache_root.iterdir() if p.is_dir()) if self.cache_root.exists() else []


def mount_capability(mode=pb.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY) -> pb.VolumeCapability:
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(),
                               access_mode=pb.VolumeCapability.AccessMode(mode=mode))


def block_capability() -> pb.VolumeCapability:
    return pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(),
                               access_mode=pb.VolumeCapability.AccessMode(
                                   mode=pb.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY))


def status_of(call, *args, **kwargs) -> grpc.StatusCode:
    """The status code a call ends with (OK when it succeeds)."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def csi_server(moto_server):
    # A short path: a Unix socket path must fit in 108 bytes, pytest's tmp paths may not.
    root = Path(tempfile.mkdtemp(prefix="csi-", dir="/tmp"))
    server = CsiServer(root, moto_server.endpoint_url)
    server.start()
    yield server
    server.kill()
    _unmount_leftovers(root)
    shutil.rmtree(root, ignore_errors=True)


def _unmount_leftovers(root: Path) -> None:
    """Unmount whatever a failed test left published under `root` and stop its daemons."""
    pids = []
    for pidfile in root.glob("cache/*/cachefs.pid"):
        try:
            pids.append(int(pidfile.read_text().strip()))
        except (OSError, ValueError):
            pass
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(str(root))]
    for point in points:
        force_unmount(point)
    for pid in pids:
        if not wait_until(lambda: not pid_alive(pid), 10):
            stop_pid(pid)


@pytest.fixture
def target(csi_server, request) -> Path:
    """A target path of the kind kubelet passes (its parent exists, the directory itself need not)."""
    d = csi_server.root / "pods" / request.node.name[:40] / "mount"
    d.parent.mkdir(parents=True, exist_ok=True)
    yield d
    if is_mounted(d):
        force_unmount(d)
