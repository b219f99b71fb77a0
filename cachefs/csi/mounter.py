"""Mounting and unmounting through the `cachefs` command, so that every FUSE daemon is its own
detached process: the node server can restart (or crash) without taking the mounts with it.

Two implementations of one small interface (`mount(argv)`, `unmount(target)`, `state(target)`,
`stats(target)`):
`Mounter` runs the commands itself (the node server holds the daemons; tests, `--mode all`), and
`mounterd.RemoteMounter` asks the long-lived `cachefs csi mounter` process over a Unix socket, so
that the daemons live in another container than the gRPC server (docs/KUBERNETES.md).
"""
from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import threading

from cachefs import mounts
from cachefs.errors import UserError

log = logging.getLogger(__name__)

ALIVE, DEAD, ABSENT, FOREIGN = "alive", "dead", "absent", "foreign"
STATES = (ALIVE, DEAD, ABSENT, FOREIGN)
MOUNT_TIMEOUT_S = 120.0      # `cachefs mount` itself gives up after its --mount-timeout (60 s default)
# `cachefs umount` waits for the daemon to exit, which (with writes) includes uploading what is
# pending: a checkpoint of many GiB can take minutes. kubelet's own call times out after 2 minutes
# and retries; a retry meanwhile answers ABORTED, and the one after the upload finds the target done.
UNMOUNT_TIMEOUT_S = 600.0


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


class ChildRunner:
    """subprocess.run for a process that also reaps orphans (the mounter is a child subreaper, or PID 1
    of its container, so every detached daemon becomes its child). The reaper must never collect one
    of our own `subprocess` children, or that call would see no exit status: a child is started and
    registered under one lock, and the reaper looks (WNOWAIT) before it reaps, under the same lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._own: set[int] = set()

    def run(self, argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        with self._lock:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            self._own.add(proc.pid)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            what = " ".join(argv[2:4]) if argv[1:2] == ["-m"] else argv[0]
            raise UserError(f"{what} did not finish within {timeout:.0f} s") from None
        finally:
            with self._lock:
                self._own.discard(proc.pid)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def reap_orphans(self) -> int:
        """Reap every exited child that is not one of ours; returns how many."""
        n = 0
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return n
            if info is None:
                return n
            with self._lock:
                if info.si_pid in self._own:
                    return n                 # its `run` collects it (at once); look again later
                try:
                    os.waitpid(info.si_pid, 0)
                    n += 1
                except ChildProcessError:
                    pass


_default_runner = ChildRunner()


class Mounter:
    def __init__(self, env: dict[str, str] | None = None, timeout: float = MOUNT_TIMEOUT_S,
                 unmount_timeout: float = UNMOUNT_TIMEOUT_S, runner: ChildRunner | None = None):
        # The daemons inherit the server's environment minus stray CACHEFS_* settings: a volume's
        # options come from its volume context, not from whatever the server was started with.
        base = os.environ if env is None else env
        self.env = {k: v for k, v in base.items() if not k.startswith("CACHEFS_")}
        self.timeout = timeout
        self.unmount_timeout = unmount_timeout
        self.runner = runner or _default_runner

    def _cachefs(self, *args: str, timeout: float) -> None:
        """Run `cachefs ARGS`; raises UserError with the command's one-line error (which never
        contains credentials: they are in a file)."""
        r = self.runner.run([sys.executable, "-m", "cachefs", *args], self.env, timeout)
        if r.returncode != 0:
            lines = r.stderr.strip().splitlines() or [f"cachefs {args[0]} exited with {r.returncode}"]
            raise UserError(lines[-1].removeprefix("cachefs: error: "))

    def mount(self, argv: list[str]) -> None:
        """Run `cachefs mount ARGV`; it returns once the daemon serves."""
        self._cachefs("mount", *argv, timeout=self.timeout)

    def state(self, target: str) -> str:
        return state(target)

    def stats(self, target: str) -> dict:
        """The counters of the daemon serving `target` (its control socket, ipc.find_socket)."""
        from cachefs.ipc import control_request
        stats: dict = control_request(target, "stats", timeout=10)["stats"]
        return stats

    def unmount(self, target: str) -> None:
        """`cachefs umount`, which waits for the daemon to exit (and so, with writes, for the pending
        uploads: the flush before unmounting). A dead mount has no daemon to wait for: a plain, then
        a lazy fusermount clears it."""
        st = state(target)
        if st == ALIVE:
            self._cachefs("umount", target, "--timeout", f"{self.unmount_timeout:g}",
                          timeout=self.unmount_timeout + 30)
        elif st == DEAD:
            log.warning("%s is a dead mount (Transport endpoint is not connected); clearing it", target)
            try:
                self._fusermount(target)
            except UserError:
                self._fusermount(target, lazy=True)

    def flush(self, target: str, timeout: float) -> None:
        """`cachefs flush`: the cache index and (with writes) the pending uploads, now."""
        self._cachefs("flush", target, timeout=timeout)

    def _fusermount(self, path: str, lazy: bool = False) -> None:
        args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [path]
        r = self.runner.run(args, self.env, 60)
        if r.returncode != 0:
            msg = (r.stderr.strip().splitlines() or ["fusermount3 failed"])[-1]
            raise UserError(f"cannot unmount {path}: {msg.removeprefix('fusermount3: ')}")
