"""Volume health for NodeGetVolumeStats: what the mount's statfs reports, and whether the volume is
abnormal and why (a dead mount, S3 known down, uploads failing for too long, a cache tier down).

The verdict is the node's view of one target; kubelet shows an abnormal one as a pod event and as
`kubelet_volume_stats_health_status_abnormal` (docs/KUBERNETES.md, "Is my volume healthy?")."""
from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass

from cachefs import mounts
from cachefs.csi.mounter import ABSENT, ALIVE, DEAD, FOREIGN

# A statfs that does not return within this is a wedged daemon: reported, never waited for.
STATFS_TIMEOUT_S = 5.0
# Pending uploads older than this, with failed uploads behind them, make a volume abnormal. Above the
# default large-file schedule (300 s) so that a checkpoint waiting its turn is not an alarm.
UPLOAD_STUCK_S = 900.0


@dataclass
class Usage:
    """statvfs in bytes and inodes (cachefs reports a large fixed size: an object store has none)."""
    total_bytes: int
    available_bytes: int
    used_bytes: int
    total_inodes: int
    free_inodes: int
    used_inodes: int


def statfs(path: str, timeout: float = STATFS_TIMEOUT_S) -> Usage:
    """os.statvfs in a thread of its own, so that a hung FUSE daemon costs this call `timeout`, not
    a gRPC worker for ever. Raises OSError (ENOTCONN for a dead mount, ETIMEDOUT for a hung one)."""
    box: dict = {}

    def run():
        try:
            box["st"] = os.statvfs(path)
        except OSError as e:
            box["err"] = e
    t = threading.Thread(target=run, name="statfs", daemon=True)
    t.start()
    t.join(timeout)
    if "err" in box:
        raise box["err"]
    if "st" not in box:
        raise OSError(errno.ETIMEDOUT, f"statfs did not return within {timeout:g} s")
    st = box["st"]
    total, avail = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    return Usage(total_bytes=total, available_bytes=avail, used_bytes=max(0, total - st.f_bfree * st.f_frsize),
                 total_inodes=st.f_files, free_inodes=st.f_ffree, used_inodes=max(0, st.f_files - st.f_ffree))


def probe(target: str, timeout: float = STATFS_TIMEOUT_S) -> tuple[str, Usage | None, str]:
    """(mounter state, usage, problem) of a target, seen from this process (the node server sees
    the mounts through HostToContainer propagation) and without ever blocking on a hung daemon."""
    fstype = mounts.mounted_fstype(target, resolved=True)
    if fstype is None:
        return ABSENT, None, ""
    if fstype != mounts.FSTYPE:
        return FOREIGN, None, ""
    try:
        return ALIVE, statfs(target, timeout), ""
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return DEAD, None, ""
        return ALIVE, None, f"statfs on the mount failed: {e.strerror or e}"


def problems_in_stats(snap: dict, upload_stuck_s: float = UPLOAD_STUCK_S) -> list[str]:
    """What the daemon's own counters say is wrong, one phrase each (empty: nothing)."""
    out = []
    if snap.get("s3_down"):
        out.append(f"S3 is unreachable ({snap.get('source', 'the endpoint')}: the outage breaker is open; "
                   "cached data is served, uncached reads fail with EIO)")
    age = float(snap.get("uploads_oldest_age_s") or 0)
    if snap.get("uploads_pending") and snap.get("upload_failures") and age > upload_stuck_s:
        out.append(f"uploads are failing: {snap['uploads_pending']} file(s) pending, the oldest for {age:.0f} s "
                   f"({snap['upload_failures']} failed attempts)")
    for tier, info in sorted((snap.get("tiers") or {}).items()):
        dirs = (info or {}).get("dirs") or {}
        down = sorted(d for d, state in dirs.items() if state != "up")
        if down and len(down) == len(dirs):
            out.append(f"cache tier {tier} is down (directory {', '.join(down)}): its reads go to S3")
        elif down:
            out.append(f"cache tier {tier} has a directory down ({', '.join(down)})")
    return out


def condition(state: str, stats_of, upload_stuck_s: float = UPLOAD_STUCK_S) -> tuple[bool, str]:
    """(abnormal, message) for a target in mounter state `state`; `stats_of()` returns the daemon's
    stats (raises when it cannot)."""
    if state == DEAD:
        return True, ("the cachefs daemon of this volume is gone (Transport endpoint is not connected): "
                      "open files fail; the next NodePublishVolume (a new pod or container) mounts it again")
    if state != ALIVE:
        return True, f"the target is not a live cachefs mount ({state})"
    try:
        snap = stats_of()
    except Exception as e:           # noqa: BLE001 - any failure to ask is itself the finding
        return True, f"the cachefs daemon does not answer on its control socket: {getattr(e, 'message', e)}"
    found = problems_in_stats(snap, upload_stuck_s)
    if found:
        return True, "; ".join(found)
    return False, "mounted; S3 reachable; uploads and cache tiers healthy"
