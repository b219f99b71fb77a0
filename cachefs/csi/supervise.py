"""`cachefs csi --supervise`: the node plugin container's first process.

The gRPC server is its child: when the server crashes it is started again at once (kubelet's
restart back-off is slower) and adopts the mounts. With the chart's mounter (`--mounter`), the FUSE
daemons live in the mounter's container, so even a restart of this container leaves them serving.
Without one (`--mode all`, tests, a plain host), the daemons that `cachefs mount` detaches are
reparented here, and as PID 1 this process reaps them when they exit.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

log = logging.getLogger(__name__)

BACKOFF_S = (1, 2, 5, 10, 30)     # a crash loop slows down; a run this long resets the backoff:
STABLE_S = 60.0


def supervise(child_argv: list[str]) -> int:
    stopping = False
    child: subprocess.Popen | None = None

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True
        if child is not None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    crashes = 0
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(child_argv)
        status = _wait_for(child.pid)
        if stopping:
            break
        crashes = 0 if time.monotonic() - started > STABLE_S else crashes + 1
        delay = BACKOFF_S[min(crashes, len(BACKOFF_S) - 1)]
        log.error("CSI server (pid %d) exited with status %d; starting it again in %d s (mounts stay)",
                  child.pid, status, delay)
        time.sleep(delay)
    return 0


def _wait_for(pid: int) -> int:
    """Wait for `pid`, reaping any other child (orphaned daemons) on the way."""
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if done == pid:
            return os.waitstatus_to_exitcode(status)
