"""Domain errors and the one table that maps them to errno.

Layers below fs.py raise these; only fs.py turns them into pyfuse3.FUSEError, through `errno_for`.
Start-up errors (config, bucket, mount point) are `UserError`s: the CLI prints their message as
one line and exits non-zero.
"""
from __future__ import annotations

import errno


class CachefsError(Exception):
    """Base of every error cachefs raises on purpose."""


class UserError(CachefsError):
    """Something the user can fix (bad option, unknown bucket, busy mount point ...)."""


class ConfigError(UserError):
    """An invalid option value, file or combination."""


class StoreError(CachefsError):
    """The object store failed; `transient` says whether a retry may help."""
    transient = False


class ObjectNotFound(StoreError):
    pass


class ObjectChanged(StoreError):
    """The object's ETag no longer matches what we opened (it was overwritten in S3)."""


class StoreUnavailable(StoreError):
    """Endpoint unreachable, timed out or answering 5xx after the client's retries."""
    transient = True


class AccessDenied(StoreError):
    pass


class FsError(CachefsError):
    """A POSIX answer to a namespace request (ENOTEMPTY, EEXIST, EISDIR ...), not a failure."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(code, str(code)))
        self.errno = code


class CacheCorrupt(CachefsError):
    """A cached block failed its checksum or header check (it is dropped and refetched)."""


_ERRNO = (
    (ObjectNotFound, errno.ENOENT),
    (ObjectChanged, errno.ESTALE),
    (AccessDenied, errno.EACCES),
    (StoreUnavailable, errno.EIO),
    (StoreError, errno.EIO),
    (OSError, errno.EIO),
)


# A local disk's answers that mean the same to the writer (the staging disk is full ...).
_LOCAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def errno_for(exc: BaseException) -> int:
    """The errno a reader sees for `exc` (EIO for anything not listed)."""
    if isinstance(exc, FsError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno in _LOCAL_ERRNOS:
        return exc.errno
    for cls, code in _ERRNO:
        if isinstance(exc, cls):
            return code
    return errno.EIO
