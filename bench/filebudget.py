"""The daemon's CPU per cold small file, by phase (issue 17, "cheaper files").

    python -m bench.filebudget [--files 2000] [--runs 3] [--readers 1 8] [--endpoint ceph|moto]

Starts Ceph RGW (bench/ceph.sh, as bench/coldread.py does), uploads FILES objects of 110 KB in
directories of 250, then in every run and for each reader count: two fresh cachefs mounts of this
checkout in the foreground, each with an empty cache, reading every file once (a listing of each
directory, then open/read/close of its files; READERS threads share the file list):

  profiled   the daemon runs under a per-thread cProfile (this module's --daemon-profile mode: a
             profiler for the main thread and, through threading.setprofile, one for every thread
             the daemon starts: trio's to_thread workers, the hedging and S3 attempt pools), all
             timed with time.thread_time, i.e. CPU seconds of the thread, not wall time. The
             profiles are snapshotted right before the first read and right after the last one;
             the difference is the workload's, without start-up and unmount.
  plain      the same daemon without a profiler: its CPU (utime+stime from /proc/PID/stat) over
             the same window, and its total CPU just before the unmount.

Phases: each function's own time goes to its nearest ancestor (itself included) that names a phase,
the callers weighted by the cumulative time they account for (pstats' caller edges: gprof's
approximation). FUSE handlers of cachefs/fs.py by name; fetch = cachefs/store/* (GET path, with
botocore/urllib3 under it), list = its fastlist; store = cachefs/cache/*; index = cachefs/meta/*
(LMDB block index); thread hops = trio/_threads.py, trio's thread cache, concurrent.futures,
threading, queue; cachefs code with no handler above it (background fetches, prefetch) is
"background"; the rest is trio's loop, pyfuse3's dispatch and everything else. The fetch is also
split by library (signing, http.client/email/urllib3/socket, other botocore, cachefs/store).

The profiler costs ~4x the daemon's CPU, per call event: "less profiler cost" takes the same cost per
call out of every phase (see corrected()), so those figures add up to the plain daemon's CPU.

Writes bench/results/filebudget-<UTC timestamp>.json and prints ms of CPU per file per phase.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import cProfile
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time

from bench import util
from bench.endpoint import BUCKET, open_endpoint
from bench.systems import REPO
from cachefs.devtools import sample

FILE_BYTES = 110_000
PER_DIR = 250
PROFILE_STEPS = ("start", "stop")   # trigger files the profiled daemon answers with <step>.pstats

HANDLERS = {"lookup": "lookup", "getattr": "getattr", "open": "open", "read": "read", "release": "release",
            "opendir": "readdir", "readdir": "readdir", "releasedir": "readdir", "flush": "flush",
            "getxattr": "getxattr", "listxattr": "getxattr", "statfs": "statfs",
            "forget": "forget"}
PHASES = ("lookup", "getattr", "open", "read", "release", "readdir", "flush", "getxattr", "statfs", "forget",
          "fuse wrapper", "fetch", "list", "store", "index", "thread hops", "background", "rest")
THREAD_FILES = ("/trio/_threads.py", "/trio/_core/_thread_cache.py", "/concurrent/futures/", "/threading.py",
                "/queue.py")
WEAK = "weak"     # cachefs code that is no phase of its own: it takes its callers' phase, else "background"


# ------------------------------------------------------------------ the profiled daemon (its own process)

def daemon_profile(out_dir: str, argv: list[str]) -> int:
    """Run `python -m cachefs ARGV` with a thread_time cProfile per thread; on each trigger file
    <out_dir>/<step> write the merged stats so far to <out_dir>/<step>.pstats."""
    import runpy
    profilers: list[cProfile.Profile] = []
    lock = threading.Lock()

    def snapshot() -> dict:
        merged: dict = {}
        with lock:
            profs = list(profilers)
        for p in profs:
            p.snapshot_stats()
            _add(merged, p.stats)   # type: ignore[attr-defined]
        return merged

    def watch() -> None:         # started before the hook: not profiled itself
        for step in PROFILE_STEPS:
            trigger = os.path.join(out_dir, step)
            while not os.path.exists(trigger):
                time.sleep(0.02)
            data = pickle.dumps(snapshot())
            with open(trigger + ".tmp", "wb") as f:
                f.write(data)
            os.rename(trigger + ".tmp", trigger + ".pstats")

    def hook(frame, event, arg) -> None:
        p = cProfile.Profile(time.thread_time)
        with lock:
            profilers.append(p)
        p.enable()              # replaces this hook for the thread

    threading.Thread(target=watch, name="filebudget-watch", daemon=True).start()
    threading.setprofile(hook)
    main = cProfile.Profile(time.thread_time)
    profilers.append(main)
    sys.argv = ["cachefs", *argv]
    main.enable()
    try:
        runpy.run_module("cachefs", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
    finally:
        main.disable()
    return 0


def _add(into: dict, stats: dict, sign: int = 1) -> None:
    """pstats-style {func: (cc, nc, tt, ct, {caller: (..4 numbers)})} into += sign * stats."""
    for func, (cc, nc, tt, ct, callers) in stats.items():
        c0, n0, t0, k0, cal0 = into.get(func, (0, 0, 0.0, 0.0, {}))
        cal = dict(cal0)
        for caller, edge in callers.items():
            old = cal.get(caller, (0, 0, 0.0, 0.0))
            cal[caller] = tuple(a + sign * b for a, b in zip(old, edge, strict=True))
        into[func] = (c0 + sign * cc, n0 + sign * nc, t0 + sign * tt, k0 + sign * ct, cal)


# ------------------------------------------------------------------ attribution

def classify(func: tuple) -> str | None:
    file, _, name = func
    file = file.replace("\\", "/")
    if file.endswith("cachefs/fs.py"):
        return "fuse wrapper" if name == "wrapper" else HANDLERS.get(name, WEAK)
    if "/cachefs/meta/" in file:
        return "index"
    if "/cachefs/cache/" in file:
        return "store"
    if file.endswith("cachefs/store/fastlist.py"):
        return "list"
    if "/cachefs/store/" in file or "/botocore/" in file or "/urllib3/" in file:
        return "fetch"
    if any(part in file for part in THREAD_FILES):
        return "thread hops"
    if "/cachefs/" in file:
        return WEAK
    return None


def classify_fetch(func: tuple) -> str | None:
    """classify(), with the S3 fetch split by library: what the CPU of a GET is spent on."""
    file = func[0].replace("\\", "/")
    if "/botocore/auth.py" in file or "/botocore/signers.py" in file or "/cachefs/store/credentials.py" in file:
        return "fetch: signing"
    if any(part in file for part in ("/http/client.py", "/email/", "/urllib3/", "/socket.py", "/ssl.py")):
        return "fetch: http (http.client, email headers, urllib3, socket)"
    if "/botocore/" in file:
        return "fetch: botocore, other"
    if file.endswith("cachefs/store/fastlist.py"):
        return "list"
    if "/cachefs/store/" in file:
        return "fetch: cachefs/store"
    return classify(func)


FETCH_PARTS = ("fetch: signing", "fetch: http (http.client, email headers, urllib3, socket)",
               "fetch: botocore, other", "fetch: cachefs/store")
ALL_PHASES = (*PHASES, *FETCH_PARTS)


def attribute(stats: dict, classify=classify) -> tuple[dict, dict]:
    """CPU seconds and calls per phase (each function's own time and calls spread over its callers' phases)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    memo: dict = {}
    busy: set = set()

    def dist(func) -> dict:
        if func in memo:
            return memo[func]
        own = classify(func)
        if own is not None and own != WEAK:
            memo[func] = {own: 1.0}
            return memo[func]
        busy.add(func)
        total, out = 0.0, {}
        for caller, edge in stats[func][4].items():
            if caller in busy or caller not in stats:
                continue
            w = max(edge[3], 0.0) or 1e-12 * max(edge[0], 0)
            for phase, share in dist(caller).items():
                out[phase] = out.get(phase, 0.0) + w * share
            total += w
        busy.discard(func)
        result = {k: v / total for k, v in out.items()} if total > 0 else {"rest": 1.0}
        if own == WEAK and "rest" in result:   # cachefs code no handler called: a background task's
            result["background"] = result.get("background", 0.0) + result.pop("rest")
        memo[func] = result
        return result

    names = [*PHASES, *(p for p in FETCH_PARTS if classify is classify_fetch)]
    phases, calls = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    for func, (_, nc, tt, _, _) in stats.items():
        if tt <= 0 and nc <= 0:
            continue
        for phase, share in dist(func).items():
            phases[phase] += tt * share
            calls[phase] += nc * share
    return phases, calls


def corrected(prof: dict, plain_cpu_s: float) -> dict:
    """The profiled phases less the profiler's cost, taken as the same per call (Python or C call
    event): c = (profiled sum - the un-instrumented daemon's CPU) / calls; phase - calls x c."""
    total, calls = sum(prof["phases_s"].values()), sum(prof["calls"].values())
    c = (total - plain_cpu_s) / calls if calls else 0.0
    out = {p: max(prof["phases_s"][p] - prof["calls"][p] * c, 0.0) for p in PHASES}
    out.update({p: max(prof["fetch_parts_s"][p] - prof["fetch_parts_calls"][p] * c, 0.0) for p in FETCH_PARTS})
    return out


def top_functions(stats: dict, n: int = 15) -> list:
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:n]
    return [{"func": f"{os.path.relpath(f[0], REPO) if f[0].startswith(REPO) else f[0]}:{f[1]}({f[2]})",
             "calls": v[1], "own_s": round(v[2], 4), "cum_s": round(v[3], 4)} for f, v in rows]


# ------------------------------------------------------------------ one mount, one reading

def mount_cmd(ep, mnt: str, cache: str) -> list[str]:
    return ["mount", f"s3://{BUCKET}", mnt, "--endpoint-url", ep.url, "--region", "us-east-1",
            "--addressing-style", "path", "--cache-dir", cache, "--cache-size", "20GiB",
            "--foreground", "--log-level", "warning"]


def read_all(mnt: str, dirs: list[str], readers: int) -> int:
    files = []
    for d in dirs:
        files += [os.path.join(mnt, d, name) for name in sorted(os.listdir(os.path.join(mnt, d)))]

    def read(path: str) -> int:
        with open(path, "rb") as f:
            return len(f.read())
    if readers == 1:
        n = sum(map(read, files))
    else:
        with concurrent.futures.ThreadPoolExecutor(readers) as pool:
            n = sum(pool.map(read, files))
    if n != len(files) * FILE_BYTES:
        raise RuntimeError(f"read {n} bytes, expected {len(files) * FILE_BYTES}")
    return len(files)


def wait_file(path: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    util.wait_until(lambda: os.path.exists(path) or proc.poll() is not None, timeout, path, interval=0.02)
    if not os.path.exists(path):
        raise RuntimeError(f"daemon exited {proc.returncode} before writing {path}")


def one_mount(ep, scratch: str, tag: str, dirs: list[str], readers: int, profiled: bool) -> dict:
    base = os.path.join(scratch, tag)
    mnt, cache, prof_dir = (os.path.join(base, x) for x in ("mnt", "cache", "prof"))
    for d in (mnt, cache, prof_dir):
        os.makedirs(d)
    cmd = [sys.executable, "-m", *(("bench.filebudget", "--daemon-profile", prof_dir, "--") if profiled
                                    else ("cachefs",)), *mount_cmd(ep, mnt, cache)]
    log = open(os.path.join(base, "daemon.log"), "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=ep.env(), cwd=REPO, start_new_session=True)
    row: dict = {"profiled": profiled, "readers": readers}
    try:
        util.wait_until(lambda: os.path.ismount(mnt) or proc.poll() is not None, 60, f"{tag} to mount")
        if not os.path.ismount(mnt):
            raise RuntimeError(f"{tag}: daemon exited {proc.returncode}; see {base}/daemon.log")
        if profiled:
            open(os.path.join(prof_dir, "start"), "w").close()
            wait_file(os.path.join(prof_dir, "start.pstats"), proc)
        cpu0, t0 = util.cpu_seconds([proc.pid]), time.monotonic()
        row["files"] = read_all(mnt, dirs, readers)
        row["wall_s"] = time.monotonic() - t0
        if profiled:
            open(os.path.join(prof_dir, "stop"), "w").close()
            wait_file(os.path.join(prof_dir, "stop.pstats"), proc)
        cpu1 = util.cpu_seconds([proc.pid])
        row["read_cpu_s"] = cpu1 - cpu0
        row["total_cpu_s"] = cpu1          # start-up, listing, reads: everything before the unmount
    finally:
        util.run(["fusermount3", "-u", mnt], timeout=60, check=False)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            util.kill_group(proc)
        log.close()
    if profiled:
        with open(os.path.join(prof_dir, "stop.pstats"), "rb") as f:
            stats = pickle.load(f)
        with open(os.path.join(prof_dir, "start.pstats"), "rb") as f:
            _add(stats, pickle.load(f), sign=-1)
        phases, calls = attribute(stats)
        row.update(phases_s=phases, calls=calls, profiled_cpu_s=sum(phases.values()), top=top_functions(stats))
        parts, part_calls = attribute(stats, classify_fetch)
        row.update(fetch_parts_s={k: parts[k] for k in FETCH_PARTS}, fetch_parts_calls={k: part_calls[k]
                                                                                          for k in FETCH_PARTS})
    return row


# ------------------------------------------------------------------ the run

def upload(ep, files: int) -> list[str]:
    client = ep.client(max_pool=32)
    client.create_bucket(Bucket=BUCKET)
    dirs = [f"small/d{i:02d}" for i in range(-(-files // PER_DIR))]
    items = ((f"{dirs[i // PER_DIR]}/f{i:06d}.bin", os.urandom(FILE_BYTES)) for i in range(files))
    sample.upload(client, BUCKET, "", items, workers=16)
    return dirs


def summarize_rows(rows: list[dict], readers: int) -> dict:
    prof = [r for r in rows if r["profiled"] and r["readers"] == readers]
    plain = [r for r in rows if not r["profiled"] and r["readers"] == readers]
    ms = {p: util.summarize([1e3 * {**r["phases_s"], **r["fetch_parts_s"]}[p] / r["files"] for r in prof])
          for p in ALL_PHASES}
    fixed = [corrected(pr, pl["read_cpu_s"]) for pr in prof for pl in plain if pl["run"] == pr["run"]]
    return {"phases_ms": ms,
            "corrected_ms": {p: util.summarize([1e3 * f[p] / prof[0]["files"] for f in fixed]) for p in ALL_PHASES},
            "calls_per_file": {p: util.summarize([{**r["calls"], **r["fetch_parts_calls"]}[p] / r["files"]
                                                  for r in prof]) for p in ALL_PHASES},
            "profiled_sum_ms": util.summarize([1e3 * r["profiled_cpu_s"] / r["files"] for r in prof]),
            "profiled_proc_ms": util.summarize([1e3 * r["read_cpu_s"] / r["files"] for r in prof]),
            "plain_proc_ms": util.summarize([1e3 * r["read_cpu_s"] / r["files"] for r in plain]),
            "plain_total_cpu_s": util.summarize([r["total_cpu_s"] for r in plain]),
            "plain_files_s": util.summarize([r["files"] / r["wall_s"] for r in plain])}


def print_summary(readers: int, s: dict) -> None:
    print(f"\n== {readers} reader(s): ms of CPU per file, profiled | less the profiler's per-call cost "
          "(min / median / max over runs) | calls per file")
    for p in ALL_PHASES:
        v, c, n = s["phases_ms"][p], s["corrected_ms"][p], s["calls_per_file"][p]
        if v and v["max"] >= 0.005:
            print(f"  {p[:30]:30s} {v['min']:6.3f} {v['median']:6.3f} {v['max']:6.3f} | " +
                  (f"{c['min']:6.3f} {c['median']:6.3f} {c['max']:6.3f}" if c else "-") + f" | {n['median']:7.0f}")
    for k in ("profiled_sum_ms", "profiled_proc_ms", "plain_proc_ms", "plain_total_cpu_s", "plain_files_s"):
        v = s[k]
        if v:
            print(f"  {k:18s} {v['min']:8.3f} {v['median']:8.3f} {v['max']:8.3f}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--daemon-profile"]:
        return daemon_profile(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--readers", type=int, nargs="+", default=[1, 8])
    p.add_argument("--endpoint", choices=("ceph", "moto"), default="ceph")
    p.add_argument("--out", help="JSON path (default bench/results/filebudget-<UTC timestamp>.json)")
    args = p.parse_args(argv)
    rows: list[dict] = []
    with (tempfile.TemporaryDirectory(prefix="cachefs-filebudget-") as scratch,
          open_endpoint(scratch, args.endpoint) as ep):
        dirs = upload(ep, args.files)
        for r in range(args.runs):
            for readers in args.readers:
                for kind in ("prof", "plain") if r % 2 == 0 else ("plain", "prof"):
                    tag = f"r{r}-j{readers}-{kind}"
                    row = one_mount(ep, scratch, tag, dirs, readers, kind == "prof")
                    row.update(run=r + 1, loadavg=os.getloadavg()[0])
                    rows.append(row)
                    extra = (f", profiled sum {1e3 * row['profiled_cpu_s'] / row['files']:.2f} ms/file"
                             if kind == "prof" else "")
                    print(f"run {r + 1} {tag}: {row['files'] / row['wall_s']:.0f} files/s, daemon "
                          f"{1e3 * row['read_cpu_s'] / row['files']:.2f} ms CPU/file{extra}, "
                          f"load {row['loadavg']:.1f}", flush=True)
    summary = {readers: summarize_rows(rows, readers) for readers in args.readers}
    for readers, s in summary.items():
        print_summary(readers, s)
    util.write_runs(util.results_path("filebudget", args.out), args, ep, rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
