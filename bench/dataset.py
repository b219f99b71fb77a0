"""The benchmark dataset: what is uploaded to the bucket (and copied to local disk), and its scale.

Bucket layout (each workload reads files no other workload has touched, each fio job in a directory
of its own so that directory prefetch does not warm another job's files: "cold" stays cold):
  fio/seq-1job/*.bin, fio/seq-4jobs/*.bin, fio/rand/*.bin  one large file per fio job
  fio/ttfb-large/*.bin, fio/ttfb-tiny/*.bin            time-to-first-byte sets
  probe/probe.bin                                       the endpoint's own throughput probe
  tfrecord/train-*.tfrecord, images/train/class_*/*.jpg  the loader's two shapes (cachefs.devtools.sample)
  imagenet/train/class_*/*.jpg                          the image folder in ImageNet's shape: 1,000 classes
  meta<N>/dDDD/fFFFFFF                                 N tiny files for the metadata walk
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from cachefs.devtools import sample

MiB = 1 << 20
FIO_CHUNK = 4 * MiB
META_FILES_PER_DIR = 100  # 100 per directory: deep enough that listing is per-directory work


@dataclass(frozen=True)
class Scale:
    name: str
    fio_file_mib: int          # seq-1job, seq-4jobs and rand each this big
    rand_ios: int              # random 64 KiB reads per rand job (fixed work, same offsets every state)
    ttfb_large: tuple[int, int]  # (files, MiB each)
    ttfb_tiny: int             # 1 KiB files
    images: int                # loader images per shape
    imagenet_images: int       # images of the 1,000-class folder (ImageNet's layout; issue 18)
    shard_mb: float            # TFRecord shard size
    meta_trees: tuple[int, ...]
    runs: int
    epochs: int
    loader_workers: int
    synthetic_images: int      # the synthetic loader's epoch: long enough not to measure only the forks
    step_timeout_s: float      # bound on any one fio job / epoch / walk

    def as_dict(self) -> dict:
        return asdict(self)


SCALES = {
    # `make bench`: under 10 minutes on 2 cores; 16 MB shards so that each of 4 workers gets one
    "short": Scale("short", 64, 256, (4, 32), 32, 512, 3000, 16, (10_000,), 3, 2, 4, 16384, 180),
    # `make bench-full`: the field report's ~128 MB shards, a 10k and a 100k tree
    "full": Scale("full", 1024, 2048, (4, 256), 64, 12_000, 20_000, 128, (10_000, 100_000), 3, 3, 8, 65536, 900),
    # tests/test_bench_harness.py: seconds
    "tiny": Scale("tiny", 4, 16, (2, 4), 4, 24, 40, 0.5, (200,), 1, 2, 2, 24, 60),
}


def loader_spec(scale: Scale) -> sample.DatasetSpec:
    return sample.DatasetSpec(num_images=scale.images, num_classes=100, shard_bytes=int(scale.shard_mb * 1e6))


IMAGENET_CLASSES = 1000
IMAGENET_PREFIX = "imagenet/"


def imagenet_spec(scale: Scale) -> sample.DatasetSpec:
    """ImageNet's layout: 1,000 class directories (a shuffled epoch touches all of them at once, which
    is what defeats per-directory prefetch heuristics); the same ~110 KB JPEG-like files."""
    return sample.DatasetSpec(num_images=scale.imagenet_images, num_classes=IMAGENET_CLASSES,
                              shard_bytes=int(scale.shard_mb * 1e6))


def random_file(size: int, seed: str) -> bytes:
    rng = random.Random(seed)
    return b"".join(rng.randbytes(min(FIO_CHUNK, size - off)) for off in range(0, size, FIO_CHUNK))


PROBE_KEY = "probe/probe.bin"  # read only by bench/probe.py, so the fio files stay cold


def fio_files(scale: Scale) -> Iterator[sample.Item]:
    """Each fio job's files in a directory of their own: a filesystem that prefetches a directory's
    files once a few of them are opened (cachefs does) must not warm the next job's files."""
    yield PROBE_KEY, random_file(scale.fio_file_mib * MiB, "probe")
    for name in ("seq-1job", "seq-4jobs", "rand"):
        yield f"fio/{name}/{name}.bin", random_file(scale.fio_file_mib * MiB, name)
    files, mib = scale.ttfb_large
    for i in range(files):
        yield f"fio/ttfb-large/ttfb-large-{i}.bin", random_file(mib * MiB, f"large{i}")
    for i in range(scale.ttfb_tiny):
        yield f"fio/ttfb-tiny/ttfb-tiny-{i}.bin", random_file(1024, f"tiny{i}")


def meta_tree(n: int) -> Iterator[sample.Item]:
    for i in range(n):
        yield f"meta{n}/d{i // META_FILES_PER_DIR:04d}/f{i:07d}", b"m"


def all_items(scale: Scale) -> Iterator[sample.Item]:
    spec = loader_spec(scale)
    yield from fio_files(scale)
    yield from sample.iter_tfrecord_shards(spec)
    yield from sample.iter_image_files(spec)
    yield from sample.iter_image_files(imagenet_spec(scale), IMAGENET_PREFIX)
    for n in scale.meta_trees:
        yield from meta_tree(n)


def tee_to_local(items, local_root: str) -> Iterator[sample.Item]:
    """Write each item to local disk as it passes on its way to the bucket: the same bytes in both."""
    for key, data in items:
        sample.write_local(local_root, [(key, data)])
        yield key, data


def populate(endpoint, bucket: str, scale: Scale, local_root: str, workers: int = 32) -> dict:
    """Create the bucket, upload every item and write the local copy. Returns counts."""
    client = endpoint.client(max_pool=workers)
    client.create_bucket(Bucket=bucket)
    objects, nbytes = sample.upload(client, bucket, "", tee_to_local(all_items(scale), local_root), workers)
    return {"objects": objects, "bytes": nbytes}


def paths(scale: Scale) -> dict:
    """Relative paths each workload uses, computed from the scale (no listing needed)."""
    spec = loader_spec(scale)
    return {
        "seq1": "fio/seq-1job/seq-1job.bin", "seq4": "fio/seq-4jobs/seq-4jobs.bin", "rand": "fio/rand/rand.bin",
        "ttfb_large": [f"fio/ttfb-large/ttfb-large-{i}.bin" for i in range(scale.ttfb_large[0])],
        "ttfb_tiny": [f"fio/ttfb-tiny/ttfb-tiny-{i}.bin" for i in range(scale.ttfb_tiny)],
        "tfrecord": sample.shard_keys(spec),
        "images": [sample.image_key(spec, i) for i in range(spec.num_images)],
        "imagenet": [sample.image_key(imagenet_spec(scale), i, IMAGENET_PREFIX) for i in range(scale.imagenet_images)],
    }

