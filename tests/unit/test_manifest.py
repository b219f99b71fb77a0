"""The manifest format (round trip, damage, versions, size), the tree a manifest makes, its load into
LMDB in one transaction, its checks against a mount, and the parallel listing that builds one."""
from __future__ import annotations

import hashlib
import random
import struct
import time

import pytest

from cachefs.config import build_config
from cachefs.errors import ConfigError
from cachefs.manifest import format as mf
from cachefs.manifest.build import MANIFEST_NAME, build, diff
from cachefs.manifest.load import check, split_url, tree
from cachefs.meta.bulk import forget_manifest, load_tree
from cachefs.meta.schema import KIND_DIR, KIND_FILE, ROOT_INO
from cachefs.meta.store import Entry, MetaStore
from cachefs.store.memory import MemoryStore


def entries(n: int, seed: int = 1) -> list[mf.ManifestEntry]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        key = f"train/n{i % 100:08d}/n{i % 100:08d}_{i:07d}.JPEG"
        out.append(mf.ManifestEntry(key, rnd.randint(20_000, 200_000),
                                    f'"{hashlib.md5(key.encode()).hexdigest()}"',
                                    1_700_000_000_000_000_000 + rnd.randint(0, 10**15)))
    return out


def sample() -> mf.Manifest:
    rows = [mf.ManifestEntry("b/ü näme.bin", 5, '"e-2"', -1), mf.ManifestEntry("a", 0, "", 0),
            mf.ManifestEntry("dir/", 0, '"d"', 7), mf.ManifestEntry("z" * 1000, 2**40, '"x"', 2**62)]
    return mf.Manifest.from_entries("bkt", "pre/", rows, created=1_800_000_000.5)


def test_round_trip_keeps_every_field_and_sorts_by_key():
    m = sample()
    back = mf.loads(mf.dumps(m))
    assert (back.bucket, back.prefix, back.created) == ("bkt", "pre/", 1_800_000_000.5)
    assert back.entries() == sorted(m.entries()) == m.entries()
    assert back.created_utc == "2027-01-15T08:00:00Z" and back.source == "s3://bkt/pre/"
    empty = mf.loads(mf.dumps(mf.Manifest.from_entries("bkt", "", [])))
    assert len(empty) == 0


@pytest.mark.parametrize("where", [20, 60, -100, -3])
def test_a_flipped_byte_anywhere_fails_the_checksum(where):
    data = bytearray(mf.dumps(mf.Manifest.from_entries("bkt", "", entries(500))))
    data[where] ^= 0x40
    with pytest.raises(mf.ManifestError, match="checksum|malformed"):
        mf.loads(bytes(data), "m")


@pytest.mark.parametrize("keep", [0, 5, 30, 200, -1])
def test_truncation_is_refused(keep):
    data = mf.dumps(mf.Manifest.from_entries("bkt", "", entries(500)))
    with pytest.raises(mf.ManifestError, match="truncated|no manifest header"):
        mf.loads(data[:keep] if keep >= 0 else data[:keep], "m")


def test_another_version_or_another_file_is_refused_by_name():
    data = mf.dumps(sample())
    newer = data[:8] + struct.pack("<I", mf.FORMAT_VERSION + 1) + data[12:]
    with pytest.raises(mf.ManifestError, match=r"m\.bin .*format version 2, this cachefs reads version 1"):
        mf.loads(newer, "m.bin")
    with pytest.raises(mf.ManifestError, match="no manifest header"):
        mf.loads(b"PK\x03\x04 a zip file", "m.bin")


def test_a_well_checksummed_body_that_lies_about_its_columns_is_malformed():
    m = sample()
    m.sizes = m.sizes[:-1]                       # one size short: columns disagree with the count
    with pytest.raises(mf.ManifestError, match="malformed"):
        mf.loads(mf.dumps(m))


def test_100k_entries_fit_in_a_few_megabytes_and_load_fast():
    rows = entries(100_000)
    data = mf.dumps(mf.Manifest.from_entries("bkt", "imagenet/", rows))
    assert len(data) < 5_000_000, len(data)         # 50 MB for a million keys, with room
    started = time.monotonic()
    back = mf.loads(data)
    assert time.monotonic() - started < 2.0
    assert back.entries() == sorted(rows)


def test_write_file_is_atomic_and_errors_are_one_line(tmp_path):
    path = tmp_path / "m"
    assert mf.write_file(sample(), str(path)) == path.stat().st_size
    assert mf.read_file(str(path)).entries() == sample().entries()
    assert list(tmp_path.iterdir()) == [path]
    with pytest.raises(mf.UserError, match="cannot write manifest"):
        mf.write_file(sample(), str(tmp_path / "no" / "m"))
    with pytest.raises(mf.ManifestError, match="No such file"):
        mf.read_file(str(tmp_path / "none"))


def test_tree_maps_keys_as_the_namespace_does():
    rows = [mf.ManifestEntry(k, 1, '"e"', 0) for k in
            ("a/b/c.txt", "a/b", "marker/", "x/./bad", "top.txt", "f/g", "f", "bad//name")]
    dirs = tree(mf.Manifest.from_entries("bkt", "", rows))
    # as a LIST shows them: "x/" and "bad/" are directories, their invalid names below are not shown
    assert set(dirs) == {"", "a", "a/b", "marker", "f", "bad", "x"}
    assert {n: r[1] for n, r in dirs[""].items()} == {b"a": KIND_DIR, b"marker": KIND_DIR, b"top.txt": KIND_FILE,
                                                      b"f": KIND_DIR, b"bad": KIND_DIR, b"x": KIND_DIR}
    assert dirs["a"][b"b"][1] == KIND_DIR          # a name both a file and a directory is a directory
    assert dirs["a/b"][b"c.txt"] == ("c.txt", KIND_FILE, 1, 0, '"e"')
    assert dirs["marker"] == {} and dirs["bad"] == {} and dirs["x"] == {}


def test_load_tree_in_one_transaction_keeps_numbers_and_pending_files(tmp_path):
    meta = MetaStore(str(tmp_path / "meta"), "ep|bkt|")
    try:
        root = meta.get_inode(ROOT_INO)
        old = {n: i for n, i in meta.replace_listing(root, [Entry("a", KIND_DIR), Entry("gone", KIND_FILE),
                                                            Entry("staged", KIND_FILE)], 10.0)}
        rows = [mf.ManifestEntry(k, 3, '"e"', 5) for k in ("a/1", "a/2", "b/c/d")]
        expiry = time.time() + 60
        written = load_tree(meta, tree(mf.Manifest.from_entries("bkt", "", rows)), expiry, keep={"staged"})
        assert written == 6                         # a, a/1, a/2, b, b/c, b/c/d
        assert meta.lookup(ROOT_INO, b"a").ino == old[b"a"].ino
        assert meta.lookup(ROOT_INO, b"gone") is None and meta.lookup(ROOT_INO, b"staged") is not None
        c = meta.lookup(meta.lookup(ROOT_INO, b"b").ino, b"c")
        d = meta.lookup(c.ino, b"d")
        assert (d.path, d.size, d.etag, d.mtime_ns, d.parent) == ("b/c/d", 3, '"e"', 5, c.ino)
        for ino in (ROOT_INO, c.ino):
            assert meta.listing_expiry(ino) == meta.manifest_expiry(ino) == expiry
        assert meta.subdirs(ROOT_INO) == 2
        fresh = meta.put_entry(root, Entry("later", KIND_FILE))      # numbers go on after the load's
        assert fresh.ino > d.ino
        again = load_tree(meta, tree(mf.Manifest.from_entries("bkt", "", rows)), expiry)
        assert again == 6 and meta.lookup(c.ino, b"d").ino == d.ino
        meta.replace_listing(c, [Entry("d", KIND_FILE)], expiry)       # a real LIST: no manifest's any more
        assert meta.manifest_expiry(c.ino) == 0.0
        assert forget_manifest(meta) == 3 and meta.listing_expiry(ROOT_INO) == 0.0   # a mount without it
        assert meta.listing_expiry(c.ino) == expiry                                     # listed for real
    finally:
        meta.close()


def test_check_refuses_other_datasets_and_old_manifests():
    m = mf.Manifest.from_entries("bkt", "pre/", [], created=1000.0)
    assert check(m, "m", "bkt", "pre/", 100.0, now=1050.0) == 1100.0
    with pytest.raises(mf.ManifestError, match="too old"):
        check(m, "m", "bkt", "pre/", 100.0, now=1100.0)
    with pytest.raises(mf.ManifestError, match="lists s3://bkt/pre/, not this mount's s3://bkt/other/"):
        check(m, "m", "bkt", "other/", 100.0, now=1050.0)
    assert split_url("s3://b/p/") == ("b", "p/" + MANIFEST_NAME) and split_url("s3://b/k.m") == ("b", "k.m")


def test_manifest_options_parse_durations():
    cfg = build_config("s3://bkt/p", "/mnt", {"manifest": "s3://bkt/p/", "manifest_max_age": "12h"}, environ={})
    assert cfg.manifest == "s3://bkt/p/" and cfg.manifest_max_age == 43200
    assert build_config("s3://bkt", "/mnt", {}, environ={}).manifest_max_age == 7 * 86400
    for bad in ("0", "7w", "-1d"):
        with pytest.raises(ConfigError, match="manifest-max-age"):
            build_config("s3://bkt", "/mnt", {"manifest_max_age": bad}, environ={})


def test_build_lists_every_prefix_in_parallel_and_diff_finds_changes():
    store = MemoryStore("bkt")
    keys = [f"ds/{a}/{b}/{i}.bin" for a in range(5) for b in range(7) for i in range(3)] + ["ds/top", "ds/m/"]
    for k in keys + ["ds/" + MANIFEST_NAME, "other/x", "ds"]:
        store.put_object(k, b"x" * len(k))
    seen = []
    m = build(store, "bkt", "ds/", workers=3, progress=seen.append)
    assert m.keys == sorted(k[3:] for k in keys) and sum(seen) >= len(keys)
    store.put_object("ds/new", b"n")
    store.delete("ds/top")
    store.put_object("ds/0/0/0.bin", b"changed")
    changes = diff(m, build(store, "bkt", "ds/").entries())
    assert [e.key for e in changes.added] == ["new"] and [e.key for e in changes.removed] == ["top"]
    assert [(a.key, a.size, b.size) for a, b in changes.changed] == [("0/0/0.bin", 12, 7)]
    assert not diff(m, m.entries())


def test_build_draws_a_progress_bar_on_a_terminal(monkeypatch):
    import argparse
    import io

    from cachefs.cli import manifest as cli

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    store = MemoryStore("bkt")
    for i in range(30):
        store.put_object(f"ds/{i % 3}/{i}", b"x")
    cfg = build_config("s3://bkt/ds", "", {}, environ={})
    monkeypatch.setattr(cli, "_store", lambda args, source: (cfg, store))
    monkeypatch.setattr(cli.sys, "stderr", terminal := Terminal())
    _, _, m = cli._list(argparse.Namespace(jobs=2), "s3://bkt/ds")
    assert len(m) == 30 and "keys" in terminal.getvalue()
