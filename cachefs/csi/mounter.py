"""Mounting and unmounting through the `cachefs` command, so that every FUSE daemon is its own
detached process: the node server can restart (or crash) without taking the mounts with it."""
from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys

from .. import mounts
from ..errors import UserError

log = logging.getLogger(__name__)

ALIVE, DEAD, ABSENT, FOREIGN = "alive", "dead", "absent", "foreign"


def state(target: str) -> str:
    """alive: a cachefs mount that answers; dead: one whose daemon is gone (ENOTCONN);
    absent: nothing mounted there; foreign: some other filesystem is mounted there."""
    fstype = mounts.mounted_fstype(target, resolved=True)
    if fstype is None:
        return ABSENT
    if fstype != mounts.FSTYPE:
        return FOREIGN
    try:
        os.statvfs(target)    # statfs always reaches the daemon; stat may be answered from cached attributes
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):   # the latter: a request cut off mid-way
            return DEAD
        raise
    return ALIVE


class Mounter:
    def __init__(self, env: dict[str, str] | None = None, timeout: float = 120.0):
        # The daemons inherit the server's environment minus stray CACHEFS_* settings: a volume's
        # options come from its volume context, not from whatever the server was started with.
        base = os.environ if env is None else env
        self.env = {k: v for k, v in base.items() if not k.startswith("CACHEFS_")}
        self.timeout = timeout

    def mount(self, argv: list[str]) -> None:
        """Run `cachefs mount ARGV`; it returns once the daemon serves. Raises UserError with the
        command's one-line error (which never contains credentials: they are in a file)."""
        r = subprocess.run([sys.executable, "-m", "cachefs", "mount", *argv], env=self.env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=self.timeout)
        if r.returncode != 0:
            lines = r.stderr.strip().splitlines() or [f"cachefs mount exited with {r.returncode}"]
            raise UserError(lines[-1].removeprefix("cachefs: error: "))

    def unmount(self, target: str) -> None:
        """Unmount and wait for the daemon (which, once writes exist, uploads what is pending first).
        A dead mount has no daemon to wait for: a plain, then a lazy fusermount clears it."""
        st = state(target)
        if st == ALIVE:
            mounts.unmount(target, self.timeout)
        elif st == DEAD:
            log.warning("%s is a dead mount (Transport endpoint is not connected); clearing it", target)
            try:
                mounts.fusermount_unmount(target)
            except UserError:
                mounts.fusermount_unmount(target, lazy=True)
