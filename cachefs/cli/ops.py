"""Operator subcommands: stats, warmup, flush, drop, reload, install-mount-helper.

cli.make_parser() adds them with one call, cli.main() dispatches them with one branch; each talks
to the running daemon through its control socket (cachefs/control.py).
"""
from __future__ import annotations

import argparse
import os

COMMANDS = ("stats", "warmup", "flush", "drop", "reload", "install-mount-helper")


def add_commands(sub) -> None:
    s = sub.add_parser("stats", help="cache tiers, hit ratio, S3 traffic of a running mount")
    s.add_argument("mountpoint")
    s.add_argument("--json", action="store_true", help="everything the daemon counts, as JSON")

    w = sub.add_parser("warmup", help="load files (or whole directories) into the cache before a job")
    w.add_argument("mountpoint")
    w.add_argument("paths", nargs="*", metavar="PATH", help="files or directories in the mount (default: all)")
    w.add_argument("--file-list", metavar="FILE", help="more paths, one per line ('#' comments)")
    w.add_argument("--metadata-only", action="store_true", help="list directories and stat files; no data")
    w.add_argument("-j", "--jobs", type=int, default=8, metavar="N", help="files read in parallel (default 8)")
    w.add_argument("--force", action="store_true", help="load even if it does not fit in the cache")
    w.add_argument("--in-daemon", action="store_true",
                   help="let the daemon read the files itself (no FUSE round trips, no page cache)")

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
    from cachefs.daemon import control
    return control.request(mountpoint, "flush", timeout=timeout + 10, wait=timeout)["pending"]


def pending_message(pending: list[str], timeout: float) -> str:
    shown = ", ".join(pending[:5]) + (f" and {len(pending) - 5} more" if len(pending) > 5 else "")
    return f"{len(pending)} file(s) still not uploaded after {timeout:.0f} s: {shown}"


def run(args: argparse.Namespace) -> int:
    from cachefs.daemon import control
    from cachefs.errors import UserError
    cmd = args.command
    if cmd == "stats":
        from cachefs.cli.statscmd import show
        print(show(control.request(args.mountpoint, "stats")["stats"], args.json))
    elif cmd == "warmup":
        from cachefs.cli import warmup
        return warmup.run(args.mountpoint, args.paths, args.file_list, args.metadata_only, args.jobs, args.force,
                           args.in_daemon)
    elif cmd == "flush":
        pending = flush_uploads(args.mountpoint, args.timeout)
        if pending:
            raise UserError(pending_message(pending, args.timeout))
        print(f"flushed {args.mountpoint}: every written file is in S3")
    elif cmd == "drop":
        from cachefs.cli.warmup import relative
        mp = os.path.abspath(args.mountpoint)
        a = control.request(mp, "drop", path=relative(mp, args.path))
        print(f"dropped {a['blocks']} blocks ({a['bytes']} bytes) of {a['files']} files")
    elif cmd == "reload":
        settings = dict(s.partition("=")[::2] for s in args.settings)
        if any(not k for k in settings):
            raise UserError("settings are NAME=VALUE, e.g. log_level=debug")
        a = control.request(args.mountpoint, "reload", settings=settings)
        print("applied: " + ", ".join(f"{k}={v}" for k, v in a["applied"].items()))
    elif cmd == "install-mount-helper":
        from cachefs.cli.mounthelper import HELPER_PATH, install
        print(f"installed {install(args.dest or HELPER_PATH)}")
    return 0
