"""`cachefs csi --supervise` (the node plugin container's first process): a crashed server is
started again, adopts the mounts, and their daemons never notice."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import grpc
from mount_helpers import is_mounted, pid_alive, wait_until

from .conftest import CsiServer, _unmount_leftovers
from .test_node import daemon_pid, publish_request, unpublish


def server_children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if int(fields[1]) == pid and b"csi" in cmdline and fields[0] != "Z":
                out.append(int(entry))
    return out


def test_supervisor_restarts_a_crashed_server_and_mounts_survive(moto_server, auth_moto):
    root = Path(tempfile.mkdtemp(prefix="csis-", dir="/tmp"))
    server = CsiServer(root, moto_server.endpoint_url, "--supervise")
    try:
        server.start()
        target = root / "pods" / "p1" / "mount"
        target.parent.mkdir(parents=True)
        req = publish_request(auth_moto, target, volume_id="vol-s")
        server.node.NodePublishVolume(req)
        daemon = daemon_pid(server)
        [child] = server_children(server.proc.pid)

        os.kill(child, signal.SIGKILL)                  # the gRPC server crashes
        assert wait_until(lambda: server_children(server.proc.pid) not in ([], [child]), 20)
        grpc.channel_ready_future(server.channel).result(timeout=20)
        assert pid_alive(daemon) and is_mounted(target)
        assert (target / "hello.txt").read_bytes() == b"hello\n"
        assert wait_until(lambda: server.log().count("adopted 1 mounts") == 1, 10), server.log()
        server.node.NodePublishVolume(req)              # the new server knows the publication
        unpublish(server, target, "vol-s")
        assert not is_mounted(target) and wait_until(lambda: not pid_alive(daemon), 10)
        assert server.stop() == 0                       # SIGTERM: supervisor and server exit
    finally:
        server.kill()
        _unmount_leftovers(root)
        shutil.rmtree(root, ignore_errors=True)
