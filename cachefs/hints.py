"""Tell a cachefs mount in which order a job will read its files, so the daemon fetches them ahead.

    from cachefs.hints import send_order
    send_order("/mnt/imagenet", paths_in_the_order_the_job_reads_them, epoch=3)

Standard library only: a training job imports this module, and it must not pull in the daemon, FUSE
or any third-party package. It finds the mount's control socket the way `cachefs.ipc.find_socket`
does (tests/unit/test_order.py checks that the two agree; `cachefs.mountinfo`, standard library too,
reads /proc/self/mountinfo for both), with its own XXH64, and streams the
paths (the control socket's `order` op: docs/OPERATIONS.md "Before the first epoch").
"""
from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterable

from cachefs import mountinfo

FSTYPE = "fuse.cachefs"
TIMEOUT_S = 60.0
BATCH_BYTES = 1 << 16

__all__ = ["HintError", "send_order", "control_socket"]


class HintError(RuntimeError):
    """The mount or its daemon could not take the order (the message says why)."""


# -- XXH64 (seed 0), the hash ipc.control_socket_path names the socket by -----------------------------
_P1, _P2, _P3, _P4, _P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                           0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)
_M = (1 << 64) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _M, 31) * _P1) & _M


def xxh64_hexdigest(data: bytes, seed: int = 0) -> str:
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M, (seed + _P2) & _M, seed, (seed - _P1) & _M]
        while i + 32 <= n:
            for k in range(4):
                v[k] = _round(v[k], int.from_bytes(data[i + 8 * k:i + 8 * k + 8], "little"))
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M
        for lane in v:
            h = (((h ^ _round(0, lane)) * _P1) + _P4) & _M
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while i + 8 <= n:
        h = ((_rotl(h ^ _round(0, int.from_bytes(data[i:i + 8], "little")), 27) * _P1) + _P4) & _M
        i += 8
    if i + 4 <= n:
        h = ((_rotl(h ^ (int.from_bytes(data[i:i + 4], "little") * _P1 & _M), 23) * _P2) + _P3) & _M
        i += 4
    while i < n:
        h = (_rotl(h ^ (data[i] * _P5 & _M), 11) * _P1) & _M
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _M
    h ^= h >> 29
    h = (h * _P3) & _M
    h ^= h >> 32
    return f"{h:016x}"


# -- the mount and its control socket (as cachefs.mounts and cachefs.ipc find them) -------------------
def _canonical(path: str) -> str:
    """Absolute, symlinks resolved, without stat-ing a mount point (its daemon would answer it)."""
    path = os.path.abspath(path)
    for _ in range(40):
        path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if mountinfo.entry(path) is not None or not os.path.islink(path):
            return path
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    raise HintError(f"too many levels of symbolic links in {path}")


def _runtime_dirs(uid: int) -> list[str]:
    dirs = []
    if uid == os.getuid():
        if uid == 0:
            dirs.append("/run/cachefs")
        else:
            base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/cachefs-{uid}"
            dirs.append(os.path.join(base, "cachefs"))
    dirs += ["/run/cachefs"] if uid == 0 else [f"/run/user/{uid}/cachefs", f"/tmp/cachefs-{uid}/cachefs"]
    return list(dict.fromkeys(dirs))


def control_socket(mountpoint: str) -> str:
    """The control socket of the cachefs daemon serving `mountpoint`."""
    mp = _canonical(mountpoint)
    entry = mountinfo.entry(mp)
    if entry is None or entry[0] != FSTYPE:
        raise HintError(f"{mountpoint} is not a cachefs mount")
    owner = next((int(o[len("user_id="):]) for o in entry[1].split(",") if o.startswith("user_id=")), None)
    if owner is None:
        raise HintError(f"{mountpoint}: no user_id in its mount options")
    name = xxh64_hexdigest(mp.encode()) + ".sock"
    for runtime in _runtime_dirs(owner):
        path = os.path.join(runtime, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode) and st.st_uid == owner:
            return path
    raise HintError(f"cannot find the control socket of {mountpoint} (its daemon runs as uid {owner})")


# -- sending an order ------------------------------------------------------------------------------------
def _line(path: str, roots: tuple[str, ...]) -> bytes:
    for root in roots:
        if path.startswith(root):
            path = path[len(root):]
            break
    if "\n" in path or path.startswith('"'):
        return json.dumps(path).encode() + b"\n"
    return path.encode() + b"\n"


def send_order(mountpoint: str, paths: Iterable[str | os.PathLike], epoch: int | None = None,
               stream: str | None = None, socket_path: str | None = None, timeout: float = TIMEOUT_S) -> dict:
    """Send the order in which this job will read files under `mountpoint` (paths relative to it, or
    absolute paths under it), streamed as `paths` yields them. A later order of the same `stream`
    (one per rank of a distributed job; default "default") replaces it; an order of an `epoch`
    older than the stream's current one is ignored. Returns the daemon's answer (`received`: paths
    it took); raises HintError if the mount or daemon cannot be reached."""
    path = socket_path or control_socket(mountpoint)
    roots = tuple(dict.fromkeys(os.path.join(p, "") for p in (os.path.abspath(mountpoint), _canonical(mountpoint))))
    head: dict = {"op": "order"}
    if epoch is not None:
        head["epoch"] = int(epoch)
    if stream is not None:
        head["stream"] = str(stream)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            batch = [json.dumps(head).encode() + b"\n"]
            size = 0
            for p in paths:
                line = _line(os.fspath(p), roots)
                if len(line) > 1:           # an empty line would end the order
                    batch.append(line)
                    size += len(line)
                if size >= BATCH_BYTES:
                    s.sendall(b"".join(batch))
                    batch, size = [], 0
            batch.append(b"\n")
            s.sendall(b"".join(batch))
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
    except OSError as e:
        raise HintError(f"control socket {path}: {getattr(e, 'strerror', None) or e}") from None
    if not answer:
        raise HintError(f"the daemon of {mountpoint} closed the connection without answering")
    reply = json.loads(answer)
    if not reply.get("ok"):
        raise HintError(reply.get("error", "order refused"))
    return reply
