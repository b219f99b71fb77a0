"""The object store a mount uses, built from its Config: `store/` itself takes plain arguments only.
The source URL names it: s3://BUCKET[/PREFIX] (S3Store, hedged) or mem://BUCKET[/PREFIX] (MemoryStore)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cachefs.config import Config, shared_cache_place
from cachefs.stats import Stats
from cachefs.store.base import ObjectStore

if TYPE_CHECKING:
    from cachefs.cache.shared import SharedTier
    from cachefs.store.s3 import S3Store

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


def shared_store(cfg: Config, *, max_attempts: int = 1, read_deadline: float | None = None) -> S3Store:
    """The S3Store of --shared-cache's bucket: its own endpoint, credentials and counters (the
    mount's s3_* counters stay the origin's). A mount's makes one attempt per read, within
    --shared-cache-deadline; `cachefs shared-cache gc` retries as a mount's origin store does."""
    from cachefs.store.s3 import S3Store
    bucket, _ = shared_cache_place(cfg)
    deadline = cfg.shared_cache_deadline if read_deadline is None else read_deadline
    return S3Store(bucket, endpoint_url=cfg.shared_cache_endpoint_url, region=cfg.shared_cache_region,
                   addressing_style=cfg.shared_cache_addressing_style, profile=cfg.shared_cache_profile,
                   credentials_file=cfg.shared_cache_credentials_file, max_attempts=max_attempts,
                   connect_timeout=min(cfg.s3_connect_timeout, max(deadline, 1.0)),
                   read_timeout=max(deadline, 5.0),
                   max_connections=cfg.max_fetches + cfg.max_idle_threads + cfg.shared_cache_writers,
                   stats=Stats(), read_deadline=deadline, engine=cfg.s3_engine)


def shared_from_config(cfg: Config, stats: Stats) -> SharedTier | None:
    """The shared cache tier of --shared-cache, or None (cache/shared.py reads through the engine itself)."""
    if not cfg.shared_cache:
        return None
    from cachefs.cache.shared import SharedTier
    _, prefix = shared_cache_place(cfg)
    origin = (cfg.endpoint_url or "aws").rstrip("/")
    return SharedTier(shared_store(cfg), prefix, origin, stats, deadline=cfg.shared_cache_deadline,
                      queue_bytes=cfg.shared_cache_queue, writers=cfg.shared_cache_writers,
                      claim_wait=cfg.shared_cache_claim_wait,
                      where=cfg.shared_cache)
