"""The remote-store latency model of `bench.run --latency-ms`: Linux `tc netem` where the kernel has it,
else the delaying proxy (bench/proxy.py), and which one ran, with the reason, in the results.

netem delays, in the kernel, every packet sent to the endpoint's port on `lo` (a prio or htb root on lo
with a u32 filter on 127.0.0.1:PORT and a netem leaf): requests, uploads and the client's ACKs, so it
models a network path (round trip = the latency; the TCP window and handshakes pay it too). netem delays
packets, not requests, so it cannot draw the per-request straggler tail: with --straggler-p > 0 the
proxy runs. The proxy delays what clients send, request by request, and moves responses by splice.

    python -m bench.latency [--runs 3] [--endpoint ceph|moto] [--old REV] [--out PATH]

measures the proxy's own CPU per GiB and per request, the proxy at REV (default: the copying asyncio
proxy of commit 6ad382a) against this checkout's, side by side, with the pycurl driver of
bench/curlprobe.py as the client: 4 MiB ranged GETs 8 in flight, 110 KB GETs 16 in flight.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

from bench import curlprobe, util
from bench import endpoint as endpoints
from cachefs.devtools.devserver import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_PROXY_REV = "6ad382a"  # the asyncio-streams proxy that copied every response byte through Python


def kernel_config(option: str) -> str | None:
    """'y', 'm', 'n' (not set) or None (no /proc/config.gz: unknown)."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(rf"^{option}=(\w+)$", text, re.M)
    return m.group(1) if m else "n"


def _tc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tc", *args], capture_output=True, text=True, timeout=10)


def netem_commands(port: int, latency_ms: float, root: str) -> list[list[str]]:
    """tc argument lists that delay packets to 127.0.0.1:port on lo; `root` is 'prio' or 'htb'."""
    if root == "prio":
        cmds = [["qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio", "bands", "2", "priomap", *["0"] * 16]]
        leaf = "1:2"
    else:  # htb: a class per path at a rate lo never reaches, so only the leaf's delay shapes anything
        cmds = [["qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1", "r2q", "100000"],
                ["class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate", "100gbit"],
                ["class", "add", "dev", "lo", "parent", "1:", "classid", "1:2", "htb", "rate", "100gbit"]]
        leaf = "1:2"
    cmds += [["qdisc", "add", "dev", "lo", "parent", leaf, "handle", "20:", "netem", "delay", f"{latency_ms:g}ms",
              "limit", "1000000"],
             ["filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
              "match", "ip", "dst", "127.0.0.1/32", "match", "ip", "dport", str(port), "0xffff", "flowid", leaf]]
    return cmds


class Netem:
    """netem on lo for one endpoint port; set up on enter, removed on exit; pause() for an undelayed probe."""

    def __init__(self, port: int, latency_ms: float):
        self.port, self.latency_ms = port, latency_ms

    @staticmethod
    def precheck() -> str | None:
        """Why netem cannot run, from what can be seen without touching lo; None: try it."""
        if os.geteuid() != 0:
            return "not root"
        if shutil.which("tc") is None:
            return "no tc (iproute2) on PATH"
        if kernel_config("CONFIG_NET_SCH_NETEM") == "n":
            return "kernel built without CONFIG_NET_SCH_NETEM (/proc/config.gz says not set)"
        return None

    def setup(self) -> str | None:
        """None when the delay is in place, else why not (and lo is left as it was)."""
        why = self.precheck()
        if why:
            return why
        root = _tc("qdisc", "show", "dev", "lo").stdout.split()
        if root[:2] not in (["qdisc", "noqueue"], ["qdisc", "pfifo_fast"], []):
            return f"lo already has a root qdisc ({' '.join(root[:3])}): not replacing someone else's"
        errors = []
        for kind in ("prio", "htb"):
            for args in netem_commands(self.port, self.latency_ms, kind):
                done = _tc(*args)
                if done.returncode != 0:
                    errors.append(f"{kind}: `tc {' '.join(args)}`: {done.stderr.strip()}")
                    _tc("qdisc", "del", "dev", "lo", "root")
                    break
            else:
                return None
        return "; ".join(errors)

    def set_delay(self, latency_ms: float) -> None:
        _tc("qdisc", "change", "dev", "lo", "parent", "1:2", "handle", "20:", "netem", "delay", f"{latency_ms:g}ms",
            "limit", "1000000")

    @contextlib.contextmanager
    def paused(self):
        self.set_delay(0)
        try:
            yield
        finally:
            self.set_delay(self.latency_ms)

    def teardown(self) -> None:
        _tc("qdisc", "del", "dev", "lo", "root")


@contextlib.contextmanager
def remote_store_model(ep, latency_ms: float, straggler_p: float, straggler_ms: float, log_path: str,
                       model: str = "auto"):
    """Yields (delayed endpoint, info, undelayed): info['model'] says which model runs and why; after the
    block, info['proxy_cpu_s'] is the proxy's own CPU seconds. undelayed() is a context in which the
    endpoint answers without the delay (netem paused), or None when the endpoint is reachable directly."""
    info: dict = {"latency_ms": latency_ms, "straggler_p": straggler_p, "straggler_ms": straggler_ms}
    why = "--latency-model proxy" if model == "proxy" else Netem.precheck()
    if why is None and straggler_p > 0:
        why = "netem delays packets, not requests: the straggler tail needs the proxy (--straggler-p 0 for netem)"
    if why is None:
        netem = Netem(int(ep.url.rsplit(":", 1)[1].split("/")[0]), latency_ms)
        why = netem.setup()
        if why is None:
            info["model"] = "netem"
            try:
                yield replace(ep, proxy=f"netem: +{latency_ms:g} ms on every packet to the endpoint"), info, \
                    netem.paused
            finally:
                netem.teardown()
            return
    if model == "netem":
        raise RuntimeError(f"--latency-model netem: netem unavailable: {why}")
    info["model"] = f"proxy (netem unavailable: {why})"
    target = ep.url.split("//", 1)[1].rstrip("/")
    busy0 = machine_busy_s()
    with running_proxy("-m bench.proxy", target, latency_ms, log_path,
                       ["--straggler-p", str(straggler_p), "--straggler-ms", str(straggler_ms)]) as (port, pid):
        info["pid"] = pid
        note = (f"delaying proxy ON: +{latency_ms:g} ms per request, {straggler_p:.1%} stragglers of "
                f"+{straggler_ms:g} ms; {info['model']}")
        try:
            yield replace(ep, url=f"http://127.0.0.1:{port}", proxy=note), info, None
        finally:  # the proxy's share of everything the machine did while it ran
            info["proxy_cpu_s"] = util.cpu_seconds([pid])
            info["machine_cpu_s"] = machine_busy_s() - busy0
            if info["proxy_cpu_s"] is not None and info["machine_cpu_s"] > 0:
                info["proxy_cpu_share"] = info["proxy_cpu_s"] / info["machine_cpu_s"]


def machine_busy_s() -> float:
    """CPU seconds every core spent on anything but idle and iowait since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


# --- the old-vs-new CPU measurement ---

@contextlib.contextmanager
def running_proxy(script: str, target: str, latency_ms: float, log_path: str, extra=("--straggler-p", "0")):
    """A proxy (a script path, or '-m bench.proxy') in front of `target`; yields (port, pid)."""
    port = free_port()
    cmd = [sys.executable, *(script.split() if script.startswith("-m ") else [script]),
           "--listen", f"127.0.0.1:{port}", "--target", target, "--latency-ms", str(latency_ms), *extra]
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, start_new_session=True, cwd=REPO)
        try:
            util.wait_until(lambda: endpoints._connects(port), 15, "the proxy")
            yield port, proc.pid
        finally:
            util.kill_group(proc)


def measure(ep, bucket: str, proxies: dict[str, str], keys: dict, runs: int, latency_ms: float,
            scratch: str) -> list[dict]:
    """Per run, per case, per proxy (order rotating): client and proxy CPU for a fixed number of GETs."""
    cases = [("range4m_x8", keys["ranges"], curlprobe.RANGE, 8, 4 * len(keys["ranges"])),
             ("get110k_x16", keys["small"], curlprobe.SMALL, 16, 3000)]
    rows = []
    names = list(proxies)
    target = ep.url.split("//", 1)[1]
    for r in range(runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for case, case_keys, size, in_flight, count in cases:
            for name in order:
                with running_proxy(proxies[name], target, latency_ms, os.path.join(scratch, f"{name}.log")) as (
                        port, pid):
                    meter, backend = util.ProcessMeter([pid]), util.ProcessMeter(ep.pids)
                    with meter, backend:
                        fig = curlprobe.get_rate(replace(ep, url=f"http://127.0.0.1:{port}"), bucket, case_keys,
                                                 size, in_flight, count=count)
                # the other processes of this machine belong to other work: the share is of this exchange's
                total = meter.cpu_s + backend.cpu_s + fig["client_cpu_s"]
                gib = fig["bytes"] / curlprobe.GiB
                fig.update(run=r + 1, case=case, proxy=name, proxy_cpu_s=meter.cpu_s, endpoint_cpu_s=backend.cpu_s,
                           proxy_cpu_share=meter.cpu_s / total if total > 0 else None,
                           proxy_cpu_s_per_gib=meter.cpu_s / gib if gib else None,
                           proxy_cpu_ms_per_get=meter.cpu_s * 1e3 / fig["gets"] if fig["gets"] else None,
                           loadavg_1m=os.getloadavg()[0])
                rows.append(fig)
                print(f"run {r + 1} {case:12} {name:4} {fig['gets_s']:8.1f} GET/s {fig['mib_s']:7.1f} MiB/s "
                      f"proxy CPU {fig['proxy_cpu_s']:.2f} s = {fig['proxy_cpu_s_per_gib']:.3f} s/GiB, "
                      f"{fig['proxy_cpu_ms_per_get']:.3f} ms/GET, {fig['proxy_cpu_share']:.0%} of "
                      f"proxy+client+endpoint; client {fig['cpu_s_per_gib']:.3f} s/GiB; errors {fig['errors']}",
                      flush=True)
    return rows


FIGURES = ("gets_s", "mib_s", "proxy_cpu_s_per_gib", "proxy_cpu_ms_per_get", "proxy_cpu_share", "cpu_s_per_gib",
           "errors")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="the delaying proxy's own CPU, old against new")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--endpoint", choices=("ceph", "moto"), default="ceph")
    p.add_argument("--old", default=OLD_PROXY_REV, help="git revision of the proxy to compare with")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--out", help="JSON path (default bench/results/proxycpu-<UTC timestamp>.json)")
    args = p.parse_args(argv)
    why = curlprobe.unavailable()
    if why:
        sys.exit(f"pycurl cannot be used here: {why}")
    load0 = os.getloadavg()
    with (tempfile.TemporaryDirectory(prefix="cachefs-proxycpu-") as scratch,
          endpoints.open_endpoint(scratch, args.endpoint) as ep):
        old = os.path.join(scratch, "proxy_old.py")
        with open(old, "w") as f:
            f.write(subprocess.run(["git", "show", f"{args.old}:bench/proxy.py"], cwd=REPO, check=True,
                                   capture_output=True, text=True).stdout)
        client = ep.client(max_pool=64)
        client.create_bucket(Bucket=endpoints.BUCKET)
        t = time.monotonic()
        keys = curlprobe._upload(client, endpoints.BUCKET)
        print(f"endpoint {ep.kind} {ep.url}; uploaded in {time.monotonic() - t:.0f} s", flush=True)
        rows = measure(ep, endpoints.BUCKET, {"old": old, "new": "-m bench.proxy"}, keys, args.runs,
                       args.latency_ms, scratch)
    summary = {}
    for case in dict.fromkeys(r["case"] for r in rows):
        for name in ("old", "new"):
            mine = [r for r in rows if r["case"] == case and r["proxy"] == name]
            summary[f"{case}/{name}"] = {m: util.summarize([r.get(m) for r in mine]) for m in FIGURES}
    print(f"\n{'case/proxy':18} {'figure':22} {'min':>9} {'median':>9} {'max':>9}")
    for key, figures in summary.items():
        for figure, s in figures.items():
            if s:
                print(f"{key:18} {figure:22} {s['min']:9.3f} {s['median']:9.3f} {s['max']:9.3f}")
    out = util.results_path("proxycpu", args.out)
    util.write_json(out, {"args": vars(args), "endpoint": ep.kind, "rows": rows, "summary": summary,
                          "cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg()})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
