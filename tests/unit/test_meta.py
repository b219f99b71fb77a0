import pytest

from cachefs.errors import UserError
from cachefs.meta.schema import KIND_DIR, KIND_FILE, ROOT_INO, Inode, pack_inode, unpack_inode
from cachefs.meta.store import Entry, MetaStore


@pytest.fixture
def meta(tmp_path):
    m = MetaStore(str(tmp_path / "meta"), "ep|bkt|")
    yield m
    m.close()


def test_inode_record_round_trip():
    i = Inode(42, KIND_FILE, 123456789, 1_700_000_000_123_456_789, 7, '"abc-3"', "dir/näme ü.bin")
    assert unpack_inode(42, pack_inode(i)) == i


def test_root_exists(meta):
    root = meta.get_inode(ROOT_INO)
    assert root.is_dir and root.path == ""


def test_listing_keeps_inode_numbers_and_reconciles(meta):
    root = meta.get_inode(ROOT_INO)
    first = dict(meta.replace_listing(root, [Entry("a", KIND_DIR), Entry("f", KIND_FILE, 3, 1, "e1")], 100.0))
    assert meta.listing_expiry(ROOT_INO) == 100.0
    second = dict(meta.replace_listing(root, [Entry("f", KIND_FILE, 4, 2, "e2"), Entry("g", KIND_FILE)], 200.0))
    assert second[b"f"].ino == first[b"f"].ino          # same path, same inode number
    assert second[b"f"].etag == "e2" and second[b"f"].size == 4
    assert meta.lookup(ROOT_INO, b"a") is None             # gone from S3, gone here
    assert meta.get_inode(first[b"a"].ino) is None
    assert [n for n, _ in meta.children(ROOT_INO)] == [b"f", b"g"]
    assert meta.lookup(ROOT_INO, b"g").path == "g"


def test_kind_change_gets_new_inode(meta):
    root = meta.get_inode(ROOT_INO)
    f = meta.put_entry(root, Entry("x", KIND_FILE, 1, 1, "e"))
    d = meta.put_entry(root, Entry("x", KIND_DIR))
    assert d.ino != f.ino and d.is_dir
    assert meta.get_inode(f.ino) is None


def test_removing_a_directory_removes_its_subtree(meta):
    root = meta.get_inode(ROOT_INO)
    d = meta.put_entry(root, Entry("d", KIND_DIR))
    sub = meta.put_entry(d, Entry("sub", KIND_DIR))
    leaf = meta.put_entry(sub, Entry("leaf", KIND_FILE, 1, 1, "e"))
    assert leaf.path == "d/sub/leaf"
    meta.replace_listing(root, [], 10.0)
    for ino in (d.ino, sub.ino, leaf.ino):
        assert meta.get_inode(ino) is None
    assert meta.children(d.ino) == [] and meta.children(sub.ino) == []


def test_negative_entries(meta):
    root = meta.get_inode(ROOT_INO)
    meta.put_entry(root, Entry("x", KIND_FILE, 1, 1, "e"))
    meta.put_negative(root, b"x", 50.0)
    assert meta.lookup(ROOT_INO, b"x") is None
    assert meta.negative_expiry(ROOT_INO, b"x") == 50.0
    meta.put_entry(root, Entry("x", KIND_FILE, 1, 1, "e"))
    assert meta.negative_expiry(ROOT_INO, b"x") == 0.0
    meta.put_negative(root, b"y", 60.0)
    meta.replace_listing(root, [], 70.0)               # a fresh listing supersedes negatives
    assert meta.negative_expiry(ROOT_INO, b"y") == 0.0


def test_persistence_and_identity(tmp_path):
    path = str(tmp_path / "meta")
    m = MetaStore(path, "ep|bkt|")
    ino = m.put_entry(m.get_inode(ROOT_INO), Entry("k", KIND_FILE, 5, 5, "e")).ino
    m.update_block_index([(b"k" * 16, 100, 1.0, 7, -1, 0), (b"p" * 16, 50, 2.0, 7, 3, 8192)], [])
    m.close()
    m = MetaStore(path, "ep|bkt|")
    assert m.lookup(ROOT_INO, b"k").ino == ino
    assert sorted(m.block_index()) == [(b"k" * 16, 100, 1.0, 7, -1, 0), (b"p" * 16, 50, 2.0, 7, 3, 8192)]
    # a key stored again in the other layout keeps one entry; a removal drops either
    m.update_block_index([(b"k" * 16, 100, 3.0, 7, 4, 0), (b"p" * 16, 50, 4.0, 7, -1, 0)], [])
    assert sorted(m.block_index()) == [(b"k" * 16, 100, 3.0, 7, 4, 0), (b"p" * 16, 50, 4.0, 7, -1, 0)]
    m.update_block_index([], [b"k" * 16, b"p" * 16])
    assert m.block_index() == []
    m.close()
    with pytest.raises(UserError, match="belongs to"):
        MetaStore(path, "ep|other|")


def test_corrupt_store_is_refused(tmp_path):
    path = tmp_path / "meta"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(UserError, match="is corrupt .*MDB_INVALID.*will not use it"):
        MetaStore(str(path), "ep|bkt|")


def _filled_store(path, n=3000) -> bytes:
    m = MetaStore(str(path), "ep|bkt|")
    m.replace_listing(m.get_inode(1), [Entry(f"f{i:05d}", KIND_FILE, i, 0, f"e{i}") for i in range(n)], 1e12)
    m.close()
    return (path / "data.mdb").read_bytes()


@pytest.mark.parametrize("damage, reason", [
    (lambda d: d[:len(d) // 2], "SIGBUS"),                                       # truncated: pages past the end
    (lambda d: d[:len(d) // 8192 * 4096] + b"\xa5" * 4096 + d[len(d) // 8192 * 4096 + 4096:], "CORRUPTED|record"),
    (lambda d: b"\0" * 8192 + d[8192:], "MDB_INVALID"),                          # both meta pages gone
], ids=["truncated", "garbage-page", "zeroed-header"])
def test_damaged_store_is_found_out_not_trusted(tmp_path, damage, reason):
    path = tmp_path / "meta"
    data = _filled_store(path)
    (path / "data.mdb").write_bytes(damage(data))
    with pytest.raises(UserError, match=f"is corrupt .*({reason})"):
        MetaStore(str(path), "ep|bkt|")
    (path / "data.mdb").write_bytes(data)          # the intact file opens again, every record there
    m = MetaStore(str(path), "ep|bkt|")
    assert len(m.children(1)) == 3000
    m.close()
