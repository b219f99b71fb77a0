"""The endpoint's own figures, measured in the same run: what the backend gives a client that reads it
directly with 4 MiB ranged GETs (one stream, and 8 in parallel), 110 KB GETs, LIST pages, and what a
1 KiB ranged GET costs. Cold reads of each filesystem are reported as a fraction of these.

The ceilings the report divides by (`parallel8_mib_s`, `image_gets_s`) are measured with the cheapest
client, libcurl (bench/curlprobe.py): boto3 costs more client CPU per GET than the endpoint itself, so a
boto3 probe measures boto3. boto3's own figures stay beside them (`boto3_*`). Without a usable pycurl
the ceilings are boto3's, and `ceiling_client` says so."""
from __future__ import annotations

import concurrent.futures
import mmap
import os
import random
import statistics
import time

from bench import curlprobe, util
from bench.dataset import MiB

RANGE = 4 * MiB   # a typical FUSE-cache block / read-ahead unit
PARALLEL = 8
SMALL_GETS = 50
# The endpoint's ceiling for the image-folder loader: 110 KB ranged GETs (an image's size) with 16 in
# flight and nothing else to do. No filesystem reading one object per image can beat this rate.
IMAGE_BYTES = 110_000
IMAGE_PARALLEL = 16
IMAGE_GETS = 400
# The cheapest client's ceilings (pycurl): 110 KB GETs with 16 and 64 in flight, 4 MiB ranges with 8 and
# 16 in flight (each range of the probe object read RANGE_PASSES times), LIST pages of 1,000 keys.
CURL_IMAGE_PARALLEL = (16, 64)
CURL_IMAGE_GETS = 1000
CURL_RANGE_PARALLEL = (8, 16)
CURL_RANGE_PASSES = 4
CURL_LIST_S = 2.0
# The bound for fio's cold random cell (64 KiB reads, one at a time) at a read amplification of 1: one
# 64 KiB GET per read, one after another. A filesystem beating it serves reads it did not fetch for
# them, i.e. fetched more than was read (the endpoint's sent bytes in that cell say how much more).
CURL_RAND_BYTES = 64 * 1024
CURL_RAND_GETS = 300
# The cache disk's own rate for what a warm read of the disk tier does: whole 4 MiB blocks read with
# O_DIRECT, 16 at a time (max_fetches), page cache dropped. A warm disk-tier read cannot beat it. Also
# with 64 in flight (256 MiB: a whole shard asked for at once), what no sane read-ahead exceeds: the
# most this disk gives to 4 MiB reads.
DISK_FILE = 256 * MiB
DISK_PARALLEL = (16, 64)


def disk_probe(directory: str) -> dict:
    """{in flight: MiB/s} of 4 MiB O_DIRECT reads of a fresh file in `directory` (NaN: no O_DIRECT)."""
    path = os.path.join(directory, "disk-probe.bin")
    with open(path, "wb") as f:
        for _ in range(DISK_FILE // MiB):
            f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())

    def read(off: int) -> int:
        buf = mmap.mmap(-1, RANGE)                 # page-aligned, as O_DIRECT wants
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            return os.preadv(fd, [buf], off)
        finally:
            os.close(fd)
            buf.close()
    rates = {}
    try:
        for parallel in DISK_PARALLEL:
            util.drop_page_cache()
            t = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
                n = sum(pool.map(read, range(0, DISK_FILE, RANGE)))
            rates[parallel] = n / MiB / (time.monotonic() - t)
    except OSError:                                # no O_DIRECT on this filesystem
        rates = {parallel: float("nan") for parallel in DISK_PARALLEL}
    finally:
        os.unlink(path)
    return rates


def _get(client, bucket: str, key: str, start: int, length: int) -> int:
    body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")["Body"]
    return len(body.read())


def probe(endpoint, bucket: str, key: str, size: int, disk_dir: str | None = None) -> dict:
    client = endpoint.client(max_pool=PARALLEL)
    offsets = list(range(0, size - RANGE + 1, RANGE))
    meter = util.ProcessMeter(endpoint.pids)
    with meter:
        t = time.monotonic()
        single = sum(_get(client, bucket, key, off, RANGE) for off in offsets)
        single_s = time.monotonic() - t
        t = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            parallel = sum(pool.map(lambda off: _get(client, bucket, key, off, RANGE), offsets))
        parallel_s = time.monotonic() - t
    rng = random.Random(1)
    lat = []
    for _ in range(SMALL_GETS):
        t = time.monotonic()
        _get(client, bucket, key, rng.randrange(0, size - 1024), 1024)
        lat.append((time.monotonic() - t) * 1000)
    lat.sort()
    gets = IMAGE_GETS if endpoint.kind != "moto" else IMAGE_GETS // 10   # moto reads a whole object per GET
    image_offsets = [rng.randrange(0, max(1, size - IMAGE_BYTES)) for _ in range(gets)]
    small_client = endpoint.client(max_pool=IMAGE_PARALLEL)
    t = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(IMAGE_PARALLEL) as pool:
        list(pool.map(lambda off: _get(small_client, bucket, key, off, IMAGE_BYTES), image_offsets))
    image_gets_s = gets / (time.monotonic() - t)
    served_gib = (single + parallel) / (1 << 30)
    boto3_parallel = parallel / MiB / parallel_s
    ceilings = curl_ceilings(endpoint, bucket, key, size, rng)
    client = ceilings.pop("ceiling_client")
    return {
        "single_stream_mib_s": single / MiB / single_s,
        # what the report divides by: the cheapest client's figures, boto3's when pycurl is missing
        f"parallel{PARALLEL}_mib_s": ceilings.get(f"curl_range{PARALLEL}_mib_s", boto3_parallel),
        "image_gets_s": ceilings.get(f"curl_image{IMAGE_PARALLEL}_gets_s", image_gets_s),
        "ceiling_client": client,
        f"boto3_parallel{PARALLEL}_mib_s": boto3_parallel,
        "boto3_image_gets_s": image_gets_s,
        **ceilings,
        "get_1k_ms_p50": statistics.median(lat),
        "get_1k_ms_p99": lat[int(0.99 * (len(lat) - 1))],
        "endpoint_cpu_s_per_gib": meter.cpu_s / served_gib if meter.cpu_s is not None else None,
        "endpoint_peak_rss_mib": meter.peak_rss_mib,
        **({("disk_direct_mib_s" if n == DISK_PARALLEL[0] else f"disk_direct{n}_mib_s"): rate
            for n, rate in (disk_probe(disk_dir) if disk_dir else {}).items()}),
    }


def curl_ceilings(endpoint, bucket: str, key: str, size: int, rng: random.Random) -> dict:
    """The pycurl figures (curl_*), or only {"ceiling_client": "boto3 (why)"} when pycurl cannot run."""
    why = curlprobe.unavailable()
    if why:
        print(f"endpoint probe: ceilings measured with boto3, not pycurl: {why}", flush=True)
        return {"ceiling_client": f"boto3 ({why})"}
    out: dict = {"ceiling_client": "pycurl"}
    gets = CURL_IMAGE_GETS if endpoint.kind != "moto" else CURL_IMAGE_GETS // 10  # moto reads whole objects
    targets = [(key, rng.randrange(0, max(1, size - IMAGE_BYTES))) for _ in range(gets)]
    for n in CURL_IMAGE_PARALLEL:
        fig = _checked(curlprobe.get_rate(endpoint, bucket, targets, IMAGE_BYTES, n, count=gets))
        out[f"curl_image{n}_gets_s"] = fig["gets_s"]
        out[f"curl_image{n}_cpu_ms_per_get"] = fig["cpu_ms_per_get"]
    ranges = [(key, off) for off in range(0, size - RANGE + 1, RANGE)]
    for n in CURL_RANGE_PARALLEL:
        fig = _checked(curlprobe.get_rate(endpoint, bucket, ranges, RANGE, n, count=CURL_RANGE_PASSES * len(ranges)))
        out[f"curl_range{n}_mib_s"] = fig["mib_s"]
        out[f"curl_range{n}_cpu_s_per_gib"] = fig["cpu_s_per_gib"]
    gets = CURL_RAND_GETS if endpoint.kind != "moto" else CURL_RAND_GETS // 10
    targets = [(key, rng.randrange(0, size // CURL_RAND_BYTES) * CURL_RAND_BYTES) for _ in range(gets)]
    fig = _checked(curlprobe.get_rate(endpoint, bucket, targets, CURL_RAND_BYTES, 1, count=gets))
    out["curl_rand64k_1_gets_s"] = fig["gets_s"]
    fig = _checked(curlprobe.list_rate(endpoint, bucket, "", 1, seconds=CURL_LIST_S))
    out["curl_list_pages_s"] = fig["pages_s"]
    out["curl_list_keys_s"] = fig["keys_s"]
    return out


def _checked(fig: dict) -> dict:
    if fig["errors"]:
        raise RuntimeError(f"pycurl probe: {fig['errors']} failed requests, the first: {fig['first_error']}")
    return fig
