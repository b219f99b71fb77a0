"""Run the benchmark matrix: every system, every workload, every cache state, `runs` times, side by
side on one S3 endpoint; write bench/results/<timestamp>/{results.json,results.md,*.png}.

  python -m bench.run --short            # `make bench`: under 10 minutes on 2 cores
  python -m bench.run --full             # `make bench-full`: the whole matrix
  python -m bench.run --short --latency-ms 20 --straggler-p 0.01 --straggler-ms 500   # remote-store model

The remote-store model (bench/latency.py) is `tc netem` where the kernel has it (as root, --straggler-p 0),
else the delaying proxy; results.json's "latency_model" says which ran and why.

Cache states: cold = fresh mount with an empty cache and the page cache dropped; warm-disk = after a
cold pass, page cache dropped (the daemon's own cache tiers stay); warm-page = the next pass.
Every step is bounded; whatever happens, every mount is unmounted and every daemon stopped.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback

from bench import dataset, endpoint, fio_bench, latency, metadata, probe, report, systems, util
from bench.loader import loader

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
STATES = ("cold", "warm-disk", "warm-page")
BASELINE_NAME = "cachefs-base"
DEFAULT_SYSTEMS = ("local", "memfs", "cachefs", "s3fs", "s3fs-cache", "rclone")


class Recorder:
    """Collects one flat row per measurement and prints it as it lands."""

    def __init__(self):
        self.rows: list[dict] = []
        self.started = time.monotonic()
        self.proxy_pids: list[int] = []  # the latency proxy, when it runs: its CPU in every row

    def add(self, **row) -> None:
        self.rows.append(row)
        figures = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()
                   if k not in ("run", "workload", "system", "job", "state", "error")}
        status = f"ERROR {row['error'].splitlines()[0][:160]}" if row.get("error") else figures
        print(f"{time.monotonic() - self.started:6.1f}s [run {row['run']}] {row['workload']:8} {row['system']:10} "
              f"{row['job']:10} {row['state']:9} {status}", flush=True)

    def measure(self, fn, system, endpoint_pids, **key) -> dict | None:
        """Run one step with the daemon's and the endpoint's CPU/RSS metered; a failure becomes a row."""
        daemon, backend = util.ProcessMeter(system.pids()), util.ProcessMeter(endpoint_pids)
        proxy = util.ProcessMeter(self.proxy_pids)
        before = system.counters()
        try:
            with daemon, backend, proxy:
                figures = fn()
        except Exception as exc:  # noqa: BLE001 - one failed step must not sink the matrix
            self.add(**key, system=system.name, error=f"{type(exc).__name__}: {exc}")
            return None
        after = system.counters()
        extra = {}
        if before and after:
            extra = {f"daemon_{k}": after[k] - before.get(k, 0) for k in
                     ("s3_get", "s3_get_bytes", "cache_hits", "cache_misses")
                     if isinstance(after.get(k), (int, float))}
        # the step's own figures win (the endpoint probe meters the endpoint itself)
        if self.proxy_pids:
            extra["proxy_cpu_s"] = proxy.cpu_s
        self.add(**{**key, "system": system.name, **daemon.result("daemon"), **backend.result("endpoint"),
                    **extra, **figures})
        return figures


def cold_start(system) -> None:
    """Empty cache and empty page cache: a fresh mount where the system has a cache of its own."""
    if system.fuse and system.name != "memfs":
        system.remount()
    elif not system.mounted:
        system.mount()
    util.drop_page_cache()


def fio_matrix(system, scale, rec, run_i, ep_pids) -> None:
    cold_start(system)
    for state in STATES:
        if state == "warm-disk":
            util.drop_page_cache()
        for job in fio_bench.JOBS:
            rec.measure(lambda: fio_bench.run_job(job, system.root, scale, state), system, ep_pids,
                        run=run_i, workload="fio", job=job, state=state)


LOADER_SHAPES = ("tfrecord", "images", "imagenet")


def loader_variants(system, shape: str, args, manifest: str | None) -> list[str]:
    """The plain epoch for every system; for this tree's cachefs and an image shape also the issue-18
    variants asked for (--variants): "+hint" (the epoch's order sent to the daemon first, as
    cachefs.torch does), "+manifest" (mounted with the dataset's manifest), "+manifest+hint"."""
    if shape not in loader.IMAGE_SHAPES or system.name != "cachefs":
        return [""]
    wanted = [v for v in args.variants.split(",") if v]
    return [""] + [f"+{v}" for v in wanted if manifest or "manifest" not in v]


@contextlib.contextmanager
def mount_options(system, extra: tuple[str, ...]):
    """The system's mount options plus `extra` for what runs inside (a Cachefs variant's options)."""
    if not extra:
        yield
        return
    system.extra_args = (*type(system).extra_args, *extra)
    try:
        yield
    finally:
        del system.extra_args


def loader_matrix(system, scale, rec, run_i, ep_pids, args, manifest: str | None = None) -> None:
    files = dataset.paths(scale)
    for shape in LOADER_SHAPES:
        spec = dataset.imagenet_spec(scale) if shape == "imagenet" else dataset.loader_spec(scale)
        variants = loader_variants(system, shape, args, manifest)
        # Each run starts at another variant: what one leaves behind (the kernel writing back and
        # deleting the last mount's cache files) falls on a different one each time.
        turn = (run_i - 1) % len(variants)
        for variant in variants[turn:] + variants[:turn]:
            hint = util.send_hint(system) if "hint" in variant else None
            with mount_options(system, ("--manifest", manifest) if "manifest" in variant and manifest else ()):
                cold_start(system)
                # a variant's epoch 2 would be the plain warm epoch again: epoch 1 is what it is about
                for epoch in range(scale.epochs if not variant else 1):
                    rec.measure(lambda: loader.run_epoch(shape, system.root, files[shape], spec,
                                                         scale.loader_workers, epoch, scale.step_timeout_s,
                                                         args.decode, args.consume_rate, hint=hint),
                                system, ep_pids, run=run_i, workload="loader", job=shape + variant,
                                state=f"epoch{epoch + 1}")


def synthetic_loader(scale, rec, run_i, args) -> None:
    spec = dataset.loader_spec(scale)
    for shape in ("tfrecord", "images"):
        for epoch in range(scale.epochs):
            rec.measure(lambda: loader.run_epoch("synthetic", "", range(scale.synthetic_images), spec,
                                                 scale.loader_workers, epoch,
                                                 scale.step_timeout_s, args.decode, args.consume_rate),
                        _NoSystem, [], run=run_i, workload="loader", job=shape, state=f"epoch{epoch + 1}")


class _NoSystem:
    """Stands in for a system where nothing is mounted (the synthetic loader)."""
    name, fuse, mounted = "synthetic", False, True

    @staticmethod
    def pids():
        return []

    @staticmethod
    def counters():
        return None


def metadata_matrix(system, scale, rec, run_i, ep_pids) -> None:
    for n in scale.meta_trees:
        cold_start(system)
        for state in ("cold", "warm"):
            rec.measure(lambda: metadata.walk(system.root, f"meta{n}", n, scale.step_timeout_s), system, ep_pids,
                        run=run_i, workload="metadata", job=f"{n:,} files", state=state)


def machine() -> dict:
    mem = next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"nproc": os.cpu_count(), "cpu": cpu, "loadavg_at_start": os.getloadavg(),
            "ram_gib": round(int(mem) / (1 << 20), 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "fio": _version(["fio", "--version"]), "s3fs": _version(["s3fs", "--version"]),
            "rclone": _version(["rclone", "version"])}


def _version(cmd) -> str:
    try:
        return util.run(cmd, timeout=10, check=False).stdout.splitlines()[0].strip()
    except Exception:  # noqa: BLE001 - a missing tool is reported by the system that needs it
        return "not installed"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    for name in dataset.SCALES:
        size.add_argument(f"--{name}", dest="scale", action="store_const", const=name)
    p.add_argument("--baseline", metavar="TREE",
                   help=f"also run the cachefs of this checkout, as system {BASELINE_NAME!r} (before/after pairs)")
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help="comma-separated subset of %(default)s")
    p.add_argument("--workloads", default="fio,loader,metadata")
    p.add_argument("--runs", type=int, help="repetitions (default: the scale's, >= 3 except --tiny)")
    p.add_argument("--endpoint", choices=("ceph", "moto"), default="ceph")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay requests to the endpoint (0: off)")
    p.add_argument("--latency-model", choices=("auto", "netem", "proxy"), default="auto",
                   help="auto: netem if the kernel has it and we are root and --straggler-p is 0, else the proxy")
    p.add_argument("--straggler-p", type=float, default=0.01)
    p.add_argument("--straggler-ms", type=float, default=500.0)
    p.add_argument("--consume-rate", type=float, help="images/s the trainer consumes (models the GPU step)")
    p.add_argument("--decode", action="store_true",
                   help="JPEG decode + random crop + resize in the loader workers (needs Pillow); off by "
                        "default so that the loader measures the filesystem, not this machine's 2 cores")
    p.add_argument("--variants", default="hint,manifest,manifest+hint",
                   help="issue 18's loader variants for cachefs's image folders, comma-separated (empty: none): "
                        "hint (the epoch's order sent to the daemon first), manifest (mounted with the "
                        "dataset's manifest), manifest+hint")
    p.add_argument("--out", help="results directory (default bench/results/<UTC timestamp>)")
    args = p.parse_args(argv)
    args.scale = args.scale or "short"
    if args.decode:
        try:
            import PIL  # noqa: F401
        except ImportError:
            p.error("--decode needs Pillow (pip install pillow)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    scale = dataset.SCALES[args.scale]
    runs = args.runs or scale.runs
    names = [n for n in args.systems.split(",") if n]
    unknown = set(names) - set(systems.ALL)
    if unknown:
        sys.exit(f"unknown system(s): {', '.join(sorted(unknown))}; choose from {', '.join(systems.ALL)}")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or os.path.join(RESULTS_DIR, stamp)
    os.makedirs(out, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="cachefs-bench-", dir="/tmp")
    started = time.monotonic()
    results = {"command": " ".join(["python -m bench.run"] + (argv if argv is not None else sys.argv[1:])),
               "started_utc": stamp, "machine": machine(), "scale": scale.as_dict(), "runs": runs,
               "scratch": scratch, "systems": {}, "decode": args.decode, "consume_rate": args.consume_rate, "notes": []}
    if not util.drop_page_cache():
        results["notes"].append("could not drop the page cache (not root?): cold and warm-disk are not cold")
    rec = Recorder()
    stack = contextlib.ExitStack()
    atexit.register(stack.close)  # also on sys.exit from a signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with stack:
            stack.callback(util.remove_scratch, scratch)
            stack.callback(keep_logs, scratch, os.path.join(out, "logs"))  # runs before the rmtree
            ep = stack.enter_context(endpoint.open_endpoint(scratch, args.endpoint))
            results["endpoint"] = {"kind": ep.kind, "note": ep.note}
            print(f"endpoint: {ep.kind} {ep.url} {ep.note}", flush=True)
            t = time.monotonic()
            results["dataset"] = dataset.populate(ep, endpoint.BUCKET, scale, os.path.join(scratch, "local"))
            results["dataset"]["seconds"] = time.monotonic() - t
            print(f"dataset: {results['dataset']}", flush=True)
            manifest = None
            if "loader" in args.workloads and "manifest" in args.variants:
                manifest, results["manifest"] = build_manifest(ep, scratch)
                print(f"manifest: {results['manifest']}", flush=True)
            targets = {"backend": ep}
            results["latency_model"] = {"model": "off"}
            undelayed = contextlib.nullcontext  # netem delays the endpoint itself: paused for the backend probe
            if args.latency_ms > 0:
                ep, results["latency_model"], paused = stack.enter_context(latency.remote_store_model(
                    ep, args.latency_ms, args.straggler_p, args.straggler_ms, os.path.join(scratch, "proxy.log"),
                    args.latency_model))
                undelayed = paused or undelayed
                rec.proxy_pids = [results["latency_model"]["pid"]] if "pid" in results["latency_model"] else []
                targets["through-proxy"] = ep  # the report's label for the delayed endpoint, netem or proxy
                print(f"latency model: {results['latency_model']['model']}", flush=True)
            results["proxy"] = ep.proxy
            under_test = []
            for name in names:
                system = systems.ALL[name](scratch, ep, endpoint.BUCKET, os.path.join(scratch, "local"))
                stack.callback(_quiet_umount, system)
                under_test.append(system)
                results["systems"][name] = system.describe()
            if args.baseline:      # the same cells with another checkout's cachefs, side by side
                system = systems.Cachefs.from_tree(args.baseline, BASELINE_NAME, scratch, ep, endpoint.BUCKET,
                                                   os.path.join(scratch, "local"))
                stack.callback(_quiet_umount, system)
                under_test.append(system)
                results["systems"][BASELINE_NAME] = f"{system.describe()} (from {args.baseline})"
            workloads = set(args.workloads.split(","))
            util.settle()
            for run_i in range(1, runs + 1):
                for label, target in targets.items():
                    with undelayed() if label == "backend" else contextlib.nullcontext():
                        rec.measure(lambda: probe.probe(target, endpoint.BUCKET, dataset.PROBE_KEY,
                                                        scale.fio_file_mib * dataset.MiB, disk_dir=scratch),
                                    _NoSystem, [], run=run_i, workload="endpoint", job=label, state="-")
                if "loader" in workloads:
                    synthetic_loader(scale, rec, run_i, args)
                for system in under_test:
                    try:
                        if "fio" in workloads:
                            fio_matrix(system, scale, rec, run_i, ep.pids)
                        if "loader" in workloads:
                            loader_matrix(system, scale, rec, run_i, ep.pids, args, manifest)
                        if "metadata" in workloads:
                            metadata_matrix(system, scale, rec, run_i, ep.pids)
                    except Exception as exc:  # noqa: BLE001 - mount failures: record, move on
                        rec.add(run=run_i, workload="mount", system=system.name, job="-", state="-",
                                error=f"failed to mount or unmount: {type(exc).__name__}: {exc}\n"
                                      f"{system.log_tail() if hasattr(system, 'log_tail') else ''}")
                    finally:
                        _quiet_umount(system)
    except BaseException:
        results["notes"].append("the run was interrupted: " + traceback.format_exc(limit=3))
        raise
    finally:
        results["rows"] = rec.rows
        results["seconds"] = time.monotonic() - started
        results["machine"]["loadavg_at_end"] = os.getloadavg()
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
        report.write(results, out)
        print(f"\nresults: {out}/results.json, results.md, *.png ({results['seconds']:.0f} s)", flush=True)
    return 0


def build_manifest(ep, scratch: str) -> tuple[str, dict]:
    """The bucket's manifest (`cachefs manifest build`), against the endpoint itself: a dataset's
    manifest is built once, wherever; what the loader variants measure is mounting with it."""
    path = os.path.join(scratch, "dataset.manifest")
    t0 = time.monotonic()
    util.build_manifest(ep, endpoint.BUCKET, path)
    return path, {"seconds": time.monotonic() - t0, "bytes": os.path.getsize(path)}


def keep_logs(scratch: str, dest: str) -> None:
    """Daemon, Ceph and proxy logs outlive the scratch directory, for the post-mortem of a failure."""
    for dirpath, dirnames, filenames in os.walk(scratch):
        # not into mounts, caches, the dataset, or the monitor's database (its WAL files end in .log)
        dirnames[:] = [d for d in dirnames if d not in ("mnt", "cache", "local", "store.db")]
        for name in filenames:
            if name.endswith(".log"):
                rel = os.path.relpath(os.path.join(dirpath, name), scratch)
                os.makedirs(dest, exist_ok=True)
                shutil.copyfile(os.path.join(dirpath, name), os.path.join(dest, rel.replace(os.sep, "_")))


def _quiet_umount(system) -> None:
    try:
        system.umount()
    except Exception as exc:  # noqa: BLE001 - teardown keeps going; the next mount will say if it matters
        print(f"[{system.name}] unmount problem: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
