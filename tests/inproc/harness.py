"""The in-process tier: `CachefsOperations` called directly, over a `mem://` store, with the real
namespace, reader, writeback, cache and LMDB metadata below it in a tmp dir (as S3QL's t3_fs_api and
mountpoint-s3's tests/fs.rs drive their filesystems). No kernel, no mount, no S3 server.

pyfuse3's request objects are faked only where pyfuse3 cannot make them: RequestContext and
SetattrFields have read-only attributes, and readdir_reply needs the kernel's buffer. EntryAttributes,
FileInfo and FUSEError are pyfuse3's own.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from cachefs.cache.tiered import TieredCache
from cachefs.config import Config, build_config
from cachefs.daemon.core import staging_dir
from cachefs.daemon.stores import from_config
from cachefs.fs import CachefsOperations
from cachefs.meta.store import MetaStore
from cachefs.namespace.core import Namespace
from cachefs.reader import BlockReader
from cachefs.stats import Stats
from cachefs.store.memory import MemoryStore
from cachefs.writeback import Writeback

ROOT = pyfuse3.ROOT_INODE
BLOCK = 64 * 1024        # small blocks: a few hundred KiB already spans several
# Upload nothing on its own during a test (sync() uploads): what S3 holds is then decided by the test.
_NEVER_S = 3600.0
_SYNC_TIMEOUT_S = 10.0


@dataclass
class Ctx:
    """pyfuse3.RequestContext (its attributes cannot be set from Python)."""
    uid: int = os.getuid()
    gid: int = os.getgid()
    pid: int = os.getpid()
    umask: int = 0o022


@dataclass
class Fields:
    """pyfuse3.SetattrFields (read-only attributes too): which attributes a setattr changes."""
    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False


class DirBuffer(list):
    """What readdir fills: (name, attributes, next offset), with room for `room` entries."""

    def __init__(self, room: int = 1 << 30) -> None:
        super().__init__()
        self.room = room


def _readdir_reply(token: DirBuffer, name: bytes, attrs: pyfuse3.EntryAttributes, next_id: int) -> bool:
    if len(token) >= token.room:
        return False
    token.append((name, attrs, next_id))
    return True


async def _run_blocking(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)


def fuse_errno(exc: BaseException) -> int:
    assert isinstance(exc, pyfuse3.FUSEError), f"expected a FUSEError, got {exc!r}"
    return exc.errno


class FsHarness:
    """One "mount": its Config, layers and CachefsOperations (`ops`). Methods named after system calls
    drive `ops` as the kernel would and return plain values; `errno_of` gives the errno a call fails with."""

    def __init__(self, tmp_path: Path, source: str = "mem://bkt/data", store: MemoryStore | None = None,
                 **options: Any) -> None:
        self.tmp = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        flags = {"cache_dir": str(tmp_path / "cache"), "block_size": BLOCK, "cache_size": 16 << 20,
                 "small_sync_interval": _NEVER_S, "large_sync_interval": _NEVER_S,
                 "eager_upload": False, **options}
        self.cfg: Config = build_config(source, str(tmp_path / "mnt"), flags, None, environ={})
        self.stats = Stats()
        self.store: MemoryStore = store if store is not None else from_config(self.cfg, self.stats)
        os.makedirs(self.cfg.cache_dir, mode=0o700, exist_ok=True)
        self.meta = MetaStore(os.path.join(self.cfg.cache_dir, "meta"), self.cfg.identity())
        self.cache = TieredCache.build(self.cfg.cache, self.meta, self.stats, max_block=self.cfg.block_size)
        self.cache.open()
        self.cache.load()
        self.ns = Namespace(self.meta, self.store, self.cfg, _run_blocking)
        self.reader = BlockReader(self.store, self.cache, _run_blocking, self.stats, bucket=self.cfg.bucket,
                                  block_size=self.cfg.block_size, read_ahead=self.cfg.read_ahead,
                                  prefetch_small_files=self.cfg.prefetch_small_files,
                                  max_fetches=self.cfg.max_fetches)
        self.wb = Writeback(self.meta, self.store, _run_blocking, self.stats, prefix=self.cfg.prefix,
                            staging_dir=staging_dir(self.cfg), staging_size=self.cfg.staging_size,
                            small_file_threshold=self.cfg.small_file_threshold,
                            small_sync_interval=self.cfg.small_sync_interval,
                            large_sync_interval=self.cfg.large_sync_interval,
                            part_size=self.cfg.multipart_part_size, upload_concurrency=self.cfg.upload_concurrency,
                            eager=self.cfg.eager_upload)
        self.wb.open()
        self.ns.local_names = lambda ino: self.wb.local_names(self.ns.get(ino))
        self.ns.is_local = self.wb.is_local
        self.ops = CachefsOperations(self.ns, self.reader, self.cfg, self.stats, self.wb)
        self._saved_reply = pyfuse3.readdir_reply
        pyfuse3.readdir_reply = _readdir_reply
        self._others: list[FsHarness] = []

    def other_mount(self, **options: Any) -> FsHarness:
        """Another mount of the same bucket (its own cache directory), as another node would have."""
        other = FsHarness(self.tmp / f"other{len(self._others)}", self.cfg.source, self.store, **options)
        self._others.append(other)
        return other

    def close(self) -> None:
        for other in reversed(self._others):
            other.close()
        pyfuse3.readdir_reply = self._saved_reply
        self.cache.close()
        self.wb.close()
        self.meta.close()

    async def serve(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run `body` with the mount's background work (uploads, read-ahead) going, as Daemon.serve does."""
        failed: Exception | None = None
        async with trio.open_nursery() as nursery:
            self.reader.nursery = nursery
            nursery.start_soon(self.wb.run)
            try:
                await body()
            except Exception as e:       # raised below, not wrapped in the nursery's ExceptionGroup
                failed = e
            nursery.cancel_scope.cancel()
        if failed is not None:
            raise failed

    # -- the kernel's side ------------------------------------------------------------------
    @staticmethod
    def ctx(**kw: int) -> Ctx:
        return Ctx(**kw)

    @staticmethod
    def fields(*names: str) -> Fields:
        """fields("mode", "size"): a SetattrFields with update_mode and update_size set."""
        known = {f.name for f in dataclass_fields(Fields)}
        wanted = {f"update_{n}" for n in names}
        assert wanted <= known, wanted - known
        return Fields(**{n: True for n in wanted})

    async def errno_of(self, call: Awaitable[Any]) -> int:
        """The errno `call` fails with (the test fails if it succeeds)."""
        try:
            result = await call
        except pyfuse3.FUSEError as e:
            return e.errno
        raise AssertionError(f"expected an error, got {result!r}")

    async def walk(self, path: str) -> int:
        """The inode of `path` ("" or "/" is the root), looked up name by name as the kernel does."""
        ino = ROOT
        for part in [p for p in path.split("/") if p]:
            attrs = await self.ops.lookup(ino, part.encode(), self.ctx())
            if attrs.st_ino == 0:
                raise pyfuse3.FUSEError(errno.ENOENT)
            ino = attrs.st_ino
        return ino

    async def split(self, path: str) -> tuple[int, bytes]:
        parent, _, name = path.rstrip("/").rpartition("/")
        return await self.walk(parent), name.encode()

    async def stat(self, path: str) -> pyfuse3.EntryAttributes:
        return await self.ops.getattr(await self.walk(path), self.ctx())

    async def exists(self, path: str) -> bool:
        parent, name = await self.split(path)
        return (await self.ops.lookup(parent, name, self.ctx())).st_ino != 0

    async def listdir(self, path: str = "") -> list[str]:
        return [name.decode() for name, _, _ in await self.readdir(path)]

    async def readdir(self, path: str = "", start: int = 0, room: int = 1 << 30) -> DirBuffer:
        fh = await self.ops.opendir(await self.walk(path), self.ctx())
        try:
            out = DirBuffer(room)
            await self.ops.readdir(fh, start, out)
            return out
        finally:
            await self.ops.releasedir(fh)

    async def write_file(self, path: str, data: bytes, mode: int = 0o644, ctx: Ctx | None = None) -> int:
        """create(2) + write + close; returns the inode."""
        parent, name = await self.split(path)
        info, attrs = await self.ops.create(parent, name, stat.S_IFREG | mode, os.O_WRONLY | os.O_CREAT,
                                            ctx or self.ctx())
        try:
            if data:
                assert await self.ops.write(info.fh, 0, data) == len(data)
        finally:
            await self.ops.release(info.fh)
        return attrs.st_ino

    async def open(self, path: str, flags: int = os.O_RDONLY) -> pyfuse3.FileInfo:
        return await self.ops.open(await self.walk(path), flags, self.ctx())

    async def read_file(self, path: str) -> bytes:
        info = await self.open(path)
        try:
            return await self.read_all(info.fh)
        finally:
            await self.ops.release(info.fh)

    async def read_all(self, fh: int, chunk: int = 128 * 1024) -> bytes:
        out, off = bytearray(), 0
        while True:
            data = bytes(await self.ops.read(fh, off, chunk))
            out += data
            off += len(data)
            if len(data) < chunk:
                return bytes(out)

    async def mkdir(self, path: str, mode: int = 0o755, ctx: Ctx | None = None) -> pyfuse3.EntryAttributes:
        parent, name = await self.split(path)
        return await self.ops.mkdir(parent, name, stat.S_IFDIR | mode, ctx or self.ctx())

    async def setattr(self, path: str, *changed: str, ctx: Ctx | None = None, **values: int) -> pyfuse3.EntryAttributes:
        """setattr(path, "mode", st_mode=0o100600): the attributes named change to `values`."""
        attr = pyfuse3.EntryAttributes()
        for name, value in values.items():
            setattr(attr, name, value)
        return await self.ops.setattr(await self.walk(path), attr, self.fields(*changed), None, ctx or self.ctx())

    async def rename(self, old: str, new: str, flags: int = 0) -> None:
        (op, on), (np_, nn) = await self.split(old), await self.split(new)
        await self.ops.rename(op, on, np_, nn, flags, self.ctx())

    async def sync(self) -> None:
        """Upload everything pending now (what the schedule would do later)."""
        left = await self.wb.flush_all(_SYNC_TIMEOUT_S)
        assert not left, f"not uploaded: {left}"

    # -- S3's side --------------------------------------------------------------------------
    def key(self, path: str) -> str:
        return self.cfg.prefix + path

    def s3_keys(self) -> list[str]:
        """Every key in the bucket, the prefix included (so a test sees what lands outside it too)."""
        return self.store.keys()

    def s3_body(self, path: str) -> bytes | None:
        return self.store.body(self.key(path))

    def s3_meta(self, path: str) -> dict[str, str]:
        info = self.store.head(self.key(path))
        assert info is not None, f"no object {self.key(path)}"
        return dict(info.meta or {})

    def put(self, path: str, data: bytes, **meta: str) -> None:
        """An object put by another S3 client."""
        self.store.put(self.key(path), data, meta or None)



class ErrorLog(logging.Handler):
    """Records of level ERROR and above: the in-process equivalent of the daemon log check."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
