"""The control channel of a running daemon: a Unix socket, one JSON request and one JSON answer per line.

Where: RUNTIME_DIR/<hash of the mount point>.sock (/run/cachefs for root), a short path (Unix socket
paths are limited to 108 bytes, cache directories can be long) in a 0700 directory; the socket itself
is 0600. Clients (ipc.control_request) find it from the mount alone: the directory from the
daemon's uid (the mount's `user_id=` option), the name from the mount point (ipc.find_socket).
Who: the peer's uid (SO_PEERCRED) must be root or the daemon's own user; anyone else gets an error.

Requests run on the daemon's trio thread, blocking parts in its worker threads, like FUSE requests.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket

import trio

from cachefs import ipc
from cachefs.blocks import block_count, block_key, block_range
from cachefs.config import OPTION_BY_NAME
from cachefs.daemon import order_op
from cachefs.errors import CachefsError, UserError
from cachefs.reader import ReadState

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20          # a warmup status request lists paths; 1 MiB is ~10k of them
ACCEPT_RETRY_S = 0.5
# Settings that only change timing or logging, never which bytes a reader gets: safe to change live.
RELOADABLE = ("log_level", "read_ahead", "stale_after", "listing_ttl", "negative_ttl",
              "entry_timeout", "attr_timeout")


class ControlError(Exception):
    """A request the daemon refuses; the message goes back to the client."""


class ControlServer:
    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.path = ipc.control_socket_path(daemon.cfg.mountpoint)
        self.sock: socket.socket | None = None

    def bind(self) -> None:
        """At start-up, before the mount. We hold the mount point lock, so a socket file left at
        this path is a dead daemon's."""
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        ipc.private_dir(os.path.dirname(self.path))
        try:
            self.sock = ipc.listen(self.path, 16)
        except OSError as e:
            raise UserError(f"cannot create the control socket {self.path}: {e.strerror or e}") from None

    async def serve(self) -> None:
        assert self.sock is not None, "bind() comes first"
        listener = trio.socket.from_stdlib_socket(self.sock)
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as e:     # out of file descriptors: wait, never end the mount
                    log.warning("control socket: accept failed: %s", e)
                    await trio.sleep(ACCEPT_RETRY_S)
                    continue
                nursery.start_soon(self._connection, conn)

    async def _connection(self, conn) -> None:
        with conn:
            try:
                # Read before refusing: the client gets the answer, not EPIPE.
                lines = ipc.LineReader(conn)
                line = await lines.line(MAX_REQUEST)
                uid = ipc.peer_uid(conn)
                if uid not in (0, os.getuid()):
                    log.warning("control request from uid %d refused (only root and uid %d)", uid, os.getuid())
                    raise ControlError("permission denied: only root or the mount's owner may control it")
                request = json.loads(line)
                if request.get("op") == "order":     # streamed: paths follow the request line
                    answer = {"ok": True, **await order_op.receive(self.daemon, request, lines)}
                else:
                    answer = {"ok": True, **await self.dispatch(request)}
            except ControlError as e:
                answer = {"ok": False, "error": str(e)}
            except ipc.LineTooLong:
                answer = {"ok": False, "error": f"request larger than {MAX_REQUEST} bytes"}
            except (ValueError, KeyError, TypeError) as e:
                answer = {"ok": False, "error": f"bad request: {e}"}
            except OSError:
                return          # the client went away
            except Exception as e:   # a bug here must never take the mount down with it
                log.exception("control request failed")
                answer = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
            try:
                await ipc.send_async(conn, answer)
            except OSError:
                pass

    async def dispatch(self, request: dict) -> dict:
        op = request.get("op")
        handler = getattr(self, "op_" + str(op).replace("-", "_"), None)
        if handler is None:
            raise ControlError(f"unknown operation {op!r}")
        return await handler(request)

    # -- operations ----------------------------------------------------------------------------------
    async def op_stats(self, request: dict) -> dict:
        return {"stats": self.daemon.stats_dict()}

    async def op_flush(self, request: dict) -> dict:
        """Make the cache state durable now: the block index, and every pending upload (waiting up
        to `wait` seconds; what is still pending is listed)."""
        await trio.to_thread.run_sync(self.daemon.cache.flush, limiter=self.daemon.limiter)
        timeout = float(request.get("wait", 3600.0))
        pending = await self.daemon.writeback.flush_all(timeout)
        return {"flushed": ["block-index", "uploads"], "pending": pending}

    async def op_cached(self, request: dict) -> dict:
        """For each path (a file under the mount): its size and how many of its bytes are cached.
        What `cachefs warmup` asks to skip files already loaded and to size what is left."""
        out: dict[str, dict[str, int] | None] = {}
        for path in request["paths"]:
            inode = await self._resolve(path)
            if inode is None or inode.is_dir:
                out[path] = None
                continue
            cached = sum(size for size, present in self._blocks(inode) if present)
            out[path] = {"size": inode.size, "cached": cached}
        return {"files": out, "capacity": self._admit_room()}

    async def op_warmup(self, request: dict) -> dict:
        """Load files into the cache in the daemon itself: through the same read path as FUSE reads
        (single-flight, read-ahead, admission), without the page cache or FUSE round trips. With
        `shared_only`, into the shared tier instead (_fill_shared)."""
        jobs = trio.CapacityLimiter(max(1, int(request.get("jobs", 4))))
        counts = {"files": 0, "bytes": 0, "written_bytes": 0}
        missing: list[str] = []
        failed: list[str] = []
        shared_only = bool(request.get("shared_only"))
        if shared_only and self.daemon.shared is None:
            raise ControlError("this mount has no shared cache tier (--shared-cache)")

        async def load(path: str, inode) -> None:
            async with jobs:
                state, key, bs = ReadState(), self.daemon.namespace.key_of(inode), self.daemon.cfg.block_size
                try:
                    if shared_only:
                        await self._fill_shared(inode, key, counts)
                    else:
                        for offset in range(0, inode.size, bs):
                            counts["bytes"] += len(await self.daemon.reader.read(inode, key, offset, bs, state))
                    counts["files"] += 1
                except CachefsError as e:
                    failed.append(f"{path}: {e}")

        async with trio.open_nursery() as nursery:
            for path in request["paths"]:
                inode = await self._resolve(path)
                if inode is None or inode.is_dir:
                    missing.append(path)
                else:
                    nursery.start_soon(load, path, inode)
        return {**counts, "missing": missing, "failed": failed}

    async def _fill_shared(self, inode, key: str, counts: dict) -> None:
        """warmup --shared-only: each block the shared tier lacks is fetched from the origin and
        written there now (not queued: warmup waits for it); the node's own tiers keep nothing, so
        that the node filling the tier for a cluster does not fill its own cache with the dataset."""
        cfg, shared, store = self.daemon.cfg, self.daemon.shared, self.daemon.store
        if not inode.etag:
            raise ControlError(f"{key}: no ETag known, so no shared block identity")
        for i in range(block_count(inode.size, cfg.block_size)):
            start, end = block_range(i, cfg.block_size, inode.size)
            block = shared.block_id(cfg.bucket, key, inode.etag, cfg.block_size, i)

            async def fetch(start=start, end=end):
                return await store.aget_range(key, start, end, inode.etag)
            if await shared.fill(block, end - start, fetch):
                counts["written_bytes"] += end - start
            counts["bytes"] += end - start

    async def op_drop(self, request: dict) -> dict:
        """Drop the cached blocks of a file, or of every file below a directory."""
        root = await self._resolve(request["path"])
        if root is None:
            raise ControlError(f"no such file or directory: {request['path']}")
        files, dropped, freed = 0, 0, 0
        pending = [root]
        while pending:
            inode = pending.pop()
            if inode.is_dir:
                pending += [child for _, child in await self.daemon.namespace.entries(inode.ino)]
                continue
            files += 1
            keys = [k for k, present in self._block_keys(inode) if present]
            keys += self.daemon.reader.cached_pieces(inode, self.daemon.namespace.key_of(inode), self.daemon.cfg.bucket)
            freed += await trio.to_thread.run_sync(self._remove_blocks, keys, limiter=self.daemon.limiter)
            dropped += len(keys)
            # Read-ahead results waiting for a reader would serve the dropped bytes again.
            self.daemon.reader.forget([k for k, _ in self._block_keys(inode)])
            # In a thread: the kernel may wait on pages that a FUSE read (on the trio thread) fills.
            await trio.to_thread.run_sync(self._forget_page_cache, inode.ino)
        log.info("control: dropped %d cached blocks (%d bytes) of %d files under %r",
                 dropped, freed, files, request["path"])
        return {"files": files, "blocks": dropped, "bytes": freed}

    async def op_reload(self, request: dict) -> dict:
        """Change safe settings live; anything else needs a remount and is refused by name."""
        settings = request.get("settings") or {}
        unsafe = sorted(set(settings) - set(RELOADABLE))
        if unsafe:
            raise ControlError(f"cannot change {', '.join(unsafe)} while mounted (remount); "
                               f"live: {', '.join(RELOADABLE)}")
        parsed = {}
        for name, raw in settings.items():
            try:
                parsed[name] = OPTION_BY_NAME[name].parse(raw)
            except ValueError as e:
                raise ControlError(f"{name}: {e}") from None
        self.daemon.apply_settings(parsed)
        log.info("control: reloaded %s", ", ".join(f"{k}={v}" for k, v in parsed.items()) or "nothing")
        return {"applied": {k: v for k, v in parsed.items()}}

    # -- helpers -------------------------------------------------------------------------------------
    async def _resolve(self, path: str):
        """The inode at a path relative to the mount root (lookups as FUSE would do them)."""
        ns = self.daemon.namespace
        inode = ns.get(1)
        for part in [p for p in path.split("/") if p not in ("", ".")]:
            if part == "..":
                raise ControlError("paths must not contain '..'")
            inode = await ns.lookup(inode.ino, part.encode())
            if inode is None:
                return None
        return inode

    def _block_keys(self, inode):
        cfg, cache = self.daemon.cfg, self.daemon.cache
        key = self.daemon.namespace.key_of(inode)
        for i in range(block_count(inode.size, cfg.block_size)):
            k = block_key(cfg.bucket, key, inode.etag, cfg.block_size, i)
            yield k, cache.contains(k)

    def _blocks(self, inode):
        bs = self.daemon.cfg.block_size
        for i, (_, present) in enumerate(self._block_keys(inode)):
            yield min(bs, inode.size - i * bs), present

    def _remove_blocks(self, keys: list[bytes]) -> int:
        freed = 0
        for tier in self.daemon.cache.tiers:
            for k in keys:
                if tier.contains(k):
                    before = tier.used
                    tier.remove(k)
                    freed += before - tier.used
        self.daemon.cache.flush()
        return freed

    def _forget_page_cache(self, ino: int) -> None:
        import pyfuse3
        try:
            pyfuse3.invalidate_inode(ino, attr_only=False)
        except OSError as e:
            if e.errno != errno.ENOENT:    # ENOENT: the kernel does not know the inode; nothing cached
                log.warning("control: cannot drop the page cache of inode %d: %s", ino, e)

    def _admit_room(self) -> dict:
        """Bytes the disk tiers can still take before they stop admitting (scan-resistant) or start
        evicting (lru): both begin at the high watermark."""
        tiers = self.daemon.cache.disk_tiers or self.daemon.cache.tiers
        return {"room": sum(max(0, t.high_bytes - t.used) for t in tiers),
                "quota": sum(t.quota for t in tiers), "policy": self.daemon.cache.policy}

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass
