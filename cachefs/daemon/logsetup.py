"""Daemon logging: stderr in the foreground; a file or syslog (journald reads /dev/log) in the
background. Every record is one line (a traceback is folded into it), and known secrets are masked.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import re
import socket
import stat
import sys

from cachefs.errors import UserError

SYSLOG_SOCKET = "/dev/log"   # journald's syslog socket on systemd hosts, rsyslog's elsewhere
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SYSLOG_FORMAT = "cachefs[%(process)d]: %(levelname)s %(name)s: %(message)s"
# Values after these words never reach a log, whatever code logs them.
_SECRET_WORDS = re.compile(r"(?i)(aws_secret_access_key|aws_session_token|secret_access_key|"
                           r"x-amz-security-token|signature)(\s*[=:]\s*|=)([^\s,&'\"]+)")
MASK = "***"


class OneLineRedactingFormatter(logging.Formatter):
    def __init__(self, fmt: str, secrets: list[str]) -> None:
        super().__init__(fmt)
        self.secrets = secrets     # shared list: the daemon adds credential values once it has them

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        text = text.replace("\n", " | ")
        text = _SECRET_WORDS.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, MASK)
        return text


_secrets: list[str] = [os.environ.get(n, "") for n in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]


def add_secret(value: str | None) -> None:
    """A credential value the logs must never show (from a credentials file or profile)."""
    if value and len(value) >= 8 and value not in _secrets:
        _secrets.append(value)


def setup(level_name: str, background: bool, target: str = "file", log_file: str | None = None) -> None:
    level = getattr(logging, level_name.upper())
    if not background:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        fmt = FORMAT
    elif target == "syslog":
        _probe_syslog()    # SysLogHandler itself defers a connection error to the first record
        handler = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET,
                                                 facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        fmt = SYSLOG_FORMAT   # journald adds the time itself
    else:
        # 0600 wherever it is (--log-file may point outside the 0700 cache directory): a log names
        # the bucket's keys and the node's paths, which are not for every local user.
        assert log_file is not None, "logging to a file needs its path"
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        handler = logging.FileHandler(log_file)
        fmt = FORMAT
    handler.setFormatter(OneLineRedactingFormatter(fmt, _secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level_name)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    logging.getLogger("pyfuse3").addFilter(_gone_request_is_no_error)


def _gone_request_is_no_error(record: logging.LogRecord) -> bool:
    """pyfuse3 logs ERROR when the kernel no longer wants a reply (ENOENT: the request was
    interrupted, or the mount went away as the file was closed). Nothing failed: a WARNING."""
    if record.levelno >= logging.ERROR and "fuse_reply_* failed with" in str(record.msg) and \
            isinstance(record.args, tuple) and record.args and "No such file" in str(record.args[0]):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


def _probe_syslog() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(SYSLOG_SOCKET)
        except OSError as e:
            raise UserError(f"--log-target syslog: cannot connect to {SYSLOG_SOCKET}: {e.strerror or e}") from None


def set_level(level_name: str) -> None:
    logging.getLogger().setLevel(getattr(logging, level_name.upper()))
