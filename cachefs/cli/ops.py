"""Operator subcommands: stats, warmup, flush, drop, reload, install-mount-helper.

cli.main.make_parser() adds them with one call, cli.main.main() dispatches them with one branch; each
talks to the running daemon through its control socket (ipc.control_request; the server side is
daemon/control.py). `cachefs stats` renders the daemon's counters as a table for people, or JSON for
scripts.
"""
from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Sequence

from cachefs.errors import UserError
from cachefs.ipc import control_request
from cachefs.units import format_size

COMMANDS = ("stats", "warmup", "flush", "drop", "reload", "install-mount-helper")
HELPER_PATH = "/sbin/mount.fuse.cachefs"    # mount(8) runs /sbin/mount.fuse.TYPE for `-t fuse.TYPE`


def add_commands(sub) -> None:
    s = sub.add_parser("stats", help="cache tiers, hit ratio, S3 traffic of a running mount")
    s.add_argument("mountpoint")
    s.add_argument("--json", action="store_true", help="everything the daemon counts, as JSON")

    w = sub.add_parser("warmup", help="load files (or whole directories) into the cache before a job")
    w.add_argument("mountpoint")
    w.add_argument("paths", nargs="*", metavar="PATH", help="files or directories in the mount (default: all)")
    w.add_argument("--file-list", metavar="FILE", help="more paths, one per line ('#' comments)")
    w.add_argument("--manifest", metavar="FILE", help="load the files this manifest lists (those under PATHs, if "
                   "given) without listing directories (docs/MANIFESTS.md)")
    w.add_argument("--metadata-only", action="store_true", help="list directories and stat files; no data")
    w.add_argument("-j", "--jobs", type=int, default=8, metavar="N", help="files read in parallel (default 8)")
    w.add_argument("--force", action="store_true", help="load even if it does not fit in the cache")
    w.add_argument("--in-daemon", action="store_true",
                   help="let the daemon read the files itself (no FUSE round trips, no page cache)")
    w.add_argument("--shared-only", action="store_true",
                   help="fill the mount's shared cache tier (--shared-cache) for all nodes; this node's "
                   "cache keeps nothing of it (the daemon reads the files itself)")

    f = sub.add_parser("flush", help="upload every pending file now and wait; write the cache index")
    f.add_argument("mountpoint")
    f.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the uploads (default 600)")

    d = sub.add_parser("drop", help="drop the cached blocks of a file or directory")
    d.add_argument("mountpoint")
    d.add_argument("path", help="file or directory in the mount")

    r = sub.add_parser("reload", help="change safe settings of a running mount: NAME=VALUE ...")
    r.add_argument("mountpoint")
    r.add_argument("settings", nargs="+", metavar="NAME=VALUE")

    i = sub.add_parser("install-mount-helper", help="install /sbin/mount.fuse.cachefs for mount -t fuse.cachefs")
    i.add_argument("--dest", default=None, help="where (default /sbin/mount.fuse.cachefs)")


def flush_uploads(mountpoint: str, timeout: float) -> list[str]:
    """Ask the daemon to upload everything now; the paths still pending after `timeout` s."""
    return control_request(mountpoint, "flush", timeout=timeout + 10, wait=timeout)["pending"]


def pending_message(pending: list[str], timeout: float) -> str:
    shown = ", ".join(pending[:5]) + (f" and {len(pending) - 5} more" if len(pending) > 5 else "")
    return f"{len(pending)} file(s) still not uploaded after {timeout:.0f} s: {shown}"


def run(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "stats":
        print(show_stats(control_request(args.mountpoint, "stats")["stats"], args.json))
    elif cmd == "warmup":
        from cachefs.cli import warmup
        return warmup.run(args.mountpoint, args.paths, args.file_list, args.metadata_only, args.jobs, args.force,
                           args.in_daemon, manifest=args.manifest, shared_only=args.shared_only)
    elif cmd == "flush":
        pending = flush_uploads(args.mountpoint, args.timeout)
        if pending:
            raise UserError(pending_message(pending, args.timeout))
        print(f"flushed {args.mountpoint}: every written file is in S3")
    elif cmd == "drop":
        from cachefs.cli.warmup import relative
        mp = os.path.abspath(args.mountpoint)
        a = control_request(mp, "drop", path=relative(mp, args.path))
        print(f"dropped {a['blocks']} blocks ({a['bytes']} bytes) of {a['files']} files")
    elif cmd == "reload":
        settings = dict(s.partition("=")[::2] for s in args.settings)
        if any(not k for k in settings):
            raise UserError("settings are NAME=VALUE, e.g. log_level=debug")
        a = control_request(args.mountpoint, "reload", settings=settings)
        print("applied: " + ", ".join(f"{k}={v}" for k, v in a["applied"].items()))
    elif cmd == "install-mount-helper":
        print(f"installed {install_mount_helper(args.dest or HELPER_PATH)}")
    return 0


def install_mount_helper(dest: str = HELPER_PATH) -> str:
    """Write the mount helper script (it runs cli/mounthelper.py): this interpreter and this copy of
    cachefs, with absolute paths, since mount(8) and systemd run helpers with a minimal environment."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = ("#!/bin/sh\n"
              "# mount -t fuse.cachefs SOURCE DIR -o OPTIONS (written by `cachefs install-mount-helper`)\n"
              f"PYTHONPATH='{package_parent}' exec '{sys.executable}' -m cachefs.mounthelper \"$@\"\n")
    tmp = dest + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(script)
        os.chmod(tmp, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        os.replace(tmp, dest)
    except OSError as e:
        raise UserError(f"cannot write {dest}: {e.strerror} (run as root)") from None
    return dest


# -- cachefs stats ---------------------------------------------------------------------------------
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
              f"  demotions {s.get('cache_demotions', 0)}"
              f"  refetched after checksum failure {s.get('cache_corrupt', 0)}",
              "",
              f"S3: GET {s.get('s3_get', 0)} ({format_size(s.get('s3_get_bytes', 0))})  HEAD {s.get('s3_head', 0)}"
              f"  LIST {s.get('s3_list', 0)}  errors {s.get('s3_errors', 0)}",
              *([f"shared tier {s['shared_cache']}: hits {s.get('shared_cache_hits', 0)} "
                 f"({format_size(s.get('shared_cache_bytes', 0))})  misses {s.get('shared_cache_misses', 0)}"
                 f"  errors {s.get('shared_cache_errors', 0)}  corrupt {s.get('shared_cache_corrupt', 0)}"
                 f"  written {s.get('shared_cache_writes', 0)}  skipped {s.get('shared_cache_write_skipped', 0)}"
                 f"{'  DOWN' if s.get('shared_cache_down') else ''}"] if s.get("shared_cache") else []),
              f"FUSE reads: {s.get('fuse_reads', 0)} ({format_size(s.get('fuse_read_bytes', 0))})"
              f"  read-ahead blocks {s.get('readahead_blocks', 0)}  shared fetches {s.get('fetch_shared', 0)}",
              f"pending uploads: {s.get('uploads_pending', 0)} ({format_size(s.get('uploads_pending_bytes', 0))})"
              f"  failures {s.get('upload_failures', 0)}"]
    return "\n".join(lines)


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i in (0, len(r) - 1) else c.rjust(w)
                      for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip() for r in rows]


def show_stats(stats: dict, as_json: bool) -> str:
    return json.dumps(stats, indent=2, sort_keys=True) if as_json else render(stats)
