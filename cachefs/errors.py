"""Domain errors and the one table that maps them to errno.

Layers below fs.py raise these, and fs.py raises them for its own rules; only fs.py turns them into
pyfuse3.FUSEError, through `errno_for` (`FsError` carries its errno: the namespace's POSIX answers).
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


class FileTooLarge(CachefsError):
    """A write or truncate past S3's largest object (5 TiB), as for a filesystem's own limit."""


class NotDurable(CachefsError):
    """fsync with --fsync-upload: the file could not be brought to S3 in time."""


class Answer(CachefsError):
    """A POSIX answer fs.py gives by a rule of its own, expected in normal use: counted as a FUSE
    error, never logged (unlike the errors above, which are worth a warning)."""


class ReadOnly(Answer):
    """A change on a --read-only mount (or one without a write path)."""


class IsADirectory(Answer):
    """A file operation (open, truncate) on a directory."""


class NameTooLong(Answer):
    """A name longer than NAME_MAX (255 bytes)."""


class NotOpenForWriting(Answer):
    """A write through a handle opened read-only."""


class NotPermitted(Answer):
    """What S3 cannot hold (hard links, devices, FIFOs, sockets), or a chown to another owner on a
    --single-owner mount."""


class NotALink(Answer):
    """readlink of something that is not a symbolic link."""


class NoSuchAttribute(Answer):
    """An extended attribute cachefs does not keep."""


class NotNeeded(Answer):
    """A request the kernel may stop sending (flush): it has nothing to do here."""


# The one table: the first row whose class matches gives the errno (subclasses before bases).
_ERRNO = (
    (ReadOnly, errno.EROFS),
    (IsADirectory, errno.EISDIR),
    (NameTooLong, errno.ENAMETOOLONG),
    (NotOpenForWriting, errno.EBADF),
    (NotPermitted, errno.EPERM),
    (NotALink, errno.EINVAL),
    (NoSuchAttribute, errno.ENODATA),     # pyfuse3.ENOATTR on Linux
    (NotNeeded, errno.ENOSYS),
    (FileTooLarge, errno.EFBIG),
    (NotDurable, errno.EIO),
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
    """The errno a caller sees for `exc` (EIO for anything not listed: an unexpected error)."""
    if isinstance(exc, FsError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno in _LOCAL_ERRNOS:
        return exc.errno
    for cls, code in _ERRNO:
        if isinstance(exc, cls):
            return code
    return errno.EIO
