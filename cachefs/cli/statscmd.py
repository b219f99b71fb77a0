"""`cachefs stats MOUNTPOINT`: the daemon's counters as a table for people, or JSON for scripts."""
from __future__ import annotations

import json

from cachefs.config import format_size


def ratio(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def render(s: dict) -> str:
    """A few short tables: what an operator checks first (are the tiers full, do reads hit, is S3 slow)."""
    lines = [f"cachefs {s.get('version', '?')}  {s.get('source', '')}",
             f"metrics: {s.get('metrics_url') or 'off'}", ""]
    hits, misses = s.get("cache_hits", 0), s.get("cache_misses", 0)
    rows = [("tier", "used", "quota", "use", "high", "blocks", "hits", "health")]
    for name, t in s.get("tiers", {}).items():
        dirs = t.get("dirs")
        health = "ok" if dirs is None or all(v == "up" for v in dirs.values()) else \
            ", ".join(f"{d} {v}" for d, v in dirs.items() if v != "up")
        rows.append((name, format_size(t["used"]), format_size(t["quota"]), ratio(t["used"], t["quota"]),
                     format_size(t["high"]), str(t["blocks"]), str(s.get(f"cache_hits_{name}", 0)), health))
    lines += _table(rows)
    lines += ["", f"block reads: {hits + misses}  hits {hits}  misses {misses}  hit ratio {ratio(hits, hits + misses)}",
              f"not admitted (cache full): {s.get('cache_not_admitted', 0)}  evictions {s.get('cache_evictions', 0)}"
              f"  demotions {s.get('cache_demotions', 0)}  refetched after checksum failure {s.get('cache_corrupt', 0)}",
              "",
              f"S3: GET {s.get('s3_get', 0)} ({format_size(s.get('s3_get_bytes', 0))})  HEAD {s.get('s3_head', 0)}"
              f"  LIST {s.get('s3_list', 0)}  errors {s.get('s3_errors', 0)}",
              f"FUSE reads: {s.get('fuse_reads', 0)} ({format_size(s.get('fuse_read_bytes', 0))})"
              f"  read-ahead blocks {s.get('readahead_blocks', 0)}  shared fetches {s.get('fetch_shared', 0)}",
              f"pending uploads: {s.get('uploads_pending', 0)} ({format_size(s.get('uploads_pending_bytes', 0))})"
              f"  failures {s.get('upload_failures', 0)}"]
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i in (0, len(r) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            .rstrip() for r in rows]


def show(stats: dict, as_json: bool) -> str:
    return json.dumps(stats, indent=2, sort_keys=True) if as_json else render(stats)
