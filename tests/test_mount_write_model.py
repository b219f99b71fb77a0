"""A randomized sequence of file operations on a real mount, checked byte for byte against an
in-memory model at every step, after upload, and after a remount with an empty cache."""
from __future__ import annotations

import os
import random

import pytest
from mount_helpers import first_difference, run_cachefs

STEPS = int(os.environ.get("CACHEFS_MODEL_STEPS", "250"))
MAX_SIZE = 3 << 20     # spans several 256 KiB blocks and one 5 MiB part at most


def s3_bytes(s3, bucket, key):
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


@pytest.mark.parametrize("seed", [1, 2])
def test_random_operations_match_model(mounter, make_bucket, s3, seed):
    rng = random.Random(seed)
    initial = rng.randbytes(700_000)
    bucket = make_bucket(f"w-model-{seed}", {"data.bin": initial})
    # Uploads run while the test writes (0.2 s interval), so writes race with uploads too.
    m = mounter.mount(bucket, "--small-sync-interval", "0.2", "--small-file-threshold", "1MiB",
                      "--large-sync-interval", "0.5", "--multipart-part-size", "5MiB")
    path = m.path / "data.bin"
    model = bytearray(initial)
    f = open(path, "r+b", buffering=0)
    try:
        for step in range(STEPS):
            op = rng.choices(["write", "read", "truncate", "reopen", "fsync", "append"], [8, 6, 2, 1, 1, 2])[0]
            where = f"seed {seed} step {step} {op}"
            if op == "write":
                off = rng.randrange(0, min(len(model) + 65536, MAX_SIZE))
                data = rng.randbytes(rng.choice([1, 100, 4096, 65536, 200_000]))
                data = data[:MAX_SIZE - off]
                os.pwrite(f.fileno(), data, off)
                if off > len(model):
                    model.extend(b"\0" * (off - len(model)))
                model[off:off + len(data)] = data
            elif op == "append":
                data = rng.randbytes(rng.randrange(1, 5000))
                with open(path, "ab") as a:
                    a.write(data)
                model.extend(data)
            elif op == "read":
                off = rng.randrange(0, len(model) + 10)
                size = rng.choice([1, 4096, 131072, 1 << 20])
                got = os.pread(f.fileno(), size, off)
                want = bytes(model[off:off + size])
                assert got == want, f"{where}: {first_difference(got, want)}"
            elif op == "truncate":
                size = rng.randrange(0, MAX_SIZE)
                os.ftruncate(f.fileno(), size)
                model = model[:size] + bytearray(max(0, size - len(model)))
            elif op == "reopen":
                f.close()
                f = open(path, "r+b", buffering=0)
            elif op == "fsync":
                os.fsync(f.fileno())
            assert os.fstat(f.fileno()).st_size == len(model), where
        assert path.read_bytes() == bytes(model)
    finally:
        f.close()
    res = run_cachefs(["flush", str(m.path)], m.env)
    assert res.returncode == 0, res.describe()
    got = s3_bytes(s3, bucket, "data.bin")
    assert got == bytes(model), f"S3 after flush: {first_difference(got or b'', bytes(model))}"
    mounter.umount(m)
    again = mounter.mount(bucket, "--read-only")           # a new, empty cache: bytes come from S3
    assert (again.path / "data.bin").read_bytes() == bytes(model)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
