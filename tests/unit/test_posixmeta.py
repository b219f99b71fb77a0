"""Object user metadata in s3fs's convention (posixmeta.py), and the LMDB records that keep it."""
from __future__ import annotations

import stat

import trio

from cachefs.config import build_config
from cachefs.meta.schema import KIND_DIR, KIND_FILE, ROOT_INO
from cachefs.meta.store import Entry, MetaStore
from cachefs.namespace.attrs import NO_META, ObjMeta, encode, format_time, parse, parse_time
from cachefs.namespace.core import SMALL_HEADS_MAX, Namespace
from cachefs.store.memory import MemoryStore


def test_reads_what_s3fs_writes():
    # Exactly what s3fs 1.90 put on a file after chmod 640, chown 1234:5678, touch -d, and a link.
    m = parse({"atime": "1500000000.123456789", "ctime": "1500000000.123456789", "gid": "5678",
               "mode": "33184", "mtime": "1600000000.987654321", "uid": "1234"})
    assert m == ObjMeta(stat.S_IFREG | 0o640, 1234, 5678, 1_600_000_000_987_654_321)
    link = parse({"mode": "41471", "mtime": "1400000001.500000000", "uid": "0", "gid": "0"})
    assert link.is_link and link.perm == 0o777 and link.mtime_ns == 1_400_000_001_500_000_000


def test_reads_rclone_and_bad_values_leniently():
    assert parse({"mode": "100664"}).mode == stat.S_IFREG | 0o664          # rclone: octal
    assert parse({"mode": "0100600"}).mode == stat.S_IFREG | 0o600
    assert parse({"mtime": "1684246451.5"}).mtime_ns == 1_684_246_451_500_000_000
    assert parse({"mtime": "2023-05-11T17:54:11.523399Z"}).mtime_ns == 1_683_827_651_523_399_000
    bad = parse({"mode": "rwx", "uid": "-3", "gid": "4294967295", "mtime": "soon"})
    assert bad == NO_META
    assert parse(None) == NO_META and parse({}) == NO_META


def test_writes_what_s3fs_reads():
    meta = encode(stat.S_IFLNK | 0o777, 0, 42, 1_200_000_000_000_000_005)
    assert meta == {"mode": "41471", "uid": "0", "gid": "42", "mtime": "1200000000.000000005"}
    assert parse(meta) == ObjMeta(stat.S_IFLNK | 0o777, 0, 42, 1_200_000_000_000_000_005)
    assert parse_time(format_time(123)) == 123


def test_objmeta_and_owner_records_go_with_their_inode(tmp_path):
    meta = MetaStore(str(tmp_path / "m"), "id")
    try:
        root = meta.get_inode(ROOT_INO)
        f = meta.put_entry(root, Entry("f", KIND_FILE, 3, 1, '"e1"'))
        meta.put_objmeta(f.ino, '"e1"', ObjMeta(stat.S_IFLNK | 0o777, 1, 2, 3, b"target"))
        meta.put_owner(f.ino, 5, 6, 7)
        assert meta.get_objmeta(f.ino) == ('"e1"', ObjMeta(stat.S_IFLNK | 0o777, 1, 2, 3, b"target"))
        assert meta.get_owner(f.ino) == (5, 6, 7)
        moved = meta.move(ROOT_INO, b"f", root, b"g")
        assert meta.get_objmeta(moved.ino) is not None          # a rename keeps them
        meta.remove_entry(ROOT_INO, b"g")
        assert meta.get_objmeta(f.ino) is None and meta.get_owner(f.ino) is None
        meta.put_objmeta(f.ino, '"e1"', NO_META)                 # no record without its inode
        assert meta.get_objmeta(f.ino) is None
    finally:
        meta.close()


def test_subdirectory_counts_follow_every_change(tmp_path):
    meta = MetaStore(str(tmp_path / "m"), "id")
    try:
        root = meta.get_inode(ROOT_INO)
        a = meta.put_entry(root, Entry("a", KIND_DIR))
        b = meta.put_entry(root, Entry("b", KIND_DIR))
        meta.put_entry(root, Entry("f", KIND_FILE, 1, 1, "e"))
        assert meta.subdirs(ROOT_INO) == 2
        meta.put_entry(a, Entry("x", KIND_DIR))
        meta.move(a.ino, b"x", b, b"x")                          # from a to b
        assert (meta.subdirs(a.ino), meta.subdirs(b.ino)) == (0, 1)
        meta.move(ROOT_INO, b"b", a, b"b")                       # b (with x) into a
        assert (meta.subdirs(ROOT_INO), meta.subdirs(a.ino)) == (1, 1)
        meta.remove_entry(a.ino, b"b")
        assert meta.subdirs(a.ino) == 0
        listed = meta.replace_listing(root, [Entry("a", KIND_DIR), Entry("c", KIND_DIR), Entry("d", KIND_DIR),
                                             Entry("f", KIND_FILE, 1, 1, "e")], 1e12)
        assert len(listed) == 4 and meta.subdirs(ROOT_INO) == 3
        meta.put_entry(root, Entry("c", KIND_FILE, 1, 1, "e"))  # a directory became a file
        assert meta.subdirs(ROOT_INO) == 2
    finally:
        meta.close()


async def _run_blocking(fn, *args):
    return fn(*args)


def _listed(tmp_path, objects: dict[str, tuple[bytes, dict | None]], **options):
    store = MemoryStore("bkt")
    for key, (data, md) in objects.items():
        store.put(key, data, md)
    cfg = build_config("s3://bkt", "/mnt", {k: str(v) for k, v in options.items()}, None, {})
    meta = MetaStore(str(tmp_path / "m"), cfg.identity())
    ns = Namespace(meta, store, cfg, _run_blocking)
    entries = trio.run(ns.entries, ROOT_INO)
    return store, ns, meta, {name.decode(): node for name, node in entries}


def test_a_listing_heads_few_tiny_objects_once(tmp_path):
    link = encode(stat.S_IFLNK | 0o777, 0, 0, 5)
    store, ns, meta, entries = _listed(tmp_path, {"ln": (b"target", link), "big": (b"x" * 2000, {"uid": "7"})})
    try:
        assert store.stats.get("s3_head") == 1                   # the tiny one only
        assert meta.get_objmeta(entries["ln"].ino)[1].is_link
        assert meta.get_objmeta(entries["big"].ino) is None
        trio.run(ns.entries, ROOT_INO)                            # fresh: from LMDB
        meta.replace_listing(meta.get_inode(ROOT_INO), [], 0)    # expired and emptied: listed anew
        trio.run(ns.entries, ROOT_INO)
        assert store.stats.get("s3_head") == 2                   # a new inode: asked again, once
    finally:
        meta.close()


def test_a_directory_of_many_tiny_files_pays_no_head(tmp_path):
    objects = {f"f{i}": (b"1", None) for i in range(SMALL_HEADS_MAX + 1)}
    store, ns, meta, entries = _listed(tmp_path, objects)
    try:
        assert store.stats.get("s3_head") == 0
    finally:
        meta.close()
    store, ns, meta, entries = _listed(tmp_path / "all", {**objects, "big": (b"x" * 5000, {"uid": "7"})},
                                       metadata_head_all="true")
    try:
        assert store.stats.get("s3_head") == len(objects) + 1
        assert meta.get_objmeta(entries["big"].ino)[1].uid == 7
    finally:
        meta.close()


def test_a_get_answer_records_the_metadata_of_what_it_read(tmp_path):
    owned = {"uid": "7", "mode": str(stat.S_IFREG | 0o600)}
    link = encode(stat.S_IFLNK | 0o777, 0, 0, 5)
    store, ns, meta, entries = _listed(tmp_path, {"d/f": (b"x" * 2000, owned), "d/ln": (b"y" * 2000, link)})
    try:
        listed = {name.decode(): node for name, node in trio.run(ns.entries, entries["d"].ino)}
        assert meta.get_objmeta(listed["f"].ino) is None                 # too large for a HEAD
        store.get_range("d/f", 0, 10, listed["f"].etag)
        assert meta.get_objmeta(listed["f"].ino)[1].uid == 7
        store.get_range("d/ln", 0, 10)                                    # read as a file already:
        assert meta.get_objmeta(listed["ln"].ino) is None                 # a link only from a HEAD
        assert store.stats.get("s3_head") == 0
    finally:
        meta.close()
