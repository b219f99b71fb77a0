"""How much of each dataset this node holds warm: the bytes in its disk cache tiers.

A slot in use answers through its mount (`user.cachefs.stats` -> `cache_bytes`, what the daemon
itself accounts); an idle slot is measured by walking its tier directories, since its blocks stay on
disk for the next pod. Memory tiers are not counted: they are gone when the daemon exits."""
from __future__ import annotations

import json
import logging
import os

from cachefs.csi.records import CacheSlots, StateDir

log = logging.getLogger(__name__)
STATS_XATTR = "user.cachefs.stats"


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


def mounted_cache_bytes(target: str) -> int | None:
    try:
        return int(json.loads(os.getxattr(target, STATS_XATTR))["cache_bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def warm_bytes(state: StateDir, slots: CacheSlots, tier_dirs) -> dict[str, int]:
    """{dataset: warm bytes}. `tier_dirs(slot)` lists a slot's disk tier directories. Two slots of one
    dataset mostly hold the same blocks, so a dataset counts its warmest slot, not their sum."""
    live = {p.slot: p.target_path for p in state.all()}
    out: dict[str, int] = {}
    for slot, dataset in slots.all():
        n = mounted_cache_bytes(live[slot]) if slot in live else None
        if n is None:
            n = sum(disk_usage(d) for d in tier_dirs(slot))
        out[dataset] = max(out.get(dataset, 0), n)
    return out
