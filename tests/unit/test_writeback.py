"""Writeback over the in-memory store: retries with backoff, nothing dropped, schedule decisions,
part sizes, and replay of pending files after a restart."""
from __future__ import annotations

import os
import shutil
import time

import pytest
import trio

from cachefs.errors import StoreUnavailable
from cachefs.meta.schema import KIND_DIR, KIND_FILE, ROOT_INO
from cachefs.meta.store import Entry, MetaStore
from cachefs.stats import Stats
from cachefs.store.memory import MemoryStore
from cachefs.writeback import StagingFull, Writeback, part_size
from cachefs.writeback import upload as wbmod

MiB = 1 << 20


async def run_blocking(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)


class FlakyStore(MemoryStore):
    """Fails the first `failures` uploads (PUTs and parts) as an unreachable S3 would."""

    def __init__(self, failures: int) -> None:
        super().__init__("bkt")
        self.failures = failures
        self.attempts = 0

    def _maybe_fail(self):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise StoreUnavailable("S3 unreachable (injected)")

    def put_object(self, key, data):
        self._maybe_fail()
        return super().put_object(key, data)

    def upload_part(self, key, upload_id, number, data):
        self._maybe_fail()
        return super().upload_part(key, upload_id, number, data)


def make(tmp_path, store, **kw):
    meta = MetaStore(str(tmp_path / "meta"), "test|bkt|")
    args = dict(prefix="", staging_dir=str(tmp_path / "staging"), staging_size=64 * MiB,
                small_file_threshold=MiB, small_sync_interval=0.1, large_sync_interval=0.1,
                part_size=5 * MiB, upload_concurrency=4)
    args.update(kw)
    wb = Writeback(meta, store, run_blocking, Stats(), **args)
    wb.open()
    return meta, wb


def run_scheduler(wb, body=None, flush: float = 10) -> list[str]:
    """Run the upload scheduler around `await body()`, then flush; returns what is still pending."""
    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wb.run)
            if body is not None:
                await body()
            left = await wb.flush_all(flush)
            nursery.cancel_scope.cancel()
        return left
    return trio.run(main)


def new_file(meta, wb, name):
    inode = meta.put_entry(meta.get_inode(ROOT_INO), Entry(name, KIND_FILE, 0, 0, ""))
    return wb.stage_new(inode)


def test_failed_uploads_are_retried_with_backoff_and_nothing_is_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(wbmod, "RETRY_FIRST_S", 0.05)
    store = FlakyStore(failures=3)
    meta, wb = make(tmp_path, store)
    st = new_file(meta, wb, "log.txt")
    wb.opened(st, True)
    wb.write(st, 0, b"line 1\n")
    wb.closed(st, True)

    started = time.monotonic()
    assert run_scheduler(wb) == []
    assert store.get_range("log.txt", 0, 7) == b"line 1\n"
    assert store.attempts == 4 and wb.stats.get("upload_failures") == 3
    assert time.monotonic() - started >= 0.05 + 0.1 + 0.2     # 3 backoffs: 50, 100, 200 ms
    assert meta.pending() == {}
    assert list(wb.staging.retained) == [st.ino]            # uploaded and closed: its copy stays for reads
    assert wb.get(st.ino).etag == meta.get_inode(st.ino).etag


def test_persistent_failure_keeps_data_staged_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(wbmod, "RETRY_FIRST_S", 0.05)
    store = FlakyStore(failures=10**6)
    meta, wb = make(tmp_path, store, small_sync_interval=3600, large_sync_interval=3600)
    st = new_file(meta, wb, "ckpt")
    wb.opened(st, True)
    wb.write(st, 0, b"x" * 1000)
    wb.closed(st, True)

    assert run_scheduler(wb, flush=1.0) == ["ckpt"]
    assert store.attempts >= 3 and wb.stats.get("upload_failures") == store.attempts   # on the backoff,
    # not after the hour-long schedule interval
    assert (tmp_path / "staging" / str(st.ino)).read_bytes() == b"x" * 1000
    assert list(meta.pending()) == [st.ino]
    wb.close()
    # A restart adopts it and, with S3 back, uploads it.
    store.failures = 0
    meta2 = meta
    wb2 = Writeback(meta2, store, run_blocking, Stats(), prefix="", staging_dir=str(tmp_path / "staging"),
                    staging_size=64 * MiB, small_file_threshold=MiB, small_sync_interval=0.1,
                    large_sync_interval=0.1, part_size=5 * MiB, upload_concurrency=4)
    wb2.open()
    assert wb2.pending_paths() == ["ckpt"]

    assert run_scheduler(wb2, flush=5) == []
    assert store.get_range("ckpt", 0, 1000) == b"x" * 1000


def test_multipart_upload_with_parallel_parts(tmp_path):
    store = MemoryStore("bkt")
    meta, wb = make(tmp_path, store)
    st = new_file(meta, wb, "big")
    data = bytes(range(256)) * (48 * 1024)          # 12 MiB: parts of 5, 5, 2 MiB
    wb.opened(st, True)
    for off in range(0, len(data), MiB):
        wb.write(st, off, data[off:off + MiB])
    wb.closed(st, True)

    assert run_scheduler(wb) == []
    assert store.get_range("big", 0, len(data)) == data
    assert wb.stats.get("upload_parts") == 3 and store.multipart_uploads() == []


def test_schedule(tmp_path):
    meta, wb = make(tmp_path, MemoryStore("bkt"), small_sync_interval=5, large_sync_interval=300)
    st = new_file(meta, wb, "f")
    wb.opened(st, True)
    wb.write(st, 0, b"a")
    now = time.monotonic()
    assert not wb.due(st, now)                      # just written
    assert wb.due(st, now + 5.1)                    # quiet for the small interval
    st.last_write = now + 4                         # still growing after 5 s: due all the same
    assert wb.due(st, now + 5.1)
    wb.write(st, 0, b"b" * (2 * MiB))               # now a large file
    assert not wb.due(st, time.monotonic() + 10)
    assert wb.due(st, time.monotonic() + 301)
    wb.closed(st, True)                             # the last writer closed it: upload now
    assert wb.due(st, time.monotonic())


def test_staging_limit_gives_enospc_and_keeps_what_was_acknowledged(tmp_path):
    meta, wb = make(tmp_path, MemoryStore("bkt"), staging_size=2 * MiB)
    st = new_file(meta, wb, "f")
    wb.write(st, 0, b"a" * MiB)
    with pytest.raises(StagingFull) as err:
        wb.write(st, MiB, b"b" * (2 * MiB))
    assert err.value.errno == 28 and st.size == MiB
    wb.write(st, 0, b"c" * 10)                       # overwriting within the file needs no room
    assert wb.read(st, 0, 12) == b"c" * 10 + b"aa"


def test_part_size_grows_past_ten_thousand_parts():
    assert part_size(100 * MiB, 16 * MiB) == 16 * MiB
    big = 400 * 1024 * MiB                           # 400 GiB / 10,000 parts > 16 MiB
    assert part_size(big, 16 * MiB) * 10_000 >= big and part_size(big, 16 * MiB) % MiB == 0


def test_retained_copies_make_room_and_go_when_s3_changes(tmp_path):
    store = MemoryStore("bkt")
    meta, wb = make(tmp_path, store, staging_size=3 * MiB)
    files = []
    for name in ("a", "b"):
        st = new_file(meta, wb, name)
        wb.opened(st, True)
        wb.write(st, 0, name.encode() * MiB)
        wb.closed(st, True)
        files.append(st)

    assert run_scheduler(wb) == []
    a, b = files
    assert wb.get(a.ino) is a and wb.get(b.ino) is b and wb.staged_bytes == 2 * MiB
    c = new_file(meta, wb, "c")
    wb.write(c, 0, b"c" * (2 * MiB))                 # needs the room of the oldest retained copy
    kept = [x for x in files if wb.get(x.ino) is not None]
    assert len(kept) == 1 and wb.staged_bytes == 3 * MiB
    assert sorted(os.listdir(tmp_path / "staging")) == sorted([str(kept[0].ino), str(c.ino)])
    meta.set_file(kept[0].ino, MiB, '"changed-elsewhere"', 0)   # a listing saw another version in S3
    assert wb.get(kept[0].ino) is None and os.listdir(tmp_path / "staging") == [str(c.ino)]


def test_restart_aborts_multipart_uploads_a_dead_daemon_left(tmp_path):
    store = MemoryStore("bkt")
    meta = MetaStore(str(tmp_path / "meta"), "test|bkt|")
    inode = meta.put_entry(meta.get_inode(ROOT_INO), Entry("ckpt", KIND_FILE, 0, 0, ""))
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / str(inode.ino)).write_bytes(b"z" * 100)
    in_flight = store.create_multipart("ckpt")          # the daemon died before S3's answer came
    recorded = store.create_multipart("gone")            # ... and here with a recorded id, file unlinked
    other = store.create_multipart("ckpt-other")         # someone else's: not ours to abort
    meta.put_pending(inode.ino, {"path": "ckpt", "remote": None, "upload": ["ckpt", ""]})
    meta.put_pending(inode.ino + 100, {"path": "gone", "remote": None, "upload": ["gone", recorded]})
    meta.close()
    meta, wb = make(tmp_path, store)
    assert wb.pending_paths() == ["ckpt"]

    assert run_scheduler(wb) == []
    assert store.multipart_uploads() == [other] and in_flight != other
    assert store.get_range("ckpt", 0, 100) == b"z" * 100 and meta.pending() == {}


class SlowStore(MemoryStore):
    def put_object(self, key, data):
        time.sleep(0.2)            # a real PUT takes a while: the log grows meanwhile
        return super().put_object(key, data)


def test_a_growing_small_file_is_uploaded_once_per_interval(tmp_path):
    store = SlowStore("bkt")
    meta, wb = make(tmp_path, store, small_sync_interval=0.5)
    st = new_file(meta, wb, "train.log")
    wb.opened(st, True)

    async def log_lines():
        start = trio.current_time()
        while trio.current_time() - start < 3.0:          # a line every 10 ms for 3 s
            wb.write(st, st.size, b"loss 0.1\n")
            await trio.sleep(0.01)
    run_scheduler(wb, log_lines, flush=0)
    puts = store.stats.get("s3_put")
    assert 4 <= puts <= 7, f"{puts} PUTs in 3 s with a 0.5 s interval"


def test_a_large_file_written_sequentially_uploads_its_parts_while_open(tmp_path):
    store = MemoryStore("bkt")
    meta, wb = make(tmp_path, store, large_sync_interval=3600)
    st = new_file(meta, wb, "ckpt")
    data = bytes(range(256)) * (4 * 17 * 1024)            # 17 MiB: parts of 5, 5, 5, 2 MiB
    wb.opened(st, True)

    async def write_checkpoint():
        for off in range(0, len(data), MiB):
            wb.write(st, off, data[off:off + MiB])
            await trio.sleep(0.05)
        while wb.stats.get("upload_parts") < 3:          # parts 1-3 while the file is open
            await trio.sleep(0.05)
        assert store.head("ckpt") is None and st.session is not None and len(st.session.done) == 3
        wb.write(st, 6 * MiB, b"changed")                   # part 2 changes after its upload
        assert 2 not in st.session.done
        wb.closed(st, True)
    assert run_scheduler(wb, write_checkpoint) == []
    want = bytearray(data)
    want[6 * MiB:6 * MiB + 7] = b"changed"
    assert store.get_range("ckpt", 0, len(want)) == bytes(want)
    # parts 1-3 early, then 2 again and 4 at close: every other part went up once
    assert wb.stats.get("upload_parts") == 5 and store.multipart_uploads() == []


def test_truncating_a_file_abandons_its_eager_upload(tmp_path):
    store = MemoryStore("bkt")
    meta, wb = make(tmp_path, store, large_sync_interval=3600)
    st = new_file(meta, wb, "ckpt")
    wb.opened(st, True)

    async def write_then_truncate():
        for off in range(0, 12 * MiB, MiB):
            wb.write(st, off, b"x" * MiB)
            await trio.sleep(0.05)
        while st.session is None or len(st.session.done) < 2:
            await trio.sleep(0.05)
        wb.truncate(st, MiB)
        wb.closed(st, True)
    assert run_scheduler(wb, write_then_truncate) == []
    assert store.get_range("ckpt", 0, MiB) == b"x" * MiB and store.head("ckpt").size == MiB
    assert store.multipart_uploads() == []


class SlowPartStore(MemoryStore):
    """Parts take a while, so that the file changes while its multipart upload is in flight."""

    def __init__(self, delay: float) -> None:
        super().__init__("bkt")
        self.delay = delay
        self.aborted_while_sending: list[str] = []
        self._sending: set[str] = set()

    def upload_part(self, key, upload_id, number, data):
        self._sending.add(upload_id)
        try:
            time.sleep(self.delay)
            return super().upload_part(key, upload_id, number, data)
        finally:
            self._sending.discard(upload_id)

    def abort_multipart(self, key, upload_id):
        if upload_id in self._sending:
            self.aborted_while_sending.append(upload_id)
        return super().abort_multipart(key, upload_id)


def test_a_truncate_during_a_multipart_upload_never_aborts_the_session_it_sends_to(tmp_path):
    """Issue 15: close started a multipart upload, a truncate right after aborted its session while
    parts were still going to it, and the failed part ended the daemon."""
    store = SlowPartStore(delay=0.2)
    meta, wb = make(tmp_path, store, large_sync_interval=3600)
    st = new_file(meta, wb, "ckpt")
    data = os.urandom(17 * MiB)

    async def close_then_truncate():
        wb.opened(st, True)
        wb.write(st, 0, data)
        wb.closed(st, True)                # due now: a 4-part upload starts
        while not st.uploading:
            await trio.sleep(0.01)
        await trio.sleep(0.05)
        wb.opened(st, True)
        wb.truncate(st, 12 * MiB)          # past one part: still a multipart upload
        wb.closed(st, True)
    assert run_scheduler(wb, close_then_truncate, flush=30) == []
    assert store.aborted_while_sending == []
    assert store.get_range("ckpt", 0, 12 * MiB) == data[:12 * MiB] and store.head("ckpt").size == 12 * MiB
    assert store.multipart_uploads() == []
    assert wb.stats.get("upload_failures") == 0


class BrokenOnceStore(MemoryStore):
    """upload_part raises a programming error once, then a store error once: neither may end the
    scheduler, and the file still reaches the store."""

    def __init__(self) -> None:
        super().__init__("bkt")
        self.calls = 0

    def upload_part(self, key, upload_id, number, data):
        if number == 1:           # one call per attempt: the first attempt fails one way, the second another
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("a bug in a part upload (injected)")
            if self.calls == 2:
                raise StoreUnavailable("UploadPart answered 500 (injected)")
        return super().upload_part(key, upload_id, number, data)


def test_a_failing_part_ends_that_upload_alone_and_it_is_retried(tmp_path, monkeypatch, caplog):
    from cachefs import supervise
    monkeypatch.setattr(wbmod, "RETRY_FIRST_S", 0.05)
    before = supervise.failures()["upload"]
    store = BrokenOnceStore()
    meta, wb = make(tmp_path, store, large_sync_interval=3600, eager=False)
    st = new_file(meta, wb, "ckpt")
    data = os.urandom(11 * MiB)

    async def write():
        wb.opened(st, True)
        wb.write(st, 0, data)
        wb.closed(st, True)
    assert run_scheduler(wb, write, flush=30) == []
    assert store.get_range("ckpt", 0, len(data)) == data
    assert store.multipart_uploads() == []
    assert supervise.failures()["upload"] - before == 2
    assert wb.stats.get("upload_failures") == 2
    bugs = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(bugs) == 1 and "RuntimeError" in bugs[0].getMessage()


def test_the_scheduler_loop_restarts_after_a_bug(tmp_path, monkeypatch):
    from cachefs import supervise
    monkeypatch.setattr(supervise, "RESTART_PAUSE_S", 0.05)
    store = MemoryStore("bkt")
    meta, wb = make(tmp_path, store)
    calls = {"n": 0}
    real_due = wb.scheduler.due

    def due_with_bug(st, now, moving_out=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("a bug in the scheduler (injected)")
        return real_due(st, now, moving_out)
    monkeypatch.setattr(wb.scheduler, "due", due_with_bug)
    st = new_file(meta, wb, "log")

    async def write():
        wb.opened(st, True)
        wb.write(st, 0, b"hello")
        wb.closed(st, True)
    assert run_scheduler(wb, write) == []
    assert store.get_range("log", 0, 5) == b"hello"
    assert supervise.failures()["scheduler"] >= 1


def test_reopening_a_large_file_for_writing_without_a_change_leaves_no_multipart_upload(tmp_path):
    """Found by bench/stress.py: a file written to its end kept `write_end == size`, so reopening it
    for writing opened an early multipart session at once; nothing changed, nothing completed it."""
    store = MemoryStore("bkt")
    meta, wb = make(tmp_path, store, large_sync_interval=3600)
    st = new_file(meta, wb, "ckpt")
    data = os.urandom(12 * MiB)

    async def write_close_reopen():
        wb.opened(st, True)
        wb.write(st, 0, data)
        wb.closed(st, True)
        while st.dirty or st.uploading:
            await trio.sleep(0.02)
        wb.opened(st, True)                  # copy_file_range of 0 bytes, an editor that saves nothing
        await trio.sleep(0.5)
        wb.closed(st, True)
        await trio.sleep(0.5)
    assert run_scheduler(wb, write_close_reopen) == []
    assert store.multipart_uploads() == []
    assert store.get_range("ckpt", 0, len(data)) == data


def test_a_directory_rename_gives_no_pending_record_back_to_an_unlinked_file(tmp_path):
    """Found by bench/stress.py: a file unlinked while still held (open) got its pending record back
    when its directory was renamed, and the next daemon after a kill -9 uploaded it."""
    store = MemoryStore("bkt")
    meta, wb = make(tmp_path, store)
    root = meta.get_inode(ROOT_INO)
    d = meta.put_entry(root, Entry("d", KIND_DIR))
    inode = meta.put_entry(d, Entry("f", KIND_FILE, 0, 0, ""))
    st = wb.stage_new(inode)
    wb.opened(st, True)
    wb.write(st, 0, b"x")
    wb.unlinked(inode.ino)                   # still open: kept in staging for its handle
    wb.renamed_dir("d", "e")
    assert inode.ino not in meta.pending()
    wb.closed(st, True)


class SlowPutStore(MemoryStore):
    def put_object(self, key, data, *meta):
        time.sleep(0.5)            # still in flight when the file is renamed and the daemon dies
        return super().put_object(key, data, *meta)


@pytest.mark.parametrize("then", ["rename", "unlink"])
def test_a_restart_deletes_what_a_dead_daemons_upload_left_under_a_name_since_left(tmp_path, then):
    """Found by bench/stress.py with kill -9: the file was renamed (or unlinked) while its PUT to the
    old name was in flight, the daemon died, the PUT landed after the next daemon's replay, and
    nothing deleted it. The record keeps the name the upload was sending to."""
    store = SlowPutStore("bkt")
    meta, wb = make(tmp_path, store, answer_grace=0.2)
    st = new_file(meta, wb, "a")
    wb.opened(st, True)
    wb.write(st, 0, b"payload")

    async def close_then_move_and_die():
        wb.closed(st, True)
        while not st.uploading:
            await trio.sleep(0.01)
        root = meta.get_inode(ROOT_INO)
        if then == "rename":
            meta.move(ROOT_INO, b"a", root, b"b")
            wb.renamed(st.ino, "b")
        else:
            meta.remove_entry(ROOT_INO, b"a")
            wb.unlinked(st.ino)
        meta.sync()                            # kill -9 here: what the disk holds is all there is
        shutil.copytree(tmp_path / "meta", crashed / "meta")
        shutil.copytree(tmp_path / "staging", crashed / "staging")

    crashed = tmp_path / "crashed"
    crashed.mkdir()
    assert run_scheduler(wb, close_then_move_and_die) == []
    meta.close()
    assert store.head("a") is None            # this daemon lived on and cleaned up; a dead one
    store.put_object("a", b"payload")          # could not: its PUT lands after the next one started
    meta = MetaStore(str(crashed / "meta"), "test|bkt|")
    record = meta.pending()[st.ino]
    assert record["sending"] == "a" and record["path"] == ("b" if then == "rename" else None)
    meta.close()
    meta, wb = make(crashed, store, answer_grace=0.2)
    assert run_scheduler(wb) == []
    assert store.head("a") is None
    if then == "rename":
        assert store.get_range("b", 0, 7) == b"payload"
    assert meta.pending() == {}
