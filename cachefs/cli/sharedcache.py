"""`cachefs shared-cache gc s3://BUCKET[/PREFIX] --max-size SIZE`: keep the shared tier within a size
(docs/CACHING.md "Shared tier"). Its objects are listed, and the oldest (by LastModified) deleted
until the rest fit. Safe while nodes read: a block deleted under a reader is a miss, fetched from the
origin (and written again). The shared store is reached with the mount's shared_cache_* options
(flags, TOML keys, CACHEFS_SHARED_CACHE_* variables), credentials never on the command line.
"""
from __future__ import annotations

import argparse
import sys

from cachefs.config import OPTION_BY_NAME
from cachefs.errors import StoreError, UserError
from cachefs.units import format_size, parse_size

COMMANDS = ("shared-cache",)
STORE_OPTIONS = ("shared_cache_endpoint_url", "shared_cache_region", "shared_cache_addressing_style",
                 "shared_cache_profile", "shared_cache_credentials_file", "s3_max_attempts")
DELETE_BATCH = 1000        # S3's DeleteObjects limit


def add_commands(sub) -> None:
    p = sub.add_parser("shared-cache", help="maintain a shared cache tier (docs/CACHING.md \"Shared tier\")")
    psub = p.add_subparsers(dest="shared_command", required=True, parser_class=type(p))
    g = psub.add_parser("gc", help="delete the oldest shared blocks until the rest fit --max-size")
    g.add_argument("url", help="s3://BUCKET[/PREFIX]: the shared tier, as mounts name it (--shared-cache)")
    g.add_argument("--max-size", required=True, metavar="SIZE", help="what the shared tier may hold, e.g. 2TiB")
    g.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    for name in STORE_OPTIONS:
        g.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, metavar="VALUE",
                       help=OPTION_BY_NAME[name].help)
    g.add_argument("--config", metavar="FILE", help="TOML file with options, as for `cachefs mount`")


def run(args: argparse.Namespace, out=None) -> int:
    out = out or sys.stdout
    try:
        max_size = parse_size(args.max_size)
    except ValueError as e:
        raise UserError(f"--max-size: {e}") from None
    from cachefs.config import build_config
    from cachefs.daemon.stores import shared_store
    flags = {name: getattr(args, name) for name in STORE_OPTIONS if hasattr(args, name)}
    cfg = build_config("s3://gc", "", {**flags, "shared_cache": args.url}, args.config)
    from cachefs.config import shared_cache_place
    _, prefix = shared_cache_place(cfg)
    store = shared_store(cfg, max_attempts=cfg.s3_max_attempts, read_deadline=cfg.s3_read_deadline)
    import botocore.exceptions as bce
    try:
        store.check_bucket(prefix)
        deleted, freed, kept = collect(store, prefix + "v1/", max_size, args.dry_run)
    except (StoreError, bce.BotoCoreError, bce.ClientError) as e:
        raise UserError(f"shared cache {args.url}: {e}") from None
    finally:
        store.close()
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {deleted} shared blocks ({format_size(freed)}); {format_size(kept)} kept "
          f"(--max-size {format_size(max_size)})", file=out)
    return 0


def collect(store, prefix: str, max_size: int, dry_run: bool = False) -> tuple[int, int, int]:
    """Delete the oldest objects under `prefix` until at most `max_size` bytes are left:
    (objects deleted, bytes freed, bytes kept)."""
    objects, token = [], None
    while True:
        page = store.list_page(prefix, token, 1000, delimiter="")
        objects += page.objects
        token = page.next_token
        if token is None:
            break
    total = sum(o.size for o in objects)
    doomed = []
    for o in sorted(objects, key=lambda o: (o.mtime_ns, o.key)):
        if total <= max_size:
            break
        doomed.append(o.key)
        total -= o.size
    freed = sum(o.size for o in objects) - total
    if not dry_run:
        for i in range(0, len(doomed), DELETE_BATCH):
            batch = [{"Key": k} for k in doomed[i:i + DELETE_BATCH]]
            answer = store.client.delete_objects(Bucket=store.bucket, Delete={"Objects": batch, "Quiet": True})
            errors = answer.get("Errors") or []
            if errors:
                raise UserError(f"{len(errors)} deletes failed, e.g. {errors[0].get('Key')}: "
                                f"{errors[0].get('Code')} {errors[0].get('Message', '')}".strip())
    return len(doomed), freed, total
