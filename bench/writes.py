"""Write benchmark (issue #6): cachefs side by side with s3fs and rclone --vfs-cache-mode writes.

  python -m bench.writes                      # `make bench-writes`: Ceph RGW, 1 GiB checkpoint, 3 runs
  python -m bench.writes --size 64 --runs 1 --endpoint moto --append-seconds 2   # a quick look

Per run and system (fresh mount, empty cache; systems rotate their order each run):
  checkpoint  one process writes SIZE MiB in 1 MiB writes, fsync, close: MiB/s as the writer sees it;
              then HEAD polls until the object is complete in S3 (its full size): seconds after close,
              and open-to-S3; the endpoint's count of PUT / multipart requests; the bytes are verified.
  appends     one process appends LINE_BYTES-byte log lines, flushing each, for APPEND_SECONDS:
              lines/s and per-line latency; how far S3 trails the writer while it writes (HEAD every
              0.25 s); whether S3 gets every line while the file is still open (within OPEN_WAIT s of
              the last line), and after close; PUT requests and bytes sent.
  endpoint    boto3 multipart PUT of the same SIZE MiB (16 MiB parts, 8 threads): the backend's pace.
Writes bench/results/writes-<UTC stamp>/{results.json,results.md} and prints the table.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import io
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

from bench import endpoint as endpoints
from bench import report, systems, util
from bench.run import RESULTS_DIR, Recorder, _NoSystem, _quiet_umount, keep_logs, machine
from bench.write_requests import RequestCounter
from bench.write_worker import expected_chunks, log_line

MiB = 1 << 20
BUCKET = "bench-writes"
SAMPLE_S = 0.25       # how often S3 is looked at while the appender writes
POLL_S = 0.1          # HEAD every 100 ms: fine enough for lags of seconds, ~10 requests/s of noise
VERIFY_CHUNK = 8 * MiB
ENDPOINT_PART = 16 * MiB  # what cachefs uses by default (--multipart-part-size)
ENDPOINT_THREADS = 8


# ---------------------------------------------------------------- the systems, mounted writable
class CachefsRW(systems.Cachefs):
    """`cachefs mount` with its defaults (read-write; small/large upload schedule by default)."""
    read_only, flush_after_close = False, False

    def describe(self) -> str:
        return "python -m cachefs mount (defaults: read-write, --cache-size 20GiB)"

    def umount(self) -> None:
        """`cachefs umount` (it uploads what is pending first); if the daemon is still there after it,
        umount(8), so that a broken `cachefs umount` costs a wait, not a mount left behind."""
        try:
            super().umount()
        except util.StepTimeout as exc:
            print(f"[{self.name}] {exc}; falling back to umount(8)", file=sys.stderr, flush=True)
            systems.System.umount(self)


class CachefsFlush(CachefsRW):
    """The same mount; the harness runs `cachefs flush MOUNTPOINT` right after each close and times it."""
    name, flush_after_close = "cachefs-flush", True

    def describe(self) -> str:
        return "cachefs as above, `cachefs flush MOUNTPOINT` run (and timed) right after each close"


class CachefsAtClose(CachefsRW):
    """cachefs with --eager-upload false: a large file's upload starts at its close."""
    name = "cachefs-at-close"
    extra_args = ("--eager-upload", "false")

    def describe(self) -> str:
        return "cachefs as above with --eager-upload false (a large file's upload starts at close)"


class S3fsRW(systems.S3fs):
    read_only = False

    def describe(self) -> str:
        return "s3fs-fuse read-write, defaults (no use_cache; uploads on flush/fsync/close)"


class RcloneWrites(systems.Rclone):
    read_only, vfs_cache_mode = False, "writes"

    def describe(self) -> str:
        return "rclone mount --vfs-cache-mode writes (default --vfs-write-back 5s)"


ALL = {cls.name: cls for cls in (CachefsRW, CachefsFlush, CachefsAtClose, S3fsRW, RcloneWrites)}
BINARIES = {"s3fs": "s3fs", "rclone": "rclone"}
DEFAULT_SYSTEMS = ("cachefs", "s3fs", "rclone")


def writable(system) -> str | None:
    """None if a file can be created on the mount, else why not (a read-only cachefs answers EROFS)."""
    probe = os.path.join(system.root, f".bench-writes-probe-{os.getpid()}")
    try:
        with open(probe, "wb") as f:
            f.write(b"x")
        os.unlink(probe)
    except OSError as exc:
        return f"cannot write ({errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror})"
    return None


# ---------------------------------------------------------------- S3 side
def wait_in_s3(client, key: str, size: int, timeout: float) -> float | None:
    """Poll HEAD until the object has `size` bytes; returns the monotonic time it did, None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == size:
                return time.monotonic()
        except client.exceptions.ClientError:
            pass  # not there yet (404), or a transient error: keep polling
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_S)


def etag_parts(client, key: str) -> int:
    """Parts of a multipart upload (from the ETag's -N suffix), 1 for a single PUT."""
    etag = client.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1


def verify(client, key: str, expected) -> None:
    """Compare the object with the expected chunks (an iterable of bytes); raises on a difference."""
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
    offset = 0
    pending = b""
    for want in expected:
        while len(pending) < len(want):
            more = body.read(VERIFY_CHUNK)
            if not more:
                raise AssertionError(f"{key}: object ends at {offset + len(pending)} bytes, expected more")
            pending += more
        got, pending = pending[:len(want)], pending[len(want):]
        if got != want:
            raise AssertionError(f"{key}: bytes differ within [{offset}, {offset + len(want)})")
        offset += len(want)
    if pending or body.read(1):
        raise AssertionError(f"{key}: object is longer than the {offset} bytes written")


class _Generated(io.RawIOBase):
    """A readable stream of the checkpoint's bytes, so boto3 can upload 1 GiB without holding it."""

    def __init__(self, size: int, seed: int):
        self.chunks, self.left, self.buf = expected_chunks(size, seed), size, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self.buf:
            self.buf = next(self.chunks, b"")
            if not self.buf:
                return 0
        n = min(len(b), len(self.buf))
        b[:n], self.buf = self.buf[:n], self.buf[n:]
        return n


def endpoint_put(client, key: str, size: int, seed: int) -> dict:
    from boto3.s3.transfer import TransferConfig
    cfg = TransferConfig(multipart_threshold=ENDPOINT_PART, multipart_chunksize=ENDPOINT_PART,
                         max_concurrency=ENDPOINT_THREADS)
    t0 = time.monotonic()
    client.upload_fileobj(io.BufferedReader(_Generated(size, seed), MiB), BUCKET, key, Config=cfg)
    secs = time.monotonic() - t0
    return {"mib_s": size / MiB / secs, "seconds": secs}


# ---------------------------------------------------------------- the workloads
def worker(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.write_worker", *map(str, args)]


def checkpoint(system, client, counter, key: str, size: int, seed: int, a) -> dict:
    mark = counter.snapshot()
    out = util.run(worker("checkpoint", os.path.join(system.root, key), size, seed), timeout=a.write_timeout,
                   cwd=systems.REPO)
    t = json.loads(out.stdout.splitlines()[-1])
    fig = {"size_mib": size / MiB, "write_s": t["t_closed"] - t["t_open"],
           "mib_s": size / MiB / (t["t_closed"] - t["t_open"]),
           "fsync_s": t["t_fsynced"] - t["t_written"], "close_s": t["t_closed"] - t["t_fsynced"]}
    if getattr(system, "flush_after_close", False):
        t0 = time.monotonic()
        util.run([sys.executable, "-m", "cachefs", "flush", system.mountpoint], timeout=a.s3_timeout,
                 cwd=systems.REPO)
        fig["flush_s"] = time.monotonic() - t0
    done = wait_in_s3(client, key, size, a.s3_timeout)
    if done is None:
        raise util.StepTimeout(f"{key} not complete in S3 {a.s3_timeout:.0f} s after close")
    fig.update(s3_after_close_s=done - t["t_closed"], open_to_s3_s=done - t["t_open"],
               end_to_end_mib_s=size / MiB / (done - t["t_open"]), etag_parts=etag_parts(client, key))
    fig.update(_requests(counter.since(mark)))
    if a.verify:
        verify(client, key, expected_chunks(size, seed))
    return fig


def appends(system, client, counter, key: str, a) -> dict:
    mark = counter.snapshot()
    proc = subprocess.Popen(worker("appends", os.path.join(system.root, key), a.append_seconds, a.append_lines,
                                   a.line_bytes), cwd=systems.REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        samples = []  # (time, bytes S3 held) while the writer writes
        t = json.loads(_line(proc, a.append_seconds + a.write_timeout,
                             lambda: samples.append((time.monotonic(), s3_size(client, key)))))
        size = t["lines"] * a.line_bytes
        fig = {"lines": t["lines"], "lines_per_s": t["lines"] / (t["t_last"] - t["t_open"]),
               **{k: t[k] for k in ("line_ms_p50", "line_ms_p99", "line_ms_max")}}
        lag = s3_lag(samples, t["progress"], a.line_bytes, t["t_last"])
        if lag:
            fig.update(s3_behind_median_s=statistics.median(lag), s3_behind_max_s=max(lag))
        done = wait_in_s3(client, key, size, a.open_wait)
        fig["in_s3_while_open"] = int(done is not None)
        if done is not None:
            fig["s3_while_open_s"] = done - t["t_last"]
        proc.stdin.write("close\n")
        proc.stdin.flush()
        c = json.loads(_line(proc, a.write_timeout))
        fig["close_s"] = c["t_closed"] - c["t_close_start"]
        if done is None:
            done = wait_in_s3(client, key, size, a.s3_timeout)
            if done is None:
                raise util.StepTimeout(f"{key}: not all {t['lines']} lines in S3 {a.s3_timeout:.0f} s after close")
            fig["s3_after_close_s"] = done - c["t_closed"]
        else:
            fig["s3_after_close_s"] = 0.0
        fig["last_line_to_s3_s"] = done - t["t_last"]
        proc.wait(a.write_timeout)
    finally:
        util.kill_group(proc)
    fig.update(_requests(counter.since(mark)))
    if fig.get("put_mib") is not None:
        fig["put_bytes_over_log_bytes"] = fig["put_mib"] * MiB / size if size else None
    if a.verify:
        verify(client, key, [b"".join(log_line(i, a.line_bytes) for i in range(t["lines"]))])
    return fig


def s3_size(client, key: str) -> int:
    try:
        return client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    except client.exceptions.ClientError:
        return 0


def s3_lag(samples: list, progress: list, line_bytes: int, t_last: float) -> list[float]:
    """How far S3 trailed the writer at each sample: the age of the oldest line it did not hold yet
    (0 when it held every line written by then). `progress` is the writer's [(time, lines so far)]."""
    lags = []
    for t_s, nbytes in samples:
        if t_s > t_last:
            break
        held = nbytes // line_bytes
        # the first progress point with more lines than S3 held: that line was written by then
        first_missing = next((t for t, n in progress if n > held), None)
        lags.append(max(0.0, t_s - first_missing) if first_missing is not None and first_missing <= t_s else 0.0)
    return lags


def _line(proc: subprocess.Popen, timeout: float, every=None) -> str:
    """One line of the worker's stdout within `timeout` seconds, or its stderr in the exception;
    `every()` is called every SAMPLE_S meanwhile."""
    deadline = time.monotonic() + timeout
    ready = []
    while not ready and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], min(SAMPLE_S, max(0.0, deadline - time.monotonic())))
        if not ready and every:
            every()
    line = proc.stdout.readline() if ready else ""
    if not line:
        util.kill_group(proc)
        raise RuntimeError(f"the writer gave no result in {timeout:.0f} s: {proc.stderr.read()[-1500:]}")
    return line


def _requests(counted: dict) -> dict:
    out = {k: v for k, v in counted.items() if k != "ops"}
    out.update({f"ops_{op}": n for op, n in counted.get("ops", {}).items()})
    return out


# ---------------------------------------------------------------- the run
class _Endpoint(_NoSystem):
    """Stands in for a system in the endpoint's own PUT step."""
    name = "endpoint"


def measure_system(system, client, counter, rec, run: int, ep_pids: list[int], a) -> None:
    util.drop_page_cache()  # the previous system's dirty pages are written back before this one starts
    system.remount()
    why = writable(system)
    if why:
        raise _NotWritable(why)
    tag, key = f"{system.name}-run{run}", {"run": run, "workload": "writes", "state": "-"}
    rec.measure(lambda: checkpoint(system, client, counter, f"{tag}-checkpoint.bin", a.size_mib * MiB, run, a),
                system, ep_pids, job="checkpoint", **key)
    rec.measure(lambda: appends(system, client, counter, f"{tag}-appends.log", a), system, ep_pids, job="appends",
                **key)


class _NotWritable(Exception):
    pass


def clean_bucket(client) -> None:
    """Delete what the run wrote (through S3, after the unmount): the next run starts from an empty bucket."""
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})


def _commit() -> str:
    """HEAD, and whether cachefs/ had uncommitted changes (the tree is shared while it is worked on)."""
    head = util.run(["git", "rev-parse", "--short", "HEAD"], timeout=10, check=False, cwd=systems.REPO).stdout.strip()
    dirty = util.run(["git", "status", "--porcelain", "cachefs"], timeout=10, check=False, cwd=systems.REPO).stdout
    return head + (" + uncommitted changes in cachefs/" if dirty.strip() else "")


def remove_scratch(scratch: str) -> None:
    """rmtree, but never through a mount still alive under it (that would delete objects in the bucket)."""
    with open("/proc/self/mounts") as f:
        left = [line.split()[1] for line in f if line.split()[1].startswith(scratch + "/")]
    for mnt in left:
        print(f"{mnt} is still mounted at the end: lazy unmount", file=sys.stderr, flush=True)
        util.run(["umount", "-l", mnt], timeout=30, check=False)
    shutil.rmtree(scratch, ignore_errors=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help=f"comma-separated, of {', '.join(ALL)}")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size", dest="size_mib", type=int, default=1024, help="checkpoint size in MiB (default 1 GiB)")
    # 12 s, not a multiple of cachefs's 5 s small-file interval: the last line then lands mid-interval
    p.add_argument("--append-seconds", type=float, default=12.0, help="how long the appender writes")
    p.add_argument("--append-lines", type=int, default=10**9, help="or stop after this many lines")
    p.add_argument("--line-bytes", type=int, default=100)
    p.add_argument("--open-wait", type=float, default=20.0,
                   help="seconds to wait for every appended line to reach S3 while the file is still open")
    p.add_argument("--s3-timeout", type=float, default=600.0, help="longest wait for an object to be in S3")
    p.add_argument("--write-timeout", type=float, default=900.0, help="longest a writer may take")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip reading the objects back")
    p.add_argument("--endpoint", choices=("ceph", "moto"), default="ceph")
    p.add_argument("--out", help="results directory (default bench/results/writes-<UTC timestamp>)")
    a = p.parse_args(argv)
    a.names = [n for n in a.systems.split(",") if n]
    unknown = set(a.names) - set(ALL)
    if unknown:
        p.error(f"unknown system(s) {', '.join(sorted(unknown))}; choose from {', '.join(ALL)}")
    return a


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = a.out or os.path.join(RESULTS_DIR, f"writes-{stamp}")
    os.makedirs(out, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="cachefs-bench-writes-", dir="/tmp")
    results = {"command": " ".join(["python -m bench.writes", *argv]), "started_utc": stamp, "machine": machine(),
               "runs": a.runs, "size_mib": a.size_mib, "append_seconds": a.append_seconds,
               "line_bytes": a.line_bytes, "open_wait_s": a.open_wait, "commit": _commit(), "systems": {},
               "skipped": {}, "notes": []}
    rec = Recorder()
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(remove_scratch, scratch)
            stack.callback(keep_logs, scratch, os.path.join(out, "logs"))
            ep = stack.enter_context(endpoints.open_endpoint(scratch, a.endpoint))
            results["endpoint"] = {"kind": ep.kind, "note": ep.note}
            print(f"endpoint: {ep.kind} {ep.url} {ep.note}", flush=True)
            client = ep.client()
            client.create_bucket(Bucket=BUCKET)
            counter = RequestCounter(scratch, ep, BUCKET)
            if note := counter.enable():
                results["notes"].append(note)
            under_test = []
            for name in a.names:
                binary = BINARIES.get(name)
                if binary and not shutil.which(binary):
                    results["skipped"][name] = f"`{binary}` is not installed"
                    continue
                system = ALL[name](scratch, ep, BUCKET, os.path.join(scratch, "local"))
                stack.callback(_quiet_umount, system)
                under_test.append(system)
                results["systems"][name] = system.describe()
            for run in range(1, a.runs + 1):
                rec.measure(lambda: endpoint_put(client, f"endpoint-run{run}.bin", a.size_mib * MiB, run), _Endpoint,
                            ep.pids, run=run, workload="writes", job="put", state="-")
                shift = (run - 1) % max(1, len(under_test))  # each system goes first in some run
                for system in under_test[shift:] + under_test[:shift]:
                    if system.name in results["skipped"]:
                        continue
                    try:
                        measure_system(system, client, counter, rec, run, ep.pids, a)
                    except _NotWritable as exc:
                        results["skipped"][system.name] = f"mounted, but {exc}: its write path is not there"
                        print(f"[{system.name}] skipped: {results['skipped'][system.name]}", flush=True)
                    except Exception as exc:  # noqa: BLE001 - a mount failure is a row, the run goes on
                        rec.add(run=run, workload="writes", system=system.name, job="mount", state="-",
                                error=f"{type(exc).__name__}: {exc}\n{system.log_tail()}")
                    finally:
                        _quiet_umount(system)
                        clean_bucket(client)
    except BaseException:
        results["notes"].append("the run was interrupted: " + traceback.format_exc(limit=3))
        raise
    finally:
        results.update(rows=rec.rows, seconds=time.monotonic() - started)
        results["machine"]["loadavg_at_end"] = os.getloadavg()
        md = markdown(results)
        for name, text in (("results.json", json.dumps(results, indent=1, default=str)), ("results.md", md)):
            with open(os.path.join(out, name), "w") as f:
                f.write(text)
        print("\n" + md + f"\nresults: {out}/results.json, results.md ({results['seconds']:.0f} s)", flush=True)
    return 0


# ---------------------------------------------------------------- the table
def markdown(results: dict) -> str:
    s = report.summaries(results["rows"])
    names = [n for n in results["systems"] if n not in results["skipped"]]
    m, ep = results["machine"], results.get("endpoint", {})
    size, secs, wait = results["size_mib"], results["append_seconds"], results["open_wait_s"]

    def c(job, metric, digits=1, system=None):
        return [report.cell(s, ("writes", job, "-", n), metric, digits) for n in ([system] if system else names)]

    def row(label, job, metric, digits=1):
        return [label, *c(job, metric, digits)]

    def open_cell(n):
        f = s["figures"].get(("writes", "appends", "-", n), {})
        got = f.get("in_s3_while_open")
        if not got:
            return "-"
        if got["max"] == 0:
            return f"not within {wait:g} s"
        text = report.cell(s, ("writes", "appends", "-", n), "s3_while_open_s", 1)
        missed = sum(1 for r in results["rows"] if r["system"] == n and r["job"] == "appends"
                     and r.get("in_s3_while_open") == 0)
        return text if not missed else f"{text} [{missed} of {got['n']} runs: not within {wait:g} s]"

    body = [
        row(f"checkpoint: writer MiB/s (open, {size:,} x 1 MiB writes, fsync, close)", "checkpoint", "mib_s", 0),
        row("checkpoint: fsync s", "checkpoint", "fsync_s", 2),
        row("checkpoint: close s", "checkpoint", "close_s", 2),
        row("checkpoint: after close until complete in S3, s", "checkpoint", "s3_after_close_s", 1),
        row("checkpoint: open until complete in S3, s", "checkpoint", "open_to_s3_s", 1),
        row("checkpoint: end-to-end MiB/s (size / open-to-S3)", "checkpoint", "end_to_end_mib_s", 0),
        row("checkpoint: PUT requests (PutObject + UploadPart)", "checkpoint", "put_requests", 0),
        row("checkpoint: parts in the object's ETag", "checkpoint", "etag_parts", 0),
        row("checkpoint: daemon CPU s", "checkpoint", "daemon_cpu_s", 1),
        row("checkpoint: daemon peak RSS MiB", "checkpoint", "daemon_peak_rss_mib", 0),
        row(f"appends: lines/s ({results['line_bytes']}-byte lines, flush each, {secs:g} s)", "appends",
            "lines_per_s", 0),
        row("appends: per-line write p99 ms", "appends", "line_ms_p99", 2),
        row("appends: per-line write max ms", "appends", "line_ms_max", 1),
        row("appends: S3 behind the writer while it writes, median s", "appends", "s3_behind_median_s", 1),
        row("appends: S3 behind the writer while it writes, max s", "appends", "s3_behind_max_s", 1),
        ["appends: every line in S3 while the file is open, s after the last line", *map(open_cell, names)],
        row("appends: close s", "appends", "close_s", 2),
        row("appends: after close until every line is in S3, s", "appends", "s3_after_close_s", 1),
        row("appends: PUT requests", "appends", "put_requests", 0),
        row("appends: daemon CPU s", "appends", "daemon_cpu_s", 1),
    ]
    if any("put_mib" in f for k, f in s["figures"].items() if k[1] == "appends"):
        body.append(row("appends: bytes PUT / log size", "appends", "put_bytes_over_log_bytes", 1))
    if any("flush_s" in f for f in s["figures"].values()):
        body.insert(3, row("checkpoint: `cachefs flush` s", "checkpoint", "flush_s", 2))
    probe = report.cell(s, ("writes", "put", "-", "endpoint"), "mib_s", 0)
    parts = [
        f"# Write benchmark {results['started_utc']}",
        f"Command: `{results['command']}` ({results['runs']} runs, {results['seconds']:.0f} s, commit "
        f"{results.get('commit', '?')}). "
        f"Cells: median (min-max) over runs.",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, {m['s3fs']}, "
        f"{m['rclone']}. Load average (1/5/15 min) {report._load(m.get('loadavg_at_start'))} at the start, "
        f"{report._load(m.get('loadavg_at_end'))} at the end (other work shares this machine).",
        f"Endpoint: **{ep.get('kind', '?')}** - {ep.get('note', '')}. Its own pace: boto3 multipart PUT of "
        f"{size:,} MiB ({ENDPOINT_PART // MiB} MiB parts, {ENDPOINT_THREADS} threads): **{probe} MiB/s**.",
        *[f"**Note:** {n}" for n in results.get("notes", [])],
        "",
        "Systems: " + "; ".join(f"`{k}` = {v}" for k, v in results["systems"].items() if k in names),
    ]
    parts += [f"**Skipped:** `{k}`: {v}" for k, v in results.get("skipped", {}).items()]
    if names:
        parts += ["", report.table(["figure", *names], body)]
    ops = _ops_lines(results["rows"], names)
    if ops:
        parts += ["", "Write requests the endpoint saw (run 1):", *ops]
    errors = [f"- run {r['run']} {r['system']} {r['job']}: {r['error'].strip().splitlines()[0][:300]}"
              for r in results["rows"] if r.get("error")]
    if errors:
        parts += ["", "Failures:", *errors]
    return "\n".join(parts) + "\n"


def _ops_lines(rows: list[dict], names: list[str]) -> list[str]:
    out = []
    for r in rows:
        if r["run"] == 1 and r["system"] in names and not r.get("error"):
            ops = {k[4:]: v for k, v in r.items() if k.startswith("ops_")}
            if ops:
                out.append(f"- {r['system']} {r['job']}: " + ", ".join(f"{k} {v}" for k, v in ops.items()))
    return out


if __name__ == "__main__":
    sys.exit(main())
