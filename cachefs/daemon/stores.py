"""The object store a mount uses, built from its Config: `store/` itself takes plain arguments only.
The source URL names it: s3://BUCKET[/PREFIX] (S3Store, hedged) or mem://BUCKET[/PREFIX] (MemoryStore)."""
from __future__ import annotations

from collections.abc import Callable

from cachefs.config import Config
from cachefs.stats import Stats
from cachefs.store.base import ObjectStore

# What the daemon builds its store with: from_config by default; tests pass their own.
StoreFactory = Callable[[Config, Stats], ObjectStore]


def from_config(cfg: Config, stats: Stats) -> ObjectStore:
    if cfg.scheme == "mem":
        from cachefs.store.memory import MemoryStore
        return MemoryStore(cfg.bucket, stats)
    from cachefs.store.s3 import S3Store  # boto3 import is slow; only the daemon needs it
    store: ObjectStore = S3Store(cfg.bucket, endpoint_url=cfg.endpoint_url, region=cfg.region,
                                 addressing_style=cfg.addressing_style, profile=cfg.profile,
                                 credentials_file=cfg.credentials_file, max_attempts=cfg.s3_max_attempts,
                                 connect_timeout=cfg.s3_connect_timeout, read_timeout=cfg.s3_read_timeout,
                                 max_connections=4 * cfg.max_idle_threads + cfg.max_fetches, stats=stats,
                                 read_deadline=cfg.s3_read_deadline,
                                 engine=cfg.s3_engine if cfg.s3_fast_get else "boto3")
    if cfg.hedging:
        from cachefs.store.hedge import HedgedStore
        store = HedgedStore(store, stats, min_delay=cfg.hedge_min_delay, max_workers=2 * cfg.max_idle_threads)
    return store
