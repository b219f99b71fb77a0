"""cachefs.native: the C block reader and the pure-Python fallback give identical results.

Block files are written with cache/disk.py's own encode_header, so these tests also pin that the
two readers agree with the format the cache writes.
"""
from __future__ import annotations

import os
import random
import types

import pytest

from cachefs import native
from cachefs.cache.disk import HEADER, encode_header

try:     # directly, so the C reader is tested even when CACHEFS_NO_NATIVE=1 deactivates it
    from cachefs import _native as C
except ImportError:
    C = None

PYTHON = types.SimpleNamespace(read_block=native.py_read_block, read_ranges=native.py_read_ranges)
IMPLS = [pytest.param(PYTHON, id="python"),
         pytest.param(C, id="native", marks=pytest.mark.skipif(C is None, reason="extension not built"))]


def block_bytes(payload: bytes) -> bytes:
    return encode_header(payload) + payload


def write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def corrupt(raw: bytes, at: int, value: bytes) -> bytes:
    return raw[:at] + value + raw[at + len(value):]


GOOD = os.urandom(100_000)
CASES = {
    "good": block_bytes(GOOD),
    "empty payload": block_bytes(b""),
    "4 MiB": block_bytes(os.urandom(4 << 20)),
    "flipped payload byte": corrupt(block_bytes(GOOD), HEADER.size + 5000, bytes([GOOD[5000] ^ 1])),
    "flipped checksum byte": corrupt(block_bytes(GOOD), 20, bytes([block_bytes(GOOD)[20] ^ 0x80])),
    "truncated payload": block_bytes(GOOD)[:-1],
    "truncated header": block_bytes(GOOD)[:HEADER.size - 1],
    "empty file": b"",
    "wrong magic": b"CFSBLK02" + block_bytes(GOOD)[8:],
    "length too long": corrupt(block_bytes(GOOD), 8, (len(GOOD) + 1).to_bytes(8, "big")),
    "length too short": corrupt(block_bytes(GOOD), 8, (len(GOOD) - 1).to_bytes(8, "big")),
    "trailing byte": block_bytes(GOOD) + b"x",
}
VALID = {"good", "empty payload", "4 MiB"}
BAD_CHECKSUM_ONLY = {"flipped payload byte", "flipped checksum byte"}


def test_native_is_active_here():
    if os.environ.get("CACHEFS_NO_NATIVE", "") not in ("", "0"):
        assert native.ACTIVE == "python"
        assert native.read_block is native.py_read_block
    else:
        assert native.ACTIVE == "native", "cachefs._native is not built (is libxxhash-dev installed?)"
        assert native.read_block is C.read_block


def test_the_get_fetcher_is_built_here():
    """The C fetcher of S3 GETs (native/fetch.c): built wherever setup ran (libcurl4-openssl-dev),
    so its tests cannot skip silently."""
    from cachefs.store import curlfetch
    if os.environ.get("CACHEFS_NO_NATIVE_FETCH"):
        assert not curlfetch.available()
    else:
        assert curlfetch.available(), curlfetch.WHY_NOT + " (is libcurl4-openssl-dev installed?)"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_read_block(tmp_path, impl, case):
    raw = CASES[case]
    path = write(tmp_path / "blk", raw)
    got = impl.read_block(path)
    if case in VALID:
        assert got is not None and got.readonly
        assert got.tobytes() == raw[HEADER.size:]
    else:
        assert got is None
    # verify=False skips only the checksum: structural damage is still caught
    unverified = impl.read_block(path, verify=False)
    if case in VALID | BAD_CHECKSUM_ONLY:
        assert unverified is not None and unverified.tobytes() == raw[HEADER.size:]
    else:
        assert unverified is None


@pytest.mark.parametrize("impl", IMPLS)
def test_read_block_errors(tmp_path, impl):
    with pytest.raises(FileNotFoundError) as e:
        impl.read_block(str(tmp_path / "missing"))
    assert e.value.filename == str(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        impl.read_block(str(tmp_path))


@pytest.mark.parametrize("impl", IMPLS)
def test_read_block_buffer_outlives_reader(tmp_path, impl):
    """The payload stays valid after the file is gone and after other views are dropped."""
    path = write(tmp_path / "blk", block_bytes(GOOD))
    view = impl.read_block(path)
    part = view[100:200]
    del view
    os.unlink(path)
    assert part.tobytes() == GOOD[100:200]
    with pytest.raises(TypeError):
        part[0] = 1          # read-only: the kernel may still be copying from it


@pytest.mark.parametrize("impl", IMPLS)
def test_read_ranges_matches_reference(tmp_path, impl):
    rng = random.Random(5)
    payloads = [rng.randbytes(n) for n in (4 << 20, 1 << 20, 12345)]
    paths = [write(tmp_path / f"b{i}", block_bytes(p)) for i, p in enumerate(payloads)]
    for _ in range(50):
        ranges = []
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(payloads))
            off = rng.randint(0, len(payloads[i]))
            ranges.append((paths[i], off, rng.randint(0, len(payloads[i]) - off)))
        want = b"".join(payloads[paths.index(p)][off:off + n] for p, off, n in ranges)
        got = impl.read_ranges(ranges)
        assert got.readonly and got.tobytes() == want
    # the FUSE case: the tail of one block and the head of the next, 128 KiB in all
    tail = (paths[0], len(payloads[0]) - 50_000, 50_000)
    assert impl.read_ranges([tail, (paths[1], 0, 81_072)]).tobytes() == payloads[0][-50_000:] + payloads[1][:81_072]
    assert impl.read_ranges([]).tobytes() == b""


@pytest.mark.parametrize("impl", IMPLS)
def test_read_ranges_errors(tmp_path, impl):
    path = write(tmp_path / "blk", block_bytes(GOOD))
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError) as e:
        impl.read_ranges([(path, 0, 10), (missing, 0, 0)])
    assert e.value.filename == missing
    with pytest.raises(OSError) as e:        # past the end of the payload: a short read
        impl.read_ranges([(path, len(GOOD) - 10, 11)])
    assert e.value.filename == path and e.value.errno == 5
    with pytest.raises(ValueError):
        impl.read_ranges([(path, -1, 10)])
    with pytest.raises(ValueError):
        impl.read_ranges([(path, 0, -1)])


def test_env_var_forces_fallback():
    import subprocess
    import sys
    code = "from cachefs import native; print(native.ACTIVE, native.read_ranges is native.py_read_ranges)"
    env = dict(os.environ, CACHEFS_NO_NATIVE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["python", "True"]


# open() of a FIFO blocks until a writer comes: only a reader that released the GIL lets the main
# thread run to be that writer. Run in a child, because a held GIL would hang this process beyond
# the reach of pytest-timeout (its handler needs the GIL too).
GIL_CHILD = """
import os, sys, threading, time
from cachefs import _native as C
fifo = sys.argv[1]
for call in (lambda: C.read_block(fifo), lambda: C.read_ranges([(fifo, 0, 1)])):
    os.mkfifo(fifo)
    def reader():
        try:
            call()              # read_block: None (st_size 0); read_ranges: ESPIPE
        except OSError:
            pass
    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.3)             # let the reader block in open() first
    os.close(os.open(fifo, os.O_WRONLY))
    t.join()
    os.unlink(fifo)
print("ok")
"""


@pytest.mark.skipif(C is None, reason="extension not built")
def test_gil_released_during_io(tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", GIL_CHILD, str(tmp_path / "fifo")],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "ok", out.stderr
