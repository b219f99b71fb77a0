"""Directory groups of the order prefetch (reader/dirgroups.py) and the flat listing they are listed by
(namespace/listing.py): a flat LIST split into directories shows each exactly as its own LIST does."""
import random
from collections import Counter

import trio

from cachefs.meta.schema import ROOT_INO
from cachefs.reader.dirgroups import GROUP_KEYS, DirGroups

from .test_read_path import make_world

TRICKY = ("pre/file", "pre/dir/a", "pre/marker/", "pre/marker/in", "pre/both", "pre/both/inner", "pre/bad//x",
          "pre/" + "y" * 300 + "/z", "pre/dot/./q", "pre/d-x/k", "pre/d/k", "pre/d/e/f/g", "pre/d/e/", "other/outside")


def test_a_flat_listing_shows_each_directory_as_its_own_listing_does(tmp_path):
    (store, ns, _, _), meta = make_world(tmp_path)
    rng = random.Random(7)
    keys = set(TRICKY)
    for _ in range(300):
        depth = rng.randint(1, 4)
        keys.add("pre/" + "/".join(rng.choice(["a", "b", "ab", "a-b", "c.d"]) for _ in range(depth))
                 + rng.choice(["", "/", "/x"]))
    for key in keys:
        store.put(key, key.encode())

    async def main():
        flat, complete = await ns.list_flat("pre/", 1000)
        assert complete
        # Every directory's own delimited listing, walked from the root.
        todo, seen = [(ROOT_INO, "pre/")], 0
        while todo:
            ino, path = todo.pop()
            own = await ns._list_one(meta.get_inode(ino))
            assert {n: (e.kind, e.size, e.etag) for n, e in flat[path].found.items()} == \
                   {n: (e.kind, e.size, e.etag) for n, e in own.found.items()}, path
            assert (flat[path].marker and flat[path].marker.key) == (own.marker and own.marker.key)
            seen += 1
            for name, node in await ns.entries(ino):
                if node.is_dir:
                    todo.append((node.ino, path + name.decode() + "/"))
        assert seen > 20
    try:
        trio.run(main)
    finally:
        meta.close()


def test_a_flat_listing_cut_short_leaves_out_the_directory_it_stopped_in(tmp_path):
    (store, ns, _, _), meta = make_world(tmp_path)
    for d in range(3):
        for i in range(5):
            store.put(f"pre/c{d}/f{i}", b"x")
    whole = store.alist_page

    async def pages_of_four(prefix, token=None, max_keys=1000, delimiter="/"):
        return await whole(prefix, token, 4, delimiter)
    store.alist_page = pages_of_four

    async def main():
        cut = await ns.list_flat("pre/c", 2)          # 8 keys: c0's five and three of c1's
        whole_listing = await ns.list_flat("pre/c", 4)
        return cut, whole_listing
    try:
        (cut, cut_complete), (flat, complete) = trio.run(main)
    finally:
        meta.close()
    assert not cut_complete and sorted(cut) == ["pre/c0/"]
    assert complete and sorted(flat) == ["pre/c0/", "pre/c1/", "pre/c2/"]
    assert sorted(flat["pre/c2/"].found) == [f"f{i}" for i in range(5)]


def test_groups_hold_about_a_page_of_the_orders_files():
    groups = DirGroups()
    dirs = Counter({f"ds/train/class_{i:04d}/": 3 for i in range(1000)})
    groups.note(dirs)
    found = {groups.group_of(d) for d in dirs}
    assert None not in found
    assert 3 <= len(found) <= 20                       # not 1,000 listings
    for group in found:
        assert group.files <= GROUP_KEYS and group.prefix.startswith("ds/train/class_")
        assert group.base == "ds/train/"
    assert sum(g.files for g in found) == 3000
    # Every directory in exactly the group whose prefix holds it.
    for d in dirs:
        assert d.startswith(groups.group_of(d).prefix)


def test_a_directory_alone_or_holding_another_is_listed_on_its_own():
    groups = DirGroups()
    groups.note(Counter({"huge/big/": 5000, "ds/a/": 2, "ds/a/sub/": 2, "ds/b/": 2, "other/x/": 1}))
    assert groups.group_of("huge/big/") is None         # over a page alone
    assert groups.group_of("other/x/") is None          # alone
    assert groups.group_of("ds/a/") is None              # holds ds/a/sub/: a flat LIST would read it all
    assert groups.group_of("ds/a/sub/") is groups.group_of("ds/b/") is not None
    assert groups.group_of("ds/a/sub/").prefix == "ds/"
    assert groups.group_of("nowhere/") is None


def test_a_directory_noted_later_joins_a_group_not_listed_yet():
    groups = DirGroups()
    groups.note(Counter({"t/c1/": 1, "t/c2/": 1}))
    first = groups.group_of("t/c1/")
    assert first is not None and first.prefix == "t/c"
    groups.note(Counter({"t/c3/": 1, "u/v/": 1}))
    assert groups.group_of("t/c3/") is first             # its prefix holds it
    first.done.set()
    groups.forget_done()
    groups.note(Counter({"t/c1/": 1, "t/c2/": 1}))      # the next epoch: grouped anew
    again = groups.group_of("t/c1/")
    assert again is not None and again is not first and not again.done.is_set()
