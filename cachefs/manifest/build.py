"""Listing a dataset once, in parallel, into a Manifest; and what changed in S3 since one was made.

ListObjectsV2 pages of one prefix come one after another (each needs the previous page's token), so
a large dataset is listed fast only across prefixes: the prefixes are found with delimited LISTs,
one level at a time, until there are enough of them to keep the pool busy (or the tree ends), and
each is then listed flat (no delimiter: every key below it) by one worker of a bounded pool.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from cachefs.manifest.format import Manifest, ManifestEntry
from cachefs.store.base import ObjectStore

log = logging.getLogger(__name__)

# The key an uploaded manifest has, below the dataset's prefix (`--upload`; `--manifest
# s3://BUCKET/PREFIX/` names it). Never part of a manifest itself.
MANIFEST_NAME = ".cachefs-manifest"
# LISTs in flight: a LIST is cheap for the endpoint but slow for us (one round trip per 1,000 keys),
# and 16 keep RGW and AWS far below their request limits while a million keys list in well under a minute.
LIST_WORKERS = 16
# Prefixes are expanded level by level until there are this many per worker (uneven prefixes then
# still spread over the pool), or DISCOVERY_DEPTH levels were looked at.
PREFIXES_PER_WORKER = 4
DISCOVERY_DEPTH = 3

Progress = Callable[[int], None]     # told the number of keys of each page listed


def list_dataset(store: ObjectStore, prefix: str, workers: int = LIST_WORKERS,
                 progress: Progress | None = None) -> list[ManifestEntry]:
    """Every key below `prefix` ('' or ending in '/') as entries relative to it, in no order."""
    return trio.run(alist_dataset, store, prefix, workers, progress)


async def alist_dataset(store: ObjectStore, prefix: str, workers: int = LIST_WORKERS,
                        progress: Progress | None = None) -> list[ManifestEntry]:
    """list_dataset in trio: the pages come through the store's coroutine (the libcurl engine, parsed
    without botocore, no thread per request: botocore's parsing cost ~85 us of CPU per key, which made
    a million keys a 90 s, CPU-bound build here)."""
    found: dict[str, ManifestEntry] = {}
    skip = {prefix, prefix + MANIFEST_NAME}      # the prefix's own marker; an uploaded manifest
    limiter = trio.CapacityLimiter(max(1, workers))

    async def pages(p: str, delimiter: str, out: list[str]) -> None:
        token = None
        async with limiter:
            while True:
                page = await store.alist_page(p, token, 1000, delimiter)
                for o in page.objects:
                    if o.key not in skip:
                        found[o.key] = ManifestEntry(o.key[len(prefix):], o.size, o.etag, o.mtime_ns)
                out += page.prefixes
                if progress is not None:
                    progress(len(page.objects))
                token = page.next_token
                if token is None:
                    return

    async def each(frontier: list[str], delimiter: str) -> list[str]:
        out: list[str] = []
        async with trio.open_nursery() as nursery:
            for p in frontier:
                nursery.start_soon(pages, p, delimiter, out)
        return out

    frontier = [prefix]
    for _ in range(DISCOVERY_DEPTH):
        frontier = await each(frontier, "/")
        if not frontier or len(frontier) >= PREFIXES_PER_WORKER * workers:
            break
    await each(frontier, "")
    return list(found.values())


def build(store: ObjectStore, bucket: str, prefix: str, workers: int = LIST_WORKERS,
          progress: Progress | None = None) -> Manifest:
    created = time.time()                 # before listing: the manifest says no more than S3 held then
    entries = list_dataset(store, prefix, workers, progress)
    return Manifest.from_entries(bucket, prefix, entries, created)


@dataclass
class Changes:
    added: list[ManifestEntry]
    removed: list[ManifestEntry]
    changed: list[tuple[ManifestEntry, ManifestEntry]]     # (in the manifest, in S3 now)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def diff(manifest: Manifest, now: list[ManifestEntry]) -> Changes:
    """What S3 holds now against the manifest: keys added, removed, and changed (size or ETag; an
    mtime alone does not count: a copy onto itself with new metadata keeps the data)."""
    old = {e.key: e for e in manifest.entries()}
    new = {e.key: e for e in now}
    added = sorted(e for k, e in new.items() if k not in old)
    removed = sorted(e for k, e in old.items() if k not in new)
    changed = sorted((old[k], e) for k, e in new.items()
                     if k in old and (old[k].size != e.size or old[k].etag != e.etag))
    return Changes(added, removed, changed)
