"""The object store a mount uses, built from its Config: `store/` itself takes plain arguments only."""
from __future__ import annotations

from cachefs.config import Config
from cachefs.stats import Stats
from cachefs.store.base import ObjectStore


def from_config(cfg: Config, stats: Stats) -> ObjectStore:
    from cachefs.store.s3 import S3Store  # boto3 import is slow; only the daemon needs it
    store: ObjectStore = S3Store(cfg.bucket, endpoint_url=cfg.endpoint_url, region=cfg.region,
                                 addressing_style=cfg.addressing_style, profile=cfg.profile,
                                 credentials_file=cfg.credentials_file, max_attempts=cfg.s3_max_attempts,
                                 connect_timeout=cfg.s3_connect_timeout, read_timeout=cfg.s3_read_timeout,
                                 max_connections=4 * cfg.max_idle_threads + cfg.max_fetches, stats=stats,
                                 read_deadline=cfg.s3_read_deadline, fast_get=cfg.s3_fast_get)
    if cfg.hedging:
        from cachefs.store.hedge import HedgedStore
        store = HedgedStore(store, stats, min_delay=cfg.hedge_min_delay, max_workers=2 * cfg.max_idle_threads)
    return store
