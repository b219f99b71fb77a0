"""Faults on every S3 request type (issue 15, item 2): request type x fault, each cell on a real mount.

One mount (through the fault proxy, cachefs.devtools.faultproxy) is shared by every cell; each cell
works under its own directory CELL/ of one bucket, and its fault only matches keys below CELL/, so a
fault cannot leak into another cell. A cell:

1. turns its fault on for EVERY request of its type below CELL/ (not the first N: concurrent
   requests would share N faults and each succeed on a retry, so the daemon's own failure handling
   would never run) while the workload runs, and for the background uploads until the fault has
   fired for one whole request (all its client attempts: `--s3-max-attempts 2` is 2 attempts per
   read, 3 per write in botocore's standard mode), at most BACKGROUND_WAIT_S;
2. the workload: reads (listing, stat of an unknown name, a cold read), then writes (a small file,
   a 12 MiB multipart file with 5 MiB parts, a large file truncated while its early multipart upload
   is open, a file written, closed and renamed, copy_file_range from an S3 object, rename of an S3
   file, rename of a directory of 3 objects, unlink, truncate of an S3 object). Every syscall's errno
   is recorded: it must be EIO, and only for a step that asks S3 synchronously for the faulted type
   (WORKLOAD's `needs`, from docs/SEMANTICS.md "Operations"); steps that only stage must not fail;
3. removes the fault, `cachefs flush`, and checks that what the mount shows is what S3 holds (no
   duplicate or missing object left by a step that failed);
4. retries the steps that failed (what an application does after EIO), `cachefs flush`, and checks
   S3 (boto3 straight to moto, not through the proxy) holds exactly the expected keys and bytes, the
   mount shows the same, no multipart upload is left unfinished below CELL/, the daemon is the same
   process, and its log has no ERROR or Traceback since the cell began.

Faults: 500 InternalError, 503 SlowDown, connection reset, truncated answer (the request reached S3
and took effect; half the body, or half the headers of an answer without a body), stall (the answer
STALL_S after the request, past the mount's 1 s `--s3-read-timeout`).

Cells that find a defect outside this module's files are strict xfails naming it (XFAILS).
`-s` prints one line per cell (`FAULT-MATRIX {...}`), the figures of docs/RELIABILITY.md "Fault matrix".
"""
from __future__ import annotations

import errno
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mount_helpers import (
    KiB,
    MiB,
    first_difference,
    force_unmount,
    is_mounted,
    log_problems,
    object_bytes,
    pid_alive,
    run_cachefs,
    wait_until,
)

from cachefs.devtools.faultproxy import Fault, FaultProxy

# The shared mount may log anything (a dead daemon's cell is an xfail, and the shared-mount guard
# runs at teardown, where an xfail does not reach): each cell checks its own part of the log, in the
# test body, and allows no ERROR and no Traceback at all (`check_log`).
pytestmark = [pytest.mark.timeout(240), pytest.mark.daemon_errors_ok(r".")]

PART = 5 * MiB
READ_TIMEOUT_S = 1.0     # --s3-read-timeout of the matrix's mount
STALL_S = 1.6            # a stalled answer comes this long after the request: past the read timeout
READ_ATTEMPTS, WRITE_ATTEMPTS = 2, 3     # --s3-max-attempts 2: reads in S3Store._read; botocore: 2 + 1
BACKGROUND_WAIT_S = 12.0
FLUSH_TIMEOUT_S = 90
# After a read type failed, reads may fail at once for a while after S3 answers again, as documented
# (docs/RELIABILITY.md "S3 outage"): a range that just failed fails again for 1 s, and the outage
# breaker lets one probe a second through. Recovery: reads answer again within this bound.
RECOVERY_S = 5.0
CONVERGE_S = 5.0         # S3 may still change this long after `cachefs flush` (deletes retried every 1 s)

REQUEST_TYPES = ["get", "head", "list", "put", "create_multipart", "upload_part", "complete_multipart",
                 "abort_multipart", "copy", "delete"]
# The proxy's operations each row injects into: a CopyObject row also covers UploadPartCopy, which
# boto3's managed copy (S3Store.copy) uses for objects of 8 MiB and more.
PROXY_OPS = {t: t for t in REQUEST_TYPES} | {"copy": "copy,copy_part"}
READ_TYPES = {"get", "head", "list"}
UPLOAD_TYPES = {"put", "create_multipart", "upload_part", "complete_multipart"}    # what an upload sends

FAULTS = {
    "500": dict(action="error", status=500, code="InternalError"),
    "503-slowdown": dict(action="error", status=503, code="SlowDown"),
    "reset": dict(action="reset"),
    "truncated": dict(action="truncate"),
    "stall": dict(action="delay", seconds=STALL_S),
}

MOUNT_OPTIONS = ("--s3-max-attempts", "2", "--s3-read-timeout", str(READ_TIMEOUT_S), "--s3-read-deadline", "6",
                 "--s3-connect-timeout", "2", "--small-file-threshold", "1MiB", "--small-sync-interval", "0.3",
                 "--multipart-part-size", "5MiB", "--negative-ttl", "0")

# Cells whose outcome is a defect outside this test's files (strict: they turn red once it is fixed).
# Each reason names the defect and where it is; docs/RELIABILITY.md "Fault matrix" has the reproductions.
XFAILS: dict[tuple[str, str], str] = {}    # every defect the matrix found is fixed (docs/RELIABILITY.md)


# ---------------------------------------------------------------- what each cell's directory holds

def seeded(name: str, size: int) -> bytes:
    return object_bytes(f"matrix/{name}", size)


SEED = {                                  # in S3 before the mount starts: cold in every cell
    "src/r1.bin": 700 * KiB,              # cold read (3 blocks of 256 KiB)
    "src/r2.bin": 300 * KiB,              # copy_file_range source
    "old.bin": 200 * KiB,                 # renamed to new/moved.bin
    "del.bin": 50 * KiB,                  # unlinked
    "trunc.bin": 600 * KiB,               # truncated to 250 KiB
    "d/x1": 30 * KiB, "d/x2": 31 * KiB, "d/x3": 32 * KiB,    # directory renamed to d2
    "meta/tiny.txt": 100,                 # stat: its directory's listing HEADs tiny objects (metadata)
}


def seed_objects(cell: str) -> dict[str, bytes]:
    return {f"{cell}/{rel}": seeded(rel, size) for rel, size in SEED.items()}


SMALL = seeded("new/small.txt", 20 * KiB)
BIG = seeded("new/big.bin", 12 * MiB)                   # 3 parts of 5 MiB
ABORT = seeded("new/abort.bin", 11 * MiB)               # truncated to 1 MiB while its early upload is open
TMP = seeded("new/tmp.txt", 40 * KiB)


def expected_objects(cell: str) -> dict[str, bytes]:
    """Every key below CELL/ once the whole workload has been done."""
    s = {rel: seeded(rel, size) for rel, size in SEED.items()}
    out = {"src/r1.bin": s["src/r1.bin"], "src/r2.bin": s["src/r2.bin"], "new/moved.bin": s["old.bin"],
           "trunc.bin": s["trunc.bin"][:250 * KiB], "d2/x1": s["d/x1"], "d2/x2": s["d/x2"], "d2/x3": s["d/x3"],
           "new/": b"", "new/small.txt": SMALL, "new/big.bin": BIG, "new/abort.bin": ABORT[:1 * MiB],
           "new/final.txt": TMP, "new/cfr.bin": s["src/r2.bin"], "meta/tiny.txt": s["meta/tiny.txt"]}
    return {f"{cell}/{k}": v for k, v in out.items()}


# ---------------------------------------------------------------- the workload

@dataclass
class Step:
    name: str
    needs: frozenset[str]     # request types this syscall may send synchronously (SEMANTICS.md "Operations")
    run: object               # run(ctx) -> None; raises OSError


@dataclass
class Ctx:
    root: Path                # CELL/ through the mount
    cell: str
    proxy: FaultProxy


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        for i in range(0, len(data), 1 * MiB):
            f.write(data[i:i + 1 * MiB])


def r_listdir(c: Ctx) -> None:
    names = set(os.listdir(c.root))
    assert {"src", "trunc.bin", "new"} <= names, names


def r_stat_unknown(c: Ctx) -> None:
    try:
        os.stat(c.root / "src" / "no-such-file")
    except FileNotFoundError:
        return
    raise AssertionError("stat of a name S3 does not hold succeeded")


def r_stat_tiny(c: Ctx) -> None:
    """A tiny object may be a symbolic link (docs/SEMANTICS.md "Attributes in S3"): listing its
    directory HEADs it. The request type HEAD is sent by this step (S3Store.copy no longer HEADs)."""
    assert os.lstat(c.root / "meta/tiny.txt").st_size == SEED["meta/tiny.txt"]


def r_cold_read(c: Ctx) -> None:
    with open(c.root / "src/r1.bin", "rb") as f:
        data = f.read()
    want = seeded("src/r1.bin", SEED["src/r1.bin"])
    assert data == want, first_difference(data, want)


def w_small(c: Ctx) -> None:
    _write(c.root / "new/small.txt", SMALL)


def w_multipart(c: Ctx) -> None:
    _write(c.root / "new/big.bin", BIG)


def w_truncate_during_early_upload(c: Ctx) -> None:
    """A large file written at its end has its finished parts sent at once (an early multipart
    upload); truncating it abandons that upload: AbortMultipartUpload."""
    key = f"{c.cell}/new/abort.bin"
    fd = os.open(c.root / "new/abort.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(0, len(ABORT), 1 * MiB):
            os.write(fd, ABORT[i:i + 1 * MiB])
        # until a part went out (or the create failed: no early upload this time), at most 5 s
        wait_until(lambda: c.proxy.seen("upload_part", key)
                   or any(r.outcome != "forwarded" for r in c.proxy.seen("create_multipart", key)), 5.0)
        os.ftruncate(fd, 1 * MiB)
    finally:
        os.close(fd)


def w_rename_staged(c: Ctx) -> None:
    """Renamed once its upload (at close) has begun: the rename then always meets an upload in flight
    or done, never a file the scheduler has not picked up yet (which would move without S3)."""
    _write(c.root / "new/tmp.txt", TMP)
    wait_until(lambda: c.proxy.seen("put", f"{c.cell}/new/tmp.txt"), 5.0)
    os.rename(c.root / "new/tmp.txt", c.root / "new/final.txt")


def w_copy_file_range(c: Ctx) -> None:
    src = os.open(c.root / "src/r2.bin", os.O_RDONLY)
    try:
        dst = os.open(c.root / "new/cfr.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            size, off = os.fstat(src).st_size, 0
            while off < size:
                n = os.copy_file_range(src, dst, size - off, off, off)
                if n == 0:
                    raise AssertionError(f"copy_file_range stopped at {off} of {size}")
                off += n
        finally:
            os.close(dst)
    finally:
        os.close(src)


def w_rename_s3_file(c: Ctx) -> None:
    os.rename(c.root / "old.bin", c.root / "new/moved.bin")


def w_rename_dir(c: Ctx) -> None:
    os.rename(c.root / "d", c.root / "d2")


def w_unlink(c: Ctx) -> None:
    os.unlink(c.root / "del.bin")


def w_truncate_s3_file(c: Ctx) -> None:
    os.truncate(c.root / "trunc.bin", 250 * KiB)


LOOKUP = {"list", "head"}        # a name in a directory whose listing is not fresh (or failed)
COPY = {"copy", "copy_part", "head", "create_multipart", "upload_part", "complete_multipart", "abort_multipart"}
# Writes first, reads (and the writes that read) last: a failing read type opens the outage breaker
# (3 reads in a row failed), which refuses every read after it, so what a rename does while it is open
# depended on timing; that case has its own test (test_rename_while_the_outage_breaker_is_open).
WORKLOAD = [
    Step("small file", frozenset(), w_small),
    Step("multipart file", frozenset(), w_multipart),
    Step("truncate during early upload", frozenset(), w_truncate_during_early_upload),
    Step("write, close, rename", frozenset(COPY | {"delete"}), w_rename_staged),  # uploaded at close: S3 copy
    Step("rename S3 file", frozenset(LOOKUP | COPY | {"delete"}), w_rename_s3_file),
    Step("rename directory", frozenset(LOOKUP | COPY | {"delete", "put"}), w_rename_dir),
    Step("unlink", frozenset(LOOKUP | {"delete", "put"}), w_unlink),
    Step("copy_file_range", frozenset(LOOKUP | {"get"}), w_copy_file_range),
    Step("truncate S3 file", frozenset(LOOKUP | {"get"}), w_truncate_s3_file),
    Step("listdir", frozenset({"list"}), r_listdir),
    Step("stat unknown name", frozenset(LOOKUP), r_stat_unknown),
    Step("stat tiny object", frozenset(LOOKUP), r_stat_tiny),
    Step("cold read", frozenset(LOOKUP | {"get"}), r_cold_read),
]


# ---------------------------------------------------------------- the shared mount

class Matrix:
    def __init__(self, mounter, s3, bucket: str, proxy: FaultProxy) -> None:
        self.mounter, self.s3, self.bucket, self.proxy = mounter, s3, bucket, proxy
        self.m = None
        self.mounts = 0

    def mount(self):
        if self.m is not None and is_mounted(self.m.real_path):
            force_unmount(self.m.real_path)        # its daemon died: the mount point is dead too
        self.m = self.mounter.mount(self.bucket, *MOUNT_OPTIONS, endpoint_url=self.proxy.url)
        self.mounts += 1
        return self.m

    def alive(self) -> bool:
        try:
            return pid_alive(self.m.pid()) and os.path.isdir(self.m.path)
        except OSError:
            return False

    def flush(self) -> str | None:
        """`cachefs flush`: None once everything is in S3, or what it said."""
        res = run_cachefs(["flush", str(self.m.path), "--timeout", str(FLUSH_TIMEOUT_S)], self.m.env,
                          timeout_s=FLUSH_TIMEOUT_S + 30)
        return None if res.returncode == 0 else res.describe()

    def s3_objects(self, prefix: str, sizes: bool = False) -> dict:
        """{key: bytes} below PREFIX, straight from moto (not through the proxy); `sizes`: {key: Size}."""
        keys, listed = [], {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
            listed |= {o["Key"]: Size(o["Size"]) for o in page.get("Contents", [])}
        if sizes:
            return listed
        out = {}
        for k in keys:
            try:
                out[k] = self.s3.get_object(Bucket=self.bucket, Key=k)["Body"].read()
            except self.s3.exceptions.NoSuchKey:      # deleted since the listing (a delete retried late)
                pass
        return out

    def unfinished_uploads(self, prefix: str) -> list[str]:
        r = self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [f"{u['Key']} {u['UploadId']}" for u in r.get("Uploads", [])]


def cell_name(rtype: str, fault: str) -> str:
    return f"{rtype}.{fault}"


@pytest.fixture(scope="module")
def matrix(module_mounter, make_bucket, s3, moto_server):
    objects = {}
    for rtype in REQUEST_TYPES:
        for fault in FAULTS:
            objects |= seed_objects(cell_name(rtype, fault))
    bucket = make_bucket("fault-matrix", objects)
    proxy = FaultProxy(moto_server.endpoint_url, seed=15).start()
    mx = Matrix(module_mounter, s3, bucket, proxy)
    mx.mount()
    os.listdir(mx.m.path)            # the root listed now: each cell's directory is known, its contents cold
    yield mx
    proxy.clear()
    if mx.alive():
        assert mx.flush() is None
        module_mounter.umount(mx.m)
    left = mx.unfinished_uploads("")
    proxy.stop()
    assert not left, f"multipart uploads left unfinished in S3 after unmount: {left}"


# ---------------------------------------------------------------- one cell

class Size(int):
    """An object's or a file's size, where only names and sizes are compared (no bytes read)."""


def tree_through_mount(root: Path, sizes: bool = False) -> dict[str, bytes | Size]:
    """{relative key: bytes (or Size)} of what the mount shows below ROOT, with a `dir/` key for each
    directory (compared with S3 only where S3 has a marker: see `comparable`)."""
    out: dict[str, bytes] = {}

    def fail(e: OSError):                # os.walk skips a directory it cannot list, silently
        raise e

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            path, key = os.path.join(dirpath, name), os.path.normpath(os.path.join(rel, name))
            if sizes:
                out[key] = Size(os.stat(path).st_size)
                continue
            with open(path, "rb") as f:
                out[key] = f.read()
        for name in dirnames:
            out[os.path.normpath(os.path.join(rel, name)) + "/"] = b""
    return out


def comparable(objects: dict[str, bytes]) -> dict[str, bytes]:
    """Directory markers dropped: a directory is there for S3 when a key lies below it."""
    return {k: v for k, v in objects.items() if not k.endswith("/")}


def _len(v) -> int:
    return int(v) if isinstance(v, Size) else len(v)


def diff(want: dict[str, bytes], got: dict[str, bytes]) -> list[str]:
    out = [f"missing {k}" for k in sorted(want.keys() - got.keys())]
    out += [f"unexpected {k} ({_len(got[k])} bytes)" for k in sorted(got.keys() - want.keys())]
    out += [f"{k}: " + (f"{_len(got[k])} bytes, not {_len(want[k])}"
                        if isinstance(got[k], Size) or isinstance(want[k], Size)
                        else first_difference(got[k], want[k]))
            for k in sorted(want.keys() & got.keys()) if got[k] != want[k]]
    return out


def quiet(fault: Fault, quiet_s: float = 1.5) -> bool:
    """The fault fired, and not for `quiet_s`: botocore's standard retry mode has a retry quota per
    client (a token bucket drained by failures), so after many failures a request may get fewer
    attempts than --s3-max-attempts allows."""
    if not fault.fired:
        quiet.last = (None, 0, 0.0)
        return False
    last_fault, last_fired, since = getattr(quiet, "last", (None, 0, 0.0))
    now = time.monotonic()
    if last_fault is not fault or last_fired != fault.fired:
        quiet.last = (fault, fault.fired, now)
        return False
    return now - since >= quiet_s


def after_recovery(fn, bound_s: float = RECOVERY_S):
    """fn(), asked again while it fails with EIO, for at most `bound_s` (see RECOVERY_S)."""
    deadline = time.monotonic() + bound_s
    while True:
        try:
            return fn()
        except OSError as e:
            if e.errno != errno.EIO or time.monotonic() >= deadline:
                raise
        time.sleep(0.2)


def converge(differences, report: dict, bound_s: float = CONVERGE_S) -> list[str]:
    """differences() until it is empty, at most `bound_s`: `cachefs flush` waits for uploads, not for
    the deletes S3 refused earlier, which the daemon retries every second (a late one is noted)."""
    t0 = time.monotonic()
    out = first = differences()
    while out and time.monotonic() - t0 < bound_s:
        time.sleep(0.25)
        out = differences()
    if first and not out:
        report.setdefault("late_after_flush", []).extend(first)
    return out


def check_log(text: str) -> list[str]:
    return log_problems(text)          # no ERROR, CRITICAL, FATAL or Traceback, none allowed


def cell_params():
    for rtype in REQUEST_TYPES:
        for fault in FAULTS:
            marks = []
            reason = XFAILS.get((rtype, fault))
            if reason:
                marks.append(pytest.mark.xfail(strict=True, reason=f"issue 15: {reason}"))
            yield pytest.param(rtype, fault, id=f"{rtype}-{fault}", marks=marks)


@pytest.mark.parametrize("rtype, fault_name", list(cell_params()))
def test_fault_matrix(matrix, rtype, fault_name):
    mx = matrix
    if not mx.alive():
        mx.mount()                       # an earlier cell's daemon died (that cell failed): a new one
    m = mx.m
    pid = m.pid()
    cell = cell_name(rtype, fault_name)
    root = m.path / cell
    ctx = Ctx(root, cell, mx.proxy)
    log_start = len(m.log_text())
    t0 = time.monotonic()
    report = {"cell": f"{rtype} x {fault_name}", "errnos": {}, "retry_errnos": {}, "problems": []}
    problems = report["problems"]
    after_recovery(lambda: os.listdir(root))    # the previous cell's fault may still fail reads for 1-2 s
    os.mkdir(root / "new")                       # before the fault: a PUT of its marker, at once

    failures_before = m.stats()["upload_failures"]
    fault = Fault(**FAULTS[fault_name], ops=PROXY_OPS[rtype], key=f"^{re.escape(cell)}/")
    mx.proxy.add(fault)
    failed: list[Step] = []
    try:
        for step in WORKLOAD:
            try:
                step.run(ctx)
            except OSError as e:
                failed.append(step)
                report["errnos"][step.name] = errno.errorcode.get(e.errno, str(e.errno))
                if e.errno != errno.EIO:
                    problems.append(f"{step.name}: {e!r} (only EIO is documented for an S3 failure)")
                elif rtype not in step.needs and not (rtype in READ_TYPES and step.needs & READ_TYPES):
                    # (a failing read type also fails the others at once once the outage breaker is open)
                    problems.append(f"{step.name}: EIO, but it sends no {rtype} request synchronously")
        # the background: until one whole request failed (all its attempts), and for the types an
        # upload sends, until an upload failed because of it (or the daemon died)
        attempts = READ_ATTEMPTS if rtype in READ_TYPES else WRITE_ATTEMPTS
        wait_until(lambda: fault.fired >= attempts or not mx.alive() or quiet(fault), BACKGROUND_WAIT_S)
        if rtype in UPLOAD_TYPES:
            wait_until(lambda: not mx.alive() or m.stats()["upload_failures"] > failures_before, BACKGROUND_WAIT_S)
        time.sleep(0.3)                   # the daemon handles the failed request
    finally:
        mx.proxy.remove(fault)
    fault_off = time.monotonic()
    report["fired"] = fault.fired
    if fault.fired == 0:
        problems.append(f"the workload sent no {rtype} request: the cell tests nothing")

    alive = mx.alive()
    if not alive:
        print("FAULT-MATRIX " + json.dumps(report | {"died": True}), flush=True)
        pytest.fail(f"{cell}: the daemon died; its log:\n"
                    + "\n".join(line[:400] for line in check_log(m.log_text()[log_start:])[:5]), pytrace=False)
    # after the fault: what the mount shows is what S3 holds, before any step is retried
    out = mx.flush()
    if out:
        problems.append(f"flush after the fault: {out}")
    # (names and sizes: the bytes are compared at the end; moto reads a whole object per ranged GET)
    shown = comparable({f"{cell}/{k}": v for k, v in after_recovery(lambda: tree_through_mount(root, True)).items()})
    report["diverged"] = converge(lambda: diff(shown, comparable(mx.s3_objects(cell + "/", True))), report)
    problems += [f"after the fault, mount vs S3: {d}" for d in report["diverged"]]

    for step in failed:                   # the application's retry
        try:
            after_recovery(lambda step=step: step.run(ctx))
        except OSError as e:
            report["retry_errnos"][step.name] = errno.errorcode.get(e.errno, str(e.errno))
            problems.append(f"{step.name} retried after the fault: {e!r}")
    out = mx.flush()
    if out:
        problems.append(f"flush: {out}")
    want = expected_objects(cell)
    problems += [f"S3: {d}" for d in converge(lambda: diff(comparable(want), comparable(mx.s3_objects(cell + "/"))),
                                                report)]
    through_mount = after_recovery(lambda: tree_through_mount(root))
    problems += [f"mount: {d}" for d in diff(comparable(want),
                                              comparable({f"{cell}/{k}": v for k, v in through_mount.items()}))]
    if not wait_until(lambda: not mx.unfinished_uploads(cell + "/"), 5.0):
        left = mx.unfinished_uploads(cell + "/")
        problems.append(f"{len(left)} unfinished multipart upload(s) left in S3: {left[:3]}")
        for entry in left:                # the module's check after unmount is about the unmount
            key, upload_id = entry.rsplit(" ", 1)
            mx.s3.abort_multipart_upload(Bucket=mx.bucket, Key=key, UploadId=upload_id)
    if not mx.alive() or m.pid() != pid:
        problems.append("the daemon died")
    problems += [f"daemon log: {line[:400]}" for line in check_log(m.log_text()[log_start:])]
    report["seconds"] = round(time.monotonic() - t0, 1)
    if problems:                          # the reproduction: what the proxy saw, what the daemon said
        report["requests"] = [f"{r.op} {r.key[len(cell) + 1:]} {r.outcome} {r.status}"
                              for r in mx.proxy.seen(since=t0) if r.key.startswith(cell + "/") and r.t < fault_off]
        report["log"] = [line[24:300] for line in m.log_text()[log_start:].splitlines()
                         if " WARNING " in line or " ERROR " in line]
    print("FAULT-MATRIX " + json.dumps(report), flush=True)
    for k in list(want):                 # keep moto's memory small: this cell's objects go
        mx.s3.delete_object(Bucket=mx.bucket, Key=k)
    assert not problems, f"{cell}:\n" + "\n".join(problems)


# ---------------------------------------------------------------- the proxy itself, with botocore's requests

def _client(url: str, read_timeout: float = 5.0):
    import boto3
    import botocore.config
    from mount_helpers import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY
    cfg = botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=read_timeout,
                                 connect_timeout=2, s3={"addressing_style": "path"})
    return boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id=ACCESS_KEY_ID,
                        aws_secret_access_key=SECRET_ACCESS_KEY, config=cfg)


def _requests(c, bucket: str) -> dict[str, object]:
    """One botocore call per request type, as S3Store sends them: {type: call()}."""
    part = b"p" * (5 * MiB)

    def create():
        return c.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]

    def upload_part():
        uid = create()
        c.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=part)

    def complete():
        uid = create()
        etag = c.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=b"last part")["ETag"]
        c.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})

    return {
        "get": lambda: c.get_object(Bucket=bucket, Key="obj", Range="bytes=0-99")["Body"].read(),
        "head": lambda: c.head_object(Bucket=bucket, Key="obj"),
        "list": lambda: c.list_objects_v2(Bucket=bucket, Prefix="", Delimiter="/"),
        "put": lambda: c.put_object(Bucket=bucket, Key="put", Body=b"x" * 1000),
        "create_multipart": create,
        "upload_part": upload_part,
        "complete_multipart": complete,
        "abort_multipart": lambda: c.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=create()),
        "copy": lambda: c.copy_object(Bucket=bucket, Key="copied", CopySource={"Bucket": bucket, "Key": "obj"}),
        "delete": lambda: c.delete_object(Bucket=bucket, Key="put"),
    }


def test_proxy_classifies_what_botocore_sends(make_bucket, moto_server):
    """Every request type the matrix injects into is recognised as botocore sends it (not only as
    tests/unit builds requests by hand), and the ones S3Store sends besides."""
    bucket = make_bucket("fm-classify", {"obj": b"o" * 10_000, "big": b"b" * (9 * MiB)})
    with FaultProxy(moto_server.endpoint_url) as proxy:
        c = _client(proxy.url)
        for rtype, call in _requests(c, bucket).items():
            proxy.requests.clear()
            call()
            assert proxy.seen()[-1].op == rtype, (rtype, [r.op for r in proxy.seen()])
        proxy.requests.clear()
        uid = c.create_multipart_upload(Bucket=bucket, Key="mp2")["UploadId"]
        c.upload_part_copy(Bucket=bucket, Key="mp2", UploadId=uid, PartNumber=1,
                           CopySource={"Bucket": bucket, "Key": "obj"})
        c.list_parts(Bucket=bucket, Key="mp2", UploadId=uid)
        c.list_multipart_uploads(Bucket=bucket)
        c.abort_multipart_upload(Bucket=bucket, Key="mp2", UploadId=uid)
        c.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "copied"}]})
        # boto3's managed copy (S3Store.copy): objects of 8 MiB and more are copied in parts
        c.copy({"Bucket": bucket, "Key": "big"}, bucket, "big2")
        assert [r.op for r in proxy.seen()] == [
            "create_multipart", "copy_part", "list_parts", "list_multipart", "abort_multipart", "delete_objects",
            "head", "create_multipart", "copy_part", "copy_part", "complete_multipart"]


@pytest.mark.parametrize("fault_name", list(FAULTS))
def test_every_fault_reaches_every_request_type(make_bucket, moto_server, fault_name):
    """Each fault, once, on each request type, as botocore sees it with retries off: the call fails.
    `truncated` forwards first: the request took effect in S3, only its answer was lost."""
    import botocore.exceptions as bce
    bucket = make_bucket(f"fm-{fault_name}", {"obj": b"o" * 10_000})
    with FaultProxy(moto_server.endpoint_url) as proxy:
        c = _client(proxy.url, read_timeout=READ_TIMEOUT_S)
        for rtype, call in _requests(c, bucket).items():
            if rtype == "delete":
                c.put_object(Bucket=bucket, Key="put", Body=b"x")
            f = proxy.add(Fault(**FAULTS[fault_name], ops=rtype, count=1))
            try:
                with pytest.raises((bce.ClientError, bce.HTTPClientError, bce.ConnectionError)) as raised:
                    call()
            finally:
                proxy.remove(f)
            assert f.fired == 1, (rtype, fault_name)
            if fault_name == "stall":
                assert isinstance(raised.value, bce.ReadTimeoutError), (rtype, raised.value)
            if fault_name == "truncated" and rtype in ("put", "copy"):
                key = {"put": "put", "copy": "copied"}[rtype]
                assert c.head_object(Bucket=bucket, Key=key)["ContentLength"] in (1000, 10_000)


def test_rename_while_the_outage_breaker_is_open(mounter, make_bucket, s3, fault_proxy):
    """GETs fail (500), 3 cold reads get EIO and open the outage breaker; then a file S3 holds is
    renamed (CopyObject and DeleteObject work). SEMANTICS.md: the rename succeeds, or fails with EIO
    and leaves S3 as it was; either way S3 then holds what the mount shows."""
    objects = {f"r/f{i}": seeded(f"r/f{i}", 300 * KiB) for i in range(3)} | {"old.bin": seeded("old.bin", 200 * KiB)}
    bucket = make_bucket("fm-breaker", objects)
    m = mounter.mount(bucket, *MOUNT_OPTIONS, endpoint_url=fault_proxy.url)
    assert sorted(os.listdir(m.path)) == ["old.bin", "r"] and len(os.listdir(m.path / "r")) == 3
    with fault_proxy.fault(Fault("error", ops="get", status=500)):
        for i in range(3):
            with pytest.raises(OSError) as e:
                (m.path / f"r/f{i}").read_bytes()
            assert e.value.errno == errno.EIO
        assert "unreachable" in m.log_text()          # the breaker is open
        try:
            os.rename(m.path / "old.bin", m.path / "new.bin")
            renamed = True
        except OSError as e:
            assert e.errno == errno.EIO, e
            renamed = False
    assert run_cachefs(["flush", str(m.path), "--timeout", "30"], m.env).returncode == 0
    shown = sorted(os.listdir(m.path))
    held = sorted(k for k in (o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
                  if "/" not in k)
    assert shown == ["new.bin" if renamed else "old.bin", "r"], shown
    assert held == shown[:1], f"renamed={renamed}: the mount shows {shown}, S3 holds {held}"
