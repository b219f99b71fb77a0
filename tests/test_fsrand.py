"""fsrand: a model-based random test of a real cachefs mount (issue 15, item 3), in the spirit of
JuiceFS's Hypothesis "fsrand".

A Hypothesis RuleBasedStateMachine issues random sequences of file-system operations (create, open,
write at offsets, read, truncate, ftruncate, fallocate, copy_file_range, mmap writes, rename of files
and directories, unlink, mkdir, rmdir, chmod, chown, utimens, symlink, readlink, link, fsync, close,
stat, readdir) from several worker processes, each holding its own file handles. Every operation is
done on the mount (moto over HTTP, through the fault proxy) and on a reference directory on the local
disk, and the outcomes (value, bytes read, or errno) must agree, except where tests/fsrand_model.py's
DIFFERENCES table (each entry citing docs/SEMANTICS.md) says otherwise. Between steps, sometimes: a
clean remount, or `kill -9` of the daemon and a remount with the same cache directory (handles die
with the daemon; every acknowledged change must survive: SEMANTICS.md, Crash safety). Optionally
(drawn per example) 10 % of uploads (PUT, UploadPart, Create/CompleteMultipartUpload) answer 500.
At the end of each example: `cachefs flush`, then S3 (read with boto3), a fresh mount with an empty
cache directory and the reference must agree (tests/fsrand_model.py ATTRIBUTES says what is compared
in which context).

Profiles (CACHEFS_FSRAND_PROFILE): "ci" (the default, in `make test`: 10 derandomized examples of
at most 40 steps, about 100 s), "fuzz" (`make fuzz FUZZ_MINUTES=20`: rounds of new seeds until the time is up,
each seed printed, failures kept in tests/.fsrand-db and replayed first next time).
"""
from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test

sys.path.insert(0, str(Path(__file__).parent))
import fsrand_model as fm  # noqa: E402
from mount_helpers import force_unmount, log_problems, pid_alive, run_cachefs, stop_pid, wait_until  # noqa: E402

PROFILE = os.environ.get("CACHEFS_FSRAND_PROFILE", "ci")
WORKERS = int(os.environ.get("CACHEFS_FSRAND_WORKERS", "3"))
FUZZ_MINUTES = float(os.environ.get("CACHEFS_FSRAND_MINUTES", "20"))
DB_PATH = Path(__file__).parent / ".fsrand-db"
# The mount: uploads every 0.2-0.5 s so they race with the steps; 5 MiB parts (S3's minimum), so a
# file past 5 MiB is a multipart upload; 1 MiB small-file threshold.
MOUNT_OPTIONS = ("--small-sync-interval", "0.2", "--small-file-threshold", "1MiB", "--large-sync-interval", "0.5",
                 "--multipart-part-size", "5MiB")
UPLOAD_FAULT = "error:ops=put+upload_part+create_multipart+complete_multipart,status=500,p=0.1,key=[^/]$"
REMOUNT_EVERY = 8          # steps since the last (re)mount before a remount may be chosen

_common = dict(deadline=None, suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
if os.environ.get("CACHEFS_FSRAND_SHRINK", "1") == "0":        # while developing: fail fast, no shrinking
    _common["phases"] = [Phase.explicit, Phase.reuse, Phase.generate]
settings.register_profile("ci", max_examples=int(os.environ.get("CACHEFS_FSRAND_EXAMPLES", "10")),
                          stateful_step_count=int(os.environ.get("CACHEFS_FSRAND_STEPS", "40")),
                          derandomize=True, database=None, print_blob=True, **_common)
settings.register_profile("fuzz", max_examples=int(os.environ.get("CACHEFS_FSRAND_EXAMPLES", "10")),
                          stateful_step_count=int(os.environ.get("CACHEFS_FSRAND_STEPS", "60")),
                          database=DirectoryBasedExampleDatabase(str(DB_PATH)), print_blob=True, **_common)

paths = st.sampled_from(fm.PATH_CHOICES)
handles = st.integers(0, 15)          # an index into the live handles, modulo their number
workers = st.integers(0, WORKERS - 1)
offsets, lengths, sizes = st.sampled_from(fm.OFFSETS), st.sampled_from(fm.LENGTHS), st.sampled_from(fm.SIZES)
seeds = st.integers(0, 2**16)


class Env:
    """What the machine needs from pytest's fixtures, and counters over the whole test."""

    def __init__(self, mounter, make_bucket, s3, fault_proxy, moto_server, tmp_path):
        self.mounter, self.make_bucket, self.s3, self.proxy = mounter, make_bucket, s3, fault_proxy
        self.moto_url = moto_server.endpoint_url
        self.tmp = tmp_path
        self.workers = fm.Workers(WORKERS)
        self.examples = self.steps = self.remounts = self.kills = self.with_faults = 0
        self.ops: dict[str, int] = {}
        self.differences: dict[str, int] = {}
        self.notes: list[str] = []
        self._n = 0

    def new_dir(self, name: str) -> Path:
        self._n += 1
        d = self.tmp / f"{name}{self._n}"
        d.mkdir()
        return d

    def summary(self) -> str:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
        diffs = ", ".join(f"{k}: {v}" for k, v in sorted(self.differences.items())) or "none"
        return (f"fsrand: {self.examples} examples ({self.with_faults} with upload faults), {self.steps} steps, "
                f"{self.remounts} clean remounts, {self.kills} kill -9 + remount\n  ops: {ops}\n"
                f"  documented differences seen: {diffs}" + "".join(f"\n  note: {n}" for n in self.notes[-10:]))


def make_machine(env: Env):
    class FsRand(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.env = env
            self.m = None
            self.cache_dir = None
            self.handles: list[tuple[int, int, str]] = []       # (worker, handle id, open flags)
            self.next_hid = 0
            self.since_mount = 0
            self.removed: set[str] = set()                      # paths unlinked / renamed away / rmdir'd
            self.in_step = False
            self.failed = False
            self.ref = env.new_dir("ref")
            self.bucket = env.make_bucket("fsrand")
            env.examples += 1

        # ------------------------------------------------ plumbing

        def _mount(self):
            self.cache_dir = env.new_dir("cache")
            return env.mounter.mount(self.bucket, *MOUNT_OPTIONS, endpoint_url=env.proxy.url,
                                     cache_dir=self.cache_dir)

        def step(self, w: int, op: str, args: dict, check=None) -> dict:
            """Run op on both sides in worker w; fail unless the outcomes agree (or differ as documented)."""
            self.failed = True            # until this step has passed
            env.steps += 1
            env.ops[op] = env.ops.get(op, 0) + 1
            self.since_mount += 1
            out = env.workers.run(w, op, args, (fm.MOUNT,))
            diff = fm.expected_difference(op, args, out[fm.MOUNT])
            if diff is not None:
                env.differences[diff.name] = env.differences.get(diff.name, 0) + 1
                self.failed = False
                return out
            out.update(env.workers.run(w, op, args, (fm.REF,)))
            mo, ro = out[fm.MOUNT], out[fm.REF]
            if check is not None and mo[0] == ro[0] == "ok":
                problems = check(mo[1], ro[1])
                assert not problems, f"{op}({args}) in worker {w}: {problems}"
            else:
                assert mo == ro, f"{op}({args}) in worker {w}: mount {_short(mo)}, reference {_short(ro)}"
            self.failed = False
            return out

        def handle(self, h: int):
            return self.handles[h % len(self.handles)]

        def has_handles(self) -> bool:
            return bool(self.handles)

        def close_handles(self) -> None:
            for w, hid, _ in list(self.handles):
                self.step(w, "close", {"hid": hid})
            self.handles.clear()

        def compare_now(self, context: str) -> None:
            problems = fm.compare_trees(fm.snapshot(self.m.path), fm.snapshot(self.ref), context)
            assert not problems, f"the mount and the reference differ ({context}):\n  " + "\n  ".join(problems[:30])

        # ------------------------------------------------ the start

        @initialize(faults=st.booleans())
        def start(self, faults):
            env.proxy.clear()
            if faults:
                env.proxy.add(UPLOAD_FAULT)
                env.with_faults += 1
            self.faults = faults
            self.m = self._mount()
            env.workers.set_roots({fm.MOUNT: str(self.m.path), fm.REF: str(self.ref)})

        # ------------------------------------------------ the operations
        # Three kinds of rule: `io` (operations on an open handle), `names` (open/create, truncate,
        # rename, unlink, mkdir, rmdir) and `meta` (chmod, chown, utimens, lstat, readdir, symlink,
        # readlink, link). Each draws its operation from fm.IO_OPS / NAME_OPS / META_OPS, where a name
        # appears as often as it should be chosen; Hypothesis picks rules uniformly (and, per example,
        # leaves some out: swarm testing), so io has three rules and names two. Arguments an operation
        # does not use are drawn all the same (and shrunk to their first value).

        def _open(self, w, path, flags):
            hid = self.next_hid
            self.next_hid += 1
            out = self.step(w, "open" if "creat" not in flags else "create",
                            {"path": path, "flags": flags, "hid": hid})
            if out[fm.MOUNT][0] == "ok":
                self.handles.append((w, hid, flags))

        def _io(self, w, h, op, offset, length, seed, size, mode, src, src_offset):
            if not self.handles:        # none open: open (or create) `src` in worker w first
                self._open(w, src, "creat")
                if not self.handles:
                    return
            w, hid, flags = self.handle(h)
            if op == "write":
                self.step(w, "write", {"hid": hid, "offset": offset, "length": length, "seed": seed})
            elif op == "read":
                self.step(w, "read", {"hid": hid, "offset": offset, "length": max(length, 1)}, check=_same_bytes)
            elif op == "ftruncate":
                self.step(w, "ftruncate", {"hid": hid, "size": size})
            elif op == "fallocate":
                self.step(w, "fallocate", {"hid": hid, "mode": mode, "offset": offset, "length": length})
            elif op == "copy_file_range":
                self.step(w, "copy_file_range", {"hid": hid, "src": src, "src_offset": src_offset, "offset": offset,
                                                 "length": length})
            elif op == "mmap_write":
                self.step(w, "mmap_write", {"hid": hid, "offset": offset, "length": length, "seed": seed})
            elif op == "fsync":
                self.step(w, "fsync", {"hid": hid})
            elif op == "close":
                self.handles.remove((w, hid, flags))
                self.step(w, "close", {"hid": hid})
            else:
                raise AssertionError(op)

        _io_args = dict(w=workers, h=handles, op=st.sampled_from(fm.IO_OPS), offset=offsets, length=lengths,
                        seed=seeds, size=sizes, mode=st.sampled_from(sorted(fm.FALLOC_MODES)), src=paths,
                        src_offset=st.sampled_from([0, 1, 4096, 262144]))

        @rule(**_io_args)
        def io(self, **kw):
            self._io(**kw)

        @rule(**_io_args)
        def io_more(self, **kw):
            self._io(**kw)

        @rule(**_io_args)
        def io_most(self, **kw):
            self._io(**kw)

        def _names(self, w, op, path, dst, flags, size):
            if op == "open":
                self._open(w, path, flags)
            elif op == "truncate":
                self.step(w, "truncate", {"path": path, "size": size})
            elif op == "rename":
                out = self.step(w, "rename", {"src": path, "dst": dst})
                if out[fm.MOUNT][0] == "ok" and path != dst:
                    self.removed.add(path)
            elif op in ("unlink", "rmdir", "mkdir"):
                self.step(w, op, {"path": path})
                if op != "mkdir":
                    self.removed.add(path)
            else:
                raise AssertionError(op)

        _names_args = dict(w=workers, op=st.sampled_from(fm.NAME_OPS), path=paths, dst=paths,
                           flags=st.sampled_from(list(fm.OPEN_FLAGS)), size=sizes)

        @rule(**_names_args)
        def names(self, **kw):
            self._names(**kw)

        @rule(**_names_args)
        def names_more(self, **kw):
            self._names(**kw)

        @rule(w=workers, op=st.sampled_from(fm.META_OPS), path=st.sampled_from([*fm.PATH_CHOICES, "."]), dst=paths,
              mode=st.sampled_from(fm.MODES), owner=st.sampled_from(fm.OWNERS), times=st.sampled_from(fm.UTIMES),
              to=st.sampled_from(fm.SYMLINK_TARGETS))
        def meta(self, w, op, path, dst, mode, owner, times, to):
            if op == "chmod":
                self.step(w, "chmod", {"path": path, "mode": mode})
            elif op == "chown":
                self.step(w, "chown", {"path": path, "uid": owner[0], "gid": owner[1]})
            elif op == "utimens":
                self.step(w, "utimens", {"path": path, "atime": times[0], "mtime": times[1]})
            elif op == "stat":
                def check(m, r):
                    return fm.compare_entry(path, _entry(m), _entry(r), "step")
                self.step(w, "stat", {"path": path}, check=check)
            elif op == "listdir":
                self.step(w, "listdir", {"path": path})
            elif op == "symlink":
                self.step(w, "symlink", {"target": to, "path": dst})
            elif op == "readlink":
                self.step(w, "readlink", {"path": path})
            elif op == "link":
                self.step(w, "link", {"src": path, "dst": dst})
            else:
                raise AssertionError(op)

        # ------------------------------------------------ remounts

        @precondition(lambda self: self.since_mount >= REMOUNT_EVERY)
        @rule(kind=st.sampled_from(["clean", "kill9"]))
        def remount(self, kind):
            self.failed = True
            self.since_mount = 0
            if kind == "clean":
                env.remounts += 1
                self.close_handles()
                self.failed = True
                env.mounter.umount(self.m)
                self.m = env.mounter.remount(self.m)
                self.compare_now("step")
            else:
                env.kills += 1
                pid = self.m.pid()
                os.kill(pid, signal.SIGKILL)
                assert wait_until(lambda: not pid_alive(pid), 10), f"daemon {pid} survived SIGKILL"
                for w in range(len(env.workers)):
                    env.workers.call(w, "close_all")      # the mount's descriptors died with the daemon
                self.handles.clear()
                force_unmount(self.m.real_path)
                self.m = env.mounter.remount(self.m)
                self._after_kill9()
            self.failed = False

        def _after_kill9(self) -> None:
            mount, ref = fm.snapshot(self.m.path), fm.snapshot(self.ref)
            back = sorted(p for p in set(mount) - set(ref) if p in self.removed and mount[p].kind == "file")
            if back and fm.RESURRECTION_AFTER_KILL9:
                env.notes.append(f"after kill -9, removed {back} came back (SEMANTICS.md, Limits); unlinked again")
                for p in back:
                    os.unlink(self.m.path / p)
                mount = fm.snapshot(self.m.path)
            problems = fm.compare_trees(mount, ref, "kill9")
            assert not problems, "after kill -9 and a remount, the mount and the reference differ:\n  " + \
                "\n  ".join(problems[:30])

        # ------------------------------------------------ the end

        def teardown(self):
            try:
                if self.m is not None and not self.failed:
                    self.failed = True
                    self.final_check()
                    self.failed = False
            finally:
                for w in range(len(env.workers)):
                    try:
                        env.workers.call(w, "close_all")
                    except Exception:
                        pass
                if self.m is not None:          # a failed example: its daemon may have uploads to give up
                    pid = self.m.pid()
                    force_unmount(self.m.real_path)
                    if not wait_until(lambda: not pid_alive(pid), 30):
                        stop_pid(pid)

        def final_check(self) -> None:
            self.close_handles()
            env.proxy.clear()
            res = run_cachefs(["flush", str(self.m.path)], self.m.env, timeout_s=180)
            assert res.returncode == 0, f"cachefs flush: {res.describe()}"
            ref = fm.snapshot(self.ref)
            problems = fm.compare_trees(fm.snapshot(self.m.path), ref, "step")
            assert not problems, "after flush, the mount and the reference differ:\n  " + "\n  ".join(problems[:30])
            objects = s3_objects(env.s3, self.bucket)
            problems = fm.compare_s3(objects, ref)
            if problems:          # say whether it lasts: an upload still landing, or S3 left wrong
                t0 = time.monotonic()
                settled = wait_until(lambda: not fm.compare_s3(s3_objects(env.s3, self.bucket), ref), 15, 0.5)
                later = (f"S3 agreed {time.monotonic() - t0:.1f} s later: flush returned before S3 held what the "
                         "mount showed") if settled else "still so 15 s later"
                pytest.fail(f"after flush, S3 and the reference differ ({later}):\n  " + "\n  ".join(problems[:30])
                            + self.key_history(problems))
            env.mounter.umount(self.m)
            log = log_problems(self.m.log_text())
            assert not log, "the daemon logged errors:\n  " + "\n  ".join(log[:20])
            fresh = env.mounter.mount(self.bucket, *MOUNT_OPTIONS, "--metadata-head-all", endpoint_url=env.moto_url,
                                      cache_dir=env.new_dir("fresh"))
            try:
                fm.snapshot(fresh.path)         # every directory listed once (its marker's metadata read)
                problems = fm.compare_trees(fm.snapshot(fresh.path), ref, "fresh")
                assert not problems, ("a fresh mount (empty cache directory) and the reference differ:\n  "
                                      + "\n  ".join(problems[:30]))
            finally:
                env.mounter.umount(fresh)
            if not wait_until(lambda: not env.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads"), 10):
                pytest.fail(self.describe_uploads_left())
            self.m = None

        def key_history(self, problems: list[str]) -> str:
            """What the proxy saw of each key a problem names (`S3: KEY ...`), for the report."""
            keys = {p.split()[1].rstrip("/") for p in problems if p.startswith("S3: ") and len(p.split()) > 1}
            lines = []
            for key in sorted(keys)[:5]:
                seen = [r for r in env.proxy.seen() if r.bucket == self.bucket and r.key in (key, key + "/")
                        and r.op not in ("get", "head", "list")]
                lines.append(f"\n  proxy, {key}: " + ", ".join(f"{r.op} {r.outcome} {r.status}" for r in seen[-15:]))
            return "".join(lines)

        def describe_uploads_left(self) -> str:
            """What S3 still lists as unfinished, with what the proxy saw of each key and what the
            daemons of this example logged about each upload id: for the report."""
            lines = ["multipart uploads left behind after flush and unmount:"]
            for u in env.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []):
                key, uid = u["Key"], u["UploadId"]
                lines.append(f"  key {key!r} upload {uid}")
                for r in env.proxy.seen(key=key):
                    if r.bucket == self.bucket and r.op in ("create_multipart", "upload_part", "complete_multipart",
                                                          "abort_multipart", "put", "delete", "copy"):
                        lines.append(f"    proxy {r.t:.2f} {r.op} {r.outcome} {r.status}")
                log = self.m_log_text()
                lines += [f"    log: {ln[:300]}" for ln in log.splitlines() if uid[:16] in ln][:20]
            return "\n".join(lines)

        def m_log_text(self) -> str:
            try:
                return (self.cache_dir / "cachefs.log").read_text(errors="replace")
            except (OSError, TypeError):
                return ""

    return FsRand


def _short(outcome) -> str:
    kind, value = outcome
    if isinstance(value, bytes):
        return f"{kind} {len(value)} bytes"
    return f"{kind} {value!r}"


def _same_bytes(m: bytes, r: bytes) -> list[str]:
    from mount_helpers import first_difference
    return [] if m == r else [f"read: {first_difference(m, r)}"]


def _entry(attrs: dict) -> fm.Entry:
    import stat as st_
    kind = {st_.S_IFREG: "file", st_.S_IFDIR: "dir", st_.S_IFLNK: "symlink"}.get(attrs["type"], "other")
    return fm.Entry(kind, attrs)


def s3_objects(s3, bucket: str) -> dict[str, tuple[bytes, dict]]:
    """{key: (bytes, user metadata)} of every object in the bucket."""
    objects = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            r = s3.get_object(Bucket=bucket, Key=o["Key"])
            objects[o["Key"]] = (r["Body"].read(), {k.lower(): v for k, v in r.get("Metadata", {}).items()})
    return objects


# ---------------------------------------------------------------- the tests

@pytest.fixture
def fsrand_env(mounter, make_bucket, s3, fault_proxy, moto_server, tmp_path):
    env = Env(mounter, make_bucket, s3, fault_proxy, moto_server, tmp_path)
    yield env
    env.workers.close()
    print("\n" + env.summary())


@pytest.mark.timeout(int(FUZZ_MINUTES * 60 + 1800) if PROFILE == "fuzz" else 900)
def test_fsrand(fsrand_env):
    """The random test: in CI a few derandomized examples; with the fuzz profile, rounds of new seeds
    (printed) until CACHEFS_FSRAND_MINUTES are up, failures kept in the example database."""
    Machine = make_machine(fsrand_env)
    profile = settings.get_profile(PROFILE)
    if PROFILE != "fuzz":
        run_state_machine_as_test(Machine, settings=profile)
        return
    deadline = time.monotonic() + FUZZ_MINUTES * 60
    started, rounds, failures = time.monotonic(), 0, []
    fixed = os.environ.get("CACHEFS_FSRAND_SEED")
    while time.monotonic() < deadline:
        s = int(fixed) if fixed else random.SystemRandom().getrandbits(32)
        rounds += 1
        # The first round replays what the database kept (earlier failures) first; later rounds only
        # generate (and save what fails), so that one failure does not end a long run.
        round_settings = settings(profile, phases=profile.phases if rounds == 1 else
                                  [p for p in profile.phases if p != Phase.reuse])
        print(f"fsrand round {rounds}: seed {s} (replay: make fuzz with CACHEFS_FSRAND_SEED={s})", flush=True)
        try:
            run_state_machine_as_test(seed(s)(Machine), settings=round_settings)
        except Exception as e:  # noqa: BLE001 - reported below, the run goes on
            failures.append((s, e))
            print(f"fsrand round {rounds}: seed {s} FAILED: {type(e).__name__}: {str(e)[:3000]}\n"
                  + "\n".join(getattr(e, "__notes__", [])), flush=True)
        print(f"{fsrand_env.summary()}\n  elapsed {time.monotonic() - started:.0f} s, {rounds} rounds, "
              f"{len(failures)} failed", flush=True)
        if fixed:
            break
    if failures:
        pytest.fail(f"{len(failures)} of {rounds} rounds failed, seeds " + ", ".join(str(s) for s, _ in failures)
                    + "\n" + "\n\n".join(f"seed {s}: {e}" for s, e in failures)[:20000], pytrace=False)


# ---------------------------------------------------------------- regressions found by fsrand
# Each is the minimal sequence Hypothesis shrank a failure to, as a plain test; strict xfail until
# the defect is fixed (then the xfail goes, and so does the matching DIFFERENCES entry, if any).

def _both(workers: fm.Workers, op: str, args: dict, w: int = 0) -> dict:
    return workers.run(w, op, args)


def test_regression_fallocate_modes_documented_or_supported(mounter, make_bucket, tmp_path):
    """fsrand: create('a'); fallocate(h, mode='keep-size', offset=0, length=1) -> mount EOPNOTSUPP,
    local disk 0 (the same for PUNCH_HOLE and ZERO_RANGE); and posix_fallocate(h, 4096, 1) on a handle
    opened O_WRONLY|O_APPEND -> mount EBADF (glibc's emulation, as the mount has no fallocate), local
    disk 0. Either the mount does what a local file system does, or SEMANTICS.md documents it."""
    m = mounter.mount(make_bucket("fsrand-falloc"), *MOUNT_OPTIONS)
    ref = tmp_path / "ref"
    ref.mkdir()
    workers = fm.Workers(1)
    try:
        workers.set_roots({fm.MOUNT: str(m.path), fm.REF: str(ref)})
        assert _both(workers, "create", {"path": "a", "flags": "creat", "hid": 0}) == {fm.MOUNT: ("ok", 0),
                                                                                     fm.REF: ("ok", 0)}
        _both(workers, "write", {"hid": 0, "offset": 0, "length": 8192, "seed": 1})
        documented = "fallocate" in (Path(__file__).parent.parent / "docs" / "SEMANTICS.md").read_text()
        outcomes = {}
        for mode in ("keep-size", "punch-hole", "zero-range"):
            outcomes[mode] = _both(workers, "fallocate", {"hid": 0, "mode": mode, "offset": 0, "length": 4096})
        _both(workers, "close", {"hid": 0})
        # posix_fallocate (mode 0) on an O_APPEND descriptor (fuzz seed 822279060): EBADF on the mount
        _both(workers, "open", {"path": "a", "flags": "w-append", "hid": 1})
        outcomes["default, O_APPEND"] = _both(workers, "fallocate", {"hid": 1, "mode": "default", "offset": 4096,
                                                                    "length": 1})
        _both(workers, "close", {"hid": 1})
        differ = {k: v for k, v in outcomes.items() if v[fm.MOUNT] != v[fm.REF]}
        assert not differ or documented, f"fallocate differs from a local file system, undocumented: {differ}"
    finally:
        workers.call(0, "close_all")
        workers.close()




def test_regression_mtime_of_a_truncation_after_kill9_survives_a_remount(fsrand_env):
    """fsrand, fuzz seed 1541564093 (on main 387c15c; no upload faults), shrunk by Hypothesis to 58
    steps and by hand to these 10 (+ a 5 s pause so the mtime error is far beyond the 2 s slack).
    What happens to `b`: created empty; opened O_WRONLY|O_APPEND; kill -9 + remount; opened
    O_RDWR|O_TRUNC; clean remount; opened O_CREAT and 4096 bytes written at 262144 (handle left open);
    kill -9 + remount; 5 s; opened O_RDWR|O_TRUNC (266240 -> 0 bytes; lstat right after shows a
    correct mtime); clean remount -> the mount's mtime of `b` is the time of the write before the
    second kill, ~7 s before the truncation (SEMANTICS.md, Mapping: the time of the last write while
    staged, or its x-amz-meta-mtime). Without the first four steps (or without the first kill) the
    mtime is right."""
    state = make_machine(fsrand_env)()
    try:
        state.start(faults=False)
        state.io_more(h=6, length=4096, mode='default', offset=262144, op='mmap_write', seed=432, size=1048577,
                      src='b', src_offset=0, w=1)                      # creates b (empty: nothing mapped)
        state.remount(kind='clean')
        state.names_more(dst='d1', flags='w-append', op='open', path='b', size=4096, w=1)
        state.remount(kind='kill9')
        state.names(dst='d1', flags='rw-trunc', op='open', path='b', size=0, w=1)
        state.remount(kind='clean')
        state.io_more(h=7, length=4096, mode='punch-hole', offset=262144, op='write', seed=536, size=100000,
                      src='b', src_offset=1, w=0)                      # opens b (O_CREAT) and writes
        state.remount(kind='kill9')
        time.sleep(5)
        state.names_more(dst='d2', flags='rw-trunc', op='open', path='b', size=1048577, w=0)
        state.remount(kind='clean')                                    # fails here: b's mtime
    finally:
        state.failed = True                                            # clean up only, no final check
        state.teardown()
