"""A daemon mounted with a mem:// source serves an in-memory bucket: empty at start, writable, gone
with the daemon. No S3 server involved (the mount tier all the same: a real FUSE mount)."""
from __future__ import annotations

import os

import pytest
from mount_fixtures import Mounter, allowed_errors, finish
from mount_helpers import Mount, mount_args


@pytest.fixture
def mem_mounter(request, tmp_path):
    m = Mounter(tmp_path, "")
    yield m
    finish(m, allowed_errors(request.node))


def mount_mem(m: Mounter, source: str) -> Mount:
    mnt, cache = m.fresh_dir("mnt"), m.fresh_dir("cache")
    return m._run(Mount(source, mnt, cache, mount_args(source, mnt, cache, ""), m.env()))


def test_a_mem_source_mounts_an_empty_bucket_that_holds_what_is_written(mem_mounter):
    m = mount_mem(mem_mounter, "mem://scratch/run1")
    assert os.listdir(m.path) == []
    (m.path / "d").mkdir()
    (m.path / "d" / "f.txt").write_bytes(b"in memory")
    assert os.listdir(m.path) == ["d"]
    assert (m.path / "d" / "f.txt").read_bytes() == b"in memory"
    mem_mounter.umount(m)
