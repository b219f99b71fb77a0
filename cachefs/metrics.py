"""Every Prometheus metric cachefs exports, defined here and only here (documented in docs/METRICS.md).

Two kinds of source:
- live instruments updated as things happen (FUSE operation latency, S3 requests through boto3's
  event hooks): histograms need the individual observations;
- everything else is read at scrape time from what the daemon already keeps (the `Stats` counters,
  `TieredCache.tier_stats()`): nothing extra on the read path, and no second copy that could drift.

One process runs one daemon, so the registry is module-level; the daemon registers its scrape-time
collector on start and removes it on stop.
"""
from __future__ import annotations

import errno as errno_mod
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cachefs import supervise
from cachefs.errors import UserError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger(__name__)

# A fixed, documented default so that every node of a cluster is scraped at the same address. 9749
# is not in Prometheus' list of allocated exporter ports (9100-9999 range) we know of.
DEFAULT_PORT = 9749
DEFAULT_ADDR = f"127.0.0.1:{DEFAULT_PORT}"   # loopback: metrics are not for the whole network by default

REGISTRY = CollectorRegistry()

# -- live instruments ------------------------------------------------------------------------------
# FUSE requests take from ~10 us (a memory hit) to seconds (a cold S3 fetch behind a straggler).
FUSE_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1, 2.5, 5, 10)
# S3 first-byte latency is ~10-50 ms when healthy; stragglers reach the read timeout (30 s default).
S3_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

FUSE_OP_SECONDS = Histogram("cachefs_fuse_op_seconds", "FUSE operations by operation: count and latency",
                            ["op"], buckets=FUSE_BUCKETS, registry=REGISTRY)
FUSE_ERRORS = Counter("cachefs_fuse_errors", "FUSE operations answered with an error, by operation and errno",
                      ["op", "errno"], registry=REGISTRY)
S3_REQUESTS = Counter("cachefs_s3_requests", "S3 requests by operation and HTTP status ('error': no response)",
                      ["operation", "status"], registry=REGISTRY)
S3_SECONDS = Histogram("cachefs_s3_request_seconds", "S3 request latency up to the response headers "
                       "(first byte), retries included, by operation", ["operation"], buckets=S3_BUCKETS,
                       registry=REGISTRY)
S3_RECEIVED = Counter("cachefs_s3_received_bytes", "bytes of S3 response bodies (Content-Length), by operation",
                      ["operation"], registry=REGISTRY)
S3_SENT = Counter("cachefs_s3_sent_bytes", "bytes of S3 request bodies, by operation", ["operation"],
                  registry=REGISTRY)
S3_RETRIES = Counter("cachefs_s3_retries", "S3 request attempts beyond the first, by operation", ["operation"],
                     registry=REGISTRY)
# Observed by the reader when it sizes a sequential reader's window (see docs/METRICS.md).
READAHEAD_WINDOW = Histogram("cachefs_readahead_window_blocks", "read-ahead window sizes chosen, in blocks",
                             buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=REGISTRY)

# -- read at scrape time from Stats: metric name -> (Stats counter, help) ----------------------------
STATS_COUNTERS: dict[str, tuple[str, str]] = {
    "cachefs_cache_misses_total": ("cache_misses", "block reads no tier could serve"),
    "cachefs_cache_puts_total": ("cache_puts", "blocks stored in the cache"),
    "cachefs_cache_not_admitted_total": ("cache_not_admitted", "fetched blocks no tier admitted (cache full)"),
    "cachefs_cache_evictions_total": ("cache_evictions", "blocks dropped from a tier (the last, or a memory copy)"),
    "cachefs_cache_demotions_total": ("cache_demotions", "blocks moved to a slower tier by eviction"),
    "cachefs_cache_promotions_total": ("cache_promotions", "blocks copied or moved to a faster tier on a hit"),
    "cachefs_cache_refetched_blocks_total": ("cache_corrupt", "cached blocks that failed their checksum and "
                                             "were dropped and fetched again"),
    "cachefs_cache_errors_total": ("cache_errors", "cache tier I/O errors (served as misses)"),
    "cachefs_cache_writes_in_place_total": ("cache_writes_in_place", "block files written with O_DIRECT straight "
                                            "from the buffer the block was received into"),
    "cachefs_fuse_read_bytes_total": ("fuse_read_bytes", "bytes returned to FUSE reads"),
    "cachefs_readahead_blocks_total": ("readahead_blocks", "blocks fetched by read-ahead"),
    "cachefs_readahead_disk_blocks_total": ("readahead_disk_blocks", "blocks read ahead from a disk tier"),
    "cachefs_dir_prefetches_total": ("dir_prefetches", "directories whose small files were prefetched"),
    "cachefs_dataset_walks_total": ("dataset_walks", "directories whose subdirectories were all prefetched "
                                    "(small files opened in 3 of them)"),
    "cachefs_orders_received_total": ("orders_received", "orders received (one per stream and epoch)"),
    "cachefs_order_paths_received_total": ("order_paths_received", "paths received in orders"),
    "cachefs_order_prefetched_files_total": ("order_prefetched_files", "files fetched ahead in an order"),
    "cachefs_order_prefetched_bytes_total": ("order_prefetched_bytes", "bytes fetched ahead in an order"),
    "cachefs_order_skipped_cached_total": ("order_skipped_cached", "files of an order already cached (no GET)"),
    "cachefs_order_cancelled_overtaken_total": ("order_cancelled_overtaken", "order prefetches cancelled in "
                                                "flight: the reader had gone past the file"),
    "cachefs_order_not_found_total": ("order_not_found", "paths of an order that name no file"),
    "cachefs_order_opens_matched_total": ("order_opens_matched", "opens of a file an order holds"),
    "cachefs_order_group_listings_total": ("order_group_listings",
                                           "flat LISTs of a group of an order's directories"),
    "cachefs_fetch_shared_total": ("fetch_shared", "block reads that joined a fetch already in flight"),
    "cachefs_piece_reads_total": ("piece_reads", "block ranges a random reader read from 64 KiB pieces"),
    "cachefs_piece_held_reads_total": ("piece_held_reads", "piece reads served by the pieces the open file holds"),
    "cachefs_piece_fetches_total": ("piece_fetches", "GETs of pieces (each a run of missing pieces of one block)"),
    "cachefs_piece_fills_total": ("piece_fills", "hot blocks whose missing pieces were fetched in the background"),
    "cachefs_blocks_from_pieces_total": ("blocks_from_pieces", "whole-block reads put together from cached pieces"),
    "cachefs_s3_connections_total": ("s3_connections", "connections the libcurl engine opened to S3 (kept "
                                     "open between requests; a transfer cancelled mid-answer closes its own)"),
    "cachefs_s3_hedged_requests_total": ("s3_hedged", "duplicate GETs sent for a straggler (hedging)"),
    "cachefs_s3_hedge_wins_total": ("s3_hedge_wins", "hedged GETs where the duplicate answered first"),
    "cachefs_s3_hedge_hurried_total": ("s3_hedge_hurried", "GETs in flight a reader came to wait for"),
    "cachefs_s3_hedged_urgent_total": ("s3_hedged_urgent", "of the duplicate GETs, those of GETs a reader waited for"),
    "cachefs_s3_hedge_skipped_answered_total": ("s3_hedge_skipped_answered",
                                                "GETs past the hedging deadline not hedged: their body was arriving"),
    "cachefs_s3_hedge_skipped_budget_total": ("s3_hedge_skipped_budget",
                                              "GETs past the hedging deadline not hedged: 5% of recent GETs "
                                              "were duplicated already"),
    "cachefs_shared_cache_hits_total": ("shared_cache_hits", "node misses served by the shared cache tier"),
    "cachefs_shared_cache_misses_total": ("shared_cache_misses", "node misses the shared tier did not have"),
    "cachefs_shared_cache_errors_total": ("shared_cache_errors", "shared-tier reads that failed, timed out or "
                                          "were not sent (tier down): fetched from the origin"),
    "cachefs_shared_cache_bytes_total": ("shared_cache_bytes", "bytes of blocks served by the shared tier"),
    "cachefs_shared_cache_corrupt_total": ("shared_cache_corrupt", "shared objects found truncated, foreign "
                                           "or failing their checksum (deleted)"),
    "cachefs_shared_cache_writes_total": ("shared_cache_writes", "blocks written to the shared tier"),
    "cachefs_shared_cache_write_bytes_total": ("shared_cache_write_bytes", "bytes written to the shared tier"),
    "cachefs_shared_cache_write_conflicts_total": ("shared_cache_write_conflicts", "shared-tier writes another "
                                                   "node had made (412)"),
    "cachefs_shared_cache_write_skipped_total": ("shared_cache_write_skipped", "blocks not written to the "
                                                 "shared tier: queue full or tier down"),
    "cachefs_shared_cache_write_errors_total": ("shared_cache_write_errors", "shared-tier writes or deletes "
                                                "that failed"),
    "cachefs_shared_cache_claims_won_total": ("shared_cache_claims_won", "shared-tier misses this node "
                                              "claimed and fetched from the origin for all nodes"),
    "cachefs_shared_cache_claims_lost_total": ("shared_cache_claims_lost", "shared-tier misses another node "
                                               "had claimed: waited for its block"),
    "cachefs_shared_cache_claim_waits_served_total": ("shared_cache_claim_waits_served", "waits for another "
                                                      "node's claimed block that it served"),
    "cachefs_shared_cache_claim_timeouts_total": ("shared_cache_claim_timeouts", "waits for a claimed block "
                                                  "that ran out of --shared-cache-claim-wait: origin"),
    "cachefs_shared_cache_claims_stale_total": ("shared_cache_claims_stale", "stale claims (a dead or stuck "
                                                "node's) taken over"),
    "cachefs_upload_failures_total": ("upload_failures", "uploads that failed (and will be retried)"),
    "cachefs_metadata_copies_total": ("metadata_copies", "server-side copies onto themselves that replaced an "
                                      "object's metadata (chmod, chown, utimens of an uploaded file)"),
}
STATS_COUNTERS["cachefs_fast_path_errors_total"] = ("fast_path_errors", "files the fast path could not be "
                                                    "handed (logged)")
# Counted in C by the fast path (cachefs/fastpath.py; in the stats snapshot through its gauge function),
# not in cachefs_fuse_op_seconds, which times the requests Python answers.
FAST_COUNTERS: dict[str, tuple[str, str]] = {
    "cachefs_fast_lookups_total": ("fast_lookups", "LOOKUPs the fast path answered in C"),
    "cachefs_fast_getattrs_total": ("fast_getattrs", "GETATTRs the fast path answered in C"),
    "cachefs_fast_opens_total": ("fast_opens", "OPENs the fast path answered in C (and their RELEASEs)"),
    "cachefs_fast_reads_total": ("fast_reads", "READs the fast path answered in C"),
    "cachefs_fast_read_bytes_total": ("fast_read_bytes", "bytes the fast path returned to READs"),
}
STATS_GAUGES: dict[str, tuple[str, str]] = {
    "cachefs_fast_held_bytes": ("fast_held_bytes", "bytes of files the fast path holds, not read yet"),
    "cachefs_uploads_pending": ("uploads_pending", "files written locally and not yet uploaded"),
    "cachefs_s3_down": ("s3_down", "1 while the outage breaker holds the S3 endpoint for unreachable"),
    "cachefs_uploads_pending_bytes": ("uploads_pending_bytes", "bytes waiting for upload"),
    "cachefs_uploads_oldest_age_seconds": ("uploads_oldest_age_s", "age of the oldest pending upload"),
    "cachefs_uploads_pending_small": ("uploads_pending_small", "small files (--small-file-threshold) not yet uploaded"),
    "cachefs_uploads_pending_large": ("uploads_pending_large", "large files not yet uploaded"),
    "cachefs_uploads_oldest_age_small_seconds": ("uploads_oldest_age_small_s", "age of the oldest pending small file"),
    "cachefs_uploads_oldest_age_large_seconds": ("uploads_oldest_age_large_s", "age of the oldest pending large file"),
    "cachefs_order_ahead_bytes": ("order_ahead_bytes", "bytes an order prefetch fetched that the reader "
                                  "has not reached yet (the window in use)"),
    "cachefs_order_streams": ("order_streams", "orders held (one per stream: a rank of a distributed job)"),
    "cachefs_shared_cache_fill_queue_depth": ("shared_cache_queue_depth", "blocks (and deletes) waiting for "
                                              "the shared tier's writers"),
    "cachefs_shared_cache_fill_queue_bytes": ("shared_cache_queue_bytes", "bytes of blocks waiting for the "
                                              "shared tier's writers"),
    "cachefs_shared_cache_down": ("shared_cache_down", "1 while the shared tier counts as down (its breaker)"),
    "cachefs_cache_queued_bytes": ("cache_queued_bytes", "fetched small objects and pieces served from memory, "
                                   "their disk copy still queued for the cache's writer thread"),
}
# Per tier, from TieredCache.tier_stats(): metric name -> (tier_stats field, help)
TIER_GAUGES: dict[str, tuple[str, str]] = {
    "cachefs_cache_used_bytes": ("used", "bytes stored in a tier"),
    "cachefs_cache_quota_bytes": ("quota", "a tier's capacity"),
    "cachefs_cache_high_watermark_bytes": ("high", "usage at which a tier evicts (lru) or stops admitting"),
    "cachefs_cache_low_watermark_bytes": ("low", "usage eviction brings a tier down to"),
    "cachefs_cache_blocks": ("blocks", "blocks stored in a tier"),
}
CACHE_HITS = "cachefs_cache_hits_total"
CACHE_HIT_BYTES = "cachefs_cache_hit_bytes_total"
TIER_UP = "cachefs_cache_tier_up"
DIR_UP = "cachefs_cache_dir_up"
READAHEAD_WINDOW_BYTES = "cachefs_readahead_window_bytes"
BACKGROUND_FAILURES = "cachefs_background_failures_total"
BUILD_INFO = "cachefs_build_info"
MOUNT_INFO = "cachefs_mount_info"

ALL_NAMES = (
    [m._name for m in (FUSE_OP_SECONDS, READAHEAD_WINDOW, S3_SECONDS)]
    + [m._name + "_total" for m in (FUSE_ERRORS, S3_REQUESTS, S3_RECEIVED, S3_SENT, S3_RETRIES)]
    + list(STATS_COUNTERS) + list(FAST_COUNTERS) + list(STATS_GAUGES) + list(TIER_GAUGES)
    + [CACHE_HITS, CACHE_HIT_BYTES, TIER_UP, DIR_UP, READAHEAD_WINDOW_BYTES, BUILD_INFO, BACKGROUND_FAILURES,
       MOUNT_INFO]
)


# -- FUSE ------------------------------------------------------------------------------------------
def fuse_op_timer(op: str) -> Callable[[float], None]:
    """The bound `observe` of one operation's histogram child: the hot path skips the labels lookup."""
    return FUSE_OP_SECONDS.labels(op).observe


def count_fuse_error(op: str, err: int) -> None:
    FUSE_ERRORS.labels(op, errno_mod.errorcode.get(err, str(err))).inc()


# -- S3 through boto3 event hooks (no edits at the call sites) ---------------------------------------
def under_wrappers(store, attr: str):
    """`attr` of the S3 store under any wrappers (hedging, fault injection: each has `inner`), or
    None (mem://, or no such attribute)."""
    for _ in range(8):
        if hasattr(store, attr):
            return getattr(store, attr)
        store = getattr(store, "inner", None)
    return None


def boto_client(store):
    """The boto3 client under any store wrappers, or None (mem://)."""
    return under_wrappers(store, "client")


def instrument_boto_client(client) -> None:
    if client is None:
        return
    events = client.meta.events
    events.register("before-call.s3", _before_call, unique_id="cachefs-metrics-before")
    events.register("after-call.s3", _after_call, unique_id="cachefs-metrics-after")
    events.register("after-call-error.s3", _after_call_error, unique_id="cachefs-metrics-error")


def _before_call(model, params, context, **_):
    context["cachefs_t0"] = time.perf_counter()
    context["cachefs_op"] = model.name        # after-call-error gets no model
    body = params.get("body") if isinstance(params, dict) else None
    if isinstance(body, (bytes, bytearray, memoryview)) and len(body):
        S3_SENT.labels(model.name).inc(len(body))


def _finish(op: str, context: dict, status: str, retries: int) -> None:
    t0 = context.get("cachefs_t0")
    if t0 is not None:
        S3_SECONDS.labels(op).observe(time.perf_counter() - t0)
    S3_REQUESTS.labels(op, status).inc()
    if retries:
        S3_RETRIES.labels(op).inc(retries)


def _after_call(http_response, parsed, model, context, **_):
    meta = parsed.get("ResponseMetadata", {}) if isinstance(parsed, dict) else {}
    _finish(model.name, context, str(http_response.status_code), int(meta.get("RetryAttempts", 0)))
    length = http_response.headers.get("content-length")
    if length and length.isdigit():
        S3_RECEIVED.labels(model.name).inc(int(length))


def _after_call_error(exception, context, **_):
    _finish(context.get("cachefs_op") or "unknown", context, "error", 0)


# -- scrape-time collector ---------------------------------------------------------------------------
class DaemonCollector:
    """Reads the daemon's own counters and tier state when Prometheus scrapes."""

    def __init__(self, stats, tier_stats: Callable[[], dict], readahead_window_bytes: Callable[[], int],
                 version: str, source: str = "") -> None:
        self.stats = stats
        self.tier_stats = tier_stats
        self.readahead_window_bytes = readahead_window_bytes
        self.version = version
        self.source = source

    def collect(self):
        snap = self.stats.snapshot()
        for name, (key, help_) in (STATS_COUNTERS | FAST_COUNTERS).items():
            yield CounterMetricFamily(name.removesuffix("_total"), help_, value=snap.get(key, 0))
        for name, (key, help_) in STATS_GAUGES.items():
            yield GaugeMetricFamily(name, help_, value=snap.get(key, 0))
        tiers = self.tier_stats()
        hits = CounterMetricFamily(CACHE_HITS.removesuffix("_total"), "block reads served by a tier",
                                   labels=["tier"])
        hit_bytes = CounterMetricFamily(CACHE_HIT_BYTES.removesuffix("_total"),
                                        "bytes of blocks served by a tier", labels=["tier"])
        for tier in tiers:
            hits.add_metric([tier], snap.get(f"cache_hits_{tier}", 0))
            hit_bytes.add_metric([tier], snap.get(f"cache_hit_bytes_{tier}", 0))
        yield hits
        yield hit_bytes
        for name, (field, help_) in TIER_GAUGES.items():
            g = GaugeMetricFamily(name, help_, labels=["tier"])
            for tier, info in tiers.items():
                g.add_metric([tier], info.get(field, 0))
            yield g
        tier_up = GaugeMetricFamily(TIER_UP, "1 while a tier has a usable directory (memory: always)",
                                    labels=["tier"])
        dir_up = GaugeMetricFamily(DIR_UP, "1 while a disk tier directory passes its health probe",
                                   labels=["tier", "dir"])
        for tier, info in tiers.items():
            dirs = info.get("dirs")
            tier_up.add_metric([tier], 1 if dirs is None or "up" in dirs.values() else 0)
            for path, state in (dirs or {}).items():
                dir_up.add_metric([tier, path], 1 if state == "up" else 0)
        yield tier_up
        yield dir_up
        yield GaugeMetricFamily(READAHEAD_WINDOW_BYTES, "the largest read-ahead window (--read-ahead, whole blocks)",
                                value=self.readahead_window_bytes())
        failed = CounterMetricFamily(BACKGROUND_FAILURES.removesuffix("_total"),
                                     "background units of work that failed (logged, retried or abandoned; "
                                     "the mount goes on), by task", labels=["task"])
        for task, count in supervise.failures().items():
            failed.add_metric([task], count)
        yield failed
        info = GaugeMetricFamily(BUILD_INFO, "always 1; the version in a label", labels=["version"])
        info.add_metric([self.version], 1)
        yield info
        # The dataset a scrape target serves, for joins (`* on(instance) group_left(source)`): the
        # chart's dashboard shows hit ratios per dataset through it.
        mount = GaugeMetricFamily(MOUNT_INFO, "always 1; the mounted source in a label", labels=["source"])
        mount.add_metric([self.source], 1)
        yield mount


# -- the exporter ------------------------------------------------------------------------------------
def parse_addr(text: str) -> tuple[str, int] | None:
    """'HOST:PORT', ':PORT' (loopback), '[v6]:PORT' or 'none' (off)."""
    if str(text).strip().lower() in ("none", "off", ""):
        return None
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid address {text!r} (use HOST:PORT, e.g. {DEFAULT_ADDR}, or none)")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def _is_loopback(host: str) -> bool:
    import ipaddress
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Exporter:
    """The HTTP endpoint in a thread of its own (prometheus_client's server), plus our collector."""

    def __init__(self, addr: tuple[str, int], collector: DaemonCollector) -> None:
        self.addr = addr
        self.collector = collector
        self.httpd: WSGIServer | None = None

    def start(self, required: bool) -> None:
        """`required`: the address was configured, so not getting it is a start-up error; the default
        address is shared by every mount on a node, so only the first gets it and the rest warn."""
        from prometheus_client import start_http_server
        REGISTRY.register(self.collector)
        try:
            self.httpd, _ = start_http_server(self.addr[1], self.addr[0], registry=REGISTRY)
        except OSError as e:
            REGISTRY.unregister(self.collector)
            where = f"{self.addr[0]}:{self.addr[1]}"
            if required:
                raise UserError(f"--metrics-addr {where}: cannot listen: {e.strerror or e}") from None
            log.warning("metrics exporter off: cannot listen on %s (%s); give each mount its own "
                        "--metrics-addr", where, e.strerror or e)
            return
        self.addr = cast(tuple[str, int], self.httpd.server_address[:2])   # an IP server: (host, port, ...)
        log.info("Prometheus metrics on http://%s:%d/metrics", *self.addr)
        if not _is_loopback(self.addr[0]):
            log.warning("metrics on %s, not loopback: whoever reaches it reads bucket, tier and directory "
                        "names (no authentication; restrict it with a firewall or NetworkPolicy)", self.addr[0])

    @property
    def url(self) -> str | None:
        return f"http://{self.addr[0]}:{self.addr[1]}/metrics" if self.httpd else None

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
            REGISTRY.unregister(self.collector)


def start_exporter(cfg, stats, cache, reader, version: str) -> Exporter | None:
    """The daemon's exporter, or None with `--metrics-addr none`."""
    addr = parse_addr(cfg.metrics_addr or DEFAULT_ADDR)
    if addr is None:
        return None
    collector = DaemonCollector(stats, cache.tier_stats,
                                lambda: reader.read_ahead_blocks * reader.block_size, version, cfg.source)
    exporter = Exporter(addr, collector)
    exporter.start(required=cfg.metrics_addr is not None)
    return exporter
