"""A ResNet-50-style data loader, modelled on PyTorch's DataLoader: N worker processes, each handed
every N-th batch of a per-epoch shuffle, push finished batches into a bounded queue (prefetch factor
2 per worker) that the trainer, here the parent process, drains.

Two dataset shapes (cachefs.devtools.sample): "images" (one ~110 KB file per image: shuffled file order) and
"tfrecord" (~128 MB shards: shuffled shard order, records read in order with CRCs verified, as
tf.data's interleave does; a shuffle buffer would not change the I/O). "synthetic" reads nothing:
samples come from memory, so it is the loader's own ceiling and the denominator of "ratio to synthetic".

Optional per-sample JPEG decode + random crop + resize to 224 + flip (Pillow), and an optional
`consume_rate` (images/s) that paces the trainer like a GPU step, so backpressure is real.
"""
from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import queue
import random
import time
import traceback

from cachefs.devtools import sample

IMAGE_SHAPES = ("images", "imagenet")   # one file per image: 100 and 1,000 class directories
BATCH = 32             # per-GPU batches are 32-256; 32 keeps queue messages frequent on small runs
PREFETCH_PER_WORKER = 2  # PyTorch DataLoader's default prefetch_factor
READ_BUFFER = 1 << 20  # TFRecord readers use 1 MiB+ buffered reads
SYNTHETIC_POOL = 64    # distinct in-memory samples the synthetic loader cycles through
# The field report's synthetic-data rate for ResNet-50 on 4 nodes x 8 V100: 31,068.8 images/s,
# i.e. 7,767.2 images/s for one 8-GPU node: the rate a filesystem must sustain to feed it.
EIGHT_GPU_NODE_IMG_S = 31068.8 / 4
# LOADER_TRACE=PREFIX: each image worker writes PREFIX.<pid>, a JSON list of [path, open start, opened,
# read] (time.monotonic()), and run_epoch PREFIX.start, the epoch's start: where a cold epoch's first
# files wait (docs/BENCHMARKS.md "The hinted epoch's first 100 ms").
TRACE = os.environ.get("LOADER_TRACE")


def decode_and_crop(data: bytes, rng: random.Random) -> int:
    """What torchvision's RandomResizedCrop + RandomHorizontalFlip costs, roughly; returns pixel bytes."""
    from PIL import Image
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    cw, ch = max(1, int(w * rng.uniform(0.5, 1.0))), max(1, int(h * rng.uniform(0.5, 1.0)))
    x, y = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
    img = img.crop((x, y, x + cw, y + ch)).resize((224, 224))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return len(img.tobytes())


def _samples(shape: str, root: str, work: list, spec: sample.DatasetSpec):
    """Yield the bytes of every sample in this worker's share of the epoch."""
    if shape in IMAGE_SHAPES:
        trace: list = []
        for rel in work:
            t0 = time.monotonic()
            with open(os.path.join(root, rel), "rb") as f:
                t1 = time.monotonic()
                data = f.read()
            trace.append((rel, t0, t1, time.monotonic()))
            yield data
        if TRACE:      # each file's open and read, on the clock bench/proxy.py's PROXY_LOG uses
            with open(f"{TRACE}.{os.getpid()}", "w") as out:
                json.dump(trace, out)
    elif shape == "tfrecord":
        for rel in work:
            with open(os.path.join(root, rel), "rb", buffering=READ_BUFFER) as f:
                yield from sample.read_tfrecords(f)
    else:  # synthetic: no I/O; one copy per sample, as read() from the page cache would make
        pool = _synthetic_pool(spec)  # built before the fork, so workers inherit it
        for i in work:
            yield bytearray(pool[i % SYNTHETIC_POOL])


_POOLS: dict = {}


def _synthetic_pool(spec: sample.DatasetSpec) -> list[bytes]:
    if spec not in _POOLS:
        _POOLS[spec] = [sample.make_record(spec, i) for i in range(SYNTHETIC_POOL)]
    return _POOLS[spec]


def _worker(wid: int, shape: str, root: str, work: list, spec, decode: bool, seed: str, out) -> None:
    rng = random.Random(f"{seed}:{wid}")
    try:
        n = nbytes = bad = 0
        for data in _samples(shape, root, work, spec):
            if data[:2] != b"\xff\xd8":  # every sample is a JPEG: a wrong byte means a wrong read
                bad += 1
            if decode:
                decode_and_crop(data, rng)
            n += 1
            nbytes += len(data)
            if n == BATCH:
                out.put(("batch", wid, n, nbytes, bad))
                n = nbytes = bad = 0
        out.put(("batch", wid, n, nbytes, bad))
        out.put(("done", wid, 0, 0, 0))
    except BaseException:  # noqa: BLE001 - report any failure to the parent, which raises it
        out.put(("error", wid, traceback.format_exc(), 0, 0))


def epoch_order(items: list, seed, epoch: int) -> list:
    """The epoch's shuffle: the order in which the trainer consumes the items (batch after batch)."""
    rng = random.Random(f"{seed}:epoch:{epoch}")
    order = list(items)
    rng.shuffle(order)
    return order


def plan_epoch(shape: str, items: list, workers: int, seed, epoch: int) -> list[list]:
    """Each worker's share: every N-th batch of a per-epoch shuffle (every N-th shard for TFRecord).
    items: relative paths (images), shard paths (tfrecord) or sample numbers (synthetic)."""
    order = epoch_order(items, seed, epoch)
    if shape == "tfrecord":
        return [order[w::workers] for w in range(workers)]
    batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    return [[x for b in batches[w::workers] for x in b] for w in range(workers)]


def run_epoch(shape: str, root: str, items: list, spec: sample.DatasetSpec, workers: int, epoch: int,
              timeout_s: float, decode: bool = False, consume_rate: float | None = None, seed=0,
              hint=None) -> dict:
    """One epoch; returns images, bytes, seconds and images/s. Raises on a worker error or timeout.
    hint(order): called first, inside the timed epoch, with the epoch's consumption order (what
    cachefs.torch's sampler wrapper sends the daemon before the DataLoader asks)."""
    ctx = mp.get_context("fork")  # like DataLoader on Linux; workers start in milliseconds
    out = ctx.Queue(maxsize=PREFETCH_PER_WORKER * workers)
    shares = plan_epoch(shape, items, workers, seed, epoch)
    if shape == "synthetic":
        _synthetic_pool(spec)
    start = time.monotonic()
    if TRACE:
        with open(f"{TRACE}.start", "w") as f:
            f.write(repr(start))
    if hint is not None:
        hint(epoch_order(items, seed, epoch))
    hint_s = time.monotonic() - start
    procs = [ctx.Process(target=_worker, args=(w, shape, root, shares[w], spec, decode, f"{seed}:{epoch}", out),
                         daemon=True) for w in range(workers)]
    for p in procs:
        p.start()
    images = nbytes = bad = done = 0
    due = start
    try:
        while done < workers:
            remaining = start + timeout_s - time.monotonic()
            try:
                kind, wid, n, b, nbad = out.get(timeout=max(0.01, remaining))
            except queue.Empty:
                raise TimeoutError(f"{shape} epoch {epoch} did not finish within {timeout_s:.0f} s "
                                   f"({images} images read)") from None
            if kind == "error":
                raise RuntimeError(f"loader worker {wid} failed:\n{n}")
            if kind == "done":
                done += 1
                continue
            images, nbytes, bad = images + n, nbytes + b, bad + nbad
            if consume_rate:  # the "GPU" takes n / rate seconds per batch; the queue fills meanwhile
                due = max(due, time.monotonic() - n / consume_rate) + n / consume_rate
                time.sleep(max(0.0, due - time.monotonic()))
        seconds = time.monotonic() - start
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    if bad:
        raise RuntimeError(f"{bad} samples did not start with a JPEG marker: the filesystem returned wrong bytes")
    rate = images / seconds
    return {**({"hint_s": hint_s} if hint is not None else {}),
            "images": images, "mib": nbytes / (1 << 20), "seconds": seconds, "images_per_s": rate,
            "mib_s": nbytes / (1 << 20) / seconds, "pct_of_8gpu_node": 100 * rate / EIGHT_GPU_NODE_IMG_S,
            **({"pct_of_consume_rate": 100 * rate / consume_rate} if consume_rate else {})}
