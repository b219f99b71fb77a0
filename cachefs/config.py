"""The validated configuration: defaults < TOML file < environment (CACHEFS_*) < command-line flags.

Every option is declared once in OPTIONS; argparse flags, TOML keys and environment variables are
derived from that table, so the three sources can never disagree on names or parsing.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import xxhash

from cachefs.cache.spec import EVICTION_POLICIES, TierSpec, parse_promotion, parse_tiers
from cachefs.errors import ConfigError
from cachefs.units import GiB, KiB, MiB, format_size, parse_seconds, parse_size


def _count(minimum: int, maximum: int) -> Callable[[Any], int]:
    def parse(text: Any) -> int:
        try:
            v = int(text)
        except (TypeError, ValueError):
            raise ValueError(f"invalid whole number {text!r}") from None
        if not minimum <= v <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}, got {v}")
        return v
    return parse


def _mode(text: Any) -> int:
    try:
        v = text if isinstance(text, int) else int(str(text), 8)
    except ValueError:
        raise ValueError(f"invalid octal mode {text!r} (use e.g. 0444)") from None
    if not 0 <= v <= 0o7777:
        raise ValueError(f"mode {text!r} out of range")
    return v


def _bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"invalid boolean {text!r} (use true or false)")


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(text: Any) -> str:
        if str(text) not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {text!r}")
        return str(text)
    return parse


def _text(text: Any) -> str:
    if not isinstance(text, str) or not text:
        raise ValueError(f"must be a non-empty string, got {text!r}")
    return text


def _size_min(minimum: int) -> Callable[[Any], int]:
    def parse(text: Any) -> int:
        v = parse_size(text)
        if v < minimum:
            raise ValueError(f"must be at least {format_size(minimum)}, got {text!r}")
        return v
    return parse


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: Any) -> float:
    """Seconds, or a number with s, m, h or d ('7d', '12h')."""
    raw = str(text).strip().lower()
    if raw[-1:] in _DURATION_UNITS:
        try:
            return parse_seconds(raw[:-1]) * _DURATION_UNITS[raw[-1]]
        except ValueError:
            raise ValueError(f"invalid duration {text!r} (use seconds or e.g. 12h, 7d)") from None
    return parse_seconds(text)


def _positive_duration(text: Any) -> float:
    v = _duration(text)
    if v <= 0:
        raise ValueError(f"must be more than 0, got {text!r}")
    return v


def _metrics_addr(text: Any) -> str:
    from cachefs.metrics import parse_addr  # validates; the daemon parses it again to listen
    parse_addr(text)
    return str(text).strip()


@dataclass(frozen=True)
class Option:
    name: str              # dataclass field; flag is --name-with-dashes, env CACHEFS_NAME
    parse: Callable[[Any], Any]
    help: str
    flag_takes_value: bool = True   # False: a switch (--foreground)
    repeatable: bool = False        # a flag that may be given several times (--cache)


OPTIONS: tuple[Option, ...] = (
    Option("endpoint_url", _text, "S3 endpoint URL (default: AWS, or AWS_ENDPOINT_URL)"),
    Option("region", _text, "S3 region (default: from the AWS config, else us-east-1)"),
    Option("addressing_style", _choice("auto", "path", "virtual"),
           "S3 addressing style; 'path' for most self-hosted endpoints (Ceph RGW, MinIO)"),
    Option("profile", _text, "AWS profile name from the shared config/credentials files"),
    Option("credentials_file", _text, "AWS-style credentials file (INI); must have mode 0600"),
    Option("cache_dir", _text, "directory for cached blocks and metadata (created 0700)"),
    Option("cache", parse_tiers, "a cache tier, fastest first: mem:SIZE, ssd:DIR[,DIR]:SIZE, "
           "hdd:DIR:SIZE, each optionally :high=F:low=F:min_free=F:min_free_inodes=F (repeatable)",
           repeatable=True),
    Option("cache_size", _size_min(16 * MiB), "size of the default disk tier in CACHE_DIR (without --cache)"),
    Option("eviction_policy", _choice(*EVICTION_POLICIES), "lru, or scan-resistant for cyclic epochs"),
    Option("promotion", parse_promotion, "move a block hit in a slower tier up: never, on-hit, after:N"),
    Option("pack_small_blocks", _bool, "store blocks shorter than --block-size in a disk tier's pack files, "
           "not a file each"),
    Option("stale_after", parse_seconds, "scan-resistant policy: seconds unused before a block may be evicted"),
    Option("block_size", _size_min(64 * KiB), "cache block size = ranged GET size"),
    Option("read_ahead", _size_min(0), "largest read-ahead window of a sequential reader (0: off)"),
    Option("prefetch_small_files", _size_min(0), "on open, fetch a file this small whole in the background (0: off)"),
    Option("max_fetches", _count(1, 256), "read-ahead GETs in flight per mount"),
    Option("prefetch_window", _size_min(0), "bytes an order prefetch may fetch ahead of the reader "
           "(0: half of what the cache holds)"),
    Option("prefetch_concurrency", _count(1, 1024), "GETs an order prefetch or a dataset walk keeps in flight"),
    Option("kernel_read_ahead", _size_min(0), "as root: the kernel's read-ahead for this mount (0: leave it)"),
    Option("max_background", _count(0, 65535), "as root: FUSE async requests in flight (0: leave it)"),
    Option("entry_timeout", parse_seconds, "seconds the kernel caches a name lookup"),
    Option("attr_timeout", parse_seconds, "seconds the kernel caches file attributes"),
    Option("listing_ttl", parse_seconds, "seconds a directory listing from S3 is trusted"),
    Option("negative_ttl", parse_seconds, "seconds a 'no such file' answer is trusted"),
    Option("uid", _count(0, 2**32 - 2), "owner of every file (default: the mounting user)"),
    Option("gid", _count(0, 2**32 - 2), "group of every file (default: the mounting user's)"),
    Option("file_mode", _mode, "permission bits of files (octal)"),
    Option("dir_mode", _mode, "permission bits of directories (octal)"),
    Option("single_owner", _bool, "one owner for the whole mount (--uid/--gid): chown to another owner is EPERM "
           "and owners in object metadata are not shown", False),
    Option("metadata_head_size", _size_min(0), "HEAD listed objects of at most this size once (if a directory has "
           "at most 64 of them), to read mode, owner, mtime and symlink type from x-amz-meta-* (0: never)"),
    Option("metadata_head_all", _bool, "HEAD every listed object once, to show the mode, owner and mtime its "
           "x-amz-meta-* hold (one HEAD per object and version)", False),
    Option("allow_other", _bool, "let other users access the mount (needs user_allow_other)", False),
    Option("max_idle_threads", _count(1, 1024),
           "FUSE worker tasks and blocking-I/O threads (libfuse's max_idle_threads)"),
    Option("hedging", _bool, "send a duplicate GET when one runs past the p95 of recent latencies"),
    Option("fast_path", _bool, "on a read-only mount, answer the FUSE requests of a small file the order "
           "prefetch has whole in memory in C, without Python"),
    Option("hedge_min_delay", parse_seconds, "never hedge a GET sooner than this many seconds"),
    Option("s3_engine", _choice("curl", "boto3"), "the read path's S3 client: curl (libcurl driven by trio, "
           "no thread per request) or boto3 (plain boto3 calls in worker threads)"),
    Option("s3_fast_get", _bool, "deprecated: false is --s3-engine boto3"),
    Option("s3_max_attempts", _count(1, 20), "attempts per S3 request (retries + 1)"),
    Option("s3_connect_timeout", parse_seconds, "seconds to connect to the endpoint"),
    Option("s3_read_timeout", parse_seconds, "seconds to wait for data from the endpoint"),
    Option("mount_timeout", parse_seconds, "seconds `mount` waits for the daemon to be ready"),
    Option("foreground", _bool, "stay attached; log to stderr", False),
    Option("log_level", _choice("debug", "info", "warning", "error"), "log level"),
    Option("log_file", _text, "log file in the background (default: CACHE_DIR/cachefs.log)"),
    Option("log_target", _choice("file", "syslog"),
           "where the background daemon logs: file (LOG_FILE) or syslog (/dev/log, read by journald)"),
    Option("metrics_addr", _metrics_addr, "Prometheus exporter HOST:PORT (default 127.0.0.1:9749), or none"),
    # -- writes (docs/SEMANTICS.md "Writes") --
    Option("read_only", _bool, "mount read-only: every write answers EROFS", False),
    Option("staging_dir", _text, "where written files wait for upload (default: STAGING on the fastest disk tier)"),
    Option("staging_size", _size_min(16 * MiB),
           "the most staged (not yet uploaded) bytes; beyond it writes get ENOSPC"),
    Option("small_file_threshold", _size_min(0), "files up to this size follow the small-file upload schedule"),
    Option("small_sync_interval", parse_seconds,
           "seconds of quiet (or of growth while open) before a small file is uploaded"),
    Option("large_sync_interval", parse_seconds,
           "seconds of quiet before a large open file is uploaded (always on close)"),
    Option("multipart_part_size", _size_min(5 * MiB), "part size of multipart uploads (S3's minimum is 5 MiB)"),
    Option("upload_concurrency", _count(1, 256), "parts and small files uploaded in parallel per mount"),
    Option("eager_upload", _bool, "send the finished parts of a large file while it is written sequentially"),
    Option("fsync_upload", _bool, "fsync waits until the file is in S3 (default: durable on the node)", False),
    Option("exit_upload_timeout", parse_seconds, "seconds the daemon keeps uploading after an unmount before it exits"),
    # -- manifests (docs/MANIFESTS.md) --
    Option("manifest", _text, "a manifest (FILE or s3://BUCKET/KEY, from `cachefs manifest build`) loaded at start: "
           "the dataset's names and sizes without LIST or HEAD"),
    Option("manifest_max_age", _positive_duration, "refuse a manifest older than this (seconds, or e.g. 12h, 7d); "
           "its listings are trusted until it is this old"),
    Option("s3_read_deadline", parse_seconds, "seconds one S3 read (GET/HEAD/LIST), retries included, may take before "
           "the reader gets EIO (0: no bound but the attempts and timeouts)"),
)
OPTIONS += (
    # -- the shared cache tier (docs/CACHING.md "Shared tier"); its own endpoint and credentials --
    Option("shared_cache", lambda t: _shared_url(t), "a shared cache tier below the node's tiers: "
           "s3://BUCKET[/PREFIX] on an S3-compatible store near the nodes (MinIO, Ceph RGW, S3 Express)"),
    Option("shared_cache_endpoint_url", _text, "the shared tier's endpoint URL (default: AWS)"),
    Option("shared_cache_region", _text, "the shared tier's region (default: from the AWS config, else us-east-1)"),
    Option("shared_cache_addressing_style", _choice("auto", "path", "virtual"), "the shared tier's addressing style"),
    Option("shared_cache_profile", _text, "AWS profile for the shared tier (default: the environment's credentials)"),
    Option("shared_cache_credentials_file", _text, "AWS-style credentials file (INI, mode 0600) for the shared tier"),
    Option("shared_cache_deadline", _positive_duration, "seconds a shared-tier read may take before the block "
           "is fetched from the origin instead"),
    Option("shared_cache_queue", _size_min(0), "bytes of blocks waiting for their shared copy; beyond it a block "
           "is not written (0: the tier is read, never written)"),
    Option("shared_cache_writers", _count(1, 64), "shared-tier PUTs in flight per mount"),
    Option("shared_cache_claim_wait", _duration, "seconds a node waits for the block another node claimed "
           "(is fetching from the origin for all) before fetching it itself (0: no claims)"),
)
OPTION_BY_NAME = {o.name: o for o in OPTIONS}
ENV_PREFIX = "CACHEFS_"
DEFAULT_MEM_TIER = 256 * MiB   # small: most of a node's RAM belongs to the training job


def _default_uid() -> int:
    return os.getuid()


def _default_gid() -> int:
    return os.getgid()


@dataclass
class Config:
    source: str = ""          # s3://bucket[/prefix], or mem://bucket[/prefix] (in-memory store)
    mountpoint: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    profile: str | None = None
    credentials_file: str | None = None
    cache_dir: str | None = None
    cache: tuple[TierSpec, ...] = ()      # empty: DEFAULT_MEM_TIER + a disk tier in cache_dir
    cache_size: int = 10 * GiB
    # Cyclic epochs over a dataset larger than the cache are the training workload (CACHING.md).
    eviction_policy: str = "scan-resistant"
    promotion: int = 0                    # 0 = never: no moving blocks between tiers on every read
    stale_after: float = 3600.0
    # A file per small block cost the kernel more than anything else per image of a cold epoch
    # (cache/packs.py); appended to a pack it is part of one pwritev.
    pack_small_blocks: bool = True
    # 4 MiB: large enough that one GET per block amortises S3's ~10-50 ms first-byte latency,
    # small enough that a random 110 KB sample does not drag in much extra.
    block_size: int = 4 * MiB
    # Sized for ~128 MB TFRecord shards: the window starts at one block and doubles per sequential
    # block up to 64 MiB (16 blocks of 4 MiB: half a shard), so a shard reader soon has many GETs in
    # flight while a random reader gets none. Rounded down to whole blocks (read_ahead_blocks).
    read_ahead: int = 64 * MiB
    # Whole-file prefetch on open (reader.py): a file no larger than this has all its blocks asked
    # for at open, within the max_fetches budget. 16 MiB = 4 blocks: an image, a label file or a
    # small shard is read whole by its one reader anyway, so this costs no extra bytes for them,
    # while a random reader of a larger file is never made to fetch more than 16 MiB it may not read.
    prefetch_small_files: int = 16 * MiB
    # The backend's parallel throughput flattens out around 8-16 concurrent 4 MiB GETs (RGW here).
    max_fetches: int = 16
    # Order-aware prefetch (reader/order.py). 0: WINDOW_FRACTION (half) of the cache's room, the share
    # that keeps what is fetched ahead clear of eviction (docs/CACHING.md "Order-aware prefetch").
    prefetch_window: int = 0
    # Small files: an endpoint's GET rate keeps rising well past 16 in flight (issue 18: 238 GETs/s
    # at 16 through 20 ms, far more at 64), and a 110 KB GET holds one recycled buffer only briefly.
    prefetch_concurrency: int = 64
    # Measured 1.3-2.2x faster warm sequential reads with both raised (kernel.py); root only.
    kernel_read_ahead: int = 4 * MiB
    max_background: int = 64
    # Training data is read-mostly and changes between jobs, not during them: one hour of kernel
    # metadata caching removes the lookup round-trips that dominated the field reports.
    entry_timeout: float = 3600.0
    attr_timeout: float = 3600.0
    listing_ttl: float = 600.0
    negative_ttl: float = 30.0
    uid: int = field(default_factory=_default_uid)
    gid: int = field(default_factory=_default_gid)
    file_mode: int | None = None          # None: 0644 writable, 0444 with --read-only
    dir_mode: int | None = None           # None: 0755 writable, 0555 with --read-only
    allow_other: bool = False
    single_owner: bool = False
    # A LIST carries no x-amz-meta-*. s3fs stores a symbolic link as an object whose body is the
    # target, so links are tiny: HEADing listed objects up to 1 KiB once each (per version) finds
    # every link to a target shorter than that before the kernel sees the name, while a directory
    # of ordinary data files (images, shards: far above 1 KiB) costs no HEAD at all, nor does one
    # of more than 64 tiny files (namespace.SMALL_HEADS_MAX). Measured cost in docs/SEMANTICS.md.
    metadata_head_size: int = 1 * KiB
    metadata_head_all: bool = False
    # libfuse's default of 10 idle threads caused thread churn with many loader workers.
    max_idle_threads: int = 16
    hedging: bool = True
    # Only on read-only mounts (fs.py start_fast_path says why); measured in BENCHMARKS.md (issue 18).
    fast_path: bool = True
    # Below ~50 ms a duplicate mostly doubles load on a healthy endpoint (a LAN RGW answers a 4 MiB
    # GET in 15-40 ms); stragglers worth hedging take hundreds of milliseconds.
    hedge_min_delay: float = 0.05
    # Measured: ~0.1-0.3 ms of CPU per 110 KB GET against 0.7 (the former fast GET) and 2.0 through boto3
    # (BENCHMARKS.md, "S3 engine"). boto3 stays for writes and the control plane either way.
    s3_engine: str = "curl"
    s3_fast_get: bool = True      # deprecated alias: false means s3_engine = "boto3"
    s3_max_attempts: int = 4
    s3_connect_timeout: float = 5.0
    s3_read_timeout: float = 30.0
    mount_timeout: float = 60.0
    foreground: bool = False
    log_level: str = "info"
    log_file: str | None = None
    log_target: str = "file"
    metrics_addr: str | None = None       # None: the default address, where a taken port only warns
    read_only: bool = False
    staging_dir: str | None = None        # None: <fastest disk tier's first directory>/staging
    staging_size: int = 10 * GiB
    # Logs and metrics files stay far below 32 MiB; checkpoints are hundreds of MiB and more.
    small_file_threshold: int = 32 * MiB
    # Seconds: a log line written now is in S3 a few seconds later, while the job runs.
    small_sync_interval: float = 5.0
    # Minutes: a checkpoint is uploaded once, on close, not every time a part of it is written.
    large_sync_interval: float = 300.0
    # 16 MiB parts x 8 in flight = 128 MiB of upload buffers at most; S3 allows 10,000 parts, so
    # larger files get proportionally larger parts (writeback.part_size).
    multipart_part_size: int = 16 * MiB
    upload_concurrency: int = 8
    # A checkpoint is in S3 soon after its close instead of one whole upload later; each part still
    # goes up once. Off: the upload starts at close and the writer has the CPU to itself meanwhile.
    eager_upload: bool = True
    fsync_upload: bool = False
    # Kubernetes gives a pod 30 s to stop; what is not uploaded by then waits in staging for the
    # next mount of the same cache directory.
    exit_upload_timeout: float = 25.0
    # A reader blocked on S3 sits in uninterruptible sleep: 60 s is two read timeouts' worth of a stalled
    # endpoint, then EIO; once three reads in a row have failed, later ones fail at once (docs/RELIABILITY.md).
    s3_read_deadline: float = 60.0
    manifest: str | None = None
    # A week: a dataset is rebuilt between training runs, not during one, and a manifest made for
    # it should not quietly outlive it by more. The listings it fills are trusted until then.
    manifest_max_age: float = 7 * 86400.0
    shared_cache: str | None = None       # s3://BUCKET[/PREFIX]: the shared tier (cache/shared.py)
    shared_cache_endpoint_url: str | None = None
    shared_cache_region: str | None = None
    shared_cache_addressing_style: str = "auto"
    shared_cache_profile: str | None = None
    shared_cache_credentials_file: str | None = None
    # A block GET from a store near the nodes takes 10-50 ms: 1 s is far past it, and a miss that
    # falls back to the origin costs a reader at most that much more.
    shared_cache_deadline: float = 1.0
    # 16 blocks of 4 MiB waiting for their shared copy at most; a full queue skips blocks, never waits.
    shared_cache_queue: int = 64 * MiB
    shared_cache_writers: int = 4
    # Nodes missing a block at once fetch it from the origin once: the others wait this long for it.
    shared_cache_claim_wait: float = 2.0
    ignored_env: tuple[str, ...] = ()     # CACHEFS_* variables that name no option (not an option)

    # -- derived -----------------------------------------------------------------------
    @property
    def read_ahead_blocks(self) -> int:
        """--read-ahead in whole blocks (the unit the reader fetches)."""
        return self.read_ahead // self.block_size

    @property
    def scheme(self) -> str:
        """'s3', or 'mem' for the in-memory store (store/memory.py)."""
        return _split_source(self.source)[0]

    @property
    def bucket(self) -> str:
        return _split_source(self.source)[1]

    @property
    def prefix(self) -> str:
        """The key prefix under the bucket, '' or ending in '/'."""
        return _split_source(self.source)[2]

    def identity(self) -> str:
        """What a cache directory belongs to: metadata is only valid for the same bucket view."""
        where = "mem" if self.scheme == "mem" else self.endpoint_url or "aws"
        return f"{where}|{self.bucket}|{self.prefix}"


@functools.lru_cache(maxsize=16)      # bucket and prefix are asked for on every open
def _split_source(source: str) -> tuple[str, str, str]:
    """(scheme, bucket, prefix) of s3://BUCKET[/PREFIX] or mem://BUCKET[/PREFIX]. A mem:// bucket is
    the in-memory store: empty at start, gone when the daemon exits (tests, benchmarks)."""
    scheme, sep, rest = source.partition("://")
    if not sep or scheme not in ("s3", "mem"):
        raise ConfigError(f"source {source!r} must look like s3://BUCKET[/PREFIX]")
    bucket, _, prefix = rest.partition("/")
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9._-]{1,254}", bucket):
        raise ConfigError(f"invalid bucket name {bucket!r} in {source!r}")
    prefix = prefix.strip("/")
    if "//" in prefix:
        raise ConfigError(f"prefix in {source!r} has an empty path segment")
    return scheme, bucket, (prefix + "/" if prefix else "")


def _shared_url(text: Any) -> str:
    """s3://BUCKET[/PREFIX], the shared tier's place."""
    url = _text(text)
    try:
        scheme, _, _ = _split_source(url)
    except ConfigError as e:
        raise ValueError(str(e).replace("source", "URL")) from None
    if scheme != "s3":
        raise ValueError(f"must look like s3://BUCKET[/PREFIX], got {url!r}")
    return url


def shared_cache_place(cfg: Config) -> tuple[str, str]:
    """(bucket, prefix) of --shared-cache; the prefix is '' or ends in '/'."""
    assert cfg.shared_cache, "only with --shared-cache"
    _, bucket, prefix = _split_source(cfg.shared_cache)
    return bucket, prefix


def default_cache_dir(cfg: Config) -> str:
    base = "/var/cache/cachefs" if os.getuid() == 0 else os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cachefs")
    return os.path.join(base, xxhash.xxh64_hexdigest(cfg.identity().encode()))


def _apply(values: dict[str, Any], target: dict[str, Any], source: str, to_key: Callable[[str], str]) -> None:
    for name, raw in values.items():
        opt = OPTION_BY_NAME.get(name)
        if opt is None:
            raise ConfigError(f"{source or 'command line'}: unknown option {to_key(name)!r}")
        try:
            target[name] = opt.parse(raw)
        except ValueError as e:
            where = f"{source}: " if source else ""
            raise ConfigError(f"{where}{to_key(name)}: {e}") from None


def load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    return data


def env_values(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The CACHEFS_* variables that name options, and the names of those that do not.

    Unknown ones are ignored (and logged by the daemon), not refused: Kubernetes injects
    CACHEFS_SERVICE_HOST, CACHEFS_PORT ... into every pod of a namespace with a Service named
    "cachefs", and those must not stop a mount.
    """
    out, ignored = {}, []
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG":
            name = key[len(ENV_PREFIX):].lower()
            if name in OPTION_BY_NAME:
                out[name] = value
            else:
                ignored.append(key)
    return out, sorted(ignored)


def build_config(source: str, mountpoint: str, flags: dict[str, Any],
                 config_file: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Merge the layers and validate. `flags` holds only options given on the command line."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    config_file = config_file or env.get(ENV_PREFIX + "CONFIG")
    if config_file:
        _apply(load_toml(config_file), merged, f"config file {config_file}", lambda n: n)
    from_env, ignored_env = env_values(env)
    _apply(from_env, merged, "environment", lambda n: ENV_PREFIX + n.upper())
    _apply(flags, merged, "", lambda n: "--" + n.replace("_", "-"))
    cfg = Config(source=source, mountpoint=mountpoint, **merged)
    cfg.ignored_env = tuple(ignored_env)
    _split_source(cfg.source)  # validates the URL
    if cfg.cache and "cache_size" in merged:
        raise ConfigError("--cache-size sizes the default disk tier; with --cache give each tier its size")
    if cfg.cache_size < 4 * cfg.block_size:
        raise ConfigError(f"--cache-size ({format_size(cfg.cache_size)}) must hold at least 4 blocks "
                          f"of --block-size ({format_size(cfg.block_size)})")
    if cfg.cache_dir is None:
        cfg.cache_dir = default_cache_dir(cfg)
    cfg.cache_dir = os.path.abspath(cfg.cache_dir)
    if cfg.log_file is None:
        cfg.log_file = os.path.join(cfg.cache_dir, "cachefs.log")
    if cfg.file_mode is None:
        cfg.file_mode = 0o444 if cfg.read_only else 0o644
    if cfg.dir_mode is None:
        cfg.dir_mode = 0o555 if cfg.read_only else 0o755
    if not cfg.cache:
        cfg.cache = (TierSpec("mem", (), DEFAULT_MEM_TIER), TierSpec("ssd", (cfg.cache_dir,), cfg.cache_size))
    for tier in cfg.cache:
        if tier.quota < 4 * cfg.block_size:
            raise ConfigError(f"--cache {tier.kind}: size {format_size(tier.quota)} must hold at least 4 blocks "
                              f"of --block-size ({format_size(cfg.block_size)})")
    return cfg


def as_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
