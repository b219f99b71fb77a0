"""fio workloads (job files in bench/fio/): sequential read with 1 and 4 jobs, random read, and time to
first byte of large and tiny files. One call runs every job once against a mounted tree."""
from __future__ import annotations

import json
import os

from bench import util
from bench.dataset import MiB, Scale, paths

FIO_DIR = os.path.join(os.path.dirname(__file__), "fio")
JOBS = ("ttfb-large", "ttfb-tiny", "seq-1job", "seq-4jobs", "rand")
# In the warm-page state a sequential job reads its bytes this many times over: one pass of a 64 MiB
# file from the page cache takes 10-20 ms, and fio reports whole milliseconds, so a single pass
# measures fio's start-up and the machine's noise. 16 passes (~0.2 s) still let local disk, memfs and
# cachefs swap places from run to run (0.55-1.13 of local for memfs in three runs); 64 (~0.7 s on
# the page cache, a few seconds for a filesystem that keeps no page cache) measure the path itself.
# Every pass is a page-cache pass, so the figure means the same as with one.
PAGE_PASSES = 64


def job_env(job: str, root: str, scale: Scale, timeout_s: float, passes: int = 1) -> tuple[str, dict]:
    """Which job file and which variables run `job` against the tree mounted at `root`."""
    p = paths(scale)
    runtime = {"RUNTIME": str(int(timeout_s))}  # fio's own bound; the subprocess timeout is the backstop
    if job.startswith("ttfb"):
        files = p["ttfb_large"] if job == "ttfb-large" else p["ttfb_tiny"]
        directory = os.path.join(root, os.path.dirname(files[0]))
        assert all(os.path.dirname(f) == os.path.dirname(files[0]) for f in files)
        return "ttfb.fio", {**runtime, "DIRECTORY": directory, "NFILES": str(len(files)),
                            "FILES": ":".join(os.path.basename(f) for f in files)}
    if job == "rand":
        return "randread.fio", {**runtime, "FILENAME": os.path.join(root, p["rand"]), "IOS": str(scale.rand_ios)}
    numjobs = 4 if job == "seq-4jobs" else 1
    return "seqread.fio", {**runtime, "FILENAME": os.path.join(root, p["seq4" if numjobs == 4 else "seq1"]),
                           "NUMJOBS": str(numjobs), "SIZE": str(scale.fio_file_mib * MiB // numjobs),
                           "LOOPS": str(passes)}


def parse_fio(output: str) -> dict:
    """The figures we keep from fio's JSON: throughput, IOPS, completion-latency percentiles."""
    read = json.loads(output)["jobs"][0]["read"]
    pct = read["clat_ns"].get("percentile", {})
    runtime_s = read["runtime"] / 1000
    return {
        "io_mib": read["io_bytes"] / MiB,
        "ios": read["total_ios"],
        "runtime_s": runtime_s,
        "mib_s": read["bw_bytes"] / MiB,
        "iops": read["iops"],
        "lat_ms_mean": read["clat_ns"]["mean"] / 1e6,
        **{f"lat_ms_p{p}": pct[f"{p}.000000"] / 1e6 for p in (50, 99) if f"{p}.000000" in pct},
        "lat_ms_max": read["clat_ns"]["max"] / 1e6,
    }


def run_job(job: str, root: str, scale: Scale, state: str = "cold") -> dict:
    passes = PAGE_PASSES if state == "warm-page" else 1
    jobfile, variables = job_env(job, root, scale, scale.step_timeout_s, passes)
    out = util.run(["fio", "--output-format=json", jobfile], timeout=scale.step_timeout_s + 30,
                   env=dict(os.environ, **variables), cwd=FIO_DIR)
    return parse_fio(out.stdout)
