"""Mount points: checks before mounting, the table of mounts, unmounting, and the run-time registry
that maps a mount point to its daemon's pid."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import time

import xxhash

from cachefs import mountinfo
from cachefs.errors import UserError

FSTYPE = "fuse.cachefs"


def canonical(path: str) -> str:
    """The absolute path with symlinks resolved, without ever stat-ing a mount point: that would ask
    its FUSE daemon, and hang if the daemon is stuck or is ourselves before serving."""
    path = os.path.abspath(path)
    for _ in range(40):   # the kernel's own limit on symlinks in a path
        path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if mounted_fstype(path, resolved=True) is not None or not os.path.islink(path):
            return path
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    raise UserError(f"too many levels of symbolic links in {path}")


def mounted_fstype(path: str, resolved: bool = False) -> str | None:
    """The filesystem type mounted exactly at `path`, or None."""
    entry = mountinfo.entry(path if resolved else canonical(path))
    return entry[0] if entry else None


def mount_owner(path: str) -> int | None:
    """The uid of the process that mounted the FUSE filesystem at `path` (its `user_id=` option),
    or None (nothing mounted there, or not FUSE). `path` is canonical."""
    entry = mountinfo.entry(path)
    for opt in entry[1].split(",") if entry else ():
        if opt.startswith("user_id="):
            return int(opt[len("user_id="):])
    return None


def check_mountpoint(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"mount point {path} does not exist") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise UserError(f"mount point {path} is a dead mount (Transport endpoint is not connected); "
                            f"run: cachefs umount {path}") from None
        raise UserError(f"mount point {path}: {e.strerror}") from None
    if not os.path.isdir(path):
        raise UserError(f"mount point {path} is not a directory")
    fstype = mounted_fstype(path)
    if fstype is not None:
        raise UserError(f"mount point {path} is already mounted ({fstype})")
    try:
        if os.listdir(path):
            raise UserError(f"mount point {path} is not empty")
    except PermissionError:
        raise UserError(f"mount point {path} is not readable by this user") from None
    if not os.access(path, os.W_OK | os.X_OK) and os.getuid() != 0:
        raise UserError(f"mount point {path} is not writable by this user")
    del st


# -- run-time registry: mount point -> daemon ----------------------------------------------
def runtime_dir() -> str:
    if os.getuid() == 0:
        return "/run/cachefs"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/cachefs-{os.getuid()}"
    return os.path.join(base, "cachefs")


def _registry_path(mountpoint: str) -> str:
    return os.path.join(runtime_dir(), xxhash.xxh64_hexdigest(canonical(mountpoint).encode()) + ".json")


def lock_mountpoint(mountpoint: str) -> int:
    """Held for the daemon's lifetime: two `mount`s racing for one mount point cannot both win."""
    os.makedirs(runtime_dir(), mode=0o700, exist_ok=True)
    fd = os.open(_registry_path(mountpoint)[:-len(".json")] + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = (lookup(mountpoint) or {}).get("pid")
        raise UserError(f"mount point {mountpoint} is already mounted or being mounted by another cachefs "
                        f"daemon" + (f" (pid {holder})" if holder else "")) from None
    return fd


def register(mountpoint: str, info: dict) -> None:
    os.makedirs(runtime_dir(), mode=0o700, exist_ok=True)
    tmp = _registry_path(mountpoint) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, _registry_path(mountpoint))


def unregister(mountpoint: str) -> None:
    try:
        os.unlink(_registry_path(mountpoint))
    except FileNotFoundError:
        pass


def lookup(mountpoint: str) -> dict | None:
    try:
        with open(_registry_path(mountpoint)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def fusermount_unmount(path: str, lazy: bool = False) -> None:
    args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [path]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or ["fusermount3 failed"])[-1]
        raise UserError(f"cannot unmount {path}: {msg.removeprefix('fusermount3: ')}")


def unmount(path: str, timeout: float) -> None:
    """Unmount a cachefs mount and wait (up to `timeout` s) until its daemon has exited."""
    path = canonical(path)
    fstype = mounted_fstype(path)
    if fstype != FSTYPE:
        raise UserError(f"{path} is not a cachefs mount" + (f" (it is {fstype})" if fstype else ""))
    info = lookup(path) or {}
    fusermount_unmount(path)
    pid = info.get("pid")
    if not pid:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise UserError(f"unmounted {path}, but its daemon (pid {pid}) is still running after {timeout:.0f} s")
        time.sleep(0.05)
