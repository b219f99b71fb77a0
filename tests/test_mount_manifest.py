"""Manifests on a real mount (docs/MANIFESTS.md), counted in the S3 server's request log: `ls -lR` and
reads of every entry with no LIST and no HEAD; a key added since still found by name; stale, foreign
and damaged manifests refused in one line with no mount; `manifest build --upload` and `manifest diff`."""
from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from mount_helpers import (
    ERROR_EXIT_BOUND_S,
    REGION,
    cachefs_env,
    mount_args,
    mount_entries,
    object_bytes,
    one_line_error,
    pids_mentioning,
    read_all,
    run_cachefs,
    stop_pid,
    summarize,
)

from cachefs.manifest.format import Manifest, ManifestEntry, dumps, read_file

pytestmark = pytest.mark.timeout(240)

PREFIX = "data"
DATASET = {f"train/c{d}/{i:02d}.jpg": object_bytes(f"m{d}.{i}", 3_000 + 97 * i) for d in range(3) for i in range(8)}
DATASET |= {"val/sub/deep/x.bin": object_bytes("deep", 40_000), "labels.txt": b"cat\ndog\n", "empty/": b""}
CHANGED = "val/sub/deep/x.bin"


def s3_flags(endpoint_url: str) -> list[str]:
    return ["--endpoint-url", endpoint_url, "--region", REGION, "--addressing-style", "path"]


def manifest_cli(endpoint_url: str, *args: str):
    return run_cachefs(["manifest", *args, *s3_flags(endpoint_url)], cachefs_env())


def dataset_bucket(make_bucket, hint: str) -> str:
    return make_bucket(hint, {f"{PREFIX}/{k}": v for k, v in DATASET.items()} | {"elsewhere/z.txt": b"z"})


def build(endpoint_url: str, bucket: str, out: Path) -> Path:
    res = manifest_cli(endpoint_url, "build", f"s3://{bucket}/{PREFIX}", "-o", str(out))
    assert res.returncode == 0, res.describe()
    assert re.search(rf"{len(DATASET)} keys", res.stderr), res.describe()
    return out


def refused(moto_server, bucket: str, tmp_path: Path, *extra: str) -> str:
    """Mount with `extra`: must fail in one line, leave no mount and no daemon; returns the line."""
    mnt, cache = tmp_path / "refused-mnt", tmp_path / "refused-cache"
    mnt.mkdir(exist_ok=True)
    res = run_cachefs(mount_args(f"s3://{bucket}/{PREFIX}", mnt, cache, moto_server.endpoint_url, *extra),
                      cachefs_env(), timeout_s=ERROR_EXIT_BOUND_S + 30)
    leftovers = pids_mentioning(str(cache))
    for pid in leftovers:
        stop_pid(pid)
    assert res.returncode != 0, f"mounted: {res.describe()}"
    assert "Traceback" not in res.stderr + res.stdout, res.describe()
    line = one_line_error(res.stderr)
    assert line is not None, res.describe()
    assert mount_entries(mnt) == [] and leftovers == [], "a mount or daemon was left behind"
    return line


def test_ls_lR_and_reads_of_a_manifest_ask_no_list_or_head(mounter, make_bucket, request_log, moto_server,
                                                           tmp_path, s3):
    name = dataset_bucket(make_bucket, "manifest-reads")
    manifest = build(moto_server.endpoint_url, name, tmp_path / "ds.manifest")
    m = mounter.mount(name, "--manifest", str(manifest), "--hedging", "false", prefix=PREFIX)
    mark = request_log.mark()
    listing = subprocess.run(["ls", "-lR", str(m.path)], capture_output=True, text=True, check=True).stdout
    files = {os.path.relpath(os.path.join(d, f), m.path) for d, _, fs in os.walk(m.path) for f in fs}
    dirs = {os.path.relpath(d, m.path) for d, _, _ in os.walk(m.path)}
    assert files == {k for k in DATASET if not k.endswith("/")}
    assert {"empty", "val/sub/deep", "train/c2"} <= dirs
    assert " 40000 " in listing                   # sizes from the manifest: ls -l shows them
    for key, data in DATASET.items():
        if not key.endswith("/") and key != CHANGED:
            assert read_all(m / key) == data, key
    seen = request_log.since(mark, name)
    lists_heads = [r for r in seen if r.is_list or r.method == "HEAD"]
    assert lists_heads == [], summarize(lists_heads)
    assert sum(r.is_object_get for r in seen) >= len(files) - 2, summarize(seen)    # reads still GET

    # An object replaced since the manifest: its read fails (ESTALE), the next open reads the new one.
    s3.put_object(Bucket=name, Key=f"{PREFIX}/{CHANGED}", Body=b"replaced")
    with pytest.raises(OSError) as err:
        read_all(m / CHANGED)
    assert err.value.errno == errno.ESTALE
    assert read_all(m / CHANGED) == b"replaced"

    # A key added since the manifest: not in the snapshot's listing, but found by its name.
    s3.put_object(Bucket=name, Key=f"{PREFIX}/train/c0/new.jpg", Body=b"new")
    assert "new.jpg" not in os.listdir(m / "train/c0")
    assert read_all(m / "train/c0/new.jpg") == b"new"
    assert not os.path.exists(m / "train/c0/nothing.jpg")
    # Writes go on as without a manifest.
    (m / "train/c1/written.txt").write_bytes(b"written here")
    assert "written.txt" in os.listdir(m / "train/c1")
    assert read_all(m / "train/c1/written.txt") == b"written here"


def test_stale_foreign_and_damaged_manifests_are_refused(make_bucket, moto_server, tmp_path, mounter):
    name = dataset_bucket(make_bucket, "manifest-refused")
    entries = [ManifestEntry(k, len(v), '"x"', 0) for k, v in DATASET.items()]
    old = tmp_path / "old.manifest"
    old.write_bytes(dumps(Manifest.from_entries(name, PREFIX + "/", entries, created=time.time() - 8 * 86400)))
    assert re.search(r"too old.*manifest-max-age", refused(moto_server, name, tmp_path, "--manifest", str(old)))
    mounter.mount(name, "--manifest", str(old), "--manifest-max-age", "30d", prefix=PREFIX)   # within 30 days

    foreign = tmp_path / "foreign.manifest"
    foreign.write_bytes(dumps(Manifest.from_entries("another-bucket", PREFIX + "/", entries)))
    assert "s3://another-bucket/data/" in refused(moto_server, name, tmp_path, "--manifest", str(foreign))
    other_prefix = tmp_path / "prefix.manifest"
    other_prefix.write_bytes(dumps(Manifest.from_entries(name, "elsewhere/", entries)))
    assert "elsewhere/" in refused(moto_server, name, tmp_path, "--manifest", str(other_prefix))

    good = build(moto_server.endpoint_url, name, tmp_path / "good.manifest").read_bytes()
    damaged = tmp_path / "damaged.manifest"
    damaged.write_bytes(good[:-40] + bytes([good[-40] ^ 1]) + good[-39:])
    assert "checksum" in refused(moto_server, name, tmp_path, "--manifest", str(damaged))
    damaged.write_bytes(good[: len(good) // 2])
    assert "truncated" in refused(moto_server, name, tmp_path, "--manifest", str(damaged))
    assert "no such file" in refused(moto_server, name, tmp_path, "--manifest", str(tmp_path / "none")).lower()


def test_build_upload_then_mount_from_s3(mounter, make_bucket, request_log, moto_server, s3):
    name = dataset_bucket(make_bucket, "manifest-upload")
    res = manifest_cli(moto_server.endpoint_url, "build", f"s3://{name}/{PREFIX}", "--upload")
    assert res.returncode == 0 and f"s3://{name}/{PREFIX}/.cachefs-manifest" in res.stderr, res.describe()
    m = mounter.mount(name, "--manifest", f"s3://{name}/{PREFIX}/", prefix=PREFIX)
    mark = request_log.mark()
    files = {os.path.relpath(os.path.join(d, f), m.path) for d, _, fs in os.walk(m.path) for f in fs}
    assert files == {k for k in DATASET if not k.endswith("/")}      # the manifest does not list itself
    seen = request_log.since(mark, name)
    assert not [r for r in seen if r.is_list or r.method == "HEAD"], summarize(seen)
    # a second build lists the dataset without the uploaded manifest
    res = manifest_cli(moto_server.endpoint_url, "build", f"s3://{name}/{PREFIX}", "--upload")
    assert f"{len(DATASET)} keys" in res.stderr, res.describe()

    res = manifest_cli(moto_server.endpoint_url, "diff", f"s3://{name}/{PREFIX}/")     # the uploaded one
    assert res.returncode == 0 and "0 added, 0 removed, 0 changed" in res.stdout, res.describe()
    res = manifest_cli(moto_server.endpoint_url, "show", f"s3://{name}/{PREFIX}/")
    assert res.returncode == 0 and f"entries  {len(DATASET)}" in res.stdout, res.describe()

    # The same cache directory mounted without --manifest trusts none of its listings any more.
    mounter.umount(m)
    s3.put_object(Bucket=name, Key=f"{PREFIX}/train/c2/later.jpg", Body=b"later")
    again = mounter.mount(name, prefix=PREFIX, mountpoint=m.path, cache_dir=m.cache_dir)
    assert "later.jpg" in os.listdir(again / "train/c2")


def test_manifest_diff_reports_added_removed_and_changed_keys(make_bucket, moto_server, tmp_path, s3):
    name = dataset_bucket(make_bucket, "manifest-diff")
    manifest = build(moto_server.endpoint_url, name, tmp_path / "ds.manifest")
    res = manifest_cli(moto_server.endpoint_url, "diff", str(manifest))
    assert res.returncode == 0 and "0 added, 0 removed, 0 changed" in res.stdout, res.describe()
    s3.put_object(Bucket=name, Key=f"{PREFIX}/train/c9/added.jpg", Body=b"added")
    s3.delete_object(Bucket=name, Key=f"{PREFIX}/labels.txt")
    s3.put_object(Bucket=name, Key=f"{PREFIX}/train/c0/00.jpg", Body=b"changed")
    res = manifest_cli(moto_server.endpoint_url, "diff", str(manifest), f"s3://{name}/{PREFIX}")
    assert res.returncode == 1, res.describe()
    out = res.stdout
    assert re.search(r"^added +train/c9/added\.jpg +5$", out, re.M), out
    assert re.search(r"^removed +labels\.txt$", out, re.M), out
    assert re.search(r"^changed +train/c0/00\.jpg +size 3000 -> 7, etag ", out, re.M), out
    assert "1 added, 1 removed, 1 changed" in out
    assert read_file(str(manifest)).bucket == name
    # trouble is 2, in one line
    res = manifest_cli(moto_server.endpoint_url, "diff", str(tmp_path / "missing"))
    assert res.returncode == 2 and one_line_error(res.stderr) is not None, res.describe()


def test_manifest_build_errors_are_one_line(make_bucket, moto_server, tmp_path):
    name = dataset_bucket(make_bucket, "manifest-errors")
    cases = [(["build", "s3://no-such-bucket-here/x", "-o", str(tmp_path / "m")], "does not exist"),
             (["build", f"s3://{name}/{PREFIX}", "-o", str(tmp_path / "no-dir" / "m")], "cannot write manifest"),
             (["build", f"s3://{name}/{PREFIX}"], "-o FILE, --upload")]
    for args, culprit in cases:
        res = manifest_cli(moto_server.endpoint_url, *args)
        line = one_line_error(res.stderr)
        assert res.returncode == 1 and line is not None and culprit in line, res.describe()
        assert "Traceback" not in res.stderr


def test_warmup_with_a_manifest_loads_its_files_without_listing(mounter, make_bucket, request_log, moto_server,
                                                                tmp_path):
    name = dataset_bucket(make_bucket, "manifest-warmup")
    manifest = build(moto_server.endpoint_url, name, tmp_path / "ds.manifest")
    m = mounter.mount(name, "--manifest", str(manifest), "--metrics-addr", "none", prefix=PREFIX)
    mark = request_log.mark()
    res = run_cachefs(["warmup", str(m.path), "train/c1", "--manifest", str(manifest), "--in-daemon"], m.env)
    assert res.returncode == 0 and "8 files" in res.stdout and "loaded 8 files" in res.stdout, res.describe()
    seen = request_log.since(mark, name)
    assert not [r for r in seen if r.is_list or r.method == "HEAD"], summarize(seen)
    gets = m.stats()["s3_get"]
    assert gets >= 8
    for i in range(8):
        assert read_all(m / f"train/c1/{i:02d}.jpg") == DATASET[f"train/c1/{i:02d}.jpg"]
    assert m.stats()["s3_get"] == gets, "a read after warmup went to S3"
    other = tmp_path / "other.manifest"
    other.write_bytes(dumps(Manifest.from_entries(name, "elsewhere/", [])))
    res = run_cachefs(["warmup", str(m.path), "--manifest", str(other)], m.env)
    line = one_line_error(res.stderr)
    assert res.returncode == 1 and line is not None and "elsewhere/" in line, res.describe()
