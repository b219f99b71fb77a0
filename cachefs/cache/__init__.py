"""Block caches: the BlockCache seam and the tiered MEM/SSD/HDD cache behind it."""
from .base import BlockCache
from .tiered import TieredCache

__all__ = ["BlockCache", "TieredCache"]
