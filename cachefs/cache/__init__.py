"""Block caches: the BlockCache seam and its implementations."""
from .base import BlockCache
from .disk import DiskCache

__all__ = ["BlockCache", "DiskCache"]
