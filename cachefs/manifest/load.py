"""`cachefs mount --manifest`: fetch a manifest, check that it fits the mount, load it into LMDB.

Runs in the daemon's start-up, before the mount serves anything: a manifest that cannot be used
(damaged, another version, another bucket or prefix, older than --manifest-max-age) stops the
mount with one line naming the cause.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from cachefs.config import Config
from cachefs.manifest.build import MANIFEST_NAME
from cachefs.manifest.format import Manifest, ManifestError, loads, read_file
from cachefs.meta.bulk import Row, load_tree
from cachefs.meta.schema import KIND_DIR, KIND_FILE
from cachefs.meta.store import MetaStore
from cachefs.namespace.core import valid_name
from cachefs.store.base import ObjectStore
from cachefs.units import format_size

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 1 << 30    # 20x a million keys' manifest: a larger object is not one of ours


def split_url(url: str) -> tuple[str, str]:
    """(bucket, key) of s3://BUCKET/KEY; a KEY ending in '/' (or none) names MANIFEST_NAME below it."""
    rest = url.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ManifestError(f"--manifest {url}: no bucket (use s3://BUCKET/KEY or a file)")
    if not key or key.endswith("/"):
        key += MANIFEST_NAME
    return bucket, key


def fetch(where: str, store_for: Callable[[str], ObjectStore]) -> Manifest:
    """The manifest at a local path or s3://BUCKET/KEY (read through `store_for(bucket)`)."""
    if not where.startswith("s3://"):
        return read_file(where)
    bucket, key = split_url(where)
    store = store_for(bucket)
    info = store.head(key)
    if info is None:
        raise ManifestError(f"manifest {where} does not exist")
    if info.size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest {where} is {format_size(info.size)}: not a cachefs manifest")
    return loads(store.get_range(key, 0, info.size, info.etag), f"manifest {where}")


def check(m: Manifest, where: str, bucket: str, prefix: str, max_age: float, now: float | None = None) -> float:
    """Refuse a manifest of another dataset or too old; returns until when its listings are trusted."""
    if (m.bucket, m.prefix) != (bucket, prefix):
        raise ManifestError(f"manifest {where} lists {m.source}, not this mount's s3://{bucket}/{prefix}")
    now = time.time() if now is None else now
    until = m.created + max_age
    if until <= now:
        age_h = (now - m.created) / 3600
        raise ManifestError(f"manifest {where} is too old: made {m.created_utc} ({age_h:.1f} h ago), "
                            f"--manifest-max-age is {max_age / 3600:.1f} h (build a new one)")
    return until


def tree(m: Manifest) -> dict[str, dict[bytes, Row]]:
    """The directories a manifest describes: path ('' for the root) -> entries by name, with the
    namespace's mapping (docs/SEMANTICS.md): '/' makes directories, a 'dir/' marker is a directory,
    a name both a file and a directory is a directory, keys that cannot be file names are left out."""
    dirs: dict[str, dict[bytes, Row]] = {"": {}}
    invalid: set[str] = set()

    def directory(path: str) -> dict[bytes, Row] | None:
        """The entries of directory `path`, made (with its parents) on first sight; None if invalid."""
        children = dirs.get(path)
        if children is not None or path in invalid:
            return children
        parent_path, _, name = path.rpartition("/")
        parent = directory(parent_path)
        if parent is None or not valid_name(name.encode()):
            invalid.add(path)
            return None
        parent[name.encode()] = (name, KIND_DIR, 0, 0, "")     # a directory wins over a file of its name
        children = dirs[path] = {}
        return children

    for key, size, etag, mtime_ns in zip(m.keys, m.sizes, m.etags, m.mtimes, strict=True):
        parent_path, _, name = key.rpartition("/")
        if not name:                       # a 'dir/' marker
            directory(parent_path)
            continue
        siblings = directory(parent_path)
        raw = name.encode()
        if siblings is None or not valid_name(raw):
            continue
        known = siblings.get(raw)
        if known is None or known[1] != KIND_DIR:
            siblings[raw] = (name, KIND_FILE, size, mtime_ns, etag)
    return dirs


def load(meta: MetaStore, cfg: Config, store_for: Callable[[str], ObjectStore]) -> Manifest:
    """Fetch, check and load --manifest into `meta` (one write transaction)."""
    assert cfg.manifest is not None
    started = time.monotonic()
    if cfg.manifest.startswith("s3://"):
        where = "s3://{}/{}".format(*split_url(cfg.manifest))      # what s3://BUCKET/PREFIX/ names
    else:
        where = os.path.abspath(cfg.manifest)
    m = fetch(where, store_for)
    until = check(m, where, cfg.bucket, cfg.prefix, cfg.manifest_max_age)
    fetched = time.monotonic()
    dirs = tree(m)
    keep = {record["path"] for record in meta.pending().values() if record.get("path")}
    written = load_tree(meta, dirs, until, keep)
    log.info("manifest %s (%s, made %s): %d keys, %d inodes in %d directories loaded in %.1f s (read %.1f s); "
             "its listings are trusted until %s", where, m.source, m.created_utc, len(m), written, len(dirs),
             time.monotonic() - started, fetched - started,
             time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until)))
    return m
