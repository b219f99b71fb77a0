"""Order-aware prefetch, the parts that need no mount: the order's path index, the window arithmetic
(what is ahead, what is passed, when a file fits), cachefs.hints's derivation of the control socket
against cachefs.ipc's, and the sampler wrapper without PyTorch."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import xxhash

from cachefs import hints, ipc
from cachefs.reader import orderlist
from cachefs.reader.orderlist import MIN_SLACK, TRAIL_S, OrderList, Progress, default_window, normalize
from cachefs.torch import HintedSampler, paths_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- the order's paths --------------------------------------------------------------------------------
def test_normalize_spells_paths_as_the_mount_does():
    assert normalize("/train/./n01//a.jpg") == "train/n01/a.jpg"
    assert normalize("a.jpg") == "a.jpg"
    assert normalize("../etc/passwd") is None and normalize("a/../../b") is None
    assert normalize("") is None and normalize("/") is None


@pytest.mark.parametrize("chunk", [4, 1 << 16])
def test_find_gives_the_first_position_at_or_after_start(monkeypatch, chunk):
    monkeypatch.setattr(orderlist, "INDEX_CHUNK", chunk)
    order = OrderList()
    paths = [f"d{i % 7}/f{i}.jpg" for i in range(50)] + ["d0/f3.jpg"]     # one path twice
    for p in paths:
        order.append(p)
    assert len(order) == 51
    assert [order.path(i) for i in range(51)] == paths
    for i, p in enumerate(paths[:50]):
        assert order.find(p) == i
    assert order.find("d0/f3.jpg", 4) == 50 and order.find("d0/f3.jpg", 51) is None
    assert order.find("nowhere.jpg") is None
    assert order.find("d1/f1.jpg", 2) is None


def test_an_order_of_many_paths_stays_compact():
    order = OrderList()
    for i in range(200_000):
        order.append(f"train/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG")
    assert order.find("train/n00000999/n00000999_199999.JPEG") == 199_999
    # ~38 bytes a path + 8 of offset + 16 of index (a Python str each would be ~90)
    assert len(order._blob) + order._ends.itemsize * len(order) < 50 * 200_000


# -- the window -----------------------------------------------------------------------------------------
def test_default_window_is_half_the_room():
    assert default_window(10 << 30) == 5 << 30


def test_fits_counts_bytes_ahead_and_never_a_file_larger_than_the_window():
    p = Progress(window=100)
    p.grow(10)
    assert p.fits(100) and not p.fits(101)
    p.start(0, 60)
    assert p.fits(40) and not p.fits(41)
    p.start(1, 40)
    assert p.ahead == 100 and not p.fits(1)
    p.opened(0)                               # the reader took one: its bytes leave the window
    assert p.ahead == 40 and p.fits(60)
    p.release(1)                              # a failed or cancelled fetch gives its bytes back
    assert p.ahead == 0


def test_a_file_is_overtaken_when_every_open_for_a_while_was_well_past_it():
    p = Progress(window=1000)
    p.grow(100)
    for pos in range(5):
        p.start(pos, 10)
    assert p.opened(40, now=0.0) == []        # the reader jumps ahead: not believed at once
    assert p.opened(3, now=0.5) == []         # ... and rightly: another worker is still at 3
    assert p.low == 0 and not p.is_passed(0) and p.is_passed(3)
    assert p.opened(41, now=TRAIL_S + 0.1) == []     # 3 was opened within TRAIL_S: the edge stays low
    overtaken = p.opened(42, now=TRAIL_S + 0.6)      # every open in the last TRAIL_S is >= 41
    assert overtaken == [0, 1, 2, 4]
    assert p.edge == 41 - MIN_SLACK and p.low == p.edge
    assert p.ahead == 0
    assert all(p.is_passed(i) for i in range(p.edge)) and not p.is_passed(p.edge)


def test_workers_reading_their_own_batches_overtake_nothing():
    """Eight workers, each reading its batch of 32 in order, opens interleaved: no file of a batch
    is passed before its worker opens it."""
    p = Progress(window=10**9)
    p.grow(8 * 32)
    t = 0.0
    for i in range(32):
        for w in range(8):
            t += 0.01
            pos = w * 32 + i
            assert not p.is_passed(pos), (pos, p.low)
            p.opened(pos, now=t)
    assert p.low == 8 * 32


def test_done_positions_advance_the_low_mark():
    p = Progress(window=10)
    p.grow(3)
    p.done(0)
    p.done(1)
    assert p.low == 2


# -- cachefs.hints -------------------------------------------------------------------------------------
def test_hints_xxh64_is_xxhash():
    for n in list(range(70)) + [200, 1000]:
        data = os.urandom(n)
        assert hints.xxh64_hexdigest(data) == xxhash.xxh64_hexdigest(data)


def test_hints_finds_the_socket_where_ipc_puts_it(monkeypatch, tmp_path):
    for xdg in (str(tmp_path), None):
        if xdg:
            monkeypatch.setenv("XDG_RUNTIME_DIR", xdg)
        else:
            monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        for uid in (os.getuid(), 0, 12345):
            assert hints._runtime_dirs(uid) == ipc.runtime_dirs_of(uid)
        for mp in ("/mnt/data", "/home/user/a mount/ü", "/" + "x" * 80):
            runtime = ipc.runtime_dirs_of(os.getuid())[0]
            expect = ipc.control_socket_path(mp, runtime)
            assert os.path.join(runtime, hints.xxh64_hexdigest(mp.encode()) + ".sock") == expect


def test_hints_imports_nothing_but_the_standard_library():
    code = ("import sys, cachefs.hints, cachefs.torch\n"
            "mods = [m for m in sys.modules if m.split('.')[0] in ('xxhash', 'trio', 'pyfuse3', 'boto3', 'lmdb')"
            " or (m.startswith('cachefs.') and m not in ('cachefs.hints', 'cachefs.torch', 'cachefs.mountinfo'))]\n"
            "print(sorted(mods))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.stdout.strip() == "[]", out.stdout


def test_hints_refuses_what_is_not_a_mount(tmp_path):
    with pytest.raises(hints.HintError, match="not a cachefs mount"):
        hints.send_order(str(tmp_path), ["a"])


def test_hints_streams_the_order_over_a_socket(tmp_path):
    """The client's side of the protocol: request line, one path a line, an empty line, one answer."""
    import socket
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    got: list[bytes] = []

    def serve():
        conn, _ = server.accept()
        data = b""
        while not data.endswith(b"\n\n"):
            data += conn.recv(65536)
        got.append(data)
        conn.sendall(b'{"ok": true, "received": 3}\n')
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    mp = str(tmp_path / "mnt")
    answer = hints.send_order(mp, [mp + "/a/b.jpg", "c.jpg", 'we"ird\nname', ""], epoch=2, stream="rank1",
                              socket_path=path)
    t.join(5)
    assert answer == {"ok": True, "received": 3}
    lines = got[0].split(b"\n")
    assert lines[0] == b'{"op": "order", "epoch": 2, "stream": "rank1"}'
    assert lines[1:] == [b"a/b.jpg", b"c.jpg", b'"we\\"ird\\nname"', b"", b""]


# -- the sampler wrapper, without PyTorch ----------------------------------------------------------------
class Shard:
    """A duck-typed DistributedSampler: its own shard of indices, reshuffled per epoch."""

    def __init__(self, n: int, rank: int) -> None:
        self.n, self.rank, self.epoch = n, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(sorted(range(self.rank, self.n, 2), key=lambda i: (i * (7919 + 13 * self.epoch)) % 101))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, 2))


class Data:
    def __init__(self, n: int) -> None:
        self.paths = [f"/mnt/d/img{i}.jpg" for i in range(n)]


def test_sampler_sends_each_epochs_order_and_yields_the_same_indices():
    sent: list[tuple] = []

    def fake_send(mountpoint, paths, epoch=None, stream=None):
        sent.append((mountpoint, list(paths), epoch, stream))
        return {"ok": True}

    data = Data(20)
    sampler = HintedSampler(Shard(20, rank=1), "/mnt/d", dataset=data, send=fake_send)
    assert len(sampler) == 10 and sampler.stream == "rank1"
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        sampler.sender.join(5)
        assert sorted(indices) == list(range(1, 20, 2))
        assert sent[-1] == ("/mnt/d", [data.paths[i] for i in indices], epoch, "rank1")
    assert sent[0][1] != sent[1][1], "set_epoch did not reach the wrapped sampler"


def test_sampler_without_set_epoch_counts_epochs_and_takes_batches():
    sent = []
    sampler = HintedSampler([[3, 1], [0, 2]], "/m", path_of=lambda i: f"f{i}",
                            send=lambda mp, paths, epoch=None, stream=None: sent.append((list(paths), epoch)))
    assert list(sampler) == [[3, 1], [0, 2]]
    sampler.sender.join(5)
    list(sampler)
    sampler.sender.join(5)
    assert sent == [(["f3", "f1", "f0", "f2"], 0), (["f3", "f1", "f0", "f2"], 1)]
    assert sampler.stream == "default"


def test_a_failed_send_is_a_warning_not_an_error(caplog):
    def broken(*a, **k):
        raise hints.HintError("not a cachefs mount")

    sampler = HintedSampler(range(3), "/nowhere", path_of=str, send=broken)
    assert list(sampler) == [0, 1, 2]
    sampler.sender.join(5)
    assert "not sent" in caplog.text


def test_paths_of_takes_paths_or_imagefolder_samples():
    class Folder:
        samples = [("/m/a.jpg", 0), ("/m/b.jpg", 1)]
    assert paths_of(Folder())(1) == "/m/b.jpg"
    with pytest.raises(TypeError, match="path_of"):
        paths_of(object())
