"""Block caches: the BlockCache seam and the tiered MEM/SSD/HDD cache behind it.

Imported on first use (PEP 562): the command line reads tier declarations (cache/spec.py) through
the configuration and must not pay for the tiers, LMDB and the native reader it never runs."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cachefs.cache.base import BlockCache
    from cachefs.cache.tiered import TieredCache

__all__ = ["BlockCache", "TieredCache"]


def __getattr__(name: str) -> Any:
    if name == "BlockCache":
        from cachefs.cache.base import BlockCache
        return BlockCache
    if name == "TieredCache":
        from cachefs.cache.tiered import TieredCache
        return TieredCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
