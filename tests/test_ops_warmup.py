"""`cachefs warmup` on a real mount: it really loads (later reads issue no GET), resumes, and refuses
to load more than the cache can hold."""
from __future__ import annotations

import os

from mount_helpers import KiB, MiB, object_bytes, one_line_error, read_all, run_cachefs

OBJECTS = {f"train/shard-{i:02d}.bin": object_bytes(f"s{i}", 300 * KiB + i) for i in range(6)}
OBJECTS.update({f"train/sub/small-{i}.txt": f"sample {i}\n".encode() for i in range(4)})
OBJECTS["val/v.bin"] = object_bytes("v", 200 * KiB)


def warmup(m, *args):
    return run_cachefs(["warmup", str(m.path), *args], m.env)


def test_warmup_loads_then_reads_issue_no_get(mounter, make_bucket):
    m = mounter.mount(make_bucket("warmup", OBJECTS), "--metrics-addr", "none")
    res = warmup(m, "train", "-j", "3")
    assert res.returncode == 0, res.describe()
    assert "10 files" in res.stdout and "0 already cached" in res.stdout, res.stdout
    assert "loaded 10 files" in res.stdout, res.stdout
    assert "warmup: " in res.stderr, res.stderr          # plain progress lines: stderr is not a TTY
    gets = m.stats()["s3_get"]
    assert gets >= 6 * 2                                   # 300 KiB shards span 2 blocks of 256 KiB
    for key, data in OBJECTS.items():
        if key.startswith("train/"):
            assert read_all(m / key) == data
    assert m.stats()["s3_get"] == gets, "a read after warmup went to S3"

    again = warmup(m, "train")                             # resumable: nothing left to do
    assert again.returncode == 0 and "10 already cached" in again.stdout and "to load: 0 files" in again.stdout
    assert m.stats()["s3_get"] == gets

    # A file list adds to the paths; what is cached is skipped, the rest is loaded.
    listing = m.cache_dir.parent / "list.txt"
    listing.write_text("# validation\nval/v.bin\ntrain/shard-00.bin\n")
    res = warmup(m, "--file-list", str(listing))
    assert res.returncode == 0 and "1 already cached" in res.stdout and "to load: 1 files" in res.stdout, res.stdout
    assert read_all(m / "val/v.bin") == OBJECTS["val/v.bin"]
    assert m.stats()["s3_get"] == gets + 1


def test_metadata_only_lists_without_data(mounter, make_bucket):
    m = mounter.mount(make_bucket("warmup-meta", OBJECTS), "--metrics-addr", "none")
    res = warmup(m, "--metadata-only")
    assert res.returncode == 0 and "11 files" in res.stdout, res.describe()
    s = m.stats()
    assert s["s3_get"] == 0 and s["s3_list"] >= 4
    for dirpath, _, files in os.walk(m.path):              # now answered from the cached listings
        for f in files:
            os.stat(os.path.join(dirpath, f))
    assert m.stats()["s3_list"] == s["s3_list"] and m.stats()["s3_head"] == s["s3_head"]


def test_refuses_more_than_the_cache_holds(mounter, make_bucket):
    big = {f"big/{i}.bin": object_bytes(f"b{i}", 512 * KiB) for i in range(4)}   # 2 MiB
    m = mounter.mount(make_bucket("warmup-full", big), "--metrics-addr", "none",
                      "--cache", "mem:1MiB", "--cache", f"ssd:{mounter.fresh_dir('ssd')}:1MiB")
    res = warmup(m, "big")
    assert res.returncode == 1 and one_line_error(res.stderr), res.describe()
    assert "does not fit" in res.stderr and "--force" in res.stderr
    assert m.stats()["s3_get"] == 0, "refused, yet loaded"

    forced = warmup(m, "big", "--force")
    assert forced.returncode == 0, forced.describe()
    assert "warning: loading" in forced.stderr
    # Scan-resistant: the full tier stopped admitting; nothing loaded was evicted.
    s = m.stats()
    assert s["cache_evictions"] == 0 and s["cache_not_admitted"] > 0


def test_not_a_mount_is_one_line(mounter, tmp_path):
    res = run_cachefs(["warmup", str(tmp_path)], mounter.env())
    assert res.returncode == 1 and one_line_error(res.stderr) and "not a cachefs mount" in res.stderr


def test_in_daemon_warmup_over_the_control_socket(mounter, make_bucket):
    m = mounter.mount(make_bucket("warmup-daemon", OBJECTS), "--metrics-addr", "none")
    res = warmup(m, "train", "val/v.bin", "--in-daemon", "-j", "2")
    assert res.returncode == 0 and "loaded 11 files" in res.stdout, res.describe()
    gets = m.stats()["s3_get"]
    assert gets >= 6 * 2 + 1
    for key, data in OBJECTS.items():
        assert read_all(m / key) == data
    assert m.stats()["s3_get"] == gets, "a read after warmup went to S3"


def test_progress_bar_on_a_terminal():
    import io

    from cachefs.cli.warmup import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    p = Progress(2, 4 * MiB, stream=out)
    p.add(2 * MiB, file_done=True)
    p.finish()
    text = out.getvalue()
    assert text.startswith("\r[") and "1/2 files" in text and "2.0 MiB of 4.0 MiB" in text and "ETA" in text
    assert "/s" in text and text.endswith("\n")
