"""Listings through a real mount: how keys become files and directories (the mapping in the contract)."""
from __future__ import annotations

import os
import stat
import subprocess
import unicodedata

import pytest
from mount_helpers import list_all_keys, object_bytes, walk_tree

pytestmark = pytest.mark.timeout(180)

LONG_OK = "n" * 255  # the longest legal file name
LONG_BAD = "m" * 256  # one byte too long: skipped
NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")

TREE_OBJECTS = {
    "top.txt": b"top\n",
    "a/x.txt": object_bytes("a/x", 10),
    "a/b/sibling.txt": object_bytes("a/b/sibling", 300),
    "a/b/c/deep.bin": object_bytes("deep", 70_000),
    "marker_only/": b"",  # a marker alone: an empty directory
    "marked/": b"",
    "marked/inner.txt": b"inner",
    "nested_marker/sub/": b"",  # the marker implies nested_marker/ too
    "conflict": b"i am shadowed by the directory",  # `x` and `x/...`: the directory wins
    "conflict/inside.txt": b"inside",
    "uni/日本語のファイル.txt": "日本語".encode(),
    "uni/emoji-😀.bin": b"\xf0\x9f\x98\x80",
    "uni/Ünïcödé dir/straße.txt": b"ss",
    f"uni/{NFC}": b"nfc",  # two distinct byte strings that look the same
    f"uni/{NFD}": b"nfd!",
    "uni/space and+plus%20percent&amp.txt": b"url-encoding traps",
    "uni/tab\there": b"tab",
    "skip/ok.txt": b"ok",
    f"skip/{LONG_OK}": b"255",
    f"skip/{LONG_BAD}": b"256",
    "skip/a/real.txt": b"real",
    "skip/a//b": b"empty segment",
    "skip//c": b"empty segment",
    "skip/dot/real": b"real",
    "skip/dot/./d": b"dot segment",
    "skip/dd/real": b"real",
    "skip/dd/../e": b"dotdot segment",
    "./rootdot": b"dot segment",
    "../rootdotdot": b"dotdot segment",
    "uni/cr\rhere": b"carriage return (XML parsers turn it into \\n)",
    "both": b"zero-byte object and marker of the same name",
    "both/": b"",
    "deep" + "/d" * 40 + "/leaf": b"leaf",
    "sizes/empty": b"",
    "sizes/big": object_bytes("sizes/big", 1_000_003),
}


DEEP_LEAF = "deep" + "/d" * 40 + "/leaf"


def _expected_tree() -> dict[str, object]:
    """Written out by hand, not derived with the mapping's own logic: {path: "dir" | size}."""
    sizes = {k: len(v) for k, v in TREE_OBJECTS.items()}
    files = ["top.txt", "a/x.txt", "a/b/sibling.txt", "a/b/c/deep.bin", "marked/inner.txt", "conflict/inside.txt",
             "uni/日本語のファイル.txt", "uni/emoji-😀.bin", "uni/Ünïcödé dir/straße.txt", f"uni/{NFC}", f"uni/{NFD}",
             "uni/space and+plus%20percent&amp.txt", "uni/tab\there", "skip/ok.txt", f"skip/{LONG_OK}",
             "skip/a/real.txt", "skip/dot/real", "skip/dd/real", "sizes/empty", "sizes/big", "uni/cr\rhere",
             DEEP_LEAF]
    dirs = ["a", "a/b", "a/b/c", "marker_only", "marked", "nested_marker", "nested_marker/sub", "conflict", "uni",
            "uni/Ünïcödé dir", "skip", "skip/a", "skip/dot", "skip/dd", "sizes", "both"]
    dirs += ["deep" + "/d" * n for n in range(41)]
    return {**{d: "dir" for d in dirs}, **{f: sizes[f] for f in files}}


@pytest.fixture(scope="module")
def tree_bucket(s3, make_bucket):
    name = make_bucket("tree", TREE_OBJECTS)
    assert sorted(list_all_keys(s3, name)) == sorted(TREE_OBJECTS), "moto must store the odd keys verbatim"
    return name


@pytest.fixture(scope="module")
def tree(module_mounter, tree_bucket):
    """One mount for the module: these tests only look."""
    return module_mounter.mount(tree_bucket)


def test_whole_tree_matches_the_mapping(tree):
    got = walk_tree(tree.path)
    expected = _expected_tree()
    assert {k: got.get(k) for k in expected} == expected
    assert sorted(set(got) - set(expected)) == [], "entries that should not be there"


@pytest.mark.parametrize("directory, entries", [
    ("", {"top.txt", "a", "marker_only", "marked", "nested_marker", "conflict", "uni", "skip", "sizes", "both",
          "deep"}),
    ("both", set()),
    ("a", {"x.txt", "b"}),
    ("a/b/c", {"deep.bin"}),
    ("marker_only", set()),
    ("marked", {"inner.txt"}),
    ("nested_marker", {"sub"}),
    ("conflict", {"inside.txt"}),
    ("skip", {"ok.txt", LONG_OK, "a", "dot", "dd"}),
    ("skip/a", {"real.txt"}),
    ("skip/dot", {"real"}),
    ("skip/dd", {"real"}),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None)
def test_listdir(tree, directory, entries):
    assert set(os.listdir(tree.path / directory)) == entries


def test_file_and_directory_types_and_modes(tree):
    for rel, kind in _expected_tree().items():
        st = os.lstat(tree.path / rel)
        if kind == "dir":
            assert stat.S_ISDIR(st.st_mode), rel
            assert st.st_mode & 0o555 == 0o555, f"{rel}: directories must be readable and searchable"
        else:
            assert stat.S_ISREG(st.st_mode), rel
            assert st.st_mode & 0o444 == 0o444, f"{rel}: files must be readable"
    assert stat.S_ISDIR(os.stat(tree.path).st_mode)


def test_unicode_names_round_trip_byte_exact(tree):
    names = os.listdir(os.fsencode(tree.path / "uni"))
    expected = {k[len("uni/"):].split("/")[0].encode() for k in TREE_OBJECTS if k.startswith("uni/")}
    assert set(names) == expected
    for key in (f"uni/{NFC}", f"uni/{NFD}", "uni/日本語のファイル.txt", "uni/space and+plus%20percent&amp.txt",
                "uni/Ünïcödé dir/straße.txt", "uni/tab\there", "uni/cr\rhere", DEEP_LEAF):
        assert (tree.path / key).read_bytes() == TREE_OBJECTS[key], key


def test_skipped_keys_are_not_reachable(tree):
    for rel in ("skip/" + LONG_BAD, "skip/e", "skip/dot/d", "skip/d", "rootdot", "rootdotdot", "skip/a/b", "skip/c"):
        with pytest.raises(OSError) as exc:
            os.lstat(tree.path / rel)
        assert exc.value.errno in (2, 36), f"{rel}: expected ENOENT (or ENAMETOOLONG), got {exc.value!r}"


def test_dot_segments_do_not_become_entries(tree):
    """os.listdir hides `.` and `..`, `ls -a` shows what readdir really returned: keys like `dot/./d` must not
    add a `.` or `..` entry that a directory without such keys (`a`) does not have."""
    def ls_a(directory: str) -> list[str]:
        return subprocess.run(["ls", "-a1", "--quoting-style=literal", str(tree.path / directory)],
                              capture_output=True, text=True, check=True).stdout.splitlines()

    clean_dots = [n for n in ls_a("a") if n in (".", "..")]
    for directory in ("skip/dot", "skip/dd", "skip", ""):
        out = ls_a(directory)
        assert [n for n in out if n in (".", "..")] == clean_dots, f"{directory!r}: {out}"
        assert sorted(n for n in out if n not in (".", "..")) == sorted(os.listdir(tree.path / directory))


def test_marker_objects_are_not_files(tree):
    """`marked/` is a directory; the marker itself must not show up as an entry with an empty name or as a file."""
    assert os.path.isdir(tree.path / "marked") and os.path.isdir(tree.path / "marker_only")
    assert (tree.path / "marked" / "inner.txt").read_bytes() == b"inner"
    assert os.listdir(tree.path / "marker_only") == []


def test_directory_wins_over_a_file_of_the_same_name(tree):
    assert os.path.isdir(tree.path / "conflict")
    with pytest.raises(IsADirectoryError):
        open(tree.path / "conflict", "rb").close()
    assert (tree.path / "conflict" / "inside.txt").read_bytes() == b"inside"


def test_lookups_without_any_listing_agree_with_the_mapping(mounter, tree_bucket):
    """A fresh mount, paths looked up directly (no readdir anywhere): the same answers as the listings give."""
    m = mounter.mount(tree_bucket)
    for rel, kind in sorted(_expected_tree().items(), reverse=True):  # deepest first: parents never listed
        st = os.lstat(m / rel)
        if kind == "dir":
            assert stat.S_ISDIR(st.st_mode), rel
        else:
            assert stat.S_ISREG(st.st_mode) and st.st_size == kind, (rel, st.st_size, kind)
    for rel in ("conflict/inside.txt", f"uni/{NFD}", "uni/cr\rhere", DEEP_LEAF):
        assert (m / rel).read_bytes() == TREE_OBJECTS[rel], rel
    for rel in ("skip/" + LONG_BAD, "skip/dot/d", "rootdot", "nope", "marker_only/x"):
        with pytest.raises(OSError) as exc:
            os.lstat(m / rel)
        assert exc.value.errno in (2, 36), f"{rel}: {exc.value!r}"


def test_listing_a_file_is_enotdir(tree):
    with pytest.raises(NotADirectoryError):
        os.listdir(tree / "top.txt")


def test_lookup_of_missing_names_is_enoent(tree):
    for rel in ("nope", "a/nope", "a/b/c/deep.bin/x", "marker_only/x"):
        with pytest.raises(OSError) as exc:
            os.stat(tree.path / rel)
        assert exc.value.errno in (2, 20), f"{rel}: {exc.value!r}"


@pytest.mark.parametrize("prefix", ["some/prefix", "some/prefix/"])
def test_prefix_mount_shows_only_what_is_under_the_prefix(mounter, make_bucket, prefix):
    objects = {
        "some/prefix/a.txt": b"a",
        "some/prefix/sub/b.txt": b"bb",
        "some/prefix/marker/": b"",
        "some/prefix/": b"",  # the prefix's own marker: the root, not an entry
        "some/prefixother/not-me.txt": b"sibling prefix that shares the string",
        "some/prefix.txt": b"also not me",
        "some/other.txt": b"not me",
        "root.txt": b"not me",
    }
    name = make_bucket("prefix", objects)
    m = mounter.mount(name, prefix=prefix)
    assert walk_tree(m.path) == {"a.txt": 1, "sub": "dir", "sub/b.txt": 2, "marker": "dir"}
    assert (m.path / "sub" / "b.txt").read_bytes() == b"bb"
    for rel in ("not-me.txt", "prefixother", "other.txt", "root.txt", "prefix.txt"):
        assert not os.path.lexists(m.path / rel), rel


# ---------------------------------------------------------------- 10k+ entries in one directory

BIG_FILES = 10_050  # > 10 pages of 1000 keys
BIG_SUBDIRS = [f"f{i:05d}.d" for i in range(250, BIG_FILES, 400)]  # sort between the files, on every page


def big_objects() -> dict[str, bytes]:
    objects = {f"big/f{i:05d}.dat": str(i).encode() for i in range(BIG_FILES)}
    objects.update({f"big/{d}/x": b"x" for d in BIG_SUBDIRS})
    return objects


BIG = ("big", big_objects)


@pytest.fixture(scope="module")
def big_bucket(s3, prefilled):
    name = prefilled(*BIG)
    assert len(list_all_keys(s3, name)) == len(big_objects())
    return name


@pytest.mark.timeout(300)
@pytest.mark.prefill(*BIG)
def test_directory_with_more_than_10k_entries(mounter, big_bucket, request_log):
    m = mounter.mount(big_bucket)
    mark = request_log.mark()
    assert os.listdir(m.path) == ["big"]
    names = os.listdir(m.path / "big")
    expected = {f"f{i:05d}.dat" for i in range(BIG_FILES)} | set(BIG_SUBDIRS)
    assert len(names) == len(expected), "duplicates or missing entries"
    assert set(names) == expected
    with os.scandir(m.path / "big") as it:
        entries = {e.name: e for e in it}
    sizes = {name: e.stat(follow_symlinks=False).st_size for name, e in entries.items() if e.is_file()}
    assert sizes == {f"f{i:05d}.dat": len(str(i)) for i in range(BIG_FILES)}
    for i in (0, 999, 1000, 1001, 5000, BIG_FILES - 1):
        assert (m.path / "big" / f"f{i:05d}.dat").read_bytes() == str(i).encode()
    assert all(entries[d].is_dir() for d in BIG_SUBDIRS)
    assert os.listdir(m.path / "big" / BIG_SUBDIRS[7]) == ["x"]
    seen = request_log.since(mark, big_bucket)
    lists, heads = sum(r.is_list for r in seen), sum(r.method == "HEAD" for r in seen)
    pages = -(-(BIG_FILES + len(BIG_SUBDIRS)) // 1000)
    # One listing of `big/` (pages) plus the root and one subdirectory; stat of every entry comes from it.
    assert lists <= 2 * pages + 4, f"{lists} LIST requests for a {pages}-page directory listed twice"
    assert heads <= 20, f"{heads} HEAD requests to stat entries that the listing already described"
