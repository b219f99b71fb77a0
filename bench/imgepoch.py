"""Cold image-folder epoch 1 alone, through cachefs over Ceph RGW, in seconds per try (issue 17).

    python -m bench.imgepoch [--runs 3] [--images 512] [--baseline TREE [--baseline-options "OPTS"]] [--timeline]
                             [--probe] [--latency-ms MS]
                             [--hint [--hint-sorted]] [--manifest]
                             [-- extra cachefs options]

Starts Ceph RGW (bench/ceph.sh), uploads the "short" scale's image folder (bench/dataset.py: 512
~110 KB images over 100 class directories), then per run mounts cachefs with an empty cache (as
bench/systems.py does) and runs bench/loader/loader.py's images epoch 1 (4 workers, shuffled order).
--baseline TREE: another checkout mounted in the same run, in alternating order (before/after side
by side; with --hint also as `base+hint`). --timeline: the daemon's s3_get / fetch_shared /
cache_hits counters every 50 ms during the epoch (GETs/s over time: when prefetch starts, how far
it runs). --probe: the endpoint's pycurl 110 KB GET rate at 16 and 64 in flight and its CPU per GET
first. --latency-ms: bench/proxy.py in
front of the endpoint (a remote store; --straggler-p 0.01: with bench.run's stragglers).
IMGEPOCH_PYSPY=PREFIX: py-spy raw profiles of each daemon (IMGEPOCH_PYSPY_NATIVE=1: with C frames;
IMGEPOCH_PYSPY_GIL=1: only the thread holding the GIL, i.e. Python's CPU, not its waits).
IMGEPOCH_PERF=PREFIX: a system-wide `perf record` of each epoch (every process: daemon, endpoint,
loader; `perf report -i PREFIX.PID --sort comm,dso`).
Prints min/median/max img/s, CPU ms per image (daemon, endpoint, loader) and the load average.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench import dataset, util
from bench.coldread import machine_busy_s
from bench.endpoint import BUCKET, delaying_proxy, open_endpoint
from bench.loader import loader
from bench.systems import Cachefs
from bench.util import send_hint
from cachefs.devtools import sample

CLK_TCK = os.sysconf("SC_CLK_TCK")

TIMELINE_S = 0.05
PYSPY_OUT = os.environ.get("IMGEPOCH_PYSPY")  # py-spy raw profiles of the daemon, one per mount
# IMGEPOCH_PYSPY_NATIVE=1: with C frames (py-spy then pauses the daemon for each sample: slower)
PERF_OUT = os.environ.get("IMGEPOCH_PERF")     # perf record -a of each epoch, one file per mount
PYSPY_MODE = ["--native"] if os.environ.get("IMGEPOCH_PYSPY_NATIVE") else ["--nonblocking"]
if os.environ.get("IMGEPOCH_PYSPY_GIL"):     # only the samples of the thread holding the GIL: CPU, not waits
    PYSPY_MODE.append("--gil")


def sample_counters(mountpoint: str, stop: threading.Event, out: list) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        try:
            s = util.daemon_stats(mountpoint)
        except Exception:  # noqa: BLE001 - a timeline sample only
            continue
        out.append((time.monotonic() - t0, s.get("s3_get", 0), s.get("fetch_shared", 0), s.get("cache_hits", 0),
                    s.get("fuse_reads", 0)))
        stop.wait(TIMELINE_S)


def thread_cpu(pid: int) -> dict[str, float]:
    """The daemon's CPU seconds so far: user and system of its main thread (trio, FUSE) and of the
    whole process (the rest: the disk writer, trio's worker threads, libcurl's), and the seconds
    its main thread was ready to run but waited for a core; and the minor page faults of the whole
    process, in thousands (so that the report's "per image" scaling gives faults per image)."""
    out = {}
    for name, path in (("main", f"/proc/{pid}/task/{pid}/stat"), ("all", f"/proc/{pid}/stat")):
        try:
            with open(path) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return {}
        out[name + "_user"] = int(fields[11]) / CLK_TCK
        out[name + "_sys"] = int(fields[12]) / CLK_TCK
    out["main_faults"] = int(fields[7]) / 1000      # minor page faults (printed per image, not ms)
    for tid in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else ():
        if tid == str(pid):
            continue
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                comm, _, rest = f.read().partition(") ")
            fields = rest.split()
        except OSError:
            continue        # ended meanwhile
        # a thread of its own: user+system seconds, keyed by id and OS name
        out[f"tid {tid} {comm.split('(', 1)[1]}"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    try:    # the main thread's time runnable but waiting for a core (contention, not its own work)
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            out["main_queued"] = int(f.read().split()[1]) / 1e9
    except OSError:
        pass
    return out


def one_epoch(system: Cachefs, files: list, spec, workers: int, timeline: bool, ep_pids: list,
              hint: bool = False, hint_sorted: bool = False) -> dict:
    send = send_hint(system) if hint else None
    if send is not None and hint_sorted:
        send = (lambda inner: lambda order: inner(sorted(order)))(send)
    system.mount()
    try:
        pids = system.pids()
        cpu0, ep0, busy0 = util.cpu_seconds(pids), util.cpu_seconds(ep_pids), machine_busy_s()
        threads0 = thread_cpu(pids[0])
        samples: list = []
        stop = threading.Event()
        th = threading.Thread(target=sample_counters, args=(system.mountpoint, stop, samples), daemon=True)
        if timeline:
            th.start()
        spy = (subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "-p",
                                 str(pids[0]), "-r", "250", "--format", "raw", "-o", f"{PYSPY_OUT}.{pids[0]}",
                                 *PYSPY_MODE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               if PYSPY_OUT else None)
        perf = (subprocess.Popen(["perf", "record", "-a", "-g", "-F", "499", "-o", f"{PERF_OUT}.{pids[0]}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if PERF_OUT else None)
        if spy or perf:
            time.sleep(0.5)     # py-spy attaches, perf starts
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        res = loader.run_epoch("images", system.root, files, spec, workers, 0, 180,
                               hint=send)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        stop.set()
        for tool in (spy, perf):
            if tool:
                tool.send_signal(signal.SIGINT)
                tool.wait(30)
        if timeline:
            th.join()
        threads = {k: v - threads0.get(k, 0.0) for k, v in thread_cpu(pids[0]).items()}
        others = sorted(((v, k) for k, v in threads.items() if k.startswith("tid ")), reverse=True)
        threads = {k: v for k, v in threads.items() if not k.startswith("tid ")}
        threads.update({k[4:]: v for v, k in others[:3]})      # the busiest other threads
        cpu, ep_cpu, busy = util.cpu_seconds(pids) - cpu0, util.cpu_seconds(ep_pids) - ep0, machine_busy_s() - busy0
        stats = util.daemon_stats(system.mountpoint)
    finally:
        system.umount()
    res.update(cpu_ms_per_image=1000 * cpu / res["images"], load=os.getloadavg()[0],
               endpoint_ms_per_image=1000 * ep_cpu / res["images"], machine_cores=busy / res["seconds"],
               loader_ms_per_image=1000 * (kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime)
               / res["images"],
               stats={k: v for k, v in stats.items() if isinstance(v, int | float) and v and not k.startswith("tier")},
               timeline=samples,
               threads_ms_per_image={k: 1000 * v / res["images"] for k, v in threads.items()})
    return res


def probe(ep, files: list, busy_loops: int = 0) -> list[dict]:
    """The endpoint's 110 KB GETs/s at 64 in flight with pycurl (bench/curlprobe.py, as bench/probe.py
    measures the ceiling) and what they cost the endpoint's processes and the whole machine; with
    `busy_loops`, also while that many processes spin on this machine's cores (what the endpoint pays
    per GET when a loader and the daemon compete with it for the CPU)."""
    from bench import curlprobe
    rows = []
    for busy in sorted({0, busy_loops}):
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            for in_flight in (16, 64):
                e0, busy0 = util.cpu_seconds(ep.pids), machine_busy_s()
                r = curlprobe.get_rate(ep, BUCKET, files, 110_000, in_flight, count=4 * len(files))
                e, used = util.cpu_seconds(ep.pids) - e0, machine_busy_s() - busy0
                gets = r.get("gets") or 1
                rows.append({"in_flight": in_flight, "busy_loops": busy, "gets_s": r.get("gets_s", 0),
                             "endpoint_ms_per_get": 1000 * e / gets, "machine_ms_per_get": 1000 * used / gets})
                print(f"probe {in_flight} in flight, {busy} busy loops: {r.get('gets_s', 0):.0f} GETs/s, endpoint "
                      f"{1000 * e / gets:.2f} ms CPU per GET, machine {1000 * used / gets:.2f} ms per GET, "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--images", type=int, default=dataset.SCALES["short"].images)
    p.add_argument("--classes", type=int, default=100,
                   help="class directories (1000: the loader matrix's imagenet shape, with --images 3000)")
    p.add_argument("--workers", type=int, default=dataset.SCALES["short"].loader_workers)
    p.add_argument("--baseline", help="another cachefs checkout, mounted in the same runs")
    p.add_argument("--baseline-options", default="",
                   help="mount options for the baseline only, e.g. \"--cache mem:2GiB\" (the same tree as "
                        "--baseline: the cost of one option side by side)")
    p.add_argument("--timeline", action="store_true")
    p.add_argument("--latency-ms", type=float, default=0, help="a delaying proxy in front (bench/proxy.py)")
    p.add_argument("--straggler-p", type=float, default=0.0,
                   help="with --latency-ms: this share of requests held --straggler-ms more (bench.run: 0.01)")
    p.add_argument("--straggler-ms", type=float, default=500.0)
    p.add_argument("--probe", action="store_true", help="the endpoint's pycurl GET rate and CPU first")
    p.add_argument("--probe-busy", type=int, default=0,
                   help="with --probe, probe again with this many processes spinning (CPU contention)")
    p.add_argument("--hint", action="store_true",
                   help="also mount this tree as `new+hint`: the epoch's order sent first (bench.run's +hint)")
    p.add_argument("--manifest", action="store_true",
                   help="mount every system with the bucket's manifest (`cachefs manifest build`; bench.run's "
                        "+manifest)")
    p.add_argument("--hint-sorted", action="store_true",
                   help="with --hint, send the order sorted by key (a probe: does the order of the keys asked for "
                        "cost the endpoint?); the loader still reads shuffled")
    p.add_argument("--scratch")
    p.add_argument("--out", help="results JSON (default bench/results/imgepoch-<UTC>.json)")
    p.add_argument("extra", nargs="*", help="extra cachefs mount options (after --)")
    args = p.parse_args()
    scale = dataset.SCALES["short"]
    spec = sample.DatasetSpec(num_images=args.images, num_classes=args.classes, shard_bytes=int(scale.shard_mb * 1e6))
    files = [sample.image_key(spec, i) for i in range(spec.num_images)]
    scratch = args.scratch or tempfile.mkdtemp(prefix="imgepoch-")
    local = os.path.join(scratch, "local")
    os.makedirs(local, exist_ok=True)
    cleanup = contextlib.ExitStack()
    if not args.scratch:       # its own temporary scratch, the mounts' old caches in it: GBs per run
        cleanup.callback(util.remove_scratch, scratch)
    with cleanup, open_endpoint(scratch) as ep, contextlib.ExitStack() as stack:
        client = ep.client()
        client.create_bucket(Bucket=BUCKET)
        sample.upload(client, BUCKET, "", sample.iter_image_files(spec), 16)
        probed = probe(ep, files, args.probe_busy) if args.probe else []
        if args.latency_ms:
            ep = stack.enter_context(delaying_proxy(ep, args.latency_ms, args.straggler_p, args.straggler_ms,
                                                      os.path.join(scratch, "proxy.log")))
            print(ep.proxy, flush=True)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if args.manifest:
            manifest = os.path.join(scratch, "dataset.manifest")
            util.build_manifest(ep, BUCKET, manifest)
            args.extra = [*args.extra, "--manifest", manifest]
        systems = [Cachefs.from_tree(here, "new", scratch, ep, BUCKET, local)]
        systems[0].extra_args = tuple(args.extra)
        if args.hint:
            systems.append(Cachefs.from_tree(here, "new+hint", scratch, ep, BUCKET, local))
            systems[-1].extra_args = tuple(args.extra)
        if args.baseline:
            systems.append(Cachefs.from_tree(args.baseline, "base", scratch, ep, BUCKET, local))
            if args.hint:
                systems.append(Cachefs.from_tree(args.baseline, "base+hint", scratch, ep, BUCKET, local))
            for s in systems[-1 - args.hint:]:
                s.extra_args = (*args.extra, *shlex.split(args.baseline_options))
        rates: dict[str, list] = {s.name: [] for s in systems}
        rows = [{"probe": row} for row in probed]
        util.settle()
        for run in range(args.runs):
            order = systems if run % 2 == 0 else systems[::-1]
            for s in order:
                r = one_epoch(s, files, spec, args.workers, args.timeline, ep.pids, s.name.endswith("+hint"),
                              args.hint_sorted)
                rates[s.name].append(r["images_per_s"])
                rows.append({"run": run, "system": s.name, **{k: v for k, v in r.items() if k != "timeline"}})
                print(f"run {run} {s.name}: {r['images_per_s']:.0f} img/s, {r['cpu_ms_per_image']:.2f} ms "
                      f"CPU/img (endpoint {r['endpoint_ms_per_image']:.2f}, loader {r['loader_ms_per_image']:.2f}), "
                      f"machine {r['machine_cores']:.2f} cores busy, daemon threads ms/img "
                      f"{ {k: round(v, 2) for k, v in r['threads_ms_per_image'].items()} }, "
                      f"load {r['load']:.2f}; {r['stats']}", flush=True)
                if args.timeline:
                    prev = (0, 0, 0, 0, 0)
                    for row in r["timeline"][::4]:
                        dt = row[0] - prev[0] or 1
                        print(f"  t={row[0]:5.2f} GET/s {(row[1]-prev[1])/dt:6.0f} shared {row[2]:4d} "
                              f"hits {row[3]:4d} reads {row[4]:5d} gets {row[1]}")
                        prev = row
        for name, v in rates.items():
            print(f"{name}: img/s min {min(v):.0f} median {statistics.median(v):.0f} max {max(v):.0f} "
                  f"({len(v)} runs)")
        util.write_runs(util.results_path("imgepoch", args.out), args, ep, rows,
                        {name: util.summarize(v) for name, v in rates.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
