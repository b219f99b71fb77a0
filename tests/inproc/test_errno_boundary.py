"""fs.py is the one errno boundary: every errno comes from the table in errors.py, through
`fuse_errors`; answers by rule are not logged, failures are, unexpected errors are EIO."""
from __future__ import annotations

import errno
import logging
import re
from pathlib import Path

import pyfuse3
import pytest
import trio

import cachefs
from cachefs import errors
from cachefs.errors import FsError, ObjectChanged, ObjectNotFound, StoreUnavailable, errno_for
from cachefs.fs import fuse_errors

SRC = Path(cachefs.__file__).parent


@pytest.mark.parametrize("exc, code", [
    (errors.ReadOnly(), errno.EROFS), (errors.IsADirectory(), errno.EISDIR),
    (errors.NameTooLong(), errno.ENAMETOOLONG), (errors.NotOpenForWriting(), errno.EBADF),
    (errors.NotPermitted(), errno.EPERM), (errors.NotALink(), errno.EINVAL),
    (errors.NoSuchAttribute(), pyfuse3.ENOATTR), (errors.NotNeeded(), errno.ENOSYS),
    (errors.FileTooLarge(), errno.EFBIG), (errors.NotDurable(), errno.EIO),
    (FsError(errno.ENOTEMPTY), errno.ENOTEMPTY), (ObjectNotFound(), errno.ENOENT),
    (ObjectChanged(), errno.ESTALE), (StoreUnavailable(), errno.EIO),
    (OSError(errno.ENOSPC, "full"), errno.ENOSPC), (KeyError("surprise"), errno.EIO),
])
def test_the_table(exc, code):
    assert errno_for(exc) == code


def test_only_the_boundary_chooses_errnos():
    """No errno constant in fs.py, pyfuse3.FUSEError made only by `_failed` and for the one answer
    given outside `fuse_errors` (flush), and nowhere else in cachefs."""
    fs_src = (SRC / "fs.py").read_text()
    assert not re.search(r"\berrno\.E[A-Z]+", fs_src)
    assert len(re.findall(r"pyfuse3\.FUSEError\(", fs_src)) == 2
    others = [p for p in SRC.rglob("*.py") if p.name != "fs.py" and "FUSEError(" in p.read_text()]
    assert others == []


def _call(exc: BaseException) -> tuple[int, list[logging.LogRecord]]:
    @fuse_errors(op="probe")
    async def probe():
        raise exc

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("cachefs.fs")
    logger.addHandler(handler)
    try:
        with pytest.raises(pyfuse3.FUSEError) as caught:
            trio.run(probe)
    finally:
        logger.removeHandler(handler)
    return caught.value.errno, records


def test_an_answer_by_rule_is_not_logged():
    code, records = _call(errors.ReadOnly())
    assert code == errno.EROFS and records == []


def test_a_failure_below_is_a_warning():
    code, records = _call(FsError(errno.ENOTEMPTY))
    assert code == errno.ENOTEMPTY and [r.levelno for r in records] == [logging.WARNING]


def test_an_unexpected_error_is_logged_with_its_traceback_and_eio():
    code, records = _call(KeyError("surprise"))
    assert code == errno.EIO and [r.levelno for r in records] == [logging.ERROR] and records[0].exc_info


def test_the_first_error_of_a_group_decides():
    code, records = _call(ExceptionGroup("reads", [ObjectNotFound("gone"), StoreUnavailable("down")]))
    assert code == errno.ENOENT and [r.levelno for r in records] == [logging.WARNING]
