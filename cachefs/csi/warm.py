"""How much of each dataset this node holds warm: the bytes in its disk cache tiers.

A slot in use answers through its daemon's control socket (`stats` -> `cache_bytes`, what the
daemon itself accounts), asked by the mounter that holds the daemons (Mounter.stats); an idle slot
is measured by walking its tier directories, since its blocks stay on disk for the next pod. Memory
tiers are not counted: they are gone when the daemon exits."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable

from cachefs.csi.records import CacheSlots, StateDir
from cachefs.csi.status import CsiError
from cachefs.errors import UserError

log = logging.getLogger(__name__)


def disk_usage(path: str) -> int:
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
        except OSError:
            continue
    return total


def mounted_cache_bytes(target: str, stats: Callable[[str], dict]) -> int | None:
    try:
        return int(stats(target)["cache_bytes"])
    except (UserError, CsiError, OSError, ValueError, KeyError, TypeError) as e:
        log.debug("cache bytes of %s from its daemon: %s", target, e)
        return None


def local_stats(target: str) -> dict:
    """The daemon's counters, asked here (the daemon runs in this container)."""
    from cachefs.ipc import control_request
    stats: dict = control_request(target, "stats", timeout=10)["stats"]
    return stats


def warm_bytes(state: StateDir, slots: CacheSlots, tier_dirs,
               stats: Callable[[str], dict] = local_stats) -> dict[str, int]:
    """{dataset: warm bytes}. `tier_dirs(slot)` lists a slot's disk tier directories; `stats(target)`
    the counters of the daemon serving a target. Two slots of one dataset mostly hold the same
    blocks, so a dataset counts its warmest slot, not their sum."""
    live = {p.slot: p.target_path for p in state.all()}
    out: dict[str, int] = {}
    for slot, dataset in slots.all():
        n = mounted_cache_bytes(live[slot], stats) if slot in live else None
        if n is None:
            n = sum(disk_usage(d) for d in tier_dirs(slot))
        out[dataset] = max(out.get(dataset, 0), n)
    return out
