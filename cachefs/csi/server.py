"""The gRPC server on a Unix socket, serving whichever CSI services this process runs."""
from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent import futures

import grpc

from cachefs import ipc
from cachefs.csi.proto import rpc

log = logging.getLogger(__name__)

# Sidecars call one RPC at a time per volume, but kubelet publishes many pods' volumes at once; a
# mount takes a second or two, so a few workers keep publishes from queueing behind each other.
WORKERS = 8


def build(endpoint: str, identity, node=None, controller=None) -> grpc.Server:
    path = ipc.endpoint_path(endpoint)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        os.unlink(path)          # a socket left by a previous run: nothing listens on it any more
    except FileNotFoundError:
        pass
    server = grpc.server(futures.ThreadPoolExecutor(WORKERS))
    rpc.add_IdentityServicer_to_server(identity, server)
    if node is not None:
        rpc.add_NodeServicer_to_server(node, server)
    if controller is not None:
        rpc.add_ControllerServicer_to_server(controller, server)
    server.add_insecure_port("unix://" + path)
    return server


def run_until_signalled(server: grpc.Server, stop: threading.Event) -> None:
    """Serve until SIGTERM/SIGINT. Stopping the server never touches the mounts: the daemons are
    separate processes, and the next server adopts them."""
    def on_signal(signum, frame):
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    log.info("CSI server ready")
    stop.wait()
    server.stop(grace=5).wait()
    log.info("CSI server stopped")
