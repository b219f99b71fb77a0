"""JSON over a Unix socket: one request and one answer per connection, each one JSON object on one line.

Two channels speak it: the control socket of a mount (the daemon serves it, daemon/control.py; the
`cachefs` operator commands ask it, `control_request` here) and the CSI mounter (csi/mounterd.py).
Both sockets are 0600 in a 0700 directory, and both servers check the peer's uid (SO_PEERCRED):
root or their own user. This module is the client of the control socket too, so that the command
line reaches a daemon without importing the daemon (its read path, FUSE).
"""
from __future__ import annotations

import json
import os
import socket
import stat
import struct
import time

import xxhash

from cachefs import mounts
from cachefs.errors import UserError

RECV_CHUNK = 65536
CONTROL_TIMEOUT_S = 60.0       # a status query over a large tree asks S3 for unlisted directories


class LineTooLong(ValueError):
    """A request past the server's limit (each server words its answer)."""

    def __init__(self, limit: int):
        super().__init__("request too large")
        self.limit = limit


def encode(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def decode_complete(line: bytes) -> dict:
    """The object on a whole line; ValueError when the peer closed before finishing it."""
    if not line.endswith(b"\n"):
        raise ValueError("connection closed before a full line")
    return json.loads(line)


def _grow(buf: bytes, chunk: bytes, limit: int | None) -> bytes:
    buf += chunk
    if limit is not None and len(buf) > limit:
        raise LineTooLong(limit)
    return buf


def recv_line(sock: socket.socket, limit: int | None = None, deadline: float | None = None) -> bytes:
    """Bytes up to and including the first newline; what came before the peer closed (or the
    monotonic `deadline` passed) if it never sent one."""
    buf = b""
    while not buf.endswith(b"\n") and (deadline is None or time.monotonic() < deadline):
        chunk = sock.recv(RECV_CHUNK)
        if not chunk:
            break
        buf = _grow(buf, chunk, limit)
    return buf


async def recv_line_async(conn, limit: int | None = None) -> bytes:
    """recv_line for a trio socket."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = await conn.recv(RECV_CHUNK)
        if not chunk:
            break
        buf = _grow(buf, chunk, limit)
    return buf


class LineReader:
    """Lines from a trio socket: the request line, then, for a streamed request (the control socket's
    `order`), the lines after it in batches as they arrive; never more than a line's `limit` and one
    chunk buffered."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.rest = b""

    async def line(self, limit: int | None = None) -> bytes:
        """recv_line_async, keeping what came after the newline for `batches`."""
        buf, seen = self.rest, 0
        while b"\n" not in buf[seen:]:
            seen = len(buf)
            chunk = await self.conn.recv(RECV_CHUNK)
            if not chunk:
                self.rest = b""
                return buf
            buf = _grow(buf, chunk, limit)
        cut = buf.index(b"\n") + 1
        self.rest = buf[cut:]
        return buf[:cut]

    async def batches(self, limit: int):
        """Lists of the following lines (without their newline) until the peer stops sending; a last
        line without a newline is yielded too."""
        pending, self.rest = self.rest, b""
        while True:
            *lines, pending = pending.split(b"\n")
            if lines:
                yield lines
            if len(pending) > limit:
                raise LineTooLong(limit)
            chunk = await self.conn.recv(RECV_CHUNK)
            if not chunk:
                if pending:
                    yield [pending]
                return
            pending += chunk


def send(sock: socket.socket, obj: dict) -> None:
    sock.sendall(encode(obj))


async def send_async(conn, obj: dict) -> None:
    view = memoryview(encode(obj))
    while view:
        view = view[await conn.send(view):]


def peer_uid(sock) -> int:
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return uid


def peer_allowed(sock) -> bool:
    """Root, or the user this process runs as."""
    return peer_uid(sock) in (0, os.getuid())


def listen(path: str, backlog: int) -> socket.socket:
    """A listening socket at PATH, mode 0600. A socket file already there is a dead server's (the
    callers hold a lock or are the only instance) and is replaced."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def endpoint_path(endpoint: str) -> str:
    """The socket path of a gRPC-style endpoint: `unix:///csi/csi.sock`, `unix:/csi/csi.sock` or a plain path."""
    return endpoint[len("unix://"):] if endpoint.startswith("unix://") else endpoint.removeprefix("unix:")


def connect(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def private_dir(path: str) -> None:
    """The socket's directory (and, under a shared /tmp, its parent) must be ours alone: another user
    who created it first could otherwise replace the socket or read the mount registry. Ours but too
    open (an old umask): made 0700. Not ours, or a symlink: refused."""
    uid = os.getuid()
    for d in (path, os.path.dirname(path)):
        st = os.lstat(d)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            raise UserError(f"runtime directory {d} is not a directory owned by uid {uid} (owner {st.st_uid}); "
                            "remove it, or set XDG_RUNTIME_DIR to a private directory")
        if d == path and st.st_mode & 0o077:
            os.chmod(d, 0o700)
        if uid == 0 or os.environ.get("XDG_RUNTIME_DIR"):
            return      # /run and XDG_RUNTIME_DIR are private already; /tmp/cachefs-UID is checked too


# -- the control socket of a mount ---------------------------------------------------------------------
def control_socket_path(mountpoint: str, runtime: str | None = None) -> str:
    """RUNTIME/<hash of the canonical mount point>.sock (RUNTIME: this user's runtime directory by
    default): short, since Unix socket paths are limited to 108 bytes."""
    return os.path.join(runtime or mounts.runtime_dir(), xxhash.xxh64_hexdigest(mountpoint.encode()) + ".sock")


def runtime_dirs_of(uid: int) -> list[str]:
    """Where a daemon run by `uid` has its runtime directory, this process's own first: /run/cachefs
    for root; else $XDG_RUNTIME_DIR/cachefs (when it is ours), /run/user/UID/cachefs (what systemd
    sets it to) or /tmp/cachefs-UID/cachefs (unset)."""
    dirs = [mounts.runtime_dir()] if uid == os.getuid() else []
    dirs += ["/run/cachefs"] if uid == 0 else [f"/run/user/{uid}/cachefs", f"/tmp/cachefs-{uid}/cachefs"]
    return list(dict.fromkeys(dirs))


def find_socket(mountpoint: str) -> str:
    """The control socket of the daemon serving MOUNTPOINT: the daemon's runtime directory follows
    from its uid (the mount's `user_id=` in /proc/self/mountinfo), the name from the canonical mount
    point. Only a socket owned by that uid counts: nobody else can plant one for its daemon."""
    mp = mounts.canonical(mountpoint)
    if mounts.mounted_fstype(mp, resolved=True) != mounts.FSTYPE:
        raise UserError(f"{mountpoint} is not a cachefs mount")
    owner = mounts.mount_owner(mp)
    if owner is None:
        raise UserError(f"{mountpoint}: no user_id in its mount options (not a FUSE mount?)")
    tried = []
    for runtime in runtime_dirs_of(owner):
        path = control_socket_path(mp, runtime)
        tried.append(path)
        try:
            st = os.lstat(path)
        except PermissionError:
            raise UserError(f"cannot reach the control socket of {mountpoint}: only root or uid {owner} "
                            "(the mount's owner) may use it") from None
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode) and st.st_uid == owner:
            return path
    raise UserError(f"cannot find the control socket of {mountpoint} (its daemon runs as uid {owner}; "
                    f"looked at {', '.join(tried)})")


def control_request(mountpoint: str, op: str, timeout: float = CONTROL_TIMEOUT_S, **args) -> dict:
    """One request to a mount's daemon; raises UserError with the daemon's message when it refuses."""
    path = find_socket(mountpoint)
    deadline = time.monotonic() + timeout
    try:
        with connect(path, timeout) as s:
            send(s, {"op": op, **args})
            buf = recv_line(s, deadline=deadline)
    except PermissionError:
        raise UserError(f"permission denied on {path}: only root or the mount's owner may use it") from None
    except OSError as e:          # socket.timeout included
        raise UserError(f"control socket {path}: {getattr(e, 'strerror', None) or e}") from None
    if not buf:
        raise UserError(f"the daemon of {mountpoint} closed the control connection without answering")
    answer = json.loads(buf)
    if not answer.get("ok"):
        raise UserError(answer.get("error", "request failed"))
    return answer
