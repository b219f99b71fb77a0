"""SIGKILL of the daemon in a loop during mixed reads, writes and uploads (CACHEFS_CRASH_LOOP_ROUNDS, 5 in
CI); the same cache directory remounted each time, and after EACH remount:

- the cache index is consistent: the block files the dead daemon left that are whole are all indexed
  again (the start-up scan adopted what the lost index batch forgot), torn and temp files are gone,
  every indexed block has its file, of the indexed size, and its checksum verifies; every pending-upload
  record the dead daemon committed has its staging file, and the new daemon reports them all pending;
- reading data cached before the crash costs GETs only for blocks that did not survive (the data read
  before the loop, all of whose blocks survive, costs none), and returns the right bytes;
- after `cachefs flush`: every byte any writer had fsynced, in every round so far, is in S3 byte-exact
  (and the object is a prefix of what the writer wrote: no garbage past it), no pending record is left,
  no multipart upload is left.

The writers are tests/crash_writer.py (fsync after random chunks; files of 3 KB to 7 MiB, the large
ones multipart); uploads are kept in flight by slowing every other upload request down in the fault
proxy; readers in threads read cached data and data never read before (cold), byte-checked.
"""
from __future__ import annotations

import errno
import os
import random
import signal
import threading
import time

import pytest
from mount_helpers import BLOCK_SIZE, force_unmount, object_bytes, run_cachefs, wait_until
from reliability_helpers import (
    cache_state,
    crash_writer_bytes,
    crash_writer_synced,
    read_past_page_cache,
    start_crash_writer,
)

from cachefs.blocks import block_count, block_key
from cachefs.devtools.faultproxy import Fault

ROUNDS = int(os.environ.get("CACHEFS_CRASH_LOOP_ROUNDS", "5"))
pytestmark = pytest.mark.timeout(60 + 30 * ROUNDS)

WARM = {f"warm/{i}.bin": object_bytes(f"crash-warm-{i}", (1 << 20) + 7919 * i) for i in range(6)}


def cold(rnd: int) -> dict[str, bytes]:
    return {f"cold/r{rnd}/{i}.bin": object_bytes(f"crash-cold-{rnd}-{i}", (3 << 19) + 4099 * i) for i in range(4)}


GONE = (errno.ENOTCONN, errno.ECONNABORTED)      # what a read sees once the daemon is dead


class Readers:
    """Threads reading whole files past the page cache, comparing every byte, until the mount dies."""

    def __init__(self, mount, objects: dict[str, bytes], n: int, seed: int):
        self.errors: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(mount, objects, random.Random(seed * 100 + i)),
                                         daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, mount, objects, rng):
        keys = sorted(objects)
        while not self._stop.is_set():
            key = rng.choice(keys)
            try:
                got = read_past_page_cache(mount / key)
            except OSError as e:
                if e.errno not in GONE:
                    self.errors.append(f"{key}: {e}")
                return
            self.reads += 1
            if got != objects[key]:
                self.errors.append(f"{key}: wrong bytes ({len(got)} of {len(objects[key])})")

    def join(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "a reader hung after the daemon was killed"


def test_sigkill_loop_keeps_fsynced_data_and_a_consistent_cache(mounter, make_bucket, s3, fault_proxy, tmp_path):
    objects = {**WARM}
    for rnd in range(ROUNDS):
        objects.update(cold(rnd))
    bucket = make_bucket("crash-loop", objects)
    ssd, staging = tmp_path / "ssd", tmp_path / "staging"
    m = mounter.mount(bucket, "--cache", "mem:32MiB", "--cache", f"ssd:{ssd}:512MiB", "--staging-dir", str(staging),
                      "--small-sync-interval", "0.2", "--small-file-threshold", "1MiB",
                      "--large-sync-interval", "0.3", "--multipart-part-size", "5MiB",
                      endpoint_url=fault_proxy.url)
    meta = m.cache_dir / "meta"
    etags = {k: s3.head_object(Bucket=bucket, Key=k)["ETag"] for k in objects}

    def keys_of(key: str) -> list[bytes]:
        return [block_key(bucket, key, etags[key], BLOCK_SIZE, i)
                for i in range(block_count(len(objects[key]), BLOCK_SIZE))]

    for key in WARM:                                   # cached before the first crash
        assert read_past_page_cache(m.path / key) == WARM[key]
    assert run_cachefs(["flush", str(m.path)], m.env).returncode == 0
    warm_keys = {k for key in WARM for k in keys_of(key)}
    assert warm_keys <= cache_state(ssd, meta, staging).index.keys(), "block keys computed unlike the reader's"

    rng = random.Random(int(os.environ.get("CACHEFS_CRASH_LOOP_SEED", "9")))
    synced: dict[tuple[str, str], int] = {}            # (seed, name) -> longest fsynced length
    figures = []
    for rnd in range(ROUNDS):
        seed = f"r{rnd}"
        os.makedirs(m.path / seed)
        readable = {**WARM, **{k: v for r in range(rnd + 1) for k, v in cold(r).items()}}
        slow = fault_proxy.add(Fault("delay", ops="upload_part,complete_multipart,put", seconds=0.3, probability=0.5))
        writer = start_crash_writer(m.path / seed, seed)
        readers = Readers(m.path, readable, 3, rnd)
        time.sleep(rng.uniform(0.8, 3.0))              # the random point of the kill
        os.kill(m.pid(), signal.SIGKILL)
        out, _ = writer.communicate(timeout=60)
        readers.join()
        fault_proxy.remove(slow)
        assert readers.errors == [], readers.errors[:5]
        synced.update({(seed, name): n for name, n in crash_writer_synced(out).items()})

        # What the dead daemon left: whole block files, maybe torn ones; records with staging files.
        dead = cache_state(ssd, meta, staging)
        in_flight = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert set(dead.pending) <= dead.staging, f"pending records without staging files: {dead.pending}"
        intact = {k for k, ok in dead.files.items() if ok}

        force_unmount(m.real_path)
        log_mark = len(m.log_text())
        m = mounter.remount(m)
        t_mount = time.monotonic()
        up = cache_state(ssd, meta, staging)            # before any read: the start-up scan's work only
        assert up.index_problems() == [], up.index_problems()[:10]
        assert set(up.index) == intact, (f"start-up scan: lost {len(intact - set(up.index))} whole block files, "
                                         f"kept {len(set(up.index) - intact)} others")
        log = m.log_text()[log_mark:]
        if dead.pending:
            assert f"{len(dead.pending)} file(s) written before the last stop are pending upload" in log, log[-3000:]

        # Cached data: right bytes, and GETs only for blocks that did not survive.
        for key in sorted(readable):
            assert read_past_page_cache(m.path / key) == readable[key], key
        for key in sorted(readable):
            lost = {i for i, k in enumerate(keys_of(key)) if k not in up.index}
            fetched = {int(s.range.split("=")[1].split("-")[0]) // BLOCK_SIZE
                       for s in fault_proxy.seen("get", key, since=t_mount) if s.range}
            assert fetched <= lost, f"{key}: blocks {sorted(fetched - lost)} were cached but fetched again"
            if key in WARM:
                assert not lost, f"{key}: cached before the loop, blocks {sorted(lost)} gone"

        res = run_cachefs(["flush", str(m.path)], m.env, timeout_s=120)
        assert res.returncode == 0, res.describe()
        for (s, name), length in sorted(synced.items()):
            body = s3.get_object(Bucket=bucket, Key=f"{s}/{name}")["Body"].read()
            assert len(body) >= length, f"{s}/{name}: S3 has {len(body)} bytes, {length} were fsynced"
            assert body == crash_writer_bytes(s, name, len(body)), f"{s}/{name}: S3's bytes differ"
        after = cache_state(ssd, meta, staging)
        assert after.pending == {}, f"still pending after flush: {after.pending}"
        assert after.index_problems() == [], after.index_problems()[:10]
        assert wait_until(lambda: s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == [], 10), \
            s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
        figures.append({"round": rnd, "fsynced_files": sum(1 for (s, _) in synced if s == seed),
                        "reads": readers.reads, "pending_at_kill": len(dead.pending),
                        "multipart_at_kill": len(in_flight), "blocks": len(up.index),
                        "not_indexed_at_kill": len(intact - set(dead.index)),
                        "torn_or_tmp": len(dead.strays) + sum(1 for ok in dead.files.values() if not ok)})
    print("\nRELIABILITY crash loop", *figures, sep="\n")
    assert synced, "the writers never got an fsync through"
    assert sum(f["pending_at_kill"] for f in figures) > 0, "no kill found an upload pending"
