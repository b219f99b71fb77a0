"""Write-back races driven in process, with S3 requests gated so the race happens every time.

A rename of a staged file deletes (or copies) the object S3 holds at its old name and then records
where S3 holds it: an upload of the file that started and finished while that request was in flight
set where S3 holds it too, and the rename's record overwrote it, so the upload's object stayed in S3
under a name no file has (tests/test_reliability_stress.py found it: p1/d418232119/r144101003).
"""
from __future__ import annotations

import functools
import os
import threading
import time

import trio

from cachefs.store.memory import MemoryStore
from inproc.harness import FsHarness


class GatedStore(MemoryStore):
    """The PUT of `gated_put` and the first DELETE of `gated_delete` wait for their gate before they
    are done, the first COPY from `gated_copy` after it is done and before it answers (in the worker
    thread that sends them, as a slow S3 answer would)."""

    def __init__(self, gated_put: str = "", gated_delete: str = "", gated_copy: str = "") -> None:
        super().__init__("bkt")
        self.gated_put, self.gated_delete, self.gated_copy = gated_put, gated_delete, gated_copy
        self.put_gate, self.delete_gate, self.copy_gate = threading.Event(), threading.Event(), threading.Event()
        self.put_waiting = self.delete_waiting = self.copy_waiting = False

    def put_object(self, key, data, metadata=None):
        if key == self.gated_put:
            self.put_waiting = True
            self.put_gate.wait(10)
        return super().put_object(key, data, metadata)

    def delete(self, key):
        if key == self.gated_delete and not self.delete_waiting:
            self.delete_waiting = True
            self.delete_gate.wait(10)
        super().delete(key)

    def copy(self, src, dst, metadata=None):
        etag = super().copy(src, dst, metadata)
        if src == self.gated_copy and not self.copy_waiting:
            self.copy_waiting = True
            self.copy_gate.wait(10)
        return etag


async def until(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await trio.sleep(0.01)
    return True


def test_an_upload_done_during_a_renames_delete_leaves_no_object_behind(tmp_path):
    store = GatedStore(gated_put="data/a", gated_delete="data/a")
    fs = FsHarness(tmp_path / "mount", store=store)
    data = b"x" * 300_000
    paused = False
    due = fs.wb.scheduler.due
    # The scheduler is late to start the upload a rename during the first upload made due (a
    # busy host): the next rename comes first.
    fs.wb.scheduler.due = lambda st, now, moving_out=None: not paused and due(st, now, moving_out)

    async def body():
        nonlocal paused
        ino = await fs.write_file("a", data)            # its upload to "a" starts at close, and waits
        assert await until(lambda: store.put_waiting)
        await fs.rename("a", "b")                       # during that upload: its copy to "b" comes next
        paused = True
        store.put_gate.set()
        st = fs.wb.get(ino)
        assert await until(lambda: st.remote == "a" and not st.uploading)
        assert st.path == "b"
        async with trio.open_nursery() as nursery:
            # The rename deletes S3's "a" (slow to answer); meanwhile the late upload copies "a" to
            # "b" and finishes (the fixed daemon starts no upload of a file being renamed).
            nursery.start_soon(fs.rename, "b", "c")
            assert await until(lambda: store.delete_waiting)
            paused = False
            fs.wb.signals.wake()
            await until(lambda: st.remote == "b" and not st.uploading, timeout=1.0)
            store.delete_gate.set()
        await fs.sync()
        assert fs.s3_keys() == ["data/c"]
        assert fs.s3_body("c") == data
        assert await fs.read_file("c") == data

    run(fs, store, body)


def test_a_write_uploaded_during_a_renames_copy_is_not_lost(tmp_path):
    store = GatedStore(gated_copy="data/a")
    fs = FsHarness(tmp_path / "mount", store=store)
    old, new = b"o" * 200_000, b"n" * 200_000

    async def body():
        ino = await fs.write_file("a", old)
        await fs.sync()                                 # clean: a rename copies S3's "a" to "b"
        info = await fs.open("a", os.O_WRONLY)          # another process has it open for writing
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.rename, "a", "b")
            assert await until(lambda: store.copy_waiting)      # copied (the old bytes), not yet answered
            assert await fs.ops.write(info.fh, 0, new) == len(new)
            await fs.ops.release(info.fh)               # its upload is due at once (the fixed daemon
            st = fs.wb.get(ino)                         # holds it until the rename is done)
            await until(lambda: st.synced == st.generation and not st.uploading, timeout=1.0)
            store.copy_gate.set()
        await fs.sync()
        assert fs.s3_keys() == ["data/b"]
        assert fs.s3_body("b") == new
        assert await fs.read_file("b") == new

    run(fs, store, body)


def run(fs: FsHarness, store: GatedStore, body) -> None:
    try:
        trio.run(fs.serve, body)
    finally:
        for gate in (store.put_gate, store.delete_gate, store.copy_gate):
            gate.set()
        fs.close()


def test_a_chown_during_an_uploads_bookkeeping_reaches_s3(tmp_path):
    """A chown while an upload carrying the old owner is in flight waits for it, then copies the
    object with the new owner. The upload's answer comes before its record is written: a chown
    that woke up in between (another file's upload finished) took the file for one whose next
    upload carries the owner, and S3 kept the old one (tests/test_posix_meta.py found it in CI)."""
    store = GatedStore(gated_put="data/a")
    fs = FsHarness(tmp_path / "mount", store=store)
    recorded = threading.Event()
    uploader = fs.wb.uploader
    on_uploaded = uploader.on_uploaded

    def slow_record(ino, etag):
        recorded.wait(10)
        on_uploaded(ino, etag)

    uploader.on_uploaded = slow_record

    async def body():
        ino = await fs.write_file("a", b"y")            # its upload (uid 0) starts at close, and waits
        assert await until(lambda: store.put_waiting)
        st = fs.wb.get(ino)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(fs.setattr, "a", "uid", st_uid=42))
            await trio.sleep(0.05)                      # the chown waits for the upload
            store.put_gate.set()
            assert await until(lambda: st.synced == st.generation)     # answered, its record not yet written
            fs.wb.signals.notify()                      # as another file's finished upload does
            await trio.sleep(0.05)
            recorded.set()
        await fs.sync()
        assert fs.s3_meta("a")["uid"] == "42"
        assert (await fs.stat("a")).st_uid == 42

    try:
        run(fs, store, body)
    finally:
        recorded.set()
