"""Daemon counters: one thread-safe bag of named integers, read by `stats` and the metrics exporter.

Every counter is declared once in COUNTERS with what it counts; docs/METRICS.md lists them all, and
tests/unit/test_docs_drift.py checks that the code adds no counter missing here or there.
"""
from __future__ import annotations

import threading
from collections import Counter

COUNTERS: dict[str, str] = {
    # -- S3, counted by the store (requests sent, not attempts: retries are `s3_retries`) --
    "s3_get": "ranged GETs of blocks",
    "s3_get_bytes": "body bytes received by GETs",
    "s3_get_errors": "GETs that failed for good (retries spent, 404 and changed ETag included)",
    "s3_head": "HEAD requests",
    "s3_list": "ListObjectsV2 pages",
    "s3_retries": "read attempts beyond the first (GET, HEAD, LIST; writes retry inside botocore)",
    "s3_read_deadline_exceeded": "reads that ran out of --s3-read-deadline",
    "s3_errors": "S3 requests that failed for good: reads (a 404 aside) and writes",
    "s3_put": "single PUTs",
    "s3_put_bytes": "body bytes sent by PUTs and part uploads",
    "s3_put_part": "multipart part uploads",
    "s3_multipart_create": "multipart uploads started",
    "s3_multipart_complete": "multipart uploads completed",
    "s3_multipart_abort": "multipart uploads aborted",
    "s3_copy": "server-side copies (renames, metadata replacement)",
    "s3_delete": "DELETE requests",
    "s3_write_errors": "write requests (PUT, part, multipart, copy, delete) that failed",
    "s3_connections": "connections the libcurl engine opened",
    "s3_hedged": "duplicate GETs sent for a straggler",
    "s3_hedge_wins": "hedged GETs where the duplicate answered first",
    "s3_hedge_hurried": "GETs in flight a reader came to wait for (their deadline: twice the median)",
    "s3_hedged_urgent": "of s3_hedged: GETs a reader waited for (a budget of their own)",
    "s3_hedge_skipped_answered": "GETs past the hedging deadline not hedged: their body was arriving",
    "s3_hedge_skipped_budget": "GETs past the hedging deadline not hedged: 5% of recent GETs were duplicated",
    # -- the block cache --
    "cache_hits": "block reads served by a tier (all tiers; per tier: cache_hits_<tier>)",
    "cache_misses": "block reads no tier could serve (fetched from S3)",
    "cache_puts": "blocks stored in a tier",
    "cache_evictions": "blocks dropped from a tier (the last tier, or a memory copy)",
    "cache_demotions": "blocks moved to a slower tier by eviction",
    "cache_promotions": "blocks moved or copied to a faster tier on a hit",
    "cache_not_admitted": "fetched blocks no tier admitted (every tier at its high watermark)",
    "cache_corrupt": "cached blocks that failed their checksum, dropped and fetched again",
    "cache_errors": "tier I/O errors (each served as a miss)",
    "cache_writes_in_place": "block files written with O_DIRECT straight from their receive buffer",
    # -- the shared cache tier (--shared-cache; its own requests are not in the s3_* counters) --
    "shared_cache_hits": "node misses served by the shared tier (verified)",
    "shared_cache_misses": "node misses the shared tier did not have (absent, or corrupt: fetched from the origin)",
    "shared_cache_errors": "shared-tier reads that failed, timed out or were not sent (tier down): origin instead",
    "shared_cache_bytes": "bytes of blocks served by the shared tier",
    "shared_cache_corrupt": "shared objects found truncated, foreign or failing their checksum (deleted)",
    "shared_cache_writes": "blocks written to the shared tier",
    "shared_cache_write_bytes": "bytes of blocks written to the shared tier",
    "shared_cache_write_conflicts": "shared-tier writes another node had made (412 to the conditional PUT)",
    "shared_cache_write_skipped": "blocks not written to the shared tier: its queue was full or it was down",
    "shared_cache_write_errors": "shared-tier writes or deletes that failed",
    "shared_cache_claims_won": "shared-tier misses this node claimed: it fetched the block from the origin for all",
    "shared_cache_claims_lost": "shared-tier misses another node had claimed: this node waited for its block",
    "shared_cache_claim_waits_served": "waits for another node's claimed block that it served (shared hits too)",
    "shared_cache_claim_timeouts": "waits for a claimed block that ran out of --shared-cache-claim-wait: origin",
    "shared_cache_claims_stale": "claims found older than 5 claim waits (a dead or stuck node's): taken over",
    # -- the read path --
    "fuse_reads": "FUSE read requests",
    "fast_path_errors": "files the fast path could not be handed (Python serves them; the error is logged)",
    "kernel_sizes_invalidated": "opens of a file whose size changed in S3: the kernel's attributes invalidated first",
    "files_resized_in_s3": "files a listing or HEAD found with another size than recorded (changed in S3)",
    "fuse_read_bytes": "bytes returned to FUSE reads",
    "readahead_blocks": "blocks fetched from S3 ahead of the reader (window, small files, directory prefetch)",
    "readahead_disk_blocks": "blocks read ahead from a disk tier into the read-ahead buffer",
    "fetch_shared": "block reads that joined a fetch already in flight (single-flight)",
    "piece_reads": "block ranges read from pieces (a random reader's partial blocks) rather than whole blocks",
    "piece_held_reads": "piece reads served by the pieces the open file holds (no cache lookup, no disk read)",
    "piece_fetches": "GETs of pieces (each a run of missing pieces of one block)",
    "piece_fills": "blocks whose missing pieces were fetched in the background (hot: half their pieces read)",
    "blocks_from_pieces": "whole-block reads put together from the block's cached pieces (no GET)",
    "dir_prefetches": "directories whose small files were prefetched after two of them were opened",
    "dataset_walks": "directories whose subdirectories were all queued for prefetch (the dataset walk)",
    "orders_received": "orders received (the control socket's `order` op: one per stream and epoch)",
    "order_paths_received": "paths received in orders",
    "order_prefetched_files": "files an order prefetch fetched (some of their blocks from S3)",
    "order_prefetched_bytes": "bytes an order prefetch fetched",
    "order_skipped_cached": "files of an order not fetched: cached already (or held for a reader)",
    "order_cancelled_overtaken": "order prefetches cancelled in flight: the reader had gone past the file",
    "order_not_found": "paths of an order that name no file (or leave the mount)",
    "order_opens_matched": "opens of a file an order holds (the reader's progress through it)",
    "order_group_listings": "flat LISTs of a group of an order's directories (one instead of a LIST each)",
    # -- the write path --
    "fuse_writes": "FUSE write requests",
    "write_bytes": "bytes written into staging",
    "staging_full": "writes refused with ENOSPC: staging quota or staging disk full",
    "uploads": "files uploaded (PUT, multipart or copy)",
    "upload_bytes": "bytes of files uploaded",
    "upload_parts": "parts sent by uploads and eager part uploads",
    "upload_copies": "uploads done as a server-side copy (a renamed file unchanged since its upload)",
    "upload_failures": "uploads that failed (retried with backoff)",
    "metadata_copies": "copies of an object onto itself that replaced its metadata (chmod, chown, utimens)",
}

# Counters kept per tier, named by pattern (`cache_hits_ssd`): no zero until the tier exists.
PER_TIER: dict[str, str] = {
    "cache_hits_<tier>": "block reads served by that tier",
    "cache_hit_bytes_<tier>": "bytes of blocks served by that tier",
}

# Every counter the daemon keeps, so a reader sees zeros rather than missing keys.
NAMES: tuple[str, ...] = tuple(COUNTERS)


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Counter[str] = Counter({n: 0 for n in NAMES})
        self._gauges: list = []      # functions returning current values (pending uploads ...)

    def add_gauges(self, fn) -> None:
        """`fn()` -> {name: value}, merged into every snapshot (it must be safe from any thread)."""
        self._gauges.append(fn)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def get(self, name: str) -> int:
        return self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            values = dict(self._values)
        for fn in self._gauges:
            values.update(fn())
        return values
