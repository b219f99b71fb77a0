"""What a cold image epoch could reach on this machine at best, against the endpoint's GET rate: the
yardstick of issue 18's goal (the 110 KB GET rate at 64 in flight, pycurl, measured alone) next to
the same GETs made while a reader reads the same files at the same pace, the GETs' only cost on the
client side being pycurl's and the reads' only cost a FUSE filesystem's that serves them from RAM.

    python -m bench.floor [--runs 3] [--latency-ms 20] [--straggler-p 0.01 --straggler-ms 500]
                          [--classes 1000 --images 3000] [--workers 4]

Per run, side by side (order rotated), every figure on the same Ceph RGW through the same proxy
(bench/proxy.py, with bench.run's straggler model by default):
- `alone`: pycurl GETs every image once, 64 in flight (the goal's denominator);
- `paired+memfs`: the same GETs, and `--workers` reader processes read the images, shuffled, from
  bench/memfs.py (pyfuse3 serving the bytes from RAM, freshly mounted: every read goes through
  FUSE once), each read waiting for a GET to have completed: an image epoch by a client whose cost
  per image is pycurl's GET plus the cheapest pyfuse3 file there is, perfectly pipelined. Its rate
  is images over the time until the last read ended;
- `paired+cmemfs`: the same through bench/cmemfs.c, memfs's job in C on libfuse3 (one thread): the
  cheapest FUSE client there is;
- `paired+local`: the same with the readers on the local files (page cache, no FUSE at all): what
  any client could reach here at best;
- `paired+cmemfs+disk`: paired+cmemfs, and each GET's body also written to a file of its own by a
  writer thread (cachefs's native.write_block, O_DIRECT, 256 subdirectories, as cachefs's disk
  tier): the cheapest client that keeps a disk copy of every file, as a caching filesystem must;
- `paired+cmemfs+pack`: the same with the bodies appended to one file in 1 MiB O_DIRECT writes: the
  cheapest disk copy there is (a cache packing small blocks into larger files, at best);
- `cachefs+hint`: cachefs's epoch 1 with the order sent first (bench/imgepoch.py, the loader);
- `shard-probe`: bench.run's yardstick (bench/probe.py `curl_image64_gets_s`): 1,000 GETs of
  110 KB at random offsets of one 16 MB shard object, 64 in flight, pycurl. RGW serves these
  ranges slower than whole small objects, so it is the lower of the two yardsticks.

Prints each and min/median/max of each rate over the runs and its ratio to `alone` and to
`shard-probe`; writes JSON
(--out, default bench/results/floor-<UTC>.json).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import multiprocessing as mp
import os
import queue
import random
import resource
import statistics
import tempfile
import threading
import time
import zlib

from bench import curlprobe, dataset, util
from bench.endpoint import BUCKET, delaying_proxy, open_endpoint
from bench.imgepoch import one_epoch
from bench.systems import Cachefs, CMemoryFuse, MemoryFuse
from cachefs import native
from cachefs.devtools import sample

IN_FLIGHT = 64
IMAGE_BYTES = 110_000       # the probe's GET size (images are ~110 KB)
READ_CHUNK = 1 << 20


def _reader(root: str, paths: list[str], tokens, taken, last_end) -> None:
    """A reader process: for each GET completed (a token), the next image read whole."""
    while True:
        tokens.acquire()
        with taken.get_lock():
            i = taken.value
            taken.value += 1
        if i >= len(paths):
            return
        with open(os.path.join(root, paths[i]), "rb", buffering=0) as f:
            while f.read(READ_CHUNK):
                pass
        with last_end.get_lock():
            last_end.value = max(last_end.value, time.monotonic())


class DiskCopies:
    """Each body handed over written to a file of its own by one writer thread, as cachefs's disk tier
    writes a block (native.write_block: a page-aligned copy with the header, O_DIRECT, one file per
    block in 256 subdirectories); its CPU is this process's, counted with the GETs'."""

    def __init__(self, root: str, subdirs: bool = True) -> None:
        self.root = root
        for d in range(256 if subdirs else 0):
            os.makedirs(os.path.join(root, f"{d:02x}"), exist_ok=True)
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.count = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def offer(self, key: str, body: memoryview) -> None:
        copy = native.buffer(len(body), 4096)     # the GET's buffer is reused: a copy (cachefs's memory tier
        memoryview(copy)[:] = body                # keeps one), with room for the header as cachefs's have
        self.jobs.put((key, copy))

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            key, data = job
            name = f"{zlib.crc32(key.encode()) & 0xff:02x}/{key.replace('/', '_')}"
            native.write_block(os.path.join(self.root, name), data, True)
            self.count += 1

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(120)


class PackedCopies(DiskCopies):
    """The cheapest disk copy there is: bodies appended to one file, gathered into 1 MiB page-aligned
    writes with O_DIRECT (no file created a body, a disk request a MiB): what a cache that packs small
    blocks into larger files would pay at best."""

    CHUNK = 1 << 20

    def __init__(self, root: str) -> None:
        os.makedirs(root, exist_ok=True)
        self.fd = os.open(os.path.join(root, "pack"), os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
        self.buf = mmap.mmap(-1, self.CHUNK + 2 * IMAGE_BYTES)     # page-aligned, as O_DIRECT wants
        self.fill = 0
        super().__init__(root, subdirs=False)

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            _, data = job
            self.buf[self.fill:self.fill + len(data)] = data
            self.fill += -(-len(data) // 512) * 512                 # each body 512-aligned
            if self.fill >= self.CHUNK:
                self._write()
            self.count += 1
        self._write()
        os.close(self.fd)

    def _write(self) -> None:
        if self.fill:
            os.write(self.fd, memoryview(self.buf)[:-(-self.fill // 4096) * 4096])
            self.fill = 0


def paired(ep, files: list[str], root: str, workers: int, pids: list[int], ep_pids: list[int],
           disk: str | None = None) -> dict:
    """The GETs and, paced by them, `workers` readers of `root`; rates and CPU per image. disk: each
    body also written to a file under it (DiskCopies), the epoch ending when the last is written."""
    order = files[:]
    random.shuffle(order)
    tokens, taken, last_end = mp.Semaphore(0), mp.Value("q", 0), mp.Value("d", 0.0)
    procs = [mp.Process(target=_reader, args=(root, order, tokens, taken, last_end)) for _ in range(workers)]
    for p in procs:
        p.start()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    fs0, ep0 = util.cpu_seconds(pids) or 0.0, util.cpu_seconds(ep_pids) or 0.0
    copies = (PackedCopies(disk) if disk.endswith("-pack") else DiskCopies(disk)) if disk else None
    cpu0 = curlprobe.cpu_s()
    t0 = time.monotonic()
    r = curlprobe.get_rate(ep, BUCKET, files, IMAGE_BYTES, IN_FLIGHT, count=len(files), on_get=tokens.release,
                           on_body=copies.offer if copies else None)
    for _ in procs:
        tokens.release()            # the readers see the end
    for p in procs:
        p.join(120)
    if copies is not None:
        copies.close()
        last_end.value = max(last_end.value, time.monotonic())
        r["client_cpu_s"] = curlprobe.cpu_s() - cpu0     # the GETs' and the writer's
        assert copies.count == len(files), f"{copies.count} of {len(files)} disk copies written"
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    n = len(files)
    epoch = max(last_end.value - t0, r["seconds"])
    return {"images_per_s": n / epoch, "gets_s": r["gets_s"], "errors": r["errors"],
            "client_ms_per_image": 1000 * r["client_cpu_s"] / n,
            "fs_ms_per_image": 1000 * ((util.cpu_seconds(pids) or 0.0) - fs0) / n,
            "readers_ms_per_image": 1000 * (kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime) / n,
            "endpoint_ms_per_image": 1000 * ((util.cpu_seconds(ep_pids) or 0.0) - ep0) / n}


def alone(ep, files: list[str], ep_pids: list[int]) -> dict:
    ep0 = util.cpu_seconds(ep_pids) or 0.0
    r = curlprobe.get_rate(ep, BUCKET, files, IMAGE_BYTES, IN_FLIGHT, count=len(files))
    n = len(files)
    return {"images_per_s": r["gets_s"], "gets_s": r["gets_s"], "errors": r["errors"],
            "client_ms_per_image": 1000 * r["client_cpu_s"] / n,
            "endpoint_ms_per_image": 1000 * ((util.cpu_seconds(ep_pids) or 0.0) - ep0) / n}


SHARD_KEY = "probe/shard.bin"
SHARD_GETS = 1000           # bench/probe.py CURL_IMAGE_GETS


def shard_probe(ep, shard_bytes: int, ep_pids: list[int], seed: int) -> dict:
    rng = random.Random(seed)
    targets = [(SHARD_KEY, rng.randrange(0, shard_bytes - IMAGE_BYTES)) for _ in range(SHARD_GETS)]
    ep0 = util.cpu_seconds(ep_pids) or 0.0
    r = curlprobe.get_rate(ep, BUCKET, targets, IMAGE_BYTES, IN_FLIGHT, count=SHARD_GETS)
    return {"images_per_s": r["gets_s"], "gets_s": r["gets_s"], "errors": r["errors"],
            "client_ms_per_image": 1000 * r["client_cpu_s"] / SHARD_GETS,
            "endpoint_ms_per_image": 1000 * ((util.cpu_seconds(ep_pids) or 0.0) - ep0) / SHARD_GETS}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--workers", type=int, default=dataset.SCALES["short"].loader_workers)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--straggler-p", type=float, default=0.01, help="as bench.run's remote-store model")
    p.add_argument("--straggler-ms", type=float, default=500.0)
    p.add_argument("--scratch")
    p.add_argument("--out")
    args = p.parse_args()
    spec = sample.DatasetSpec(num_images=args.images, num_classes=args.classes,
                              shard_bytes=int(dataset.SCALES["short"].shard_mb * 1e6))
    files = [sample.image_key(spec, i) for i in range(spec.num_images)]
    scratch = args.scratch or tempfile.mkdtemp(prefix="floor-")
    local = os.path.join(scratch, "local")
    for key, data in sample.iter_image_files(spec):
        os.makedirs(os.path.dirname(os.path.join(local, key)), exist_ok=True)
        with open(os.path.join(local, key), "wb") as f:
            f.write(data)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results: dict[str, list[dict]] = {}
    cleanup = contextlib.ExitStack()
    if not args.scratch:       # its own temporary scratch, the mounts' old caches in it: GBs per run
        cleanup.callback(util.remove_scratch, scratch)
    with cleanup, open_endpoint(scratch) as ep, contextlib.ExitStack() as stack:
        client = ep.client()
        client.create_bucket(Bucket=BUCKET)
        sample.upload(client, BUCKET, "", sample.iter_image_files(spec), 16)
        client.put_object(Bucket=BUCKET, Key=SHARD_KEY, Body=os.urandom(spec.shard_bytes))
        if args.latency_ms:
            ep = stack.enter_context(delaying_proxy(ep, args.latency_ms, args.straggler_p, args.straggler_ms,
                                                      os.path.join(scratch, "proxy.log")))
            print(ep.proxy, flush=True)
        memfs = MemoryFuse(scratch, ep, BUCKET, local)
        cmemfs = CMemoryFuse(scratch, ep, BUCKET, local)
        cachefs = Cachefs.from_tree(here, "cachefs+hint", scratch, ep, BUCKET, os.path.join(scratch, "cache-local"))

        def through(fs, disk: str | None = None) -> dict:
            fs.mount()
            try:
                return paired(ep, files, fs.root, args.workers, fs.pids(), ep.pids, disk)
            finally:
                fs.umount()

        cases = {"alone": lambda: alone(ep, files, ep.pids),
                 "paired+memfs": lambda: through(memfs),
                 "paired+cmemfs": lambda: through(cmemfs),
                 "paired+cmemfs+disk": lambda: through(cmemfs, os.path.join(scratch, f"disk-{run}")),
                 "paired+cmemfs+pack": lambda: through(cmemfs, os.path.join(scratch, f"disk-{run}-pack")),
                 "paired+local": lambda: paired(ep, files, local, args.workers, [], ep.pids),
                 "cachefs+hint": lambda: one_epoch(cachefs, files, spec, args.workers, False, ep.pids, hint=True),
                 "shard-probe": lambda: shard_probe(ep, spec.shard_bytes, ep.pids, run)}
        names = list(cases)
        util.settle()
        for run in range(args.runs):
            for name in names[run % len(names):] + names[:run % len(names)]:
                r = cases[name]()
                r = {k: v for k, v in r.items() if k not in ("timeline", "stats")}
                results.setdefault(name, []).append(r)
                print(f"run {run} {name}: {r['images_per_s']:.0f} img/s, "
                      + ", ".join(f"{k} {v:.2f}" for k, v in r.items()
                                  if k.endswith("_per_image") and isinstance(v, float)), flush=True)
    summary = {}
    base = statistics.median(r["images_per_s"] for r in results["alone"])
    shard = statistics.median(r["images_per_s"] for r in results["shard-probe"])
    for name, rs in results.items():
        rates = sorted(r["images_per_s"] for r in rs)
        med = statistics.median(rates)
        summary[name] = {"min": rates[0], "median": med, "max": rates[-1], "of_alone": med / base,
                         "of_shard_probe": med / shard}
        print(f"{name}: img/s min {rates[0]:.0f} median {med:.0f} max {rates[-1]:.0f} ({len(rates)} runs), "
              f"{med / base:.2f} of alone, {med / shard:.2f} of shard-probe")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or os.path.join(here, "bench", "results", f"floor-{stamp}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"args": vars(args), "runs": results, "summary": summary}, f, indent=1)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
