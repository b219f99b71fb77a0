"""The filesystems under test. Each one mounts the benchmark bucket (or its local copy) at its own
mountpoint under the run's scratch directory, with a fresh, empty cache on every mount(), and says
which processes are its daemon (for CPU seconds and peak RSS).

  local        the same files on local disk (no FUSE): the reference
  memfs        bench/memfs.py, the same bytes from memory through pyfuse3: the Python FUSE ceiling
  cmemfs       bench/cmemfs.c, the same through libfuse3 in C: the C FUSE ceiling (bench.floor)
  cachefs      python -m cachefs mount
  s3fs         s3fs-fuse without a local cache; s3fs-cache with use_cache
  rclone       rclone mount --vfs-cache-mode full with a large read-ahead
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from bench import util
from bench.endpoint import Endpoint

MOUNT_TIMEOUT_S = 60  # a mount that takes longer than this is broken, not slow
UMOUNT_TIMEOUT_S = 60
KEEP_FREE_BYTES = 32 << 30  # old caches are kept aside (System._empty_cache) while this much disk stays free
DAEMON_EXIT_TIMEOUT_S = 30  # flushing and closing a cache takes a moment; longer means stuck
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class System:
    name = "?"
    fuse = True
    read_only = True  # the read benchmarks mount read-only; bench/writes.py subclasses with False

    def __init__(self, scratch: str, endpoint: Endpoint | None, bucket: str, local_root: str):
        self.endpoint, self.bucket, self.local_root = endpoint, bucket, local_root
        self.base = os.path.join(scratch, "systems", self.name)
        self.mountpoint = os.path.join(self.base, "mnt")
        self.cache_dir = os.path.join(self.base, "cache")
        self.log_path = os.path.join(self.base, "daemon.log")
        self.mounted = False
        os.makedirs(self.mountpoint, exist_ok=True)

    @property
    def root(self) -> str:
        return self.mountpoint

    # ---- lifecycle
    def mount(self) -> None:
        """Mount with an empty cache. Idempotent callers use remount()."""
        self._empty_cache()
        self._mount()
        util.wait_until(lambda: os.path.ismount(self.mountpoint), self.mount_timeout_s(), f"{self.name} to mount")
        self.mounted = True

    def _empty_cache(self) -> None:
        """The last mount's cache is moved aside into the scratch directory, not deleted, while the
        disk has room: on a journal-less ext4 (this VM's root), every file created within a minute
        of many deletions scans past each inode freed (fs/ext4/ialloc.c `recently_deleted`), so a
        cold epoch mounted right after deleting 12,000 cache files paid up to twice the CPU per
        file: the run before it, not the system under test (docs/BENCHMARKS.md)."""
        trash = os.path.join(self.base, "old-caches")
        if os.path.isdir(self.cache_dir):
            if shutil.disk_usage(self.base).free > KEEP_FREE_BYTES:
                os.makedirs(trash, exist_ok=True)
                os.rename(self.cache_dir, os.path.join(trash, str(len(os.listdir(trash)))))
            else:
                shutil.rmtree(trash, ignore_errors=True)
                shutil.rmtree(self.cache_dir, ignore_errors=True)
        os.makedirs(self.cache_dir)

    def remount(self) -> None:
        self.umount()
        self.mount()

    def umount(self) -> None:
        if not self.mounted and not os.path.ismount(self.mountpoint):
            return
        pids = self.pids()
        if os.path.ismount(self.mountpoint):
            res = util.run(["umount", self.mountpoint], timeout=UMOUNT_TIMEOUT_S, check=False)
            if res.returncode != 0:  # busy or hung: detach it so the run can go on, and say so
                print(f"[{self.name}] umount failed ({res.stderr.strip()}); lazy unmount", file=sys.stderr)
                util.run(["umount", "-l", self.mountpoint], timeout=UMOUNT_TIMEOUT_S, check=False)
        util.wait_for_exit(pids, DAEMON_EXIT_TIMEOUT_S, f"{self.name}'s daemon to exit")
        self.mounted = False

    def _mount(self) -> None:
        raise NotImplementedError

    def mount_timeout_s(self) -> float:
        return MOUNT_TIMEOUT_S

    tree = REPO          # the source tree the mount command runs from (cwd)

    def _spawn(self, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        with open(self.log_path, "ab") as logf:
            return subprocess.Popen(cmd, stdout=logf, stderr=logf, env=env, start_new_session=True, cwd=self.tree)

    def _daemonize(self, cmd: list[str], env: dict | None = None) -> None:
        """Run a mount command that backgrounds itself; it must exit 0 in time."""
        proc = self._spawn(cmd, env)
        try:
            rc = proc.wait(MOUNT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            util.kill_group(proc)
            raise util.StepTimeout(f"{self.name}: mount command did not return in {MOUNT_TIMEOUT_S} s") from None
        if rc != 0:
            raise RuntimeError(f"{self.name}: mount exited {rc}; last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    # ---- measurement
    def pids(self) -> list[int]:
        """The daemon's processes: found by the unique mountpoint in their command line."""
        return util.pids_with_arg(self.mountpoint)

    def counters(self) -> dict | None:
        """The daemon's own counters, if it exposes any."""
        return None

    def describe(self) -> str:
        return self.name


class LocalDisk(System):
    name, fuse = "local", False

    @property
    def root(self) -> str:
        return self.local_root

    def mount(self) -> None:
        self.mounted = True

    def umount(self) -> None:
        self.mounted = False

    def pids(self) -> list[int]:
        return []

    def describe(self) -> str:
        return "the same files on the local disk (page cache only)"


class MemoryFuse(System):
    name = "memfs"

    def _mount(self) -> None:
        self.proc = self._spawn([sys.executable, "-m", "bench.memfs", self.local_root, self.mountpoint])

    def mount_timeout_s(self) -> float:
        """memfs reads the whole dataset into RAM before it mounts: allow 50 MB/s, a loaded disk's pace."""
        total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(self.local_root) for f in files)
        return MOUNT_TIMEOUT_S + total / 50e6

    def pids(self) -> list[int]:
        proc = getattr(self, "proc", None)
        return [proc.pid] if proc and proc.poll() is None else []  # poll() also reaps it

    def umount(self) -> None:
        super().umount()
        if getattr(self, "proc", None):
            util.kill_group(self.proc)

    def describe(self) -> str:
        return "bench/memfs.py: pyfuse3 serving the bytes from RAM (Python FUSE ceiling)"


class CMemoryFuse(MemoryFuse):
    """bench/cmemfs.c: memfs's job in C on libfuse3's low-level API, one thread (the C FUSE ceiling)."""
    name = "cmemfs"

    def _mount(self) -> None:
        self.proc = self._spawn([build_cmemfs(self.base), self.local_root, self.mountpoint])

    def describe(self) -> str:
        return "bench/cmemfs.c: libfuse3 in C serving the bytes from RAM (C FUSE ceiling)"


def build_cmemfs(where: str) -> str:
    """bench/cmemfs.c compiled into `where` (once): needs cc and libfuse3-dev (make setup)."""
    out = os.path.join(where, "cmemfs")
    if not os.path.exists(out):
        flags = util.run(["pkg-config", "--cflags", "--libs", "fuse3"], timeout=30).stdout.split()
        util.run(["cc", "-O2", "-o", out, os.path.join(REPO, "bench", "cmemfs.c"), *flags], timeout=120)
    return out


class Cachefs(System):
    name = "cachefs"
    extra_args: tuple[str, ...] = ()     # options a variant adds to the defaults

    @classmethod
    def from_tree(cls, tree: str, name: str, *args) -> Cachefs:
        """cachefs as built in another checkout (its `python -m cachefs` runs there, with its own
        native build): for before/after comparisons in one run (bench/coldread.py --baseline)."""
        variant = type(f"Cachefs_{name}", (cls,), {"name": name, "tree": os.path.abspath(tree)})
        return variant(*args)

    def _mount(self) -> None:
        # a variant that names its own tiers (--cache) sizes them itself
        size = () if "--cache" in self.extra_args else ("--cache-size", "20GiB")
        self._daemonize([sys.executable, "-m", "cachefs", "mount", f"s3://{self.bucket}", self.mountpoint,
                         "--endpoint-url", self.endpoint.url, "--region", "us-east-1",
                         "--addressing-style", "path", "--cache-dir", self.cache_dir,
                         *size, "--log-file", self.log_path,
                         *(["--read-only"] if self.read_only else []), *self.extra_args],
                        self.endpoint.env())

    def umount(self) -> None:
        if os.path.ismount(self.mountpoint):
            pids = self.pids()
            util.run([sys.executable, "-m", "cachefs", "umount", self.mountpoint], timeout=UMOUNT_TIMEOUT_S,
                     check=False, cwd=self.tree)
            util.wait_for_exit(pids, DAEMON_EXIT_TIMEOUT_S, "cachefs's daemon to exit")
        super().umount()  # falls back to umount(8) if `cachefs umount` left it mounted

    def pids(self) -> list[int]:
        try:
            with open(os.path.join(self.cache_dir, "cachefs.pid")) as f:
                pid = int(f.read().split()[0])
            if util.alive(pid):
                return [pid]
        except (OSError, ValueError, IndexError):
            pass
        return super().pids()

    def counters(self) -> dict | None:
        from cachefs.errors import UserError
        try:
            return util.daemon_stats(self.mountpoint)
        except (UserError, OSError, ValueError):
            return None

    def describe(self) -> str:
        return "python -m cachefs mount (defaults, --cache-size 20GiB)"


class S3fs(System):
    name = "s3fs"
    use_cache = False

    def _mount(self) -> None:
        passwd = os.path.join(self.base, "passwd")  # credentials in a 0600 file, never in argv
        with open(os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(f"{self.endpoint.access_key}:{self.endpoint.secret_key}\n")
        opts = [f"url={self.endpoint.url}", "use_path_request_style", f"passwd_file={passwd}",
                *(["ro"] if self.read_only else []), "endpoint=us-east-1", "max_stat_cache_size=200000",
                f"logfile={self.log_path}"]
        if self.use_cache:
            opts.append(f"use_cache={self.cache_dir}")
        self._daemonize(["s3fs", self.bucket, self.mountpoint, "-o", ",".join(opts)], self.endpoint.env())

    def describe(self) -> str:
        return "s3fs-fuse " + ("with use_cache (local disk cache)" if self.use_cache else "without a local cache")


class S3fsCache(S3fs):
    name, use_cache = "s3fs-cache", True


class Rclone(System):
    name = "rclone"
    vfs_cache_mode = "full"

    def _mount(self) -> None:
        env = self.endpoint.env()
        env.update(RCLONE_CONFIG_BENCHS3_TYPE="s3", RCLONE_CONFIG_BENCHS3_PROVIDER="Ceph",
                   RCLONE_CONFIG_BENCHS3_ENV_AUTH="true", RCLONE_CONFIG_BENCHS3_ENDPOINT=self.endpoint.url,
                   RCLONE_CONFIG_BENCHS3_FORCE_PATH_STYLE="true", RCLONE_CONFIG_BENCHS3_REGION="us-east-1")
        self._daemonize(["rclone", "mount", f"benchs3:{self.bucket}", self.mountpoint, "--daemon",
                         *(["--read-only"] if self.read_only else []),
                         "--vfs-cache-mode", self.vfs_cache_mode, "--cache-dir", self.cache_dir,
                         "--vfs-cache-max-size", "20G", "--vfs-read-ahead", "512M", "--buffer-size", "64M",
                         "--dir-cache-time", "1h", "--attr-timeout", "1h", "--no-modtime",
                         "--log-file", self.log_path], env)

    def describe(self) -> str:
        return "rclone mount --vfs-cache-mode full --vfs-read-ahead 512M --buffer-size 64M"


ALL = {cls.name: cls for cls in (LocalDisk, MemoryFuse, Cachefs, S3fs, S3fsCache, Rclone)}
