"""What a volume is: a bucket and a prefix, its id, the capabilities it supports, and the cachefs
options a StorageClass or PV may set for its mounts."""
from __future__ import annotations

import re
from dataclasses import dataclass

import xxhash

from cachefs.config import OPTIONS, build_config
from cachefs.csi.proto import pb
from cachefs.csi.status import invalid
from cachefs.errors import UserError

Mode = pb.VolumeCapability.AccessMode.Mode
# Reader modes mount with --read-only (every write answers EROFS).
READER_MODES = frozenset({Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY})
# Writer modes mount read-write (unless the publication is readonly). A prefix has one writer: cachefs
# does not coordinate writers, so two read-write mounts of one prefix (two pods, two nodes, or
# another S3 client) overwrite each other object by object, last upload wins, and neither sees the
# other's new files before its listing expires. Kubernetes: ReadWriteOnce (SINGLE_NODE_WRITER; note
# that kubelet lets several pods on one node share it, each with its own daemon),
# ReadWriteOncePod (SINGLE_NODE_SINGLE_WRITER, one pod: the one-writer rule enforced by
# Kubernetes), and MULTI_NODE_SINGLE_WRITER (other COs: one writer, readers elsewhere).
WRITER_MODES = frozenset({Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_SINGLE_WRITER, Mode.MULTI_NODE_SINGLE_WRITER})
# Not offered: MULTI_NODE_MULTI_WRITER (ReadWriteMany) and SINGLE_NODE_MULTI_WRITER promise
# several writers that see each other's writes, which an uncoordinated cache cannot keep.
SUPPORTED_MODES = READER_MODES | WRITER_MODES

# Keys of the volume context / StorageClass parameters that are not cachefs mount options.
VOLUME_KEYS = frozenset({"bucket", "prefix"})
CONTROLLER_KEYS = frozenset({"prefixBase", "onDelete"})
# The cachefs options a volume may set: an allow-list, so that an option added to cachefs later (and
# anything about where the node keeps caches, credentials, logs or sockets) stays the node's until
# it is deliberately added here.
VOLUME_OPTIONS = frozenset({
    "endpoint_url", "region", "addressing_style", "eviction_policy", "promotion", "stale_after",
    "block_size", "read_ahead", "prefetch_small_files", "max_fetches", "hedging", "hedge_min_delay", "s3_read_deadline",
    "entry_timeout", "attr_timeout", "listing_ttl", "negative_ttl", "file_mode", "dir_mode", "max_idle_threads",
    "s3_max_attempts", "s3_connect_timeout", "s3_read_timeout", "log_level",
    # The write schedule of a read-write volume (logs soon, checkpoints later: a volume's choice).
    # Staging space and the exit upload timeout stay the node's (its disks, its unpublish timeout),
    # and read_only is the access mode's.
    "small_file_threshold", "small_sync_interval", "large_sync_interval", "multipart_part_size",
    "upload_concurrency", "fsync_upload",
    # A dataset's manifest (docs/MANIFESTS.md): s3:// only, a volume names no file on the node.
    "manifest", "manifest_max_age",
}) & frozenset(o.name for o in OPTIONS)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Dataset:
    bucket: str
    prefix: str   # no leading or trailing '/'; "" for the whole bucket

    @classmethod
    def parse(cls, text: str) -> Dataset:
        """`bucket[/prefix]` or `s3://bucket[/prefix]` (a volume id is the former)."""
        text = text.removeprefix("s3://")
        bucket, _, prefix = text.partition("/")
        prefix = prefix.strip("/")
        if not _BUCKET.match(bucket):
            raise invalid(f"not a valid bucket name: {bucket!r}")
        if "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
            raise invalid(f"not a valid prefix: {prefix!r}")
        return cls(bucket, prefix)

    @property
    def volume_id(self) -> str:
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    @property
    def url(self) -> str:
        return f"s3://{self.volume_id}"

    @property
    def dsid(self) -> str:
        """A short stable name for label keys and cache slots (label names allow 63 characters)."""
        return xxhash.xxh64_hexdigest(self.volume_id.encode())


def dataset_of(volume_id: str, context: dict[str, str]) -> Dataset:
    """The volume context names the data when it has `bucket` (static PVs, or CreateVolume's answer);
    otherwise the volume id is `bucket[/prefix]`."""
    if "bucket" in context:
        return Dataset.parse(context["bucket"] + "/" + context.get("prefix", ""))
    return Dataset.parse(volume_id)


def mount_options(params: dict[str, str], extra_allowed: frozenset[str] = frozenset()) -> dict[str, str]:
    """The cachefs options among `params`, validated by cachefs's own config parser. Keys in the
    `csi.storage.k8s.io/` namespace are the sidecars' (secret references) and are ignored."""
    opts = {}
    for key, value in params.items():
        if key in VOLUME_KEYS or key in extra_allowed or key.startswith("csi.storage.k8s.io/"):
            continue
        if key not in VOLUME_OPTIONS:
            allowed = ", ".join(sorted(VOLUME_OPTIONS))
            raise invalid(f"unknown or node-owned cachefs option {key!r} (a volume may set: {allowed})")
        opts[key] = value
    if "manifest" in opts and not opts["manifest"].startswith("s3://"):
        raise invalid(f"manifest {opts['manifest']!r}: a volume names its manifest as s3://BUCKET/KEY, "
                      "not a file on the node")
    try:
        build_config("s3://validation", "/validation", dict(opts), environ={})
    except UserError as e:
        raise invalid(f"bad cachefs option: {e}") from None
    return opts


def check_capability(cap, *, required: bool = True) -> None:
    if not cap.ByteSize() and required:
        raise invalid("volume capability missing")
    if cap.WhichOneof("access_type") != "mount":
        raise invalid("only filesystem (mount) volumes are supported, not block")
    if cap.mount.fs_type not in ("", "fuse.cachefs", "cachefs"):
        raise invalid(f"unsupported fs_type {cap.mount.fs_type!r}")
    if cap.access_mode.mode not in SUPPORTED_MODES:
        raise invalid(f"access mode {Mode.Name(cap.access_mode.mode)} not supported: cachefs volumes have "
                      f"one writer per prefix (use ReadOnlyMany, ReadWriteOnce or ReadWriteOncePod)")


def is_read_only(cap, readonly: bool) -> bool:
    """A publication is read-only when the CO says so or its access mode is a reader mode."""
    return readonly or cap.access_mode.mode in READER_MODES


def check_capabilities(caps) -> None:
    if not caps:
        raise invalid("volume capabilities missing")
    for cap in caps:
        check_capability(cap)
