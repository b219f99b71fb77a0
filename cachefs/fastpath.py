"""The FUSE requests of a file whose bytes are in memory, answered in C (native/fastfuse.c).

On a read-only mount, once the order prefetch has a small file's one block in memory, fs.py hands
the file here (`add`): its name, its attributes and its bytes. From then on the kernel's LOOKUP,
GETATTR, OPEN, READ and RELEASE of it are answered inside libfuse's request processing, without
pyfuse3's loop or any Python; everything else, and every file not handed over, goes to Python as
before. The bytes are let go at the first release (read once), and at most `limit` bytes are held.

How the C gets between pyfuse3 and libfuse: `preload()` loads cachefs._fastfuse with its symbols
global before pyfuse3 is imported (cachefs/daemon/__init__.py calls it), so pyfuse3's calls of
fuse_session_new and fuse_session_process_buf bind to the module's. Without the extension, or if
pyfuse3 was imported first, `start()` returns None and nothing changes.

The C tells Python which inodes it opened (`opened()`, in order; `event_fd()` is readable while
there are some), so that the order's window moves on and the opens count as they would in Python.
"""
from __future__ import annotations

import logging
import os
import sys
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 256 << 20       # bytes of files held for the C at once: a window's worth, not the cache
MAX_ENTRIES = 1 << 20           # files it answers lookups of (~200 bytes each)

_module: ModuleType | None = None


def preload() -> None:
    """Load the extension with its symbols global, before pyfuse3 (once; quietly without it)."""
    global _module
    if _module is not None or "pyfuse3" in sys.modules or os.environ.get("CACHEFS_NO_FASTPATH"):
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_GLOBAL)
    try:
        from cachefs import _fastfuse
    except ImportError:
        return
    finally:
        sys.setdlopenflags(flags)
    _module = _fastfuse


class FastPath:
    """The C tables of one mount (there is one session a process)."""

    def __init__(self, module: Any) -> None:
        self._c = module

    @classmethod
    def start(cls, limit: int = DEFAULT_LIMIT) -> FastPath | None:
        """After pyfuse3.init: the fast path on, or None where it cannot be (why, logged once)."""
        if _module is None:
            log.info("fast path: off (cachefs._fastfuse not built, or loaded after pyfuse3)")
            return None
        if not _module.active():
            log.info("fast path: off (pyfuse3's session was not made through cachefs._fastfuse)")
            return None
        _module.enable(True, limit, MAX_ENTRIES)
        return cls(_module)

    def add(self, ino: int, parent: int, name: bytes, attrs: Any, valid_until: float, data: Any) -> bool:
        """Answer LOOKUP of (parent, name) until `valid_until` (time.time()), GETATTR with `attrs`
        (a pyfuse3.EntryAttributes), and OPEN/READ/RELEASE from `data` (None: Python's). True: the
        bytes are held."""
        a = attrs
        return bool(self._c.add(ino, parent, name, a.generation, a.st_mode, a.st_nlink, a.st_uid, a.st_gid,
                                a.st_size, a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns, a.entry_timeout,
                                a.attr_timeout, valid_until, data))

    def forget(self, ino: int, parent: int | None = None, name: bytes | None = None) -> None:
        """The inode (and the name, if given) changed: Python answers them from now on."""
        self._c.forget(ino)
        if parent is not None and name is not None:
            self._c.forget_name(parent, name)

    def drop_data(self, ino: int) -> None:
        """The file was opened through Python: its first read is done, the bytes are let go."""
        self._c.drop_data(ino)

    def open_size(self, ino: int) -> int | None:
        """The size of the version open here on `ino` (not stale), if any."""
        size: int | None = self._c.open_size(ino)
        return size

    def stale_other_sizes(self, ino: int, size: int) -> int:
        """Handles open here on `ino` with another size than `size` made stale (reads: ESTALE)."""
        n: int = self._c.stale_other_sizes(ino, size)
        return n

    def clear(self) -> None:
        self._c.clear()

    def opened(self) -> list[int]:
        return list(self._c.events())

    def event_fd(self) -> int:
        return int(self._c.event_fd())

    def counters(self) -> dict[str, int]:
        return dict(self._c.counters())
