"""Reading through a real mount: byte-exact against the object bytes, across block boundaries."""
from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import shutil
import stat
import subprocess
import threading

import pytest
from mount_helpers import (
    BLOCK_SIZE,
    PYTHON,
    MiB,
    first_difference,
    object_bytes,
    pread_exact,
    read_all,
    run_threads,
    stats_delta,
    summarize,
)

pytestmark = pytest.mark.timeout(180)

BS = BLOCK_SIZE
READ_OBJECTS = {
    "empty": b"",
    "one": b"\x01",
    "bs-1": object_bytes("bs-1", BS - 1),
    "bs": object_bytes("bs", BS),
    "bs+1": object_bytes("bs+1", BS + 1),
    "multi": object_bytes("multi", 5 * BS + BS // 2),
    "dir/large.bin": object_bytes("large", 6 * MiB + 12345),  # 25 blocks (moto reads the whole object per GET)
}
LARGE = "dir/large.bin"
STATS_KEYS = ("s3_get", "s3_get_bytes", "s3_list", "s3_head", "cache_hits", "cache_misses", "cache_bytes",
              "cache_blocks")


@pytest.fixture(scope="module")
def read_bucket(make_bucket):
    return make_bucket("read", READ_OBJECTS)


@pytest.fixture(scope="module")
def mnt(module_mounter, read_bucket):
    """One mount for the tests that only need correct bytes, warm cache or not."""
    return module_mounter.mount(read_bucket, "--read-only")


@pytest.fixture
def cold(mounter, read_bucket):
    """A mount of its own, with an empty cache: for tests that count fetches or want cold misses (no
    duplicate of a slow GET: hedging would blur the counts)."""
    return mounter.mount(read_bucket, "--hedging", "false")


@pytest.mark.parametrize("key", sorted(READ_OBJECTS))
def test_whole_file_read_is_byte_exact(mnt, key):
    got = read_all(mnt / key)
    assert got == READ_OBJECTS[key], first_difference(got, READ_OBJECTS[key])


def _boundary_ranges(rng: random.Random, size: int, count: int) -> list[tuple[int, int]]:
    """Reads that start near block boundaries and span 0-3 of them, plus fully random ones."""
    ranges = []
    for _ in range(count):
        if rng.random() < 0.6 and size > BS:
            boundary = rng.randrange(1, size // BS + 1) * BS
            off = max(0, boundary - rng.randrange(0, 4097))
            length = rng.choice([1, 2, 4095, 4096, 4097, BS - 1, BS, BS + 1, 2 * BS + 7, 3 * BS])
        else:
            off = rng.randrange(0, size + 1)
            length = rng.randrange(1, 3 * BS)
        ranges.append((off, length))
    return ranges


@pytest.mark.parametrize("key", ["bs-1", "bs+1", "multi", LARGE])
def test_random_preads_across_block_boundaries(mnt, key):
    data = READ_OBJECTS[key]
    seed = f"preads-{key}"
    for off, length in _boundary_ranges(random.Random(seed), len(data), 150):
        got = pread_exact(mnt / key, off, length)
        want = data[off:off + length]
        assert got == want, f"seed {seed!r}: pread({off}, {length}): {first_difference(got, want)}"


def test_preads_on_one_descriptor_in_random_order(mnt):
    """One open file, many positioned reads jumping around (what a shuffling data loader does)."""
    data = READ_OBJECTS[LARGE]
    rng = random.Random("one-fd")
    fd = os.open(mnt / LARGE, os.O_RDONLY)
    try:
        for off, length in _boundary_ranges(rng, len(data), 300):
            got = os.pread(fd, length, off)
            want = data[off:off + length]
            assert got == want, f"pread({off}, {length}): {first_difference(got, want)}"
    finally:
        os.close(fd)


def test_sequential_read_in_odd_chunks(mnt):
    data = READ_OBJECTS["multi"]
    out = bytearray()
    with open(mnt / "multi", "rb", buffering=0) as f:
        while chunk := f.read(99_991):
            out += chunk
    assert bytes(out) == data, first_difference(bytes(out), data)


def test_mmap_read(mnt):
    data = READ_OBJECTS["multi"]
    with open(mnt / "multi", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert len(mm) == len(data)
        assert mm[BS - 10:BS + 10] == data[BS - 10:BS + 10]
        assert mm[:] == data


def test_copying_the_tree_out_is_exact(mnt, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(mnt.path, dest)
    for key, data in READ_OBJECTS.items():
        assert (dest / key).read_bytes() == data, key


def test_empty_file(mnt):
    st = os.stat(mnt / "empty")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0
    assert read_all(mnt / "empty") == b""
    assert pread_exact(mnt / "empty", 0, 4096) == b""
    assert pread_exact(mnt / "empty", 10, 10) == b""


@pytest.mark.parametrize("key", ["one", "bs", "multi"])
def test_reading_past_eof_is_short_then_empty(mnt, key):
    data = READ_OBJECTS[key]
    size = len(data)
    fd = os.open(mnt / key, os.O_RDONLY)
    try:
        assert os.pread(fd, 100, max(0, size - 10)) == data[max(0, size - 10):]
        assert os.pread(fd, 100, size) == b""
        assert os.pread(fd, 100, size + 1) == b""
        assert os.pread(fd, 100, size + 10 * BS) == b""
        os.lseek(fd, size + 5, os.SEEK_SET)
        assert os.read(fd, 10) == b""
    finally:
        os.close(fd)


def test_st_size_and_st_mtime_match_s3(mnt, s3, read_bucket):
    for key, data in READ_OBJECTS.items():
        head = s3.head_object(Bucket=read_bucket, Key=key)
        st = os.stat(mnt / key)
        assert st.st_size == len(data) == head["ContentLength"], key
        assert int(st.st_mtime) == int(head["LastModified"].timestamp()), (
            f"{key}: st_mtime {st.st_mtime} vs LastModified {head['LastModified']}")


def test_statvfs(mnt):
    sv = os.statvfs(mnt.path)
    assert sv.f_bsize > 0 and sv.f_frsize > 0
    assert sv.f_namemax >= 255, f"names of 255 bytes are legal; f_namemax={sv.f_namemax}"


@pytest.mark.parametrize("action", [
    "open-w", "open-a", "open-r+", "create", "mkdir", "unlink", "rmdir", "rename", "truncate", "chmod", "symlink",
    "setxattr"])
def test_writes_fail_with_erofs(mnt, action):
    f, d = mnt / "one", mnt / "dir"
    ops = {
        "open-w": lambda: open(f, "wb"),
        "open-a": lambda: open(f, "ab"),
        "open-r+": lambda: open(f, "r+b"),
        "create": lambda: open(mnt / "new-file", "wb"),
        "mkdir": lambda: os.mkdir(mnt / "new-dir"),
        "unlink": lambda: os.unlink(f),
        "rmdir": lambda: os.rmdir(d),
        "rename": lambda: os.rename(f, mnt / "renamed"),
        "truncate": lambda: os.truncate(f, 0),
        "chmod": lambda: os.chmod(f, 0o600),
        "symlink": lambda: os.symlink("one", mnt / "link"),
        "setxattr": lambda: os.setxattr(f, "user.test", b"1"),
    }
    with pytest.raises(OSError) as exc:
        ops[action]()
    assert exc.value.errno == errno.EROFS, f"{action}: {exc.value!r}"
    assert read_all(f) == READ_OBJECTS["one"]
    assert sorted(os.listdir(mnt.path)) == ["bs", "bs+1", "bs-1", "dir", "empty", "multi", "one"]


def test_concurrent_readers_get_exact_bytes(cold):
    """Eight threads on separate descriptors, cold cache, overlapping blocks in different orders."""
    data = READ_OBJECTS[LARGE]
    errors: list[str] = []
    start = threading.Barrier(8)

    def reader(i: int) -> None:
        rng = random.Random(f"reader-{i}")
        chunks = list(range(0, len(data), 300_000))
        rng.shuffle(chunks)
        start.wait()
        fd = os.open(cold / LARGE, os.O_RDONLY)
        try:
            for off in chunks:
                got = os.pread(fd, 300_000, off)
                if got != data[off:off + 300_000]:
                    errors.append(f"reader {i} at {off}: {first_difference(got, data[off:off + 300_000])}")
        finally:
            os.close(fd)

    run_threads(reader, [(i,) for i in range(8)])
    assert errors == []


def test_concurrent_readers_of_different_files(mnt):
    keys = [k for k in READ_OBJECTS if READ_OBJECTS[k]]
    wrong: list[str] = []
    run_threads(lambda k: read_all(mnt / k) == READ_OBJECTS[k] or wrong.append(k), [(k,) for k in keys * 2])
    assert wrong == []


def test_readers_in_separate_processes(cold):
    """DataLoader workers are processes: four of them hash the same large file, cold, at the same time."""
    script = ("import hashlib, sys\n"
              "with open(sys.argv[1], 'rb') as f:\n"
              "    print(hashlib.sha256(f.read()).hexdigest())\n")
    procs = [subprocess.Popen([PYTHON, "-c", script, str(cold / LARGE)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    digests = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert digests == [hashlib.sha256(READ_OBJECTS[LARGE]).hexdigest()] * 4


def test_stats_have_the_counters(mnt):
    s = mnt.stats()
    missing = [k for k in STATS_KEYS if k not in s]
    assert missing == [], f"stats JSON lacks {missing}: {s}"
    assert all(isinstance(s[k], int) and s[k] >= 0 for k in STATS_KEYS), s


def test_counters_agree_with_the_server_log(cold, read_bucket, request_log):
    """A cold read of the large file: the daemon's GET count equals what moto saw, and the data is cached."""
    size = len(READ_OBJECTS[LARGE])
    before, mark = cold.stats(), request_log.mark()
    assert read_all(cold / LARGE) == READ_OBJECTS[LARGE]
    seen = request_log.since(mark, read_bucket)
    after = cold.stats()
    gets = [r for r in seen if r.is_object_get]
    delta = stats_delta(before, after, *STATS_KEYS)
    assert delta["s3_get"] == len(gets) > 0, f"daemon says {delta}, moto saw {summarize(seen)}"
    assert delta["s3_list"] == sum(r.is_list for r in seen)
    assert len(gets) <= -(-size // BS), f"{len(gets)} GETs for {-(-size // BS)} blocks: a block fetched twice"
    assert delta["s3_get_bytes"] == size, f"a cold sequential read fetched {delta['s3_get_bytes']} bytes for {size}"
    assert delta["cache_misses"] >= 1
    assert after["cache_blocks"] >= -(-size // BS), after
    assert after["cache_bytes"] >= size, after


def test_concurrent_cold_readers_share_fetches(cold, read_bucket, request_log):
    """DESIGN.md: concurrent misses on one block share one fetch (single-flight)."""
    data = READ_OBJECTS[LARGE]
    blocks = -(-len(data) // BS)
    mark = request_log.mark()
    wrong: list[int] = []
    run_threads(lambda i: read_all(cold / LARGE) == data or wrong.append(i), [(i,) for i in range(6)])
    assert wrong == []
    gets = [r for r in request_log.since(mark, read_bucket) if r.is_object_get]
    assert 0 < len(gets) <= blocks, f"{len(gets)} GETs for {blocks} blocks read by 6 readers: {summarize(gets)}"


def test_threads_sharing_one_descriptor(cold):
    """Several threads pread one file descriptor at once (per-open-file state must not mix their reads)."""
    data = READ_OBJECTS[LARGE]
    fd = os.open(cold / LARGE, os.O_RDONLY)
    errors: list[str] = []

    def reader(i: int) -> None:
        for off, length in _boundary_ranges(random.Random(f"shared-fd-{i}"), len(data), 60):
            got = os.pread(fd, length, off)
            if got != data[off:off + length]:
                errors.append(f"thread {i} pread({off}, {length}): {first_difference(got, data[off:off + length])}")

    try:
        run_threads(reader, [(i,) for i in range(6)])
    finally:
        os.close(fd)
    assert errors == []
