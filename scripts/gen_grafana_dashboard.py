"""Writes helm/cachefs/monitoring/dashboard.json, the chart's Grafana dashboard: edit the panels here
and run `python scripts/gen_grafana_dashboard.py` (tests/csi/test_helm_monitoring.py checks that the
committed JSON is this script's output and that every metric it names is exported).

Every query is limited to the mounts the `source` (dataset) and `instance` (mount) variables pick;
per-dataset figures join on `cachefs_mount_info`, which names each scrape target's source."""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "helm" / "cachefs" / "monitoring" / "dashboard.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"
JOIN = " * on (instance) group_left (source) cachefs_mount_info"


def sel(extra: str = "") -> str:
    return '{instance=~"$instance"' + ("," + extra if extra else "") + "}"


MINE = sel()
GET, READ = sel('operation="GetObject"'), sel('op="read"')
FAILED = sel('status=~"4..|5..|error",status!="404"')
HITS = f"rate(cachefs_cache_hits_total{MINE}{RATE})"
MISSES = f"rate(cachefs_cache_misses_total{MINE}{RATE})"


class Layout:
    """Panels left to right in rows of 24 grid units."""

    def __init__(self):
        self.panels: list[dict] = []
        self.x = self.y = 0
        self.height = 8

    def row(self, title: str) -> None:
        if self.x:
            self.y += self.height
        self.x = 0
        self.panels.append({"type": "row", "title": title, "id": len(self.panels) + 1, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def panel(self, title: str, desc: str, targets: list[tuple[str, str]], unit: str = "short", w: int = 12,
              kind: str = "timeseries", h: int = 8) -> None:
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.height
        self.height = h
        if kind == "timeseries":
            options: dict = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                             "tooltip": {"mode": "multi", "sort": "desc"}}
        else:
            options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                       "colorMode": "background"}
        defaults: dict = {"unit": unit}
        if kind == "stat":
            defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                                                    {"color": "red", "value": 1}]}
        self.panels.append({
            "type": kind, "title": title, "description": desc, "id": len(self.panels) + 1, "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options,
            "targets": [{"datasource": DS, "refId": chr(65 + i), "expr": expr, "legendFormat": legend}
                        for i, (expr, legend) in enumerate(targets)]})
        self.x += w


def build() -> dict:
    d = Layout()
    d.row("Health")
    d.panel("Volumes abnormal (kubelet)", "Volumes whose CSI volume condition is abnormal, as the kubelet exports "
            "it (needs its CSIVolumeHealth feature gate): dead mount, S3 down, uploads failing, tier down.",
            [("sum(kubelet_volume_stats_health_status_abnormal) or vector(0)", "abnormal")], w=6, kind="stat", h=5)
    d.panel("Mounts with S3 down", "Daemons whose outage breaker holds S3 for unreachable (uncached reads: EIO).",
            [(f"sum(cachefs_s3_down{MINE}) or vector(0)", "S3 down")], w=6, kind="stat", h=5)
    d.panel("Cache tiers down", "Tiers with no healthy directory (their reads go to S3).",
            [(f"count(cachefs_cache_tier_up{MINE} == 0) or vector(0)", "tiers down")], w=6, kind="stat", h=5)
    d.panel("Mounts scraped", "Daemons exporting metrics (one per published volume with a metrics port).",
            [(f"count(cachefs_mount_info{MINE}) or vector(0)", "mounts")], w=6, kind="stat", h=5)

    d.row("Cache")
    d.panel("Hit ratio per tier", "Share of block reads each tier served; the rest were misses fetched from S3.",
            [(f"sum by (tier) ({HITS}) / scalar(sum({HITS}) + sum({MISSES}))", "{{tier}}")], unit="percentunit")
    per_source = (f"sum by (source) (sum by (instance) ({HITS}){JOIN}) / sum by (source) "
                  f"((sum by (instance) ({HITS}) + sum by (instance) ({MISSES})){JOIN})")
    d.panel("Hit ratio per dataset", "Block reads served by any tier over all block reads, per mounted source.",
            [(per_source, "{{source}}")], unit="percentunit")
    d.panel("Bytes served: cache tiers vs S3", "Bytes of blocks served by each tier, and bytes of S3 GET bodies.",
            [(f"sum by (tier) (rate(cachefs_cache_hit_bytes_total{MINE}{RATE}))", "{{tier}}"),
             (f"sum(rate(cachefs_s3_received_bytes_total{GET}{RATE}))", "S3")], unit="Bps")
    d.panel("Cache fill (warmup progress)", "Used over capacity per tier: what a warmup or a first epoch brought in.",
            [(f"sum by (tier) (cachefs_cache_used_bytes{MINE}) / sum by (tier) (cachefs_cache_quota_bytes{MINE})",
              "{{tier}}")], unit="percentunit")

    d.row("S3")
    d.panel("S3 requests by operation and status", "Requests per second by operation and final HTTP status "
            "('error': no answer).",
            [(f"sum by (operation, status) (rate(cachefs_s3_requests_total{MINE}{RATE}))", "{{operation}} {{status}}")],
            unit="reqps")
    d.panel("S3 errors and retries", "Requests that ended in an error status or no answer (404 is a definite "
            "answer, left out), attempts beyond the first, and daemons with S3 held down.",
            [(f"sum by (operation, status) (rate(cachefs_s3_requests_total{FAILED}{RATE}))",
              "{{operation}} {{status}}"),
             (f"sum by (operation) (rate(cachefs_s3_retries_total{MINE}{RATE}))", "retries {{operation}}"),
             (f"sum(cachefs_s3_down{MINE})", "outage breaker open")], unit="reqps")
    bucket = f"cachefs_s3_request_seconds_bucket{MINE}"
    d.panel("S3 latency to first byte by operation (p50, p99)", "Time from the request to the response headers.",
            [(f"histogram_quantile(0.5, sum by (le, operation) (rate({bucket}{RATE})))", "p50 {{operation}}"),
             (f"histogram_quantile(0.99, sum by (le, operation) (rate({bucket}{RATE})))", "p99 {{operation}}")],
            unit="s")
    d.panel("First byte: S3 GET vs FUSE read (p99, mean)", "What a reader waits for a read (FUSE) next to what S3 "
            "takes to answer a GET: a cache that works keeps the first well below the second.",
            [(f"histogram_quantile(0.99, sum by (le) (rate(cachefs_s3_request_seconds_bucket{GET}{RATE})))",
              "S3 GET p99"),
             (f"histogram_quantile(0.99, sum by (le) (rate(cachefs_fuse_op_seconds_bucket{READ}{RATE})))",
              "FUSE read p99"),
             (f"sum(rate(cachefs_fuse_op_seconds_sum{READ}{RATE}))"
              f" / sum(rate(cachefs_fuse_op_seconds_count{READ}{RATE}))",
              "FUSE read mean")], unit="s")

    d.row("Writes")
    d.panel("Write-back queue", "Files written and not yet uploaded, and their bytes, per dataset.",
            [(f"sum by (source) (cachefs_uploads_pending{MINE}{JOIN})", "files {{source}}"),
             (f"sum by (source) (cachefs_uploads_pending_bytes{MINE}{JOIN})", "bytes {{source}}")])
    d.panel("Oldest pending upload", "Age of the oldest file waiting for its upload, per dataset "
            "(alert: CachefsUploadBacklog).",
            [(f"max by (source) (cachefs_uploads_oldest_age_seconds{MINE}{JOIN})", "{{source}}")], unit="s")
    d.panel("Write-back queue by file class", "Files not yet uploaded, small (at most --small-file-threshold: "
            "uploaded whole) and large (multipart), per dataset.",
            [(f"sum by (source) (cachefs_uploads_pending_small{MINE}{JOIN})", "small {{source}}"),
             (f"sum by (source) (cachefs_uploads_pending_large{MINE}{JOIN})", "large {{source}}")])
    d.panel("Oldest pending upload by file class", "Age of the oldest small and large file waiting for its upload, "
            "per dataset.",
            [(f"max by (source) (cachefs_uploads_oldest_age_small_seconds{MINE}{JOIN})", "small {{source}}"),
             (f"max by (source) (cachefs_uploads_oldest_age_large_seconds{MINE}{JOIN})", "large {{source}}")],
            unit="s")
    d.panel("Background failures", "Background units of work that failed (logged; retried or abandoned; the mount "
            "goes on), by task, and failed upload attempts.",
            [(f"sum by (task) (increase(cachefs_background_failures_total{MINE}{RATE}))", "{{task}}"),
             (f"sum(increase(cachefs_upload_failures_total{MINE}{RATE}))", "upload attempts failed")])
    d.panel("Cache admission and evictions", "Fetched blocks no tier admitted (the dataset outgrew the cache), "
            "evictions and blocks stored.",
            [(f"sum(rate(cachefs_cache_not_admitted_total{MINE}{RATE}))", "not admitted"),
             (f"sum(rate(cachefs_cache_evictions_total{MINE}{RATE}))", "evicted"),
             (f"sum(rate(cachefs_cache_puts_total{MINE}{RATE}))", "stored")], unit="ops")

    d.row("Prefetch")
    d.panel("Prefetch work", "Blocks read ahead, directories whose small files were prefetched, dataset walks, "
            "order prefetches and piece fills.",
            [(f"sum(rate(cachefs_readahead_blocks_total{MINE}{RATE}))", "read-ahead blocks"),
             (f"sum(rate(cachefs_dir_prefetches_total{MINE}{RATE}))", "directory prefetches"),
             (f"sum(rate(cachefs_dataset_walks_total{MINE}{RATE}))", "dataset walks"),
             (f"sum(rate(cachefs_order_prefetched_files_total{MINE}{RATE}))", "order files"),
             (f"sum(rate(cachefs_piece_fills_total{MINE}{RATE}))", "piece fills")], unit="ops")
    d.panel("Order prefetch progress", "Bytes fetched ahead of the reader by orders (a sampler's next epoch), "
            "the window in use, and files an order found cached.",
            [(f"sum(rate(cachefs_order_prefetched_bytes_total{MINE}{RATE}))", "fetched ahead (B/s)"),
             (f"sum(cachefs_order_ahead_bytes{MINE})", "ahead of the reader (B)"),
             (f"sum(rate(cachefs_order_skipped_cached_total{MINE}{RATE}))", "already cached (files/s)")])

    def variable(name: str, label: str, query: str) -> dict:
        return {"name": name, "label": label, "type": "query", "datasource": DS,
                "query": {"query": query, "refId": name}, "definition": query, "includeAll": True, "multi": True,
                "allValue": ".*", "refresh": 2, "current": {}, "hide": 0, "sort": 1}

    return {
        "title": "cachefs", "uid": "cachefs-volumes", "tags": ["cachefs", "storage", "csi"],
        "description": "cachefs volumes: cache hit ratios, bytes by tier vs S3, S3 requests and latency, uploads, "
                       "background failures, prefetch (helm/cachefs, docs/KUBERNETES.md).",
        "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "timezone": "", "annotations": {"list": []}, "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            variable("source", "Dataset", "label_values(cachefs_mount_info, source)"),
            variable("instance", "Mount", 'label_values(cachefs_mount_info{source=~"$source"}, instance)'),
        ]},
        "panels": d.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=1) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("-"):     # `--help` once became a file of that name
        sys.exit(f"usage: {sys.argv[0]} [OUTPUT]  (default {OUT})")
    Path(sys.argv[1] if len(sys.argv) > 1 else OUT).write_text(render())
