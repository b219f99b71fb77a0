"""Small helpers shared by the harness: bounded subprocesses, waits, page-cache drops, process stats."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

# On a journal-less ext4 (this VM's root), a file created within ~35 s of many deletions scans past
# each inode freed (fs/ext4/ialloc.c `recently_deleted`): a benchmark started right after another
# removed its scratch (tens of thousands of cache files) paid 0.4-0.9 ms of kernel CPU per cache
# file it created (docs/BENCHMARKS.md). Each removal leaves a stamp; the next benchmark waits it out.
REMOVED_STAMP = "/var/tmp/cachefs-bench-removed"
SETTLE_S = 40.0


def remove_scratch(path: str) -> None:
    """shutil.rmtree, then the stamp that settle() waits for."""
    shutil.rmtree(path, ignore_errors=True)
    with open(REMOVED_STAMP, "w"):
        pass


def settle() -> float:
    """Wait until SETTLE_S after the last remove_scratch (of any benchmark); the seconds waited."""
    try:
        left = os.stat(REMOVED_STAMP).st_mtime + SETTLE_S - time.time()
    except FileNotFoundError:
        return 0.0
    if left > 0:
        print(f"waiting {left:.0f} s: a benchmark's scratch was just removed (bench/util.py settle)", flush=True)
        time.sleep(left)
    return max(left, 0.0)


class StepTimeout(RuntimeError):
    """A bounded step did not finish in time."""


def run(cmd: Sequence[str], timeout: float, env: dict | None = None, check: bool = True,
        capture: bool = True, cwd: str | None = None) -> subprocess.CompletedProcess:
    """subprocess.run with a mandatory timeout; the child's process group is killed on expiry."""
    proc = subprocess.Popen(list(cmd), env=env, start_new_session=True, text=True, cwd=cwd,
                            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                            stderr=subprocess.PIPE if capture else subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise StepTimeout(f"{cmd[0]} did not finish within {timeout:.0f} s: {' '.join(cmd)}") from None
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {(err or '').strip()[-2000:]}")
    return result



def build_manifest(ep, bucket: str, out: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """`cachefs manifest build s3://BUCKET -o OUT` against a benchmark endpoint (its credentials from ep.env())."""
    return run([sys.executable, "-m", "cachefs", "manifest", "build", f"s3://{bucket}", "-o", out,
                "--endpoint-url", ep.url, "--region", "us-east-1", "--addressing-style", "path"],
               timeout=timeout, env=ep.env(), check=check)

def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a child we started (and its process group, which start_new_session gave it)."""
    if proc.poll() is not None:
        return
    for sig in (15, 9):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise StepTimeout(f"timed out after {timeout:.0f} s waiting for {what}")


def drop_page_cache() -> bool:
    """sync; echo 3 > drop_caches. Returns False (and the caller records it) when not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- per-process CPU and memory

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float | None:
    """User + system CPU seconds consumed so far by `pids` (threads included)."""
    total, seen = 0.0, False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime
        seen = True
    return total if seen else None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _admin_socket(pid: int) -> str | None:
    """The Ceph admin socket (*.asok) a process listens on: its socket fds' inodes in /proc/net/unix."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")}
        with open("/proc/net/unix") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 8 and fields[6] in inodes and fields[7].endswith(".asok"):
                    return fields[7]
    except OSError:
        pass
    return None


def sent_bytes(pids: Sequence[int]) -> int | None:
    """Bytes of object data the endpoint among `pids` has served so far: radosgw's own counter of GET
    bytes (`perf dump` on its admin socket: rgw get_b), so any client's read amplification can be
    measured, peers' too. None for other endpoints (moto keeps no such count)."""
    for pid in pids:
        if _comm(pid) != "radosgw" or (asok := _admin_socket(pid)) is None:
            continue
        try:
            out = subprocess.run(["ceph", "--admin-daemon", asok, "perf", "dump"], capture_output=True,
                                 text=True, timeout=30, check=True).stdout
            return int(json.loads(out)["rgw"]["get_b"])
        except (OSError, subprocess.SubprocessError, ValueError, KeyError):
            return None
    return None


def reset_peak_rss(pids: Sequence[int]) -> None:
    """Writing 5 to clear_refs resets VmHWM, so each phase reports its own peak."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def peak_rss_mib(pids: Sequence[int]) -> float | None:
    total, seen = 0.0, False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) / 1024
                        seen = True
        except OSError:
            continue
    return total if seen else None


def alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting for its parent to reap it has finished)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for_exit(pids: Sequence[int], timeout: float, what: str) -> None:
    wait_until(lambda: not any(alive(p) for p in pids), timeout, what, interval=0.1)


def pids_with_arg(arg: str) -> list[int]:
    """Processes whose command line contains `arg` exactly (our unique scratch paths), for stats only."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if arg.encode() in args:
            found.append(int(name))
    return found


class ProcessMeter:
    """CPU seconds and peak RSS of some processes over one phase: `with meter: ...; meter.result()`."""

    def __init__(self, pids: Sequence[int]):
        self.pids = list(pids)
        self._cpu0 = self._sent0 = None
        self.cpu_s = self.peak_rss_mib = self.sent_mib = None

    def __enter__(self):
        reset_peak_rss(self.pids)
        self._cpu0 = cpu_seconds(self.pids)
        self._sent0 = sent_bytes(self.pids)
        return self

    def __exit__(self, *exc):
        cpu1, sent1 = cpu_seconds(self.pids), sent_bytes(self.pids)
        if self._cpu0 is not None and cpu1 is not None:
            self.cpu_s = round(cpu1 - self._cpu0, 3)
        if self._sent0 is not None and sent1 is not None:
            self.sent_mib = round((sent1 - self._sent0) / (1 << 20), 3)
        self.peak_rss_mib = peak_rss_mib(self.pids)

    def result(self, prefix: str) -> dict:
        return {f"{prefix}_cpu_s": self.cpu_s, f"{prefix}_peak_rss_mib": self.peak_rss_mib,
                f"{prefix}_sent_mib": self.sent_mib}


def daemon_stats(mountpoint: str) -> dict:
    """Every counter of the cachefs daemon serving MOUNTPOINT, from its control socket (what
    `cachefs stats MOUNTPOINT --json` prints). Raises cachefs.errors.UserError when it cannot ask."""
    from cachefs.ipc import control_request
    stats: dict = control_request(str(mountpoint), "stats", timeout=30)["stats"]
    return stats


def results_path(name: str, given: str | None = None) -> str:
    """`given`, or bench/results/<name>-<UTC timestamp>.json."""
    return given or os.path.join(os.path.dirname(__file__), "results",
                                 time.strftime(f"{name}-%Y%m%dT%H%M%SZ.json", time.gmtime()))


def write_runs(path: str, args, endpoint, rows: list, summary: dict) -> None:
    """A side-by-side benchmark's results: its arguments, endpoint, every run and the summary."""
    write_json(path, {"args": vars(args), "endpoint": endpoint.kind, "rows": rows, "summary": summary,
                      "cpus": os.cpu_count(), "loadavg": os.getloadavg()})
    print(f"wrote {path}")


def write_json(path: str, result: dict) -> None:
    """A benchmark's results file (its directory made if needed)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def summarize(values: Sequence[float | None]) -> dict | None:
    """min / median / max over repeated runs (None values, i.e. failed runs, are counted apart)."""
    good = [v for v in values if v is not None]
    if not good:
        return None
    return {"min": min(good), "median": statistics.median(good), "max": max(good),
            "n": len(good), "failed": len(values) - len(good)}


def send_hint(system):
    """The loader's hint callback (bench/loader `run_epoch(hint=...)`): the epoch's order to the daemon."""
    from cachefs import hints  # the bench's own tree: the daemon under test speaks its protocol
    return lambda order: hints.send_order(system.mountpoint, order)
