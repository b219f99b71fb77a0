"""Soak: many concurrent readers on one mount for a fixed time, under cache watermark pressure and
injected S3 errors; every byte checked; the daemon's RSS, file descriptors and threads sampled.

A dataset several times the cache (lru eviction runs all the time), random whole-file and ranged
reads from READERS threads, 2% of GETs answered 500 and 1% reset by the fault proxy. Pass: zero
read errors, zero wrong bytes, no growth of fds or threads, RSS flat after warm-up.

    python -m bench.soak --seconds 600 [--readers 16] [--json out.json]

starts its own moto server, fault proxy and mount (as root, on this machine). The CI test
(tests/test_reliability_soak.py) runs `soak()` for CACHEFS_SOAK_SECONDS (default 30) on the test
fixtures' mount. docs/RELIABILITY.md has a long run's curve.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

MiB = 1 << 20
DEFAULT_FILES = 24
DEFAULT_FILE_SIZE = 2 * MiB            # 48 MiB of data against 8 MiB memory + 16 MiB disk cache
FAULTS = ("error:ops=get,status=500,p=0.02", "reset:ops=get,p=0.01")
MOUNT_OPTIONS = ("--cache", "mem:8MiB", "--cache", "ssd:{ssd}:16MiB", "--eviction-policy", "lru",
                 "--block-size", "256KiB", "--s3-max-attempts", "8", "--max-idle-threads", "8")


def dataset(files: int = DEFAULT_FILES, size: int = DEFAULT_FILE_SIZE) -> dict[str, bytes]:
    return {f"soak/{i:03d}.bin": random.Random(f"soak-{i}").randbytes(size + 4099 * i) for i in range(files)}


@dataclass
class Sample:
    t: float
    rss_mib: float
    fds: int
    threads: int
    reads: int
    read_mib: float


@dataclass
class SoakResult:
    seconds: float
    readers: int
    reads: int = 0
    read_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def phase(self, lo: float, hi: float) -> list[Sample]:
        """Samples between fractions lo and hi of the run."""
        return [s for s in self.samples if lo * self.seconds <= s.t <= hi * self.seconds]

    def leaks(self) -> list[str]:
        """Growth from the first to the last third of the run (after warm-up), beyond noise."""
        early, late = self.phase(0.2, 0.45), self.phase(0.75, 1.01)
        if not early or not late:
            return ["too few samples to judge"]
        problems = []
        e_rss, l_rss = statistics.median(s.rss_mib for s in early), statistics.median(s.rss_mib for s in late)
        if l_rss > e_rss * 1.15 + 24:
            problems.append(f"RSS grew from {e_rss:.0f} to {l_rss:.0f} MiB")
        if max(s.fds for s in late) > max(s.fds for s in early) + 4:
            problems.append(f"fds grew from {max(s.fds for s in early)} to {max(s.fds for s in late)}")
        if max(s.threads for s in late) > max(s.threads for s in early) + 4:
            problems.append(f"threads grew from {max(s.threads for s in early)} to {max(s.threads for s in late)}")
        return problems

    def summary(self) -> dict:
        return {"seconds": self.seconds, "readers": self.readers, "reads": self.reads,
                "read_mib": round(self.read_bytes / MiB, 1), "errors": len(self.errors),
                "rss_mib_max": max((s.rss_mib for s in self.samples), default=0),
                "fds_max": max((s.fds for s in self.samples), default=0),
                "threads_max": max((s.threads for s in self.samples), default=0), "leaks": self.leaks()}


def sample(pid: int, t0: float, reads: int, read_bytes: int) -> Sample:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return Sample(round(time.monotonic() - t0, 1), round(int(fields["VmRSS"].split()[0]) / 1024, 1),
                  len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"]), reads, round(read_bytes / MiB, 1))


def soak(mountpoint: Path, objects: dict[str, bytes], daemon_pid: int, seconds: float, readers: int = 16,
         sample_every: float = 1.0, seed: int = 1) -> SoakResult:
    """READERS threads read random files (whole, or a random range) until SECONDS pass; sample the daemon."""
    result = SoakResult(seconds, readers)
    keys = sorted(objects)
    lock = threading.Lock()
    stop = threading.Event()
    t0 = time.monotonic()

    def reader(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        while not stop.is_set():
            key = rng.choice(keys)
            want = objects[key]
            try:
                if rng.random() < 0.5:       # past the kernel's page cache: the daemon serves this one
                    fd = os.open(mountpoint / key, os.O_RDONLY)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    os.close(fd)
                if rng.random() < 0.5:
                    with open(mountpoint / key, "rb") as f:
                        got, lo = f.read(), 0
                else:
                    lo = rng.randrange(len(want))
                    size = rng.choice((4096, 65536, 300_000, 1 << 20))
                    fd = os.open(mountpoint / key, os.O_RDONLY)
                    try:
                        got = os.pread(fd, size, lo)
                    finally:
                        os.close(fd)
                ok = got == want[lo:lo + len(got)] and (len(got) > 0 or lo >= len(want))
                err = None if ok else f"{key}@{lo}: wrong bytes ({len(got)} bytes)"
            except OSError as e:
                got, err = b"", f"{key}: {e}"
            with lock:
                result.reads += 1
                result.read_bytes += len(got)
                if err:
                    result.errors.append(err)

    threads = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(readers)]
    for t in threads:
        t.start()
    try:
        while time.monotonic() - t0 < seconds:
            with lock:
                reads, nbytes = result.reads, result.read_bytes
            result.samples.append(sample(daemon_pid, t0, reads, nbytes))
            time.sleep(sample_every)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    if any(t.is_alive() for t in threads):
        result.errors.append("a reader was still blocked 60 s after the end")
    return result


def curve_table(result: SoakResult, rows: int = 12) -> str:
    step = max(1, len(result.samples) // rows)
    lines = ["| t (s) | RSS (MiB) | fds | threads | reads | MiB read |", "|---|---|---|---|---|---|"]
    picked = result.samples[::step]
    if result.samples and picked[-1] is not result.samples[-1]:
        picked.append(result.samples[-1])
    for s in picked:
        lines.append(f"| {s.t:.0f} | {s.rss_mib:.0f} | {s.fds} | {s.threads} | {s.reads} | {s.read_mib:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--readers", type=int, default=16)
    ap.add_argument("--files", type=int, default=DEFAULT_FILES)
    ap.add_argument("--json", help="write samples and summary here")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from mount_helpers import cachefs_env, force_unmount, mount_args, populate, run_cachefs, s3_client, stop_pid

    from cachefs.devserver import MotoServer
    from cachefs.devtools.faultproxy import FaultProxy

    objects = dataset(a.files)
    work = Path(tempfile.mkdtemp(prefix="cachefs-soak-"))
    with MotoServer(log_path=str(work / "moto.log")) as moto, FaultProxy(moto.endpoint_url) as proxy:
        s3 = s3_client(moto.endpoint_url)
        s3.create_bucket(Bucket="soak-bucket")
        populate(s3, "soak-bucket", objects)
        for spec in FAULTS:
            proxy.add(spec)
        mnt, cache = work / "mnt", work / "cache"
        mnt.mkdir()
        opts = [o.format(ssd=work / "ssd") for o in MOUNT_OPTIONS]
        res = run_cachefs(mount_args("s3://soak-bucket", mnt, cache, proxy.url, *opts), cachefs_env())
        if res.returncode != 0:
            print(res.describe(), file=sys.stderr)
            return 1
        pid = int((cache / "cachefs.pid").read_text())
        try:
            result = soak(mnt, objects, pid, a.seconds, a.readers)
            stats = json.loads(os.getxattr(mnt, "user.cachefs.stats"))
        finally:
            force_unmount(mnt)
            stop_pid(pid)
        summary = {**result.summary(), "faults": proxy.counts().get("get", {}),
                   "s3_retries": stats.get("s3_retries"), "cache_evictions": stats.get("cache_evictions")}
    print(json.dumps(summary, indent=1))
    print(curve_table(result))
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": summary, "samples": [asdict(s) for s in result.samples]}))
    return 0 if not result.errors and not result.leaks() else 1


if __name__ == "__main__":
    sys.exit(main())
