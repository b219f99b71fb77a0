"""`cachefs csi mounter`: the long-lived process that holds the FUSE daemons of a node, and the
client the node server uses to reach it (`RemoteMounter`).

Why: in a container, every process dies with the container. When the daemons were children of the
gRPC node server's container, a restart of that container (a crash, an OOM kill, a failed liveness
probe) ended every mount on the node. Now the node server only decides *what* to mount and keeps
the records; this process, in a pod of its own (the mounter DaemonSet), runs `cachefs mount`,
`cachefs umount` and `fusermount3` on its behalf, and is the parent (child subreaper, or PID 1's
child under tini) of every daemon. The node server can restart, roll to a new version or crash at
will; the mounts stay. Restarting *this* process's container still ends the daemons (see
docs/KUBERNETES.md, Upgrade): it changes rarely and has no liveness probe.

The protocol: one JSON object per line, one request and one answer per connection, on a Unix
socket (0600, in a 0700 directory; peers are checked with SO_PEERCRED: root or our own uid).

    {"v": 1, "op": "hello"}                        -> {"ok": true, "instance": ID, "pid": N, "version": V}
    {"v": 1, "op": "state", "target": PATH}        -> {"ok": true, "state": "alive"|"dead"|"absent"|"foreign"}
    {"v": 1, "op": "mount", "argv": [ARG, ...]}    -> {"ok": true}      (`cachefs mount ARG ...`)
    {"v": 1, "op": "unmount", "target": PATH}      -> {"ok": true}      (`cachefs umount`, or clear a dead mount)
    {"v": 1, "op": "stats", "target": PATH}        -> {"ok": true, "stats": {...}}  (the daemon's `stats`)
    any failure                                    -> {"ok": false, "error": "one line"}

`instance` is new at every start: a node server that sees it change knows that the daemons of the
previous mounter are gone (their mounts are dead) and mounts its records again (NodeService.adopt).
Version 1 is the only version; a later one adds ops, never changes these.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import os
import signal
import socket
import threading
import time
import uuid

import grpc

from cachefs import __version__, ipc, mountinfo, mounts
from cachefs.csi.mounter import MOUNT_TIMEOUT_S, STATES, UNMOUNT_TIMEOUT_S, ChildRunner, Mounter
from cachefs.csi.status import CsiError
from cachefs.errors import UserError

log = logging.getLogger(__name__)

PROTOCOL = 1
MAX_REQUEST = 1 << 20          # a mount argv is a few hundred bytes
WORKERS = 8                    # as many concurrent operations as the node server has gRPC workers
PR_SET_CHILD_SUBREAPER = 36    # <linux/prctl.h>
REAP_INTERVAL_S = 0.5
# On SIGTERM: how long to spend asking every daemon to flush (index, pending uploads) before
# exiting; keep it under the pod's terminationGracePeriodSeconds.
STOP_FLUSH_S = 20.0


def _recv(conn: socket.socket) -> dict:
    return ipc.decode_complete(ipc.recv_line(conn, MAX_REQUEST))


class MounterUnavailable(CsiError):
    """The mounter process does not answer: UNAVAILABLE, so that kubelet retries."""

    def __init__(self, message: str):
        super().__init__(grpc.StatusCode.UNAVAILABLE, message)


# ---------------------------------------------------------------- server

class MounterServer:
    def __init__(self, endpoint: str, mounter: Mounter | None = None, stop_flush_s: float = STOP_FLUSH_S):
        self.path = ipc.endpoint_path(endpoint)
        self.runner = ChildRunner()
        self.mounter = mounter or Mounter(runner=self.runner)
        self.mounter.runner = self.runner
        self.instance = uuid.uuid4().hex
        self.stop_flush_s = stop_flush_s
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._mounted: set[str] = set()      # targets this instance mounted (flushed on SIGTERM)
        self._pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="mounter")

    def listen(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        try:
            os.unlink(self.path)         # left by a previous instance: nothing listens on it any more
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)            # the socket is 0600 from its creation
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        sock.listen(64)
        sock.settimeout(0.5)
        self._sock = sock

    def serve(self) -> None:
        """Accept until stop(); each connection is handled on the worker pool."""
        sock = self._sock
        assert sock is not None, "listen() comes first"
        _become_subreaper()
        reaper = threading.Thread(target=self._reap, name="reaper", daemon=True)
        reaper.start()
        log.info("mounter %s ready on %s (pid %d)", self.instance, self.path, os.getpid())
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if self._stop.is_set():
                    break
                log.warning("accept failed: %s", e)
                time.sleep(0.1)
                continue
            self._pool.submit(self._handle, conn)
        sock.close()

    def stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        """After serve(): give each daemon the chance to flush, then return. The daemons are left
        running: outside a container they go on serving; in one, the container's end stops them
        (their pending uploads stay staged in the cache slot, and the next daemon there uploads)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        live = set(cachefs_mounts())
        targets = sorted(t for t in self._mounted if t in live)
        if not targets or self.stop_flush_s <= 0:
            return
        log.info("flushing %d mounts before exiting", len(targets))
        deadline = time.monotonic() + self.stop_flush_s
        with concurrent.futures.ThreadPoolExecutor(min(8, len(targets))) as pool:
            futures = {pool.submit(self.mounter.flush, t, self.stop_flush_s): t for t in targets}
            done, late = concurrent.futures.wait(futures, max(0.0, deadline - time.monotonic()))
            for f in done:
                if f.exception() is not None:
                    log.warning("flush of %s failed: %s", futures[f], f.exception())
            for f in late:
                log.warning("flush of %s did not finish in %.0f s", futures[f], self.stop_flush_s)

    def _reap(self) -> None:
        while not self._stop.wait(REAP_INTERVAL_S):
            self.runner.reap_orphans()

    def _handle(self, conn: socket.socket) -> None:
        request = None
        with conn:
            try:
                conn.settimeout(30)
                if not ipc.peer_allowed(conn):
                    ipc.send(conn, {"ok": False, "error": "permission denied"})
                    return
                request = _recv(conn)
                conn.settimeout(None)
                answer = self.dispatch(request)
            except (OSError, ValueError) as e:
                answer = {"ok": False, "error": f"bad request: {e}"}
            try:
                ipc.send(conn, answer)
            except OSError as e:
                log.warning("could not answer %s: %s", request.get("op") if isinstance(request, dict) else "?", e)

    def dispatch(self, request) -> dict:
        if not isinstance(request, dict) or request.get("v") != PROTOCOL:
            return {"ok": False, "error": f"unsupported request (protocol {PROTOCOL})"}
        op = request.get("op")
        try:
            if op == "hello":
                return {"ok": True, "instance": self.instance, "pid": os.getpid(), "version": __version__}
            if op == "state":
                return {"ok": True, "state": self.mounter.state(_path(request))}
            if op == "stats":     # the daemons' control sockets are in this container's /run
                return {"ok": True, "stats": self.mounter.stats(_path(request))}
            if op == "mount":
                argv = request.get("argv")
                if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
                    raise ValueError("argv must be a list of strings")
                self.mounter.mount(argv)
                if len(argv) > 1:
                    self._mounted.add(mounts.canonical(argv[1]))
                log.info("mounted %s", argv[1] if len(argv) > 1 else argv)
                return {"ok": True}
            if op == "unmount":
                target = _path(request)
                self.mounter.unmount(target)
                self._mounted.discard(target)
                log.info("unmounted %s", target)
                return {"ok": True}
            return {"ok": False, "error": f"unknown op {op!r}"}
        except (UserError, ValueError, OSError) as e:
            log.warning("%s failed: %s", op, e)
            return {"ok": False, "error": str(e)}
        except Exception as e:            # never take the mounter down with one request
            log.exception("%s failed", op)
            return {"ok": False, "error": f"internal error: {type(e).__name__}"}


def _path(request: dict) -> str:
    target = request.get("target")
    if not isinstance(target, str) or not os.path.isabs(target):
        raise ValueError("target must be an absolute path")
    return mounts.canonical(target)


def _become_subreaper() -> None:
    """Detached daemons (`cachefs mount` double-forks them) become our children instead of init's,
    so we reap them; as PID 1 of a container this is already so."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %d", ctypes.get_errno())
    except OSError as e:
        log.warning("cannot become a child subreaper: %s", e)


def cachefs_mounts() -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if right.split()[:1] == [mounts.FSTYPE] and len(fields) > 4:
                out.append(mountinfo.unescape(fields[4]))
    return out


def run(endpoint: str, stop_flush_s: float = STOP_FLUSH_S, mount_timeout: float = MOUNT_TIMEOUT_S,
        unmount_timeout: float = UNMOUNT_TIMEOUT_S) -> int:
    server = MounterServer(endpoint, Mounter(timeout=mount_timeout, unmount_timeout=unmount_timeout),
                           stop_flush_s)

    def on_signal(signum, frame):
        log.info("signal %d: stopping (the daemons are left running)", signum)
        server.stop()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.listen()
    server.serve()
    server.shutdown()
    log.info("mounter stopped")
    return 0


# ---------------------------------------------------------------- client

class RemoteMounter:
    """The Mounter interface, carried out by the mounter process at `endpoint`."""

    def __init__(self, endpoint: str, timeout: float = MOUNT_TIMEOUT_S,
                 unmount_timeout: float = UNMOUNT_TIMEOUT_S):
        self.path = ipc.endpoint_path(endpoint)
        self.timeout = timeout
        self.unmount_timeout = unmount_timeout

    def call(self, request: dict, timeout: float) -> dict:
        try:
            sock = ipc.connect(self.path, timeout)
        except OSError as e:
            raise MounterUnavailable(f"the mounter does not answer on {self.path}: {e.strerror or e}") from None
        with sock:
            try:
                ipc.send(sock, {"v": PROTOCOL, **request})
                answer = _recv(sock)
            except (OSError, ValueError) as e:
                # It took the request and died (or restarted) before answering: whether the
                # operation happened is unknown, so the CO must retry, and a retry finds out.
                raise MounterUnavailable(f"the mounter did not answer {request['op']}: {e}") from None
        if not answer.get("ok"):
            raise UserError(answer.get("error") or "the mounter refused")
        return answer

    def hello(self, timeout: float = 5.0) -> dict:
        return self.call({"op": "hello"}, timeout)

    def state(self, target: str) -> str:
        st = self.call({"op": "state", "target": target}, 30)["state"]
        if st not in STATES:
            raise UserError(f"the mounter answered an unknown state {st!r}")
        return st

    def mount(self, argv: list[str]) -> None:
        self.call({"op": "mount", "argv": argv}, self.timeout + 30)

    def stats(self, target: str) -> dict:
        stats: dict = self.call({"op": "stats", "target": target}, 30)["stats"]
        return stats

    def unmount(self, target: str) -> None:
        self.call({"op": "unmount", "target": target}, self.unmount_timeout + 60)


class MounterWatch:
    """In the node server: notices a new mounter (its `instance` changed, or it answered for the
    first time) and has the node adopt its records again, which mounts the now dead targets anew."""

    def __init__(self, mounter: RemoteMounter, on_new_instance, interval: float = 5.0):
        self.mounter = mounter
        self.on_new_instance = on_new_instance
        self.interval = interval
        self.instance: str | None = None
        self._warned = False

    def check(self) -> bool:
        """One look; True when it called on_new_instance."""
        try:
            hello = self.mounter.hello()
        except (MounterUnavailable, UserError) as e:
            if not self._warned:
                log.warning("%s (mounts wait for it)", e.message if isinstance(e, CsiError) else e)
                self._warned = True
            return False
        self._warned = False
        if hello["instance"] == self.instance:
            return False
        log.info("mounter %s (pid %s, cachefs %s) answers%s", hello["instance"], hello.get("pid"),
                 hello.get("version"), "" if self.instance is None else "; it restarted: adopting again")
        try:
            self.on_new_instance()
        except MounterUnavailable as e:
            log.warning("adoption interrupted: %s", e.message)
            return False                     # not remembered: the next look tries again
        self.instance = hello["instance"]
        return True

    def run(self, stop: threading.Event) -> None:
        while True:
            try:
                self.check()
            except Exception:
                log.exception("watching the mounter failed")
            if stop.wait(self.interval):
                return
