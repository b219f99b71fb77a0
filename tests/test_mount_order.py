"""Order-aware prefetch on a real mount (reader/order.py): the daemon fetches in the order it was given,
within its window, skips what is cached, replaces an order with the next, cancels what the reader
overtook, shares a fetch with a read of the same file, and a wrong or empty order changes nothing
a reader sees. Requests are counted in moto's log (request_log) and through the fault proxy."""
from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from urllib.parse import parse_qs, urlsplit

from mount_helpers import CACHEFS_SRC, PYTHON, REGION, cachefs_env, object_bytes, read_all, run_cachefs, wait_until

from cachefs.devtools.faultrules import Fault
from cachefs.hints import send_order
from cachefs.reader.orderlist import TRAIL_S

DIRS = ("n01", "n02", "n03", "n04")
FILES = [f"train/{d}/img-{i:02d}.jpg" for d in DIRS for i in range(10)]     # 40 small files, 4 directories
OBJECTS = {key: object_bytes(key, 2000 + i) for i, key in enumerate(FILES)}
# No whole-file or directory prefetch on open: what is fetched is the order's doing alone; and no
# duplicate of a slow GET (hedging): the tests count GETs one per file.
QUIET = ("--metrics-addr", "none", "--prefetch-small-files", "0", "--hedging", "false")


def shuffled(seed: int) -> list[str]:
    order = list(FILES)
    random.Random(seed).shuffle(order)
    return order


def object_gets(request_log, mark, bucket) -> list[str]:
    return [r.key for r in request_log.since(mark, bucket) if r.is_object_get]


def settled(m, name: str, timeout_s: float = 20.0, quiet_s: float = 0.5) -> int:
    """The counter once it stopped moving for quiet_s."""
    last, since = m.stats()[name], time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = m.stats()[name]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


def list_directories(m) -> None:
    """Every name known: starts are then strictly in order (a file whose directory is still being
    listed holds back no file of a listed one: docs/CACHING.md)."""
    for d in DIRS:
        assert len(os.listdir(m.path / "train" / d)) == 10


def test_gets_start_in_the_order_given(mounter, make_bucket, request_log):
    bucket = make_bucket("order-honoured", OBJECTS)
    m = mounter.mount(bucket, *QUIET, "--prefetch-concurrency", "1")
    order = shuffled(1)
    list_directories(m)
    mark = request_log.mark()
    answer = send_order(str(m.path), [str(m.path / p) for p in order[:20]] + order[20:], epoch=1)
    assert answer["received"] == 40 and answer["stream"] == "default", answer
    assert wait_until(lambda: m.stats()["order_prefetched_files"] == 40, 30), m.stats()
    assert object_gets(request_log, mark, bucket) == order       # one GET each, in the order given
    s = m.stats()
    assert s["order_paths_received"] == 40 and s["orders_received"] == 1
    assert s["order_prefetched_bytes"] == sum(len(OBJECTS[k]) for k in order)
    mark = request_log.mark()
    for key in order:                                             # the reads: all from the cache
        assert read_all(m / key) == OBJECTS[key]
    assert object_gets(request_log, mark, bucket) == []
    assert m.stats()["order_opens_matched"] == 40


def test_files_beyond_the_window_wait_for_the_reader(mounter, make_bucket, request_log):
    bucket = make_bucket("order-window", OBJECTS)
    # 2000-2039 bytes a file: five fit in 10 KiB, six do not.
    m = mounter.mount(bucket, *QUIET, "--prefetch-window", "10KiB", "--prefetch-concurrency", "4")
    order = shuffled(2)
    mark = request_log.mark()
    send_order(str(m.path), order)
    assert settled(m, "order_prefetched_files") == 5
    assert object_gets(request_log, mark, bucket) == order[:5] or sorted(
        object_gets(request_log, mark, bucket)) == sorted(order[:5])
    assert m.stats()["order_ahead_bytes"] == sum(len(OBJECTS[k]) for k in order[:5])
    # The reader takes two: the window moves on by two files, no further.
    for key in order[:2]:
        assert read_all(m / key) == OBJECTS[key]
    assert settled(m, "order_prefetched_files") == 7
    assert sorted(object_gets(request_log, mark, bucket)) == sorted(order[:7])


def test_a_directory_being_listed_holds_back_no_other_and_keeps_its_room(mounter, make_bucket, request_log,
                                                                          fault_proxy):
    """The first file's directory lists slowly: the next files, of directories already listed, are
    fetched meanwhile, but only as many as leave the window room for the first (docs/CACHING.md
    "Order-aware prefetch"); the first follows once its listing is in."""
    bucket = make_bucket("order-listing", OBJECTS)
    # 2000-2039 bytes a file: five fit in 10 KiB, six do not.
    m = mounter.mount(bucket, *QUIET, "--prefetch-window", "10KiB", "--prefetch-concurrency", "8",
                      endpoint_url=fault_proxy.url)
    others = [f for f in shuffled(4) if not f.startswith("train/n01/")]
    head = "train/n01/img-03.jpg"
    order = [head] + others + [f for f in FILES if f.startswith("train/n01/") and f != head]
    for d in DIRS[1:]:
        assert len(os.listdir(m.path / "train" / d)) == 10
    # n01 is listed with its group (the flat LIST of `train/n0`, docs/CACHING.md): that one is slow.
    fault_proxy.add(Fault("delay", ops="list", key=r"^train/n0", seconds=2.0))
    mark = request_log.mark()
    send_order(str(m.path), order)
    assert wait_until(lambda: m.stats()["order_prefetched_files"] >= 4, 10), m.stats()
    time.sleep(0.5)                                               # still listing n01: nothing more
    assert sorted(object_gets(request_log, mark, bucket)) == sorted(order[1:5])
    assert wait_until(lambda: m.stats()["order_prefetched_files"] == 5, 10), m.stats()   # n01 listed: the first
    assert settled(m, "order_prefetched_files") == 5              # and no more: the window is full
    got = object_gets(request_log, mark, bucket)
    assert sorted(got) == sorted(order[:5]) and got[-1] == order[0], got


def test_many_small_directories_are_listed_a_group_at_a_time(mounter, make_bucket, request_log):
    """An order over 30 directories of 3 files: their names come from one flat LIST of the prefix
    they share, not a LIST each; the directories on the way are listed once, in the background,
    holding back no fetch; each directory then holds exactly what its own LIST shows, and listing
    it asks S3 nothing (docs/CACHING.md "Order-aware prefetch")."""
    files = [f"ds/train/c{d:02d}/{i}.jpg" for d in range(30) for i in range(3)]
    objects = {key: object_bytes(key, 1000 + i) for i, key in enumerate(files)}
    objects["ds/train/c07/"] = b""                                    # a directory marker
    objects["ds/train/c11/deeper/x.jpg"] = b"x"                       # a subdirectory not in the order
    objects["ds/train"] = b"a file of the name of a directory"       # the directory wins (SEMANTICS.md)
    bucket = make_bucket("order-groups", objects)
    m = mounter.mount(bucket, *QUIET)
    order = list(files)
    random.Random(9).shuffle(order)
    mark = request_log.mark()
    send_order(str(m.path), order)
    assert wait_until(lambda: m.stats()["order_prefetched_files"] == 90, 30), m.stats()
    lists = [parse_qs(urlsplit(r.target).query) for r in request_log.since(mark, bucket) if r.is_list]
    flat = [q.get("prefix") for q in lists if "delimiter" not in q]
    assert flat == [["ds/train/c"]], lists                             # one flat LIST (91 keys, a page)
    way = sorted(q.get("prefix", [""])[0] for q in lists if "delimiter" in q)
    assert way == ["", "ds/", "ds/train/"], lists                      # and the way there, once each
    assert m.stats()["order_group_listings"] == 1
    mark = request_log.mark()
    for d in range(30):
        names = sorted(os.listdir(m.path / f"ds/train/c{d:02d}"))
        assert names == sorted([f"{i}.jpg" for i in range(3)] + (["deeper"] if d == 11 else [])), (d, names)
    assert os.listdir(m.path / "ds/train/c11/deeper") == ["x.jpg"]
    assert os.path.isdir(m.path / "ds/train") and os.listdir(m.path / "ds") == ["train"]
    asked = [parse_qs(urlsplit(r.target).query).get("prefix", [""])[0]
             for r in request_log.since(mark, bucket) if r.is_list]
    assert asked == [], asked                                        # known already; deeper/ was read whole
    for key in order:
        assert read_all(m / key) == objects[key]


def test_the_first_open_waits_for_no_listing_of_the_way(mounter, make_bucket, fault_proxy):
    """The delimited LISTs of the directories on the way to an order's group land late (3 s here):
    the reader's first open is answered once the group's flat LIST has shown those directories,
    without waiting for them or asking S3 for the names one by one (docs/CACHING.md "Order-aware
    prefetch"). Before, each directory's lookup waited for its parent's listing."""
    files = [f"ds/train/c{d:02d}/{i}.jpg" for d in range(30) for i in range(3)]
    objects = {key: object_bytes(key, 1000 + i) for i, key in enumerate(files)}
    bucket = make_bucket("order-way", objects)
    m = mounter.mount(bucket, *QUIET, endpoint_url=fault_proxy.url)
    fault_proxy.add(Fault("delay", ops="list", key=r"^(ds/(train/)?)?$", seconds=3.0))
    fault_proxy.add(Fault("delay", ops="head", key=r"^ds(/train)?$", seconds=3.0))
    order = list(files)
    random.Random(3).shuffle(order)
    t0 = time.monotonic()
    send_order(str(m.path), order)
    assert read_all(m / order[0]) == objects[order[0]]
    took = time.monotonic() - t0
    assert took < 2.0, took                                       # the delayed LISTs land after 3 s
    asked = [r.key for r in fault_proxy.seen("head", since=t0) if r.key in ("ds", "ds/train")]
    assert asked == [], asked                                     # no name asked for one by one
    assert read_all(m / order[1]) == objects[order[1]]
    assert sorted(os.listdir(m.path / "ds" / "train")) == [f"c{d:02d}" for d in range(30)]


def test_cached_files_are_skipped(mounter, make_bucket, request_log):
    bucket = make_bucket("order-cached", OBJECTS)
    m = mounter.mount(bucket, *QUIET)
    order = shuffled(3)
    for key in order[10:20]:
        assert read_all(m / key) == OBJECTS[key]
    mark = request_log.mark()
    send_order(str(m.path), order)
    assert wait_until(lambda: m.stats()["order_prefetched_files"] == 30, 30), m.stats()
    assert settled(m, "order_skipped_cached") == 10
    got = object_gets(request_log, mark, bucket)
    assert sorted(got) == sorted(order[:10] + order[20:]), got


def test_a_second_order_replaces_the_first(mounter, make_bucket, request_log, fault_proxy):
    bucket = make_bucket("order-replace", OBJECTS)
    m = mounter.mount(bucket, *QUIET, "--prefetch-concurrency", "1", endpoint_url=fault_proxy.url)
    first, second = FILES[:20], FILES[20:30]
    fault_proxy.add(Fault("delay", ops="get", key=r"img-", seconds=0.5))
    mark = request_log.mark()
    send_order(str(m.path), first, epoch=1)
    assert wait_until(lambda: fault_proxy.seen("get"), 10)
    send_order(str(m.path), second, epoch=2)
    assert send_order(str(m.path), first, epoch=1).get("ignored"), "a late order of an older epoch replaced it"
    assert wait_until(lambda: m.stats()["order_prefetched_files"] >= 10, 30), m.stats()
    fault_proxy.clear()
    time.sleep(1.0)
    got = object_gets(request_log, mark, bucket)
    assert set(second) <= set(got)
    assert len(set(got) & set(first)) <= 2, got               # the first order's fetch in flight, at most
    assert m.stats()["orders_received"] == 2


def test_a_read_joins_the_prefetch_of_its_file(mounter, make_bucket, request_log, fault_proxy):
    bucket = make_bucket("order-join", OBJECTS)
    m = mounter.mount(bucket, *QUIET, endpoint_url=fault_proxy.url)
    key = FILES[7]
    m.stats()                                   # the root listed: only the file's GET is slow
    fault_proxy.add(Fault("delay", ops="get", key=r"img-07", seconds=1.5))
    mark = request_log.mark()
    send_order(str(m.path), [key])
    assert wait_until(lambda: fault_proxy.seen("get", key), 10)
    before = m.stats()["fetch_shared"]
    assert read_all(m / key) == OBJECTS[key]                 # while its prefetch is in flight
    assert m.stats()["fetch_shared"] > before
    gets = object_gets(request_log, mark, bucket)
    assert gets.count(key) == 1, gets


def test_prefetch_the_reader_overtook_is_cancelled(mounter, make_bucket, fault_proxy):
    bucket = make_bucket("order-overtaken", OBJECTS)
    m = mounter.mount(bucket, *QUIET, "--prefetch-concurrency", "2", endpoint_url=fault_proxy.url)
    # The first two files' GETs hang: the prefetch's two slots are taken by them.
    fault_proxy.add(Fault("delay", ops="get", key=r"n01/img-0[01]", seconds=10.0, count=2))
    send_order(str(m.path), FILES)
    assert wait_until(lambda: len(fault_proxy.seen("get")) >= 2, 10)
    # The reader starts at the end and stays there for TRAIL_S: the first files are behind it, their
    # GETs are dropped.
    assert read_all(m / FILES[-1]) == OBJECTS[FILES[-1]]
    time.sleep(TRAIL_S + 0.2)
    assert m.stats()["order_cancelled_overtaken"] == 0       # one open far ahead is not believed at once
    assert read_all(m / FILES[-2]) == OBJECTS[FILES[-2]]
    assert wait_until(lambda: m.stats()["order_cancelled_overtaken"] == 2, 10), m.stats()
    for key in FILES[:2]:                                     # and a later read still gets them
        assert read_all(m / key) == OBJECTS[key]


def test_wrong_and_empty_orders_leave_reads_as_they_were(mounter, make_bucket, request_log):
    bucket = make_bucket("order-wrong", OBJECTS)
    m = mounter.mount(bucket, "--metrics-addr", "none")       # directory prefetch on, as by default
    answer = send_order(str(m.path), [f"nowhere/{i}.jpg" for i in range(30)] + ["../escape"])
    assert answer["received"] == 31
    assert wait_until(lambda: m.stats()["order_not_found"] == 31, 20), m.stats()
    send_order(str(m.path), [], stream="other")
    # Two opens in a directory: its other files come by the directory prefetch, as without an order.
    for key in FILES[:2]:
        assert read_all(m / key) == OBJECTS[key]
    assert wait_until(lambda: m.stats()["dir_prefetches"] >= 1, 10), m.stats()
    for key in FILES:
        assert read_all(m / key) == OBJECTS[key]
    assert m.stats()["order_prefetched_files"] == 0


def test_cli_prefetch_order_from_stdin(mounter, make_bucket, request_log):
    bucket = make_bucket("order-cli", OBJECTS)
    m = mounter.mount(bucket, *QUIET, "--prefetch-concurrency", "1")
    order = shuffled(4)[:12]
    list_directories(m)
    mark = request_log.mark()
    proc = subprocess.run([PYTHON, "-m", "cachefs", "prefetch", str(m.path), "--order", "-", "--epoch", "3"],
                          input="\n".join(order) + "\n", cwd=CACHEFS_SRC, env=m.env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "order of 12 paths" in proc.stdout, proc.stdout
    assert wait_until(lambda: m.stats()["order_prefetched_files"] == 12, 30), m.stats()
    assert object_gets(request_log, mark, bucket) == order
    bad = subprocess.run([PYTHON, "-m", "cachefs", "prefetch", str(m.cache_dir), "--order", "-"], input="x\n",
                         cwd=CACHEFS_SRC, env=m.env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "not a cachefs mount" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_an_order_larger_than_a_request_line_streams_in(mounter, make_bucket):
    """2 MiB of paths (the request-line limit is 1 MiB): taken as they stream, the missing ones counted."""
    bucket = make_bucket("order-large", OBJECTS)
    m = mounter.mount(bucket, *QUIET)
    missing = [f"train/n01/missing-{i:06d}-{'x' * 40}.jpg" for i in range(30_000)]
    answer = send_order(str(m.path), missing + FILES)
    assert answer["received"] == 30_040, answer
    assert wait_until(lambda: m.stats()["order_prefetched_files"] == 40, 60), m.stats()
    assert m.stats()["order_not_found"] == 30_000


def test_directory_prefetch_stands_down_for_files_of_the_order(mounter, make_bucket, request_log):
    bucket = make_bucket("order-standdown", OBJECTS)
    m = mounter.mount(bucket, "--metrics-addr", "none", "--prefetch-window", "10KiB")   # dir prefetch on
    order = shuffled(5)
    send_order(str(m.path), order)
    assert settled(m, "order_prefetched_files") == 5
    n01 = [k for k in order if "/n01/" in k]
    for key in n01[:3]:                        # would start n01's directory prefetch without an order
        assert read_all(m / key) == OBJECTS[key]
    time.sleep(1.0)
    s = m.stats()
    assert s["dir_prefetches"] == 0 and s["dataset_walks"] == 0, s
    assert s["order_opens_matched"] == 3


def test_the_next_order_does_not_cancel_a_fetch_a_reader_waits_for(mounter, make_bucket, request_log, fault_proxy):
    bucket = make_bucket("order-join-replace", OBJECTS)
    m = mounter.mount(bucket, *QUIET, endpoint_url=fault_proxy.url)
    key = FILES[3]
    m.stats()
    fault_proxy.add(Fault("delay", ops="get", key=r"n01/img-03", seconds=2.0))
    mark = request_log.mark()
    send_order(str(m.path), [key], epoch=1)
    assert wait_until(lambda: fault_proxy.seen("get", key), 10)
    before = m.stats()["fetch_shared"]
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_all(m / key)))
    reader.start()
    assert wait_until(lambda: m.stats()["fetch_shared"] > before, 10)
    send_order(str(m.path), FILES[30:32], epoch=2)            # replaces the order whose fetch it waits for
    reader.join(20)
    assert got == [OBJECTS[key]]
    assert object_gets(request_log, mark, bucket).count(key) == 1


def test_an_order_over_a_manifest_asks_no_list_or_head(mounter, make_bucket, request_log, moto_server, tmp_path):
    """The companion: with a manifest, the order's lookups are answered locally; only the GETs go to S3."""
    bucket = make_bucket("order-manifest", OBJECTS)
    manifest = tmp_path / "ds.manifest"
    res = run_cachefs(["manifest", "build", f"s3://{bucket}", "-o", str(manifest), "--endpoint-url",
                       moto_server.endpoint_url, "--region", REGION, "--addressing-style", "path"], cachefs_env())
    assert res.returncode == 0, res.describe()
    m = mounter.mount(bucket, *QUIET, "--manifest", str(manifest), "--prefetch-concurrency", "1")
    order = shuffled(6)
    mark = request_log.mark()
    send_order(str(m.path), order)
    assert wait_until(lambda: m.stats()["order_prefetched_files"] == 40, 30), m.stats()
    seen = request_log.since(mark, bucket)
    assert [r for r in seen if r.is_list or r.method == "HEAD"] == []
    assert [r.key for r in seen if r.is_object_get] == order
