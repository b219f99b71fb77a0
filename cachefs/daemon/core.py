"""The mount daemon: checks everything, assembles the layers, mounts, serves until unmounted.

Start-up order matters for "no state destroyed on an unclear error": every check that can fail
(cache directory, its lock, mount point, credentials, bucket, metadata store) runs before
pyfuse3.init, so a failed start leaves neither a mount nor a half-written cache behind.
"""
from __future__ import annotations

import dataclasses
import fcntl
import functools
import gc
import logging
import os
import signal
import sys
import time

import pyfuse3
import trio

from cachefs import __version__, metrics, mounts, native, supervise
from cachefs.cache import TieredCache
from cachefs.cache.direct import ALIGN
from cachefs.config import Config
from cachefs.daemon import kernel, logsetup
from cachefs.daemon.control import ControlServer
from cachefs.daemon.stores import StoreFactory, from_config, shared_from_config
from cachefs.errors import UserError
from cachefs.fastpath import FastPath
from cachefs.fs import CachefsOperations
from cachefs.meta.bulk import forget_manifest
from cachefs.meta.store import MetaStore
from cachefs.namespace.core import Namespace
from cachefs.reader import BlockReader
from cachefs.stats import Stats
from cachefs.writeback import Writeback

log = logging.getLogger(__name__)

INDEX_FLUSH_INTERVAL_S = 1.0   # how much of the block index a crash can lose (the scan adopts it back)


class ReadyPipe:
    """Tells the `cachefs mount` parent process whether start-up worked (one line)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def send(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (line.replace("\n", " ") + "\n").encode())
            os.close(self.fd)
        except OSError:
            pass
        self.fd = None


def prepare_cache_dir(path: str) -> None:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cache directory {path} is not usable: {e.strerror}") from None


def lock_cache_dir(path: str) -> int:
    """An exclusive lock for the daemon's lifetime: two daemons must never share a cache."""
    fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            with open(os.path.join(path, "cachefs.pid")) as f:
                holder = f" (pid {f.read().strip()})"
        except OSError:
            holder = ""
        os.close(fd)
        raise UserError(f"cache directory {path} is in use by another cachefs daemon{holder}") from None
    return fd


# Free block buffers kept for reuse beyond max_fetches: a sequential stream has up to max_fetches
# blocks in flight plus a few waiting for its reader (the rest go back to the OS). They are mapped
# and touched at start, so the first read after a mount pays no page faults either: the daemon's
# RSS starts (max_fetches + this) x block size higher (96 MiB at the defaults; docs/CACHING.md).
POOL_SPARE_BLOCKS = 8
MALLOC_MMAP_THRESHOLD = 1 << 20
MALLOC_TRIM_THRESHOLD = 32 << 20
GC_YOUNG_THRESHOLD = 20_000


def bound_malloc() -> None:
    """Fix glibc's mmap threshold at 1 MiB and its trim threshold at 32 MiB.

    Block buffers (MiBs) then come from mmap and go back to the OS when freed; glibc would otherwise
    raise the threshold after the first free of a large buffer and serve later blocks from the heap,
    where fragmentation keeps RSS above the memory tier's budget. A small file's buffer (an image,
    ~110 KB) comes from the heap: as an mmap of its own, or from a heap top trimmed after every
    free, each of its pages faulted on first touch, in the trio thread (~6% of it per cold image;
    docs/BENCHMARKS.md). At most 32 MiB of freed heap top stays mapped (docs/CACHING.md)."""
    try:
        import ctypes
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
    except (OSError, AttributeError):
        log.debug("mallopt not available; memory tier RSS may exceed its budget")


def tune_gc() -> None:
    """Everything made at start-up (imports, config, the mount's tables) is frozen out of the cyclic
    collector's sweeps, and a sweep of the youngest objects waits for 20,000 new ones instead of 700:
    a cold small-file epoch allocates a few hundred per file, nearly all freed by reference counts
    before any sweep, and the full sweeps walked every long-lived object (3% of the trio thread).
    No collection first: one took ~0.1 s between "mounted" and serving, and start-up leaves little
    garbage worth it."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


def cache_dir_of(cfg: Config) -> str:
    """--cache-dir: build_config resolves it (and the log file in it) for every Config a daemon gets."""
    assert cfg.cache_dir is not None and cfg.log_file is not None, "a Config not made by build_config"
    return cfg.cache_dir


def staging_dir(cfg: Config) -> str:
    """--staging-dir, else STAGING on the fastest disk tier (writes should land on the fastest disk)."""
    if cfg.staging_dir:
        return os.path.abspath(cfg.staging_dir)
    disks = [t for t in cfg.cache if t.kind != "mem"]
    return os.path.join(disks[0].dirs[0] if disks else cache_dir_of(cfg), "staging")


def setup_logging(cfg: Config, background: bool) -> None:
    logsetup.setup(cfg.log_level, background, cfg.log_target, cfg.log_file)


def redirect_stdio(log_file: str) -> None:
    """In the background, anything written to fd 1/2 (libfuse's own messages) goes to the log."""
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(devnull)


def fuse_options(cfg: Config) -> set[str]:
    opts = set(pyfuse3.default_options)
    opts |= {f"fsname={cfg.source}", "subtype=cachefs", "ro" if cfg.read_only else "rw", "noatime"}
    if cfg.allow_other:
        opts.add("allow_other")   # always with default_permissions (in pyfuse3's defaults)
    return opts


class Daemon:
    def __init__(self, cfg: Config, store_factory: StoreFactory = from_config) -> None:
        """`store_factory`: builds the object store (default: from the source URL, s3:// or mem://)."""
        self.cfg = cfg
        self.store_factory = store_factory
        self.stats = Stats()
        self.terminated_by_signal = False

    def start(self) -> None:
        """Everything up to and including the mount. Raises UserError on any bad input."""
        cfg = self.cfg
        if cfg.ignored_env:
            log.warning("ignoring environment variables that name no option: %s", ", ".join(cfg.ignored_env))
        prepare_cache_dir(cache_dir_of(cfg))
        self.lock_fd = lock_cache_dir(cache_dir_of(cfg))
        # A pid file under our lock was left by a daemon that did not stop cleanly (kill -9, OOM).
        unclean = os.path.exists(os.path.join(cache_dir_of(cfg), "cachefs.pid"))
        self.mountpoint_lock = mounts.lock_mountpoint(cfg.mountpoint)
        mounts.check_mountpoint(cfg.mountpoint)
        self.store = self.store_factory(cfg, self.stats)
        self.store.check_bucket(cfg.prefix)
        self.shared = shared_from_config(cfg, self.stats)     # checked in the background: best-effort
        breaker = metrics.under_wrappers(self.store, "breaker")
        if breaker is not None:     # read by the CSI node's volume health and the s3_down metric
            self.stats.add_gauges(lambda: {"s3_down": int(breaker.down)})
        self.meta = MetaStore(os.path.join(cache_dir_of(cfg), "meta"), cfg.identity(),
                              max_readers=2 * cfg.max_idle_threads + 64)
        if unclean:
            # It may have died between a change in S3 and its record here (a directory rename
            # half-way): list every directory anew, so this mount shows what a fresh one would.
            dropped = self.meta.expire_listings()
            log.info("the last daemon on %s did not stop cleanly: %d cached listing(s) will be "
                     "refreshed on first use", cfg.cache_dir, dropped)
        if cfg.manifest:
            self._load_manifest()
        elif dropped_manifest := forget_manifest(self.meta):
            log.info("mounted without --manifest: %d directory listing(s) a manifest made will be listed anew",
                     dropped_manifest)
        self.cache = TieredCache.build(cfg.cache, self.meta, self.stats, policy=cfg.eviction_policy,
                                       promote_after=cfg.promotion, stale_after=cfg.stale_after,
                                       max_block=cfg.block_size,
                                       pack_below=cfg.block_size if cfg.pack_small_blocks else 0)
        self.cache.open()
        self.cache.load()
        # Block-sized buffers (S3 bodies, block files read whole) reuse their memory (native.py); a
        # chunk also takes a block file whole (header + payload, rounded up for O_DIRECT reads).
        native.set_pool(cfg.block_size + ALIGN, cfg.max_fetches + POOL_SPARE_BLOCKS, fill=True)
        self.limiter = trio.CapacityLimiter(cfg.max_idle_threads)
        run_blocking = functools.partial(_run_in_thread, self.limiter)
        self.namespace = Namespace(self.meta, self.store, cfg, run_blocking)
        self.reader = BlockReader(self.store, self.cache, run_blocking, self.stats, bucket=cfg.bucket,
                                  block_size=cfg.block_size, read_ahead=cfg.read_ahead,
                                  prefetch_small_files=cfg.prefetch_small_files, max_fetches=cfg.max_fetches,
                                  prefetch_buffer_blocks=cfg.max_fetches + cfg.max_idle_threads,
                                  prefetch_window=cfg.prefetch_window,
                                  prefetch_concurrency=cfg.prefetch_concurrency)
        self.writeback = Writeback(self.meta, self.store, run_blocking, self.stats, prefix=cfg.prefix,
                                   staging_dir=staging_dir(cfg), staging_size=cfg.staging_size,
                                   small_file_threshold=cfg.small_file_threshold,
                                   small_sync_interval=cfg.small_sync_interval,
                                   large_sync_interval=cfg.large_sync_interval,
                                   part_size=cfg.multipart_part_size, upload_concurrency=cfg.upload_concurrency,
                                   eager=cfg.eager_upload,
                                   answer_grace=cfg.s3_connect_timeout + cfg.s3_read_timeout + 5.0)
        try:
            self.writeback.open()
        except OSError as e:
            raise UserError(f"staging directory {staging_dir(cfg)} is not usable: {e.strerror}") from None
        self.namespace.local_names = lambda ino: self.writeback.local_names(self.namespace.get(ino))
        self.namespace.is_local = self.writeback.is_local
        self.stats.add_gauges(self.writeback.summary)
        self.stats.add_gauges(lambda: {"cache_queued_bytes": self.cache.queued_bytes})
        self.stats.add_gauges(self.reader.orders.summary)
        if self.shared is not None:
            self.reader.shared = self.shared
            self.stats.add_gauges(self.shared.summary)
        self.ops = CachefsOperations(self.namespace, self.reader, cfg, self.stats, self.writeback)
        self._start_operations_interfaces()
        try:
            pyfuse3.init(self.ops, cfg.mountpoint, fuse_options(cfg))
        except RuntimeError as e:
            raise UserError(f"cannot mount {cfg.mountpoint}: {e}") from None
        if cfg.read_only and cfg.fast_path:
            fast = FastPath.start()
            if fast is not None:
                self.ops.start_fast_path(fast)
        self._write_pid()
        self.cache.start()
        log.info("cachefs %s mounted %s on %s (cache %s)", __version__, cfg.source, cfg.mountpoint, cfg.cache_dir)

    def _load_manifest(self) -> None:
        """--manifest into LMDB before anything is served (docs/MANIFESTS.md); a manifest in another
        bucket is read with the mount's endpoint and credentials."""
        from cachefs.manifest import load as manifest_load

        def store_for(bucket: str):
            if bucket == self.cfg.bucket:
                return self.store
            return self.store_factory(dataclasses.replace(self.cfg, source=f"s3://{bucket}", hedging=False),
                                      self.stats)
        manifest_load.load(self.meta, self.cfg, store_for)

    def _extra_stats(self) -> dict:
        disk = self.cache.disk_tiers
        return {"cache_bytes": sum(t.used for t in disk), "cache_capacity": sum(t.quota for t in disk),
                "mem_cache_bytes": sum(t.used for t in self.cache.mem_tiers),
                "cache_blocks": self.cache.block_count, "tiers": self.cache.tier_stats(),
                "block_pool": native.pool_stats(),
                "pending_paths": self.writeback.pending_paths()[:100],
                "control_socket": self.control.path, "metrics_url": self.exporter and self.exporter.url,
                "source": self.cfg.source, "shared_cache": self.cfg.shared_cache, "version": __version__}

    def stats_dict(self) -> dict:
        return {**self.stats.snapshot(), **self._extra_stats()}

    def _start_operations_interfaces(self) -> None:
        """Metrics exporter and control socket: bound before the mount, so a taken address fails start-up."""
        client = metrics.boto_client(self.store)
        metrics.instrument_boto_client(client)
        for c in (client, metrics.boto_client(self.shared.store) if self.shared is not None else None):
            if c is not None:         # credentials from a file or profile: never in a log line
                creds = c._request_signer._credentials
                frozen = creds.get_frozen_credentials() if creds is not None else None
                if frozen is not None:
                    logsetup.add_secret(frozen.secret_key)
                    logsetup.add_secret(frozen.token)
        self.control = ControlServer(self)
        self.control.bind()
        self.exporter = metrics.start_exporter(self.cfg, self.stats, self.cache, self.reader, __version__)

    def apply_settings(self, settings: dict) -> None:
        """Live changes from the control socket (only the settings control.RELOADABLE names)."""
        for name, value in settings.items():
            setattr(self.cfg, name, value)
        if "log_level" in settings:
            logsetup.set_level(settings["log_level"])
        if "read_ahead" in settings:
            self.reader.read_ahead = settings["read_ahead"]
        if "stale_after" in settings:
            self.cache.stale_after = settings["stale_after"]
        if self.ops.fast is not None and {"entry_timeout", "attr_timeout"} & set(settings):
            self.ops.fast.clear()        # its entries carry the timeouts they were handed with

    def _write_pid(self) -> None:
        with open(os.path.join(cache_dir_of(self.cfg), "cachefs.pid"), "w") as f:
            f.write(str(os.getpid()))
        mounts.register(self.cfg.mountpoint, {"pid": os.getpid(), "cache_dir": self.cfg.cache_dir,
                                              "source": self.cfg.source, "control": self.control.path})

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self.reader.nursery = nursery
            # Everything beside the FUSE requests is supervised: it can fail, never end the mount.
            nursery.start_soon(self._watch_signals)
            nursery.start_soon(supervise.supervised_forever, "index_flush", self._flush_index_periodically)
            nursery.start_soon(supervise.supervised_forever, "control", self.control.serve)
            nursery.start_soon(supervise.supervised, "kernel_tuning", self._tune_kernel)
            nursery.start_soon(self.writeback.run)      # supervises its own units
            if self.ops.fast is not None:
                nursery.start_soon(supervise.supervised_forever, "fast_path", self.ops.serve_fast_path)
            if self.shared is not None:
                nursery.start_soon(supervise.supervised_forever, "shared_cache", self.shared.run)
                nursery.start_soon(supervise.supervised, "shared_cache", self._check_shared)
            # min_tasks is how many idle workers pyfuse3 keeps: with 1, every burst of requests
            # started workers that exited right after, each allocating and freeing its request buffer
            # (253 mmap/munmap pairs per cold 256 MiB read, strace); all N stay once started.
            await pyfuse3.main(min_tasks=self.cfg.max_idle_threads, max_tasks=self.cfg.max_idle_threads)
            await self._finish_uploads()
            nursery.cancel_scope.cancel()

    async def _finish_uploads(self) -> None:
        """Unmounted: keep uploading for a while; what is left waits for the next mount."""
        if not self.writeback.pending_paths():
            return
        left = await self.writeback.flush_all(self.cfg.exit_upload_timeout)
        if left:
            log.warning("%d file(s) not yet uploaded stay staged for the next mount of %s: %s",
                        len(left), self.cfg.cache_dir, ", ".join(left[:10]))

    async def _check_shared(self) -> None:
        """The shared tier is best-effort: a bucket it cannot use is a warning, never a failed mount."""
        assert self.shared is not None
        try:
            await trio.to_thread.run_sync(self.shared.store.check_bucket, self.shared.prefix)
        except UserError as e:
            log.warning("shared cache %s: %s (blocks come from the origin while it fails)", self.cfg.shared_cache, e)

    async def _tune_kernel(self) -> None:
        try:
            await trio.to_thread.run_sync(kernel.tune, self.cfg.mountpoint, self.cfg.kernel_read_ahead // 1024,
                                          self.cfg.max_background)
        except OSError as e:
            log.warning("kernel tuning skipped: %s", e)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("received %s: unmounting", signal.Signals(signum).name)
                self.terminated_by_signal = True
                pyfuse3.terminate()
                return

    async def _flush_index_periodically(self) -> None:
        while True:
            await trio.sleep(INDEX_FLUSH_INTERVAL_S)
            await trio.to_thread.run_sync(self.cache.flush, limiter=self.limiter)

    def stop(self, unmount: bool) -> None:
        try:
            pyfuse3.close(unmount=unmount)
        finally:
            self.control.close()
            if self.exporter is not None:
                self.exporter.stop()
            self.cache.close()
            self.writeback.close()
            self.meta.close()
            self.store.close()
            if self.shared is not None:
                self.shared.store.close()
            mounts.unregister(self.cfg.mountpoint)
            try:
                os.unlink(os.path.join(cache_dir_of(self.cfg), "cachefs.pid"))
            except OSError:
                pass
            log.info("unmounted %s", self.cfg.mountpoint)


async def _run_in_thread(limiter: trio.CapacityLimiter, fn, *args):
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter)


def run(cfg: Config, ready_fd: int | None, store_factory: StoreFactory = from_config) -> int:
    """Run the daemon in this process until unmounted. `ready_fd`: report start-up to the parent;
    `store_factory`: the object store the layers run over (default: the source URL's)."""
    background = ready_fd is not None
    ready = ReadyPipe(ready_fd)
    try:
        if background:
            prepare_cache_dir(cache_dir_of(cfg))
            setup_logging(cfg, background=True)
            assert cfg.log_file is not None, "a Config not made by build_config"
            redirect_stdio(cfg.log_file)
        else:
            setup_logging(cfg, background=False)
        bound_malloc()
        daemon = Daemon(cfg, store_factory)
        daemon.start()
    except UserError as e:
        log.error("%s", e)
        ready.send(f"ERR {e}")
        if not background:
            print(f"cachefs: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        log.exception("start-up failed")
        ready.send(f"ERR start-up failed: {type(e).__name__}: {e} (see {cfg.log_file})")
        return 1
    if background:
        os.chdir("/")
    tune_gc()
    ready.send("OK")
    clean = False
    started = time.monotonic()
    try:
        trio.run(daemon.serve)
        clean = True
    except BaseException:
        log.exception("FUSE main loop failed")
        raise
    finally:
        # Unmount ourselves unless the kernel side already went away (umount / fusermount -u).
        daemon.stop(unmount=daemon.terminated_by_signal or not clean)
        log.info("served for %.1f s", time.monotonic() - started)
    return 0
