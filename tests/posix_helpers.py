"""Shared by the POSIX conformance tests (tests/test_posix_*.py): one writable mount per module, a
directory per test, and what S3 holds below it."""
from __future__ import annotations

import os
import re
from pathlib import Path

from mount_helpers import list_all_keys


def mount_writable(module_mounter, make_bucket, hint: str, seeded: dict[str, dict[str, bytes]],
                   *options: str, extra_objects: dict[str, bytes] | None = None):
    """A module's mount of a new bucket holding each test's SEEDED objects below its own name."""
    objects = {f"{test}/{name}": data for test, files in seeded.items() for name, data in files.items()}
    bucket = make_bucket(hint, {**(extra_objects or {}), **objects})
    m = module_mounter.mount(bucket, *options)
    m.bucket = bucket
    return m


def own_dir(wm, request, seeded: dict) -> Path:
    """The test's directory: made through the mount, or the one holding its SEEDED objects."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
    path = wm.path / name
    if name not in seeded:
        os.mkdir(path)
    return path


def keys(s3, wm, d) -> list[str]:
    """The keys below the test's directory, relative to it (its own marker left out)."""
    return sorted(k[len(d.name) + 1:] for k in list_all_keys(s3, wm.bucket, d.name + "/") if k != d.name + "/")


def s3_bytes(s3, wm, d, name):
    try:
        return s3.get_object(Bucket=wm.bucket, Key=f"{d.name}/{name}")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
