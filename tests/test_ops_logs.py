"""Daemon logging: one line per record, secrets masked, syslog (journald's /dev/log) in the background."""
from __future__ import annotations

import logging
import socket

import pytest

from cachefs.daemon import logsetup
from cachefs.errors import UserError


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_file_lines_are_single_and_masked(tmp_path):
    logsetup.add_secret("sup3r-s3cret-value-xyz")
    path = tmp_path / "d.log"
    logsetup.setup("info", background=True, target="file", log_file=str(path))
    log = logging.getLogger("cachefs.test")
    log.info("config aws_secret_access_key=abc123 and %s", "sup3r-s3cret-value-xyz")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed to do it")
    log.debug("not shown at info")
    lines = path.read_text().splitlines()
    assert len(lines) == 2, lines
    assert "abc123" not in lines[0] and "sup3r-s3cret" not in lines[0] and lines[0].count("***") == 2
    assert "ERROR" in lines[1] and "ValueError: boom" in lines[1] and "Traceback" in lines[1]


def test_syslog_target(tmp_path, monkeypatch):
    sock_path = str(tmp_path / "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(5)
    monkeypatch.setattr(logsetup, "SYSLOG_SOCKET", sock_path)
    logsetup.setup("warning", background=True, target="syslog")
    logging.getLogger("cachefs.test").warning("tier ssd: directory %s down", "/nvme")
    msg = server.recv(4096).decode()
    server.close()
    assert msg.startswith("<28>")        # facility daemon (3) * 8 + warning (4)
    assert "cachefs[" in msg and "WARNING cachefs.test: tier ssd: directory /nvme down" in msg


def test_syslog_without_dev_log_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(logsetup, "SYSLOG_SOCKET", str(tmp_path / "absent"))
    with pytest.raises(UserError, match="--log-target syslog: cannot connect"):
        logsetup.setup("info", background=True, target="syslog")
