"""The endpoint's ceilings measured with the cheapest client there is: libcurl (PyPI `pycurl`), one
`CurlMulti` with N easy handles kept busy, SigV4 signed by libcurl itself, bodies into reused buffers.
boto3 costs more client CPU per GET than the endpoint itself, so a boto3 probe measures boto3.

    python -m bench.curlprobe [--runs 3] [--endpoint ceph|moto] [--out PATH]

starts Ceph RGW (bench/ceph.sh), uploads 1,000 x 110 KB objects, 4 x 64 MiB objects and a 10,000-key
prefix, then in every run measures boto3 and pycurl side by side (alternating which goes first): 110 KB
GETs with 16 and 64 in flight, 4 MiB ranged GETs with 8 and 16 in flight, ListObjectsV2 pages of 1,000
keys. Prints min/median/max over runs and writes bench/results/curlprobe-<UTC timestamp>.json.
Client CPU is this process's (resource.getrusage RUSAGE_SELF: every thread), endpoint CPU the endpoint's.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import os
import re
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from urllib.parse import quote

from bench import util

try:
    import pycurl
except ImportError:  # the harness falls back to boto3 and says so
    pycurl = None

MiB, GiB = 1 << 20, 1 << 30
REGION = "us-east-1"
SIGV4_MIN_LIBCURL = 0x074B00   # 7.75.0: CURLOPT_AWS_SIGV4
LIST_PAGE = 1000
SMALL, RANGE = 110_000, 4 * MiB
SMALL_OBJECTS, LARGE_OBJECTS, LARGE_MIB, LIST_KEYS = 1000, 4, 64, 10_000
_TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")


def unavailable() -> str | None:
    """None when pycurl is importable and its libcurl signs SigV4 itself; else why not."""
    if pycurl is None:
        return "pycurl is not installed"
    version = pycurl.version_info()
    if version[2] < SIGV4_MIN_LIBCURL or not hasattr(pycurl, "AWS_SIGV4"):
        return f"libcurl {version[1]} has no CURLOPT_AWS_SIGV4 (needs 7.75)"
    return None


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Handle:
    """An easy handle and the buffer its bodies land in, both reused from request to request."""

    def __init__(self, endpoint, buffer_bytes: int):
        self.curl = c = pycurl.Curl()
        c.setopt(pycurl.AWS_SIGV4, f"aws:amz:{REGION}:s3")
        c.setopt(pycurl.USERPWD, f"{endpoint.access_key}:{endpoint.secret_key}")
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.TIMEOUT, 120)
        c.setopt(pycurl.BUFFERSIZE, 512 * 1024)   # fewer, larger write callbacks
        c.setopt(pycurl.WRITEFUNCTION, self.write)
        self.buf = bytearray(buffer_bytes)
        self.view = memoryview(self.buf)
        self.pos = 0
        self.token: str | None = None             # a LIST walker's continuation token

    def write(self, chunk: bytes) -> None:
        end = self.pos + len(chunk)
        if end > len(self.buf):                   # a LIST page larger than guessed: grow once
            self.view.release()
            self.buf.extend(bytes(end - len(self.buf)))
            self.view = memoryview(self.buf)
        self.view[self.pos:end] = chunk
        self.pos = end

    def body(self) -> bytes:
        return bytes(self.view[:self.pos])


def _drive(endpoint, in_flight: int, buffer_bytes: int, request: Callable[[_Handle], tuple[str, list[str]]],
           done: Callable[[_Handle, int, str | None], None], more: Callable[[], bool]) -> tuple[float, float]:
    """Keep `in_flight` handles busy on one CurlMulti while more() says so; returns (wall s, CPU s)."""
    handles = [_Handle(endpoint, buffer_bytes) for _ in range(in_flight)]
    by_curl = {id(h.curl): h for h in handles}
    multi = pycurl.CurlMulti()
    active = 0

    def start(h: _Handle) -> None:
        nonlocal active
        url, headers = request(h)
        h.pos = 0
        h.curl.setopt(pycurl.URL, url)
        h.curl.setopt(pycurl.HTTPHEADER, headers)
        multi.add_handle(h.curl)
        active += 1

    cpu0, t0 = cpu_s(), time.monotonic()
    for h in handles:
        if more():
            start(h)
    while active:
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        while True:
            queued, ok, failed = multi.info_read()
            finished = [(c, None) for c in ok] + [(c, f"curl error {errno}: {msg}") for c, errno, msg in failed]
            for c, error in finished:
                multi.remove_handle(c)
                active -= 1
                h = by_curl[id(c)]
                done(h, 0 if error else c.getinfo(pycurl.RESPONSE_CODE), error)
                if more():
                    start(h)
            if not queued:
                break
        if active:
            multi.select(0.5)
    wall, cpu = time.monotonic() - t0, cpu_s() - cpu0
    for h in handles:
        h.curl.close()
    multi.close()
    return wall, cpu


def _limit(count: int | None, seconds: float | None) -> Callable[[], bool]:
    """more(): True while fewer than `count` requests were started, or until `seconds` have passed."""
    if (count is None) == (seconds is None):
        raise ValueError("give one of count and seconds")
    if count is not None:
        started = itertools.count(1)
        return lambda: next(started) <= count
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() < deadline


def _url(endpoint, bucket: str, key: str = "") -> str:
    return f"{endpoint.url.rstrip('/')}/{bucket}/{quote(key, safe='/~')}"


def get_rate(endpoint, bucket: str, keys: Sequence[str | tuple[str, int]], size: int, in_flight: int,
             count: int | None = None, seconds: float | None = None,
             on_get: Callable[[], None] | None = None,
             on_body: Callable[[str, memoryview], None] | None = None) -> dict:
    """Ranged GETs of `size` bytes (a key alone: from offset 0; (key, offset): from there), keys taken in
    turn, `in_flight` at once, for `count` GETs or `seconds`. Non-2xx and transfer errors are failures.
    on_get: called after each GET that succeeded (bench/floor.py paces readers by it); on_body: called
    first with its key and body (valid during the call only: the buffer is reused)."""
    targets = itertools.cycle([(k, 0) if isinstance(k, str) else k for k in keys])
    stats = {"gets": 0, "bytes": 0, "errors": 0}
    errors: list[str] = []

    def request(h: _Handle) -> tuple[str, list[str]]:
        key, off = next(targets)
        h.token = key
        return _url(endpoint, bucket, key), [f"Range: bytes={off}-{off + size - 1}"]

    def done(h: _Handle, status: int, error: str | None) -> None:
        if error or not 200 <= status < 300:
            stats["errors"] += 1
            errors.append(error or f"HTTP {status}: {h.body()[:200]!r}")
        else:
            stats["gets"] += 1
            stats["bytes"] += h.pos
            if on_body is not None:
                on_body(h.token or "", h.view[:h.pos])
            if on_get is not None:
                on_get()

    wall, cpu = _drive(endpoint, in_flight, size, request, done, _limit(count, seconds))
    return _rates(stats, wall, cpu, in_flight, errors)


def list_rate(endpoint, bucket: str, prefix: str, in_flight: int = 1,
              count: int | None = None, seconds: float | None = None) -> dict:
    """ListObjectsV2 pages of up to 1,000 keys: `in_flight` walkers each page through `prefix` in order
    (a page's token names the next), starting over at the end, for `count` pages or `seconds`."""
    stats = {"pages": 0, "keys": 0, "errors": 0}
    errors: list[str] = []

    def request(h: _Handle) -> tuple[str, list[str]]:
        query = f"list-type=2&max-keys={LIST_PAGE}&prefix={quote(prefix, safe='')}"
        if h.token:          # parameters in canonical (sorted) order, as SigV4 signs them
            query = f"continuation-token={quote(h.token, safe='')}&" + query
        return f"{endpoint.url.rstrip('/')}/{bucket}?{query}", []

    def done(h: _Handle, status: int, error: str | None) -> None:
        body = h.body()
        if error or not 200 <= status < 300:
            stats["errors"] += 1
            errors.append(error or f"HTTP {status}: {body[:200]!r}")
            h.token = None
            return
        stats["pages"] += 1
        stats["keys"] += body.count(b"<Key>")
        m = _TOKEN.search(body)
        h.token = m.group(1).decode() if m else None

    wall, cpu = _drive(endpoint, in_flight, 512 * 1024, request, done, _limit(count, seconds))
    return _rates(stats, wall, cpu, in_flight, errors)


def _rates(stats: dict, wall: float, cpu: float, in_flight: int, errors: list[str]) -> dict:
    n = stats.get("gets", stats.get("pages", 0))
    out = {**stats, "in_flight": in_flight, "seconds": wall, "client_cpu_s": cpu,
           "first_error": errors[0] if errors else None}
    if "gets" in stats:
        out.update(gets_s=n / wall, mib_s=stats["bytes"] / MiB / wall,
                   cpu_ms_per_get=cpu * 1000 / n if n else None,
                   cpu_s_per_gib=cpu / (stats["bytes"] / GiB) if stats["bytes"] else None)
    else:
        out.update(pages_s=n / wall, keys_s=stats["keys"] / wall, cpu_ms_per_page=cpu * 1000 / n if n else None)
    return out


# --- boto3, the same work, for the side-by-side figures ---

def boto3_get_rate(client, bucket: str, keys: Sequence[str | tuple[str, int]], size: int, in_flight: int,
                   count: int) -> dict:
    targets = [(k, 0) if isinstance(k, str) else k for k in keys]
    work = [targets[i % len(targets)] for i in range(count)]

    def get(target: tuple[str, int]) -> int:
        key, off = target
        return len(client.get_object(Bucket=bucket, Key=key, Range=f"bytes={off}-{off + size - 1}")["Body"].read())
    cpu0, t0 = cpu_s(), time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
        got = sum(pool.map(get, work))
    wall, cpu = time.monotonic() - t0, cpu_s() - cpu0
    return _rates({"gets": count, "bytes": got, "errors": 0}, wall, cpu, in_flight, [])


def boto3_list_rate(client, bucket: str, prefix: str, seconds: float) -> dict:
    pages = keys = 0
    cpu0, t0 = cpu_s(), time.monotonic()
    deadline = t0 + seconds
    while time.monotonic() < deadline:
        token = None
        while time.monotonic() < deadline:
            kw = {"ContinuationToken": token} if token else {}
            page = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=LIST_PAGE, **kw)
            pages, keys = pages + 1, keys + page.get("KeyCount", 0)
            token = page.get("NextContinuationToken")
            if not token:
                break
    wall, cpu = time.monotonic() - t0, cpu_s() - cpu0
    return _rates({"pages": pages, "keys": keys, "errors": 0}, wall, cpu, 1, [])


# --- the side-by-side command ---

def _upload(client, bucket: str) -> dict:
    small = [f"small/img-{i:04d}.jpg" for i in range(SMALL_OBJECTS)]
    large = [f"large/obj-{i}.bin" for i in range(LARGE_OBJECTS)]
    listed = [f"list/d{i // 100:03d}/f{i:05d}" for i in range(LIST_KEYS)]
    blob = os.urandom(SMALL)
    jobs = [(k, blob) for k in small] + [(k, b"") for k in listed]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kb: client.put_object(Bucket=bucket, Key=kb[0], Body=kb[1]), jobs))
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=os.urandom(LARGE_MIB * MiB)), large))
    ranges = [(k, off) for k in large for off in range(0, LARGE_MIB * MiB, RANGE)]
    return {"small": small, "ranges": ranges, "list_prefix": "list/"}


def _cases(data: dict) -> list[tuple[str, Callable, Callable]]:
    """(name, boto3 measure, pycurl measure): each takes (endpoint, client) and returns figures."""
    from bench.endpoint import BUCKET
    small, ranges, prefix = data["small"], data["ranges"], data["list_prefix"]
    cases = []
    for n in (16, 64):
        cases.append((f"get110k_x{n}",
                      lambda ep, cl, n=n: boto3_get_rate(cl, BUCKET, small, SMALL, n, 2000),
                      lambda ep, cl, n=n: get_rate(ep, BUCKET, small, SMALL, n, count=2000)))
    for n in (8, 16):
        cases.append((f"range4m_x{n}",
                      lambda ep, cl, n=n: boto3_get_rate(cl, BUCKET, ranges, RANGE, n, 2 * len(ranges)),
                      lambda ep, cl, n=n: get_rate(ep, BUCKET, ranges, RANGE, n, count=2 * len(ranges))))
    cases.append(("list_x1", lambda ep, cl: boto3_list_rate(cl, BUCKET, prefix, 3.0),
                  lambda ep, cl: list_rate(ep, BUCKET, prefix, 1, seconds=3.0)))
    return cases


HEADLINES = {"get110k": ("gets_s", "mib_s", "cpu_ms_per_get"), "range4m": ("gets_s", "mib_s", "cpu_s_per_gib"),
             "list": ("pages_s", "keys_s", "cpu_ms_per_page")}


def main(argv=None) -> int:
    from bench.endpoint import BUCKET, open_endpoint
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--endpoint", choices=("ceph", "moto"), default="ceph")
    p.add_argument("--out", help="JSON path (default bench/results/curlprobe-<UTC timestamp>.json)")
    args = p.parse_args(argv)
    why = unavailable()
    if why:
        sys.exit(f"pycurl cannot be used here: {why} (pip install 'pycurl>=7.45,<8')")
    load0, rows = os.getloadavg(), []
    with (tempfile.TemporaryDirectory(prefix="cachefs-curlprobe-") as scratch,
          open_endpoint(scratch, args.endpoint) as ep):
        client = ep.client(max_pool=64)
        client.create_bucket(Bucket=BUCKET)
        t = time.monotonic()
        data = _upload(client, BUCKET)
        print(f"endpoint {ep.kind} {ep.url}; uploaded in {time.monotonic() - t:.0f} s; "
              f"{pycurl.version}", flush=True)
        cases = _cases(data)
        for r in range(args.runs):
            for name, by_boto3, by_curl in cases:
                order = [("boto3", by_boto3), ("pycurl", by_curl)]
                for client_name, measure in (order if r % 2 == 0 else order[::-1]):
                    meter = util.ProcessMeter(ep.pids)
                    with meter:
                        fig = measure(ep, client)
                    fig.update(run=r + 1, case=name, client=client_name, endpoint_cpu_s=meter.cpu_s,
                               loadavg_1m=os.getloadavg()[0])
                    rows.append(fig)
                    shown = {k: round(fig[k], 3) for k in HEADLINES[name.split("_")[0]] if fig.get(k) is not None}
                    print(f"run {r + 1} {name:12} {client_name:6} {shown} errors {fig['errors']}"
                          + (f" ({fig['first_error']})" if fig.get("first_error") else ""), flush=True)
    summary = {}
    for name, *_ in cases:
        for client_name in ("boto3", "pycurl"):
            mine = [row for row in rows if row["case"] == name and row["client"] == client_name]
            summary[f"{name}/{client_name}"] = {m: util.summarize([row.get(m) for row in mine])
                                                for m in HEADLINES[name.split("_")[0]] + ("errors",)}
    print(f"\n{'case/client':22} {'metric':16} {'min':>10} {'median':>10} {'max':>10}")
    for key, metrics in summary.items():
        for metric, s in metrics.items():
            if s:
                print(f"{key:22} {metric:16} {s['min']:10.2f} {s['median']:10.2f} {s['max']:10.2f}")
    out = util.results_path("curlprobe", args.out)
    util.write_json(out, {"args": vars(args), "endpoint": ep.kind, "pycurl": pycurl.version, "rows": rows,
                          "summary": summary, "cpus": os.cpu_count(), "loadavg_start": load0,
                          "loadavg_end": os.getloadavg()})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
