"""Sample training datasets, deterministic given a seed: the shapes the field reports train on.

Two shapes of the same images (see docs/BENCHMARKS.md and ../shared/CONTEXT.md):
  (a) TFRecord shards of ~128 MB (ImageNet-on-TFRecord, as in the ResNet-50 report);
  (b) one file per image, in one directory per class (ImageFolder style).

Each image is a "JPEG-like" record of ~110 KB (ImageNet's mean file size): a real, decodable
160x120 baseline JPEG whose header is padded with APP15 segments of seeded random bytes, so every
record is distinct, incompressible and sized like a photo, and Pillow can still decode it.

TFRecord framing (TensorFlow's, byte for byte): uint64 LE length, uint32 LE masked CRC32C of the
length bytes, the data, uint32 LE masked CRC32C of the data. The record data here is the image
itself, not a tf.train.Example protobuf (a reader that wants labels uses `label_of(index)`).

API (everything yields (relative_key, bytes) lazily, in a deterministic order):
    spec = DatasetSpec(num_images=2000, seed=0)
    iter_tfrecord_shards(spec)  -> ("tfrecord/train-00000-of-00002.tfrecord", b"..."); shard_keys(spec)
    iter_image_files(spec)      -> ("images/train/class_0003/00000003.jpg", b"...")
    write_local(directory, items), upload(s3_client, bucket, prefix, items, workers)
    read_tfrecords(fileobj) / parse_tfrecords(buffer) -> record payloads, CRCs verified
"""
from __future__ import annotations

import base64
import concurrent.futures
import os
import random
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import crc32c

MEAN_RECORD_BYTES = 110 * 1024  # ImageNet's training JPEGs average ~110 KB
SHARD_BYTES = 128 * 1000 * 1000  # the field report's shards were ~128-130 MB
DEFAULT_SEED = 20240601
MAX_APP_SEGMENT = 65533  # a JPEG segment length field is 16 bits and counts itself (2 bytes)

Item = tuple[str, bytes]


class TFRecordError(ValueError):
    """A TFRecord stream is truncated or a CRC does not match."""


@dataclass(frozen=True)
class DatasetSpec:
    """What to generate. Same spec, same bytes, on any machine."""
    num_images: int
    num_classes: int = 100
    seed: int = DEFAULT_SEED
    mean_record_bytes: int = MEAN_RECORD_BYTES
    shard_bytes: int = SHARD_BYTES

    def __post_init__(self):
        if self.num_images < 1 or self.num_classes < 1:
            raise ValueError("num_images and num_classes must be >= 1")
        if self.mean_record_bytes < 2 * len(_JPEG_CORE):
            raise ValueError(f"mean_record_bytes must be >= {2 * len(_JPEG_CORE)}")


# ---------------------------------------------------------------- TFRecord framing

def masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked CRC32C: rotate right by 15 and add a constant, so a CRC of CRCs is safe."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return b"".join((length, struct.pack("<I", masked_crc32c(length)),
                     data, struct.pack("<I", masked_crc32c(data))))


def read_tfrecords(f: BinaryIO, verify: bool = True) -> Iterator[bytes]:
    """Yield the payload of every record in a TFRecord stream; raise TFRecordError on damage."""
    while True:
        header = f.read(12)
        if not header:
            return
        if len(header) < 12:
            raise TFRecordError("truncated record header")
        length_bytes = header[:8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", header[8:])
        if verify and masked_crc32c(length_bytes) != length_crc:
            raise TFRecordError("length CRC mismatch")
        body = f.read(length + 4)
        if len(body) < length + 4:
            raise TFRecordError("truncated record data")
        data = body[:length]
        if verify and masked_crc32c(data) != struct.unpack("<I", body[length:])[0]:
            raise TFRecordError("data CRC mismatch")
        yield data


def parse_tfrecords(buf: bytes, verify: bool = True) -> list[bytes]:
    """All record payloads of an in-memory TFRecord file."""
    import io
    return list(read_tfrecords(io.BytesIO(buf), verify))


# ---------------------------------------------------------------- records

def label_of(index: int, num_classes: int) -> int:
    return index % num_classes


def record_size(spec: DatasetSpec, index: int) -> int:
    """Size of image `index`: uniform in [0.5, 1.5) x the mean, computed without generating it."""
    u = random.Random(f"{spec.seed}:size:{index}").random()
    return int(spec.mean_record_bytes * (0.5 + u))


def make_record(spec: DatasetSpec, index: int) -> bytes:
    """The JPEG-like bytes of image `index`: the JPEG core with seeded APP15 padding after APP0."""
    size = record_size(spec, index)
    padding = random.Random(f"{spec.seed}:data:{index}").randbytes(size - len(_JPEG_CORE))
    parts = [_JPEG_CORE[:_CORE_SPLIT]]
    pos = 0
    while pos < len(padding):
        # each segment costs 4 bytes of marker + length; the last one absorbs the remainder
        chunk = padding[pos:pos + min(MAX_APP_SEGMENT, len(padding) - pos - 4)]
        if len(chunk) <= 0:
            break
        parts.append(b"\xff\xef" + struct.pack(">H", len(chunk) + 2) + chunk)
        pos += len(chunk) + 4
    parts.append(_JPEG_CORE[_CORE_SPLIT:])
    return b"".join(parts)


# ---------------------------------------------------------------- dataset shapes

def shard_plan(spec: DatasetSpec) -> list[range]:
    """Which image indices go to which shard: close a shard once it reaches shard_bytes."""
    plan, start, filled = [], 0, 0
    for i in range(spec.num_images):
        filled += record_size(spec, i) + 16  # 16 = TFRecord framing per record
        if filled >= spec.shard_bytes:
            plan.append(range(start, i + 1))
            start, filled = i + 1, 0
    if start < spec.num_images:
        plan.append(range(start, spec.num_images))
    return plan


def shard_keys(spec: DatasetSpec, prefix: str = "tfrecord/") -> list[str]:
    """The shard names, `{prefix}train-NNNNN-of-MMMMM.tfrecord`, without generating any data."""
    count = len(shard_plan(spec))
    return [f"{prefix}train-{n:05d}-of-{count:05d}.tfrecord" for n in range(count)]


def iter_tfrecord_shards(spec: DatasetSpec, prefix: str = "tfrecord/") -> Iterator[Item]:
    """The TFRecord shards (see shard_keys), one in memory at a time."""
    for key, indices in zip(shard_keys(spec, prefix), shard_plan(spec), strict=True):
        yield key, b"".join(frame_record(make_record(spec, i)) for i in indices)


def image_key(spec: DatasetSpec, index: int, prefix: str = "images/") -> str:
    return f"{prefix}train/class_{label_of(index, spec.num_classes):04d}/{index:08d}.jpg"


def iter_image_files(spec: DatasetSpec, prefix: str = "images/") -> Iterator[Item]:
    """One file per image, `{prefix}train/class_CCCC/IIIIIIII.jpg`."""
    for i in range(spec.num_images):
        yield image_key(spec, i, prefix), make_record(spec, i)


# ---------------------------------------------------------------- sinks

def write_local(directory: str, items: Iterable[Item]) -> tuple[int, int]:
    """Write items under `directory` (keys become relative paths). Returns (files, bytes)."""
    files = total = 0
    for key, data in items:
        path = os.path.join(directory, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        files += 1
        total += len(data)
    return files, total


def upload(client, bucket: str, prefix: str, items: Iterable[Item], workers: int = 8) -> tuple[int, int]:
    """PUT items to s3://bucket/prefix+key with `workers` threads (boto3 clients are thread-safe).

    At most 2 x workers items are in memory at once, so a generator of 128 MB shards stays bounded.
    Returns (objects, bytes); the first failed PUT is re-raised after the pool drains.
    """
    slots = threading.BoundedSemaphore(2 * workers)
    counted = [0, 0]
    lock = threading.Lock()

    def put(key: str, data: bytes) -> None:
        try:
            client.put_object(Bucket=bucket, Key=prefix + key, Body=data)
            with lock:
                counted[0] += 1
                counted[1] += len(data)
        finally:
            slots.release()

    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="sample-upload") as pool:
        futures = []
        for key, data in items:
            slots.acquire()
            futures.append(pool.submit(put, key, data))
        for fut in futures:
            fut.result()
    return counted[0], counted[1]


def main(argv: list[str] | None = None) -> None:
    """`python -m cachefs.devtools.sample DIR --images N [--shape tfrecord|images|both]`: write a dataset locally."""
    import argparse
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("directory")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--shard-mb", type=float, default=SHARD_BYTES / 1e6)
    p.add_argument("--shape", choices=("tfrecord", "images", "both"), default="both")
    a = p.parse_args(argv)
    spec = DatasetSpec(a.images, a.classes, a.seed, shard_bytes=int(a.shard_mb * 1e6))
    if a.shape in ("tfrecord", "both"):
        files, size = write_local(a.directory, iter_tfrecord_shards(spec))
        print(f"tfrecord: {files} files, {size} bytes")
    if a.shape in ("images", "both"):
        files, size = write_local(a.directory, iter_image_files(spec))
        print(f"images: {files} files, {size} bytes")


# A 160x120 baseline JPEG (a gradient with noise, quality 80, made once with Pillow). Kept as bytes so
# the dataset does not depend on whether or which Pillow is installed.
_JPEG_CORE = base64.b64decode("""
/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAYEBQYFBAYGBQYHBwYIChAKCgkJChQODwwQFxQYGBcUFhYaHSUfGhsjHBYWICwg
IyYnKSopGR8tMC0oMCUoKSj/2wBDAQcHBwoIChMKChMoGhYaKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgo
KCgoKCgoKCgoKCgoKCj/wAARCAB4AKADASIAAhEBAxEB/8QAGwABAQEBAQEBAQAAAAAAAAAAAwQCAAcBBQj/xAA6EAABAgQE
AwcEAgAEBwEAAAABAhEAAyExEkFR8GFxkQQTIoGhscEyQtHhUvEjYoLiBRQzcpKTssL/xAAbAQEBAQEBAQEBAAAAAAAAAAAE
AwIFCAEGAP/EADIRAAEDAwIFBAAFAwUAAAAAAAECAxEAITFBURJhcaHwE4GRsQQiwdHxBTLhQnKSstL/2gAMAwEAAhEDEQA/
AP5jRJchxFEvszvSKOzyXIj9OT2YAEqYDM5CP1H9P/AD8UJijD8Rw1+dL7E+R6RRL7CDQgAmgirvgrD3SSxqXo26Qkvs82Yq
qlHIh6cYcG/wRUEsI9Q8sfP7a5pjbytTFTDsklBDqS4oWq0J3MhKmDqNXYRUZMqU1MZIdhxhkImFu7lpTnUOYwsNglAbSDsA
VH7A83pzbpzNSIlSSQO6mNyEPK7OkkvILNSuekVlCsScUxKMSSwSMtY+pkJWoEpmTKs6tIk4EoVAAJB2SNBpCjzwKe07U57M
AoDu5aAKkKVk8bEuXjPhlM3EnqIrEjARiTKRwJc3hkoVjID3bwIDesQdSAZ4YuLQD2hNva9PadqVElAuJRyDJMPLkJJoJf8A
61RV3WEIcrGmJWF4XCSMKiFPVnKgb000jXChBIUlNuR7mdaa29NTHs6RLJ7scwg041LRoSpZxOlKWpYUPmYrRKATWX3eb4R8
niIVCSkpxBN38JB9hEXfTkcSQkEDS36EZ5ctw9p01ImRLZJBBYgGia1zhO6CVjClKgGBoK9B7RaZaksWWP5Kcs/o0bKMbNY/
UxB/OntBXkpQCECCI9/nnE9DT2nqllyAbpp/2/7YdPZk1dKaBy4/2xTIkhnUkBqkt/tj7IlYlEkitaFv/wBRHiA4AE8RV557
09t2hTLlAAhILjIpp6Q0uUggES6v/kiqWhRDISvhRQb34QndqdQUSV2qRpxHH1j6TwgKJmdgI+d7eWpzbteUdiku1Ir7Q4Al
owEEEE3I/EP/AMPkO1KaxrskhcxY7xyoUrlHdYW4n8I2w2DxOa8hH3NebEOjiJOlFI7OmUjFMDJetHhJYmz0sBgQQzDPzigI
M+aE/YkkBjQ1v0hgkLeXLDpNCSAx4gx89ZIHA0SG8QLFZt20t1uKa25vmpkIlyxglpxrBYvQCF7lSkg9oXhTprbKKRKwES+z
jx5q04RvusKyAO8mmpJqBvSILchJQoWFoE8HS11ncWHMYp7blBKQyXTKSkP9SzlCd2FpDlU4mrCgt+IpRLSr61maq+FIpbpD
d1iCRML1bBLHvEFLUpvhBt7b6x+UHqFn5p7bt6lTKAVZKKOzYjdoUyyEBRxcSssOg84pTKDAAYRbCiquuXpG0yj3hCmSqhZs
SjwcxB1ZAjf4n3gDkISb2wKe07QIk4FCzAVwJDDzMMiWkhnfQlRV1Aikyi4MxDnIGtOQtaGRLFEuQqhY0ZjoI+E8JIFhsfqD
ieXXApzbtTCWlJLABSbpYD3cwqJZUMRBUnMMaX1YWihMoBZFABVgcJ6VMMmUoEKUK5ksH5O5MY9QzEWGm18+ZvinNu1PLlBJ
8DMRSgLHyB94VMsywpKlEkC1a+Tv6RSJWFJBTS6cRPp/UbEvCDhSoO9VGh5D9RhxfpiBp1MDptMEYtA1p7Ts1MmUUBJASA9X
S3wIdMs4SmoGoJLjN7w6ZQTgNRQ6j0pChDqNRiUfuFW8294N6vDab4zuP4x/L23KnlSiThYJDszBx0Ih0oKVJDECpTVvf4hs
ACilSsQyCm61/MOlJCmfCciHTibLSPiXUoFiQQc2JzgfpEZ6AubcrynsyRL7OVFnZgHuYaUkyezOkFyQBw20NLkg9jqE3F7+
UUCUVTZcsYmAcjKOw26tKEcJg8ACYzKiQewrzYhwVMEGUlCJYZag5Og4QwlKS0mWGLAlQNRwiiWlBmLmkjDZJw30pCIkqEtI
QTjWaqBqM/mMl03KT+W4EEf24tzWde8Ye25U6ZQUDLllPd4fEu3OukPLQE/9NQTKZiohi/CHEjxKluEykXIzMKEOAW4oln3L
RkOlEkiCLbYNwLzwzbdRsN6c25UyQUgMlUtJoAn6lQxkigZSUE/QlnN6xUmU5W9ZgDFQskcI33KcIZ8JP+pWvk0RXxAGTI+M
abZyBbQyac27U8pFcKRhIP0y3HUwqZZTQeFjUJOEDmYo7skYEJDC6TYcznDJQ4BI8NgpqA8BE/U0nGunT6mYGhCTT23KlTKw
oWCwFgwZNuphkSwPC9DkzelyIpTKDk4SF3JzbicoTugZQIDPdTGpN3zMQUrhkp0nfE4v1uDjentu1NLkKJAKcINgeOoFdYZM
qpH0gB2bLMU+TFIlYQykjDdmuOWnM5QqAShJIBanB/b0MTlCfynPP6OMab20pzbpqZEsZBkChAsx6D1MJLlsU926SxAJOH8f
MVokuQC9bGr8OPtGxKKizAJUakNXz/uIuEpg68s6Y0AiL9Yp7TtAiUCgJSWIBcBvZh7GFTKqycKg2EgPTfKKUSCcLDRxr5N8
QoQVpt4TUV8uXqIyViJUL/ceX/wKc27UyZfdnGkMGrVmNKUo/OElyglFWBN6MDwFxFRlgkBhiSWYEv8AnPJ4YoF1AVpU56P+
YkogEkEQMcicnGZt1tT23a8plIP/AC0tKWZRqMzDJRWcuoKfCCkMdIokS3TIAF1O/KGShwwvMmEs2XPpHdSs8CZVgCP+Nu6p
99682Nu3qZMjxS5ZACAMRJ3zhUSlFBXZcwsNQP6pD925UElytTAj+I5eUUISWC0OzhCHFuPv6RMLQVQJjlnED4TiNVjrTm3a
mlISyQFNKTQt9x2IaXKW4SVf4hDlWSR8Q8qWE1BcDwoSbE6/uNplJZP3JBv/ADVzifrQEz2P86Y1A5qFPbcoEIYCjC6UE5am
FlpJZQJL/dmeQMUIQMNSVBRZRTUnhyhkSqrcMPpJv/pEH9QmCDbw5Fh2A0gA8T23amEnApOMJa+F6J0pmYcIwB3qc1FiR8Cp
h0SslHCHZhYctTCmWEgs7Wu9eOppaMlwtpUpNttx5zjaAJFObcmp0ykVFyPpFGHIZ842JIwu/wBQANcXU38hpFkuXRZIZ70f
hX8CNiUVA0YMXGQ/HIRF0jhsJMGO9z/nSRpT2naGVKDDEG4FqeVs7mEEspJZwAMy9Od9dBDoljC4T9Pp0t72hUyilKquwcuG
vvOMqf8AygC0DP798bdKa25U6UOAEgAPUPQgeX5hZcvxhSCSlw5HS/78oYJACmHB9b7+IolSiPEaFx5VpyvwgyXuNQkzHaMf
Ou810G3IqZCCRgfDTIUAbNvwIUS1uGFci/tn7xQiUCGNCCGejW/WkIiU2F2JbESdeNOPDnEVOmLn3m+cH70509tyiSlPhSMJ
f6QW/rXQw2FiSxCgKVanPK+cLLlmoAJcOaVbieWvWFTKUkthLgFi3zlnqI/j+KUUyPrHmc7CKa25XlchDJlEYQUpUan3GkNK
ksEsC6ZZU1d5Q0qWpCEqsyGBZqu1+kUCUcRBr9KRQaPX1jsNOgpSVC9voR/0rzahyp0y2QwcFCMrgnYh0ygKD7U4Q38jpvKK
cCVrCinw4iXFaJDRuXLwoSBixJDk38R13nFVLCVESCMdQIi3+2Dt+Wmtu1MiSXZKSCPAktbU74QiJbAEAgEEIIegF1c4q7oJ
oksB4SWen3QiJa8JLEOHLijZCCLWEHh1HTl2+LQR/bXQbdqaWhOXhAFj9o8s4dMshIDYS1ADVNraktFHdMpi2J3fQ5l9BCIR
4aBQF6FyOPMxgu+nKTbzt2AzgApc25NDLlhwCyTZhlwGp1OwqUAJSxS4T9uXL8wwlMGZg9n5UB94YSwSMQyergNkeuUYL1iM
H380nFtv7ac25U6JdkkWBtRq3Gg4wqZShgCQxa5DAOfT3ihEslYIJqWNHr7P6BoYS8JeoTeh31zyiRWInTE8hH1rOMZmntu1
NJl0S6UirXanS/rCiX4gAFBhQANXbfJihEtKUlRSCGY/j9dYZEt0upiWAYsN+3OJcZ4Agm/6D25DE05t2p0y2SkNYUI65eX5
hZctKQkF8SdDb24aPFAklmqNHBcaennyhAigLkVBvqb76xJx0oNxp18/bentOUEuVhUkksKACzW5fHnG+7wlknJg1xy35Q6J
RH1Dgzc9/EN3YHiYjEHqAz6cd2gq3+JFhGvnn1T23L0CUJAJSQ4FGow1/rpColFLCwOWnHh7Uh5coY/EFENYi+nm3nDy0Hwk
sRUhQF/Me/WMJcKsmDjvr8j45intuV5TLlkJBse7SPUxSE4SSEOAoq0sP3DyZLyw9yhP/wBQgQFgFg6q1Aq6v7jvpcU22nhN
+EEexM51IrzW25JqcSCyUEEjwp5ZwkuWTVIILFV3Yk06fMVJlhQUz4SCaBnegMMEJDlI8QLgivAGJqKSeIGAPmMiOh53voKe
27UyJIUQAB3Zo+gFfzDJQ4Y3cuXsW9gIoEkJIcUTRrGmXWNok/4bl1pJo+bM/U5xNThRIi/0P/MzESRMG1ObcoESiwKRRmwi
hbIQyJLkOpw31P1PwIZMspCVvb7gL6t6CF7oOdRfJsqewiKnQMDa06f5+NQRNPbcoJUkEl00JauTZchnCypJJIwkBwTRi5+f
YRSEAFiyWAZstv1hcBDPZq51zrsl2iZUhIucZ80ve9+U3Dm3am7hQl/Sk0FWy4edoRCQzuK1vbI5dPSKSgeEgYS5L25u2dva
GRKBNQzmnDz19ucRW5+aEHA17fE2B5bU9t2p5aBhZ8NwzW131jaZP+G6Qb0Au+9iKRKYgUAduFDv+4YIJLAPRnFK539fXSJL
dChCunnlzmntuUCEeD6iwDggeWjbzjQl4Syi7EA1IPPf6igS/uBCVuQ9g/xt9IoSgpUAzAuXGdN/qJKe47G0QN8+/wAz0pzb
lSypOEOeHkNLb0zhe7V3eGrv4T+9+cPKl1cCwzrUHf6vDoQkkqDUzFCRmN/uIhwFASDAjtr27x0p7blTp7OkEpUXBys1dd10
hZSCwJAFXqdN3vFKUlsVQBw4UvnuohUy1BX8Q/ipQ6W5bEfFLSkgo86nbO2tqc27XlUpISiUaMAApsrmEQgBKHYlDFrOGJ+Y
oQh5KWNUpFRRqExQJWYcpIILasBHZDilISQRaPjXXQgT4K82Nu3qdEspZIFUpcaEAPXzML3JSAxsGBGTCzczDolJxEEgoe4s
HL+whUS1IKaVwhyaub18zGlOgJJNhvtytpztbYinNuVOhAJCQ7AMADQ5D1rCplhNmLGhegu3yYpRJOLAkEEMATranqY2iWAo
lQNRY6G9eTCDrWRHFnfQdP0FPbdqdEsAg4SwqKWpSnAV84dCCGSoYAzaMP0/UxUmUHIKfG7MbO/59BG0IYDxfdc6fOvNozxF
vXzUGY7HqKc27NBLllKmpTKhbducImUGSCwFACn49fUxQiUUkAiooAFW4fHWNJQGJIAY6N+9PQZwdx8JTB038+qe05QiW0sA
HSwbJ/LZ0hkyTYvWwFKfG84cIBKQHNWGKp6b9IZEt3FQT/E6Zk710iXqpUbnlr266b5ventuVN3RAsKEgHIb+dYoly2OFVMV
MIy4b9TDJlk0AdSbBNAN/rWFCC2FOt8jsba8w4EK4h5pHx8a6Q5typ5aAQQl1EMAG6Meu6wsuWfpV9QTcUG7fq8US5QxsXpU
deW+dISUnEVqq7Nfe+sQ9e6ZO/Tc+/gintuUKJJ8AIqAaM2/Tyz2hBSCAGw65je3pFKUYpSXALUYjTe7F0IASSysBFid74Ww
VgxwmBGdYj9CBN6c27UwlElIKAkgUHxTz24jQlApeoGR/id7yivuTiwqJIOptum2MIEkKClMQfu15746xB5cEhXT+cfP0RT2
na8q7PKBlKTQFuvhMUSpQTPL0csf/In4jo6P0DEemgxgxXm9CjNIiUoJSwDGhDch8mGSkAkozqx5v+I6OjLqyyQE6x7W0pzS
iaZEoEMnwgmpoQ1nfkD1jcqWXU5AappQV48faOjomswEqGSD2E9zmnNqNMmWGAL4aUzb+iOphES2WwJOb/Pz0jo6DuOHjjaP
s09omnMlkAej0HDf+aGlSueo558P22kdHQhSAl63L7896a2sxW0IUwc+FgwahFmbz28MmUpUt2NS9CAN8fwI6OgjKS4ooJMc
M/W9PQoi9bTKSE1IS7uBlv8AWsOmUSWU6UppdyfPfs3R0GT/AKgNI98/tpAp7ajWwgMEpFMyBVmvv+2EpSE4VNQ5De+VOjoO
hRWlSjkQPkTXQbUZFLJknCKUL28uG9MoWWggkLcg53bl6bYx0dGHCWmkrScR3SLU5tRJp0y2ZmWgZBs97y2JTAHFhJBo9ttz
+ejow8YTPguB1xzinNKNf//Z""")
assert _JPEG_CORE[:4] == b"\xff\xd8\xff\xe0" and _JPEG_CORE[-2:] == b"\xff\xd9"
_CORE_SPLIT = 4 + struct.unpack(">H", _JPEG_CORE[4:6])[0]  # SOI + the APP0 (JFIF) segment

if __name__ == "__main__":
    main()
