"""The ceiling of a Python FUSE data path on this machine: a read-only pyfuse3 filesystem that serves
a directory tree's bytes from memory (loaded once at start), with no object store and no cache logic.
It uses what a fast FUSE layer should: long entry/attr timeouts and keep_cache (the page cache).

`python -m bench.memfs SOURCE_DIR MOUNTPOINT [--workers N]` (foreground; SIGTERM or umount ends it).
"""
from __future__ import annotations

import argparse
import errno
import os
import stat

import pyfuse3
import trio

TIMEOUT_S = 3600.0  # the tree never changes while mounted


class MemoryFS(pyfuse3.Operations):
    def __init__(self, source: str):
        super().__init__()
        self.data: dict[int, bytes] = {}
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {}
        self.children: dict[int, dict[bytes, int]] = {}
        self._load(source)

    def _new_inode(self, mode: int, size: int) -> int:
        inode = pyfuse3.ROOT_INODE + len(self.attrs)  # ROOT_INODE is 1: inodes 1, 2, 3, ...
        a = pyfuse3.EntryAttributes()
        a.st_ino, a.st_mode, a.st_size, a.st_nlink = inode, mode, size, 1
        a.st_blksize, a.st_blocks = 1 << 20, (size + 511) // 512
        a.entry_timeout = a.attr_timeout = TIMEOUT_S
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = 0
        self.attrs[inode] = a
        return inode

    def _load(self, source: str) -> None:
        inode_of = {source: self._new_inode(stat.S_IFDIR | 0o555, 0)}
        for dirpath, dirnames, filenames in os.walk(source):
            parent = inode_of[dirpath]
            entries = self.children.setdefault(parent, {})
            for d in sorted(dirnames):
                inode_of[os.path.join(dirpath, d)] = entries[d.encode()] = self._new_inode(stat.S_IFDIR | 0o555, 0)
                self.children[entries[d.encode()]] = {}
            for f in sorted(filenames):
                with open(os.path.join(dirpath, f), "rb") as fh:
                    data = fh.read()
                inode = entries[f.encode()] = self._new_inode(stat.S_IFREG | 0o444, len(data))
                self.data[inode] = data

    async def getattr(self, inode, ctx=None):
        return self.attrs[inode]

    async def lookup(self, parent_inode, name, ctx=None):
        try:
            return self.attrs[self.children[parent_inode][name]]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    async def opendir(self, inode, ctx):
        if inode not in self.children:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        names = sorted(self.children[fh])
        for i in range(start_id, len(names)):
            if not pyfuse3.readdir_reply(token, names[i], self.attrs[self.children[fh][names[i]]], i + 1):
                break

    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh, off, size):
        return memoryview(self.data[fh])[off:off + size]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source")
    p.add_argument("mountpoint")
    p.add_argument("--workers", type=int, default=16, help="pyfuse3 max_tasks (concurrent requests)")
    a = p.parse_args()
    fs = MemoryFS(a.source)
    pyfuse3.init(fs, a.mountpoint, {"fsname=bench-memfs", "ro", "default_permissions", "allow_other"})
    try:
        trio.run(pyfuse3.main, 1, a.workers)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
