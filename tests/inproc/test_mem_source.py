"""mem://BUCKET[/PREFIX] as a source URL, and the daemon's store factory."""
from __future__ import annotations

import os

import pytest

from cachefs import mounts
from cachefs.config import build_config
from cachefs.daemon.core import Daemon
from cachefs.daemon.stores import from_config
from cachefs.errors import ConfigError, UserError
from cachefs.stats import Stats
from cachefs.store.memory import MemoryStore


def test_a_mem_source_names_bucket_prefix_and_its_own_cache_identity():
    mem = build_config("mem://bkt/some/prefix", "/mnt", {}, None, {})
    s3 = build_config("s3://bkt/some/prefix", "/mnt", {}, None, {})
    assert (mem.scheme, mem.bucket, mem.prefix) == ("mem", "bkt", "some/prefix/")
    assert (s3.scheme, s3.bucket, s3.prefix) == ("s3", "bkt", "some/prefix/")
    assert mem.identity() != s3.identity() and mem.cache_dir != s3.cache_dir


@pytest.mark.parametrize("source", ["mem://", "mem://b", "mem:/bkt", "gs://bkt", "mem://bkt/a//b"])
def test_bad_mem_and_unknown_sources_are_refused(source):
    with pytest.raises(ConfigError):
        build_config(source, "/mnt", {}, None, {})


def test_from_config_builds_an_empty_memory_store_for_mem():
    cfg = build_config("mem://bkt", "/mnt", {}, None, {})
    stats = Stats()
    store = from_config(cfg, stats)
    assert isinstance(store, MemoryStore) and store.bucket == "bkt" and store.stats is stats
    store.check_bucket(cfg.prefix)
    assert store.list_page("").objects == []


def test_the_daemon_builds_its_store_with_the_factory_it_is_given(tmp_path, monkeypatch):
    monkeypatch.setattr(mounts, "lock_mountpoint", lambda path: None)
    monkeypatch.setattr(mounts, "check_mountpoint", lambda path: None)
    cfg = build_config("s3://bkt", str(tmp_path / "mnt"), {"cache_dir": str(tmp_path / "cache")}, None, {})
    asked = []

    def factory(cfg_, stats):
        asked.append((cfg_, stats))
        raise UserError("no store in this test")

    daemon = Daemon(cfg, store_factory=factory)
    try:
        with pytest.raises(UserError, match="no store in this test"):
            daemon.start()
    finally:
        os.close(daemon.lock_fd)
    assert asked == [(cfg, daemon.stats)]
    assert Daemon(cfg).store_factory is from_config
