"""Object stores: the ObjectStore seam (base), S3Store (s3), MemoryStore (memory) and wrappers.
They take plain arguments; the daemon builds a mount's store from its Config (daemon/stores.py)."""
from __future__ import annotations

from cachefs.store.base import ListPage, ObjectInfo, ObjectStore

__all__ = ["ListPage", "ObjectInfo", "ObjectStore"]
