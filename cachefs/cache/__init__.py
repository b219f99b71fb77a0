"""Block caches: the BlockCache seam and the tiered MEM/SSD/HDD cache behind it."""
from cachefs.cache.base import BlockCache
from cachefs.cache.tiered import TieredCache

__all__ = ["BlockCache", "TieredCache"]
