"""`cachefs manifest build|diff|show`: a dataset's listing made once, for mounts to load at start
(docs/MANIFESTS.md). S3 is reached with the same endpoint and credential options as `cachefs mount`;
nothing here imports the daemon or boto3 until a command runs.
"""
from __future__ import annotations

import argparse
import sys
import time

from cachefs.config import OPTION_BY_NAME
from cachefs.errors import StoreError, UserError
from cachefs.units import format_size

COMMANDS = ("manifest",)
# The `cachefs mount` options that say how to reach S3 (flags, TOML keys, CACHEFS_* as for a mount).
S3_OPTIONS = ("endpoint_url", "region", "addressing_style", "profile", "credentials_file", "s3_max_attempts",
              "s3_connect_timeout", "s3_read_timeout")
# `manifest diff` exits like diff(1): 0 the same, 1 different, 2 trouble.
DIFF_SAME, DIFF_CHANGED, DIFF_ERROR = 0, 1, 2


def _add_s3_options(p: argparse.ArgumentParser) -> None:
    for name in S3_OPTIONS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, metavar="VALUE",
                       help=OPTION_BY_NAME[name].help)
    p.add_argument("--config", metavar="FILE", help="TOML file with options, as for `cachefs mount`")


def add_commands(sub) -> None:
    m = sub.add_parser("manifest", help="build, compare or show a dataset manifest (docs/MANIFESTS.md)")
    msub = m.add_subparsers(dest="manifest_command", required=True, parser_class=type(m))
    b = msub.add_parser("build", help="list s3://BUCKET/PREFIX once and write its manifest")
    b.add_argument("source", help="s3://BUCKET[/PREFIX]: the dataset, as a mount names it")
    b.add_argument("-o", "--output", metavar="FILE", help="write the manifest to FILE")
    b.add_argument("--upload", action="store_true",
                   help="store it in the bucket as PREFIX/.cachefs-manifest (mount --manifest s3://BUCKET/PREFIX/)")
    b.add_argument("-j", "--jobs", type=int, default=16, metavar="N", help="LISTs in flight (default 16)")
    _add_s3_options(b)
    d = msub.add_parser("diff", help="what changed in S3 since a manifest was made (exit 0 same, 1 changed, 2 error)")
    d.add_argument("manifest", help="manifest FILE or s3://BUCKET/KEY")
    d.add_argument("source", nargs="?", help="s3://BUCKET[/PREFIX] to compare with (default: the manifest's own)")
    d.add_argument("-j", "--jobs", type=int, default=16, metavar="N", help="LISTs in flight (default 16)")
    _add_s3_options(d)
    s = msub.add_parser("show", help="a manifest's header (and its keys with --keys)")
    s.add_argument("manifest", help="manifest FILE or s3://BUCKET/KEY")
    s.add_argument("--keys", action="store_true", help="also print every entry: key, size, ETag")
    _add_s3_options(s)


def run(args: argparse.Namespace) -> int:
    if args.manifest_command == "diff":
        try:
            return cmd_diff(args)
        except UserError as e:           # 1 means "changed" here: trouble is 2
            print(f"cachefs: error: {e}", file=sys.stderr)
            return DIFF_ERROR
    try:
        return cmd_build(args) if args.manifest_command == "build" else cmd_show(args)
    except StoreError as e:
        raise UserError(str(e)) from None


def _config(args: argparse.Namespace, source: str):
    from cachefs.config import build_config
    flags = {name: getattr(args, name) for name in S3_OPTIONS if hasattr(args, name)}
    cfg = build_config(source, "", flags, args.config)
    if cfg.scheme != "s3":
        raise UserError(f"{source}: a manifest lists an S3 dataset (s3://BUCKET[/PREFIX])")
    return cfg


def _store(args: argparse.Namespace, source: str, check_prefix: str | None = None):
    """The S3 store for `source`'s bucket, made as a mount makes it (without hedging: LISTs only)."""
    import dataclasses

    from cachefs.daemon.stores import from_config
    from cachefs.stats import Stats
    cfg = dataclasses.replace(_config(args, source), hedging=False)
    store = from_config(cfg, Stats())
    store.check_bucket(cfg.prefix if check_prefix is None else check_prefix)   # one line on a bad bucket
    return cfg, store


def _list(args: argparse.Namespace, source: str):
    from cachefs.manifest import build as manifest_build
    cfg, store = _store(args, source)
    bar = _bar(f"listing {source}")
    progress = bar.update if bar is not None else None     # a tqdm without a total has no truth value
    try:
        m = manifest_build.build(store, cfg.bucket, cfg.prefix, max(1, args.jobs), progress)
    except StoreError as e:
        raise UserError(f"listing {source} failed: {e}") from None
    finally:
        if bar is not None:
            bar.close()
    return cfg, store, m


def _bar(what: str):
    """A progress bar on stderr when it is a terminal (tqdm), else nothing."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(desc=what, unit=" keys", unit_scale=True, file=sys.stderr, leave=False)


def cmd_build(args: argparse.Namespace) -> int:
    from cachefs.manifest import format as manifest_format
    from cachefs.manifest.build import MANIFEST_NAME
    if not args.output and not args.upload:
        raise UserError("manifest build: say where it goes: -o FILE, --upload, or both")
    started = time.monotonic()
    cfg, store, m = _list(args, args.source)
    listed = time.monotonic() - started
    data = manifest_format.dumps(m)
    where = []
    if args.output:
        if args.output == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            manifest_format.write_file(m, args.output)
            where.append(args.output)
    if args.upload:
        key = cfg.prefix + MANIFEST_NAME
        try:
            store.put_object(key, data)
        except StoreError as e:
            raise UserError(f"uploading the manifest to s3://{cfg.bucket}/{key} failed: {e}") from None
        where.append(f"s3://{cfg.bucket}/{key}")
    print(f"manifest of {m.source}: {len(m)} keys, {format_size(len(data))}, listed in {listed:.1f} s"
          + (f" -> {', '.join(where)}" if where else ""), file=sys.stderr)
    return 0


def _read(args: argparse.Namespace, where: str):
    from cachefs.manifest import format as manifest_format
    from cachefs.manifest.load import fetch, split_url
    if not where.startswith("s3://"):
        return manifest_format.read_file(where)
    bucket, key = split_url(where)
    _, store = _store(args, f"s3://{bucket}", check_prefix=key)
    try:
        return fetch(where, lambda _: store)
    except StoreError as e:
        raise UserError(f"reading manifest {where} failed: {e}") from None


def cmd_diff(args: argparse.Namespace) -> int:
    from cachefs.manifest.build import diff
    m = _read(args, args.manifest)
    source = args.source or m.source
    cfg, _, now = _list(args, source)
    if (cfg.bucket, cfg.prefix) != (m.bucket, m.prefix):
        print(f"note: the manifest lists {m.source}; comparing with {source}", file=sys.stderr)
    changes = diff(m, now.entries())
    out = sys.stdout
    for e in changes.added:
        print(f"added    {e.key}  {e.size}", file=out)
    for e in changes.removed:
        print(f"removed  {e.key}", file=out)
    for old, new in changes.changed:
        what = [f"size {old.size} -> {new.size}"] if old.size != new.size else []
        what += [f"etag {old.etag} -> {new.etag}"] if old.etag != new.etag else []
        print(f"changed  {new.key}  {', '.join(what)}", file=out)
    print(f"{len(changes.added)} added, {len(changes.removed)} removed, {len(changes.changed)} changed "
          f"since {m.created_utc} ({len(m)} keys then, {len(now)} now)", file=out)
    return DIFF_CHANGED if changes else DIFF_SAME


def cmd_show(args: argparse.Namespace) -> int:
    m = _read(args, args.manifest)
    print(f"source   {m.source}\ncreated  {m.created_utc}\nentries  {len(m)}\n"
          f"bytes    {format_size(sum(m.sizes))} in all")
    if args.keys:
        for e in m.entries():
            print(f"{e.key}\t{e.size}\t{e.etag}")
    return 0
