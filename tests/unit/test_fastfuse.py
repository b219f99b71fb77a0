"""cachefs._fastfuse's tables (native/fastfuse.c), without a mount: what is held, replaced, forgotten
and refused. The requests themselves are tested on a real mount (tests/test_mount_fastpath.py)."""
from __future__ import annotations

import pytest

ff = pytest.importorskip("cachefs._fastfuse")

MB = 1 << 20


def add(ino: int, parent: int, name: bytes, data, size: int | None = None) -> bool:
    size = len(data) if size is None else size
    return ff.add(ino, parent, name, 0, 0o100644, 1, 0, 0, size, 1, 2, 3, 60.0, 60.0, 2e9, data)


@pytest.fixture(autouse=True)
def fresh():
    ff.clear()
    ff.enable(False, 4 * MB, 100)
    yield
    ff.clear()


def held() -> int:
    return ff.counters()["fast_held_bytes"]


def test_bytes_are_held_until_forgotten_and_an_inode_added_again_replaces_its_entry():
    assert add(10, 1, b"a.jpg", bytearray(1000))
    assert ff.holds(10) and held() == 1000
    assert add(10, 1, b"a.jpg", bytes(300))
    assert held() == 300
    ff.forget(10)
    assert not ff.holds(10) and held() == 0


def test_a_name_given_to_another_inode_drops_the_old_entry():
    assert add(10, 1, b"a.jpg", bytes(100))
    assert add(11, 1, b"a.jpg", bytes(200))
    assert not ff.holds(10) and ff.holds(11) and held() == 200
    ff.forget_name(1, b"a.jpg")
    assert not ff.holds(11) and held() == 0


def test_bytes_of_another_size_or_beyond_the_limit_are_not_held():
    assert not add(10, 1, b"a.jpg", bytes(100), size=101)
    assert ff.holds(10) and held() == 0           # the entry (names, attributes) is kept
    assert not add(11, 1, b"b.jpg", bytes(5 * MB))
    assert ff.holds(11) and held() == 0


def test_the_oldest_bytes_make_room_for_the_newest():
    """Files fetched long ago and never read through the C (read by Python first, or never asked
    for) must not keep the newest out."""
    before = ff.counters()["fast_dropped_unread"]
    assert add(10, 1, b"a.jpg", bytes(2 * MB))
    assert add(11, 1, b"b.jpg", bytes(1 * MB))
    assert add(12, 1, b"c.jpg", bytes(2 * MB))     # 5 MiB > 4: a.jpg's bytes go
    assert held() == 3 * MB and ff.counters()["fast_dropped_unread"] == before + 1
    assert ff.holds(10)                            # its name and attributes stay
    ff.drop_data(11)
    assert held() == 2 * MB
    assert add(13, 1, b"d.jpg", bytes(2 * MB))     # room without dropping c.jpg
    assert held() == 4 * MB and ff.counters()["fast_dropped_unread"] == before + 1


def test_entries_beyond_the_cap_are_refused_and_clear_forgets_all():
    for i in range(100):
        add(100 + i, 1, f"{i}.jpg".encode(), None, size=10)
    assert not add(500, 1, b"one-too-many.jpg", None, size=10)
    assert not ff.holds(500) and ff.holds(150)
    ff.clear()
    assert not any(ff.holds(100 + i) for i in range(100))


def test_a_held_buffer_stays_valid_while_held():
    data = bytearray(b"x" * 64)
    assert add(10, 1, b"a.jpg", data)
    with pytest.raises(BufferError):
        data.extend(b"y")                      # exported: it cannot move under the C
    ff.forget(10)
    data.extend(b"y")
