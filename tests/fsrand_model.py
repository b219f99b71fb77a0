"""The model-based random test's machinery (tests/test_fsrand.py): the operations, the one table of
documented differences between a cachefs mount and a local directory, the worker processes that
run each operation on both, and the tree comparisons.

Each operation runs in one of N worker processes (`python tests/fsrand_model.py`, one per worker,
kept for the whole test), first on the mount and then on the reference directory, and the worker
answers with both outcomes: ("ok", value) or ("err", "ENOENT"). File handles live in the worker
that opened them (a handle is a pair of descriptors, one per side), so handles of several processes
are open on the same files at once. Steps run one at a time, in the order the state machine chose:
a run is replayable, and Hypothesis can shrink it.

To change what is exercised or tolerated, edit IO_OPS / NAME_OPS / META_OPS and DIFFERENCES / ATTRIBUTES: nothing
else in the test knows which operations exist or which answers may differ.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import pickle
import random
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MOUNT, REF = "mnt", "ref"
SIDES = (MOUNT, REF)

# ---------------------------------------------------------------- what the steps are made of

# A small fixed namespace: any name can become a file or a directory, so that EEXIST, ENOENT,
# ENOTDIR, EISDIR, ENOTEMPTY and rename over files and directories all come up often.
PATHS = ["a", "b", "d1", "d2", "d1/a", "d1/b", "d1/d3", "d1/d3/a", "d2/a"]
# top-level files more often
PATH_CHOICES = ["a", "b", "d1", "a", "d1/a", "b", "d2", "d1/b", "d1/d3", "d1/d3/a", "d2/a"]
# Offsets and sizes around the mount's block size (256 KiB in the tests), 1 MiB (the small-file
# threshold the test mounts with) and 5 MiB (the multipart part size), so that files cross into
# multipart uploads; sparse holes are cheap on both sides.
OFFSETS = [0, 1, 4095, 4096, 65537, 262144, 300000, 1048576, 5242881]
LENGTHS = [0, 1, 100, 4096, 70000, 262145]
SIZES = [0, 1, 4096, 100000, 262144, 1048577, 5300000, 6000000]
MODES = [0o600, 0o644, 0o640, 0o755, 0o400]
# utimens values far in the past: a reference file whose mtime is before 2020 was set by utimens
# and not changed since (any change sets it to now), which is when the mount must show it exactly.
UTIMES = [(1_000_000_000, 1_000_000_000), (1_100_000_000, 1_200_000_000), (1_300_000_000, 1_500_000_000)]
UTIME_PINNED_BEFORE = 1_577_836_800   # 2020-01-01
OPEN_FLAGS = {
    "r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR,
    "rw-trunc": os.O_RDWR | os.O_TRUNC, "w-append": os.O_WRONLY | os.O_APPEND,
    "creat": os.O_RDWR | os.O_CREAT, "creat-excl": os.O_RDWR | os.O_CREAT | os.O_EXCL,
    "creat-trunc": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
}
FALLOC_MODES = {"default": 0, "keep-size": 0x01, "punch-hole": 0x01 | 0x02, "zero-range": 0x10}
# Relative targets that stay inside the tree wherever the link is (the mount and the reference
# directory have the same parent: a target leaving the tree would be one file for both).
SYMLINK_TARGETS = ["a", "d1", "d1/a", "b", "missing/x"]
OWNERS = [(0, 0), (0, 1000), (1000, 1000)]   # the mount's own (root, as the tests run) and others
OTHER_UID = 1000

# Operations on an open handle, each as often as it appears here (tests/test_fsrand.py, `io`).
IO_OPS = ["write"] * 6 + ["read"] * 3 + ["ftruncate", "fallocate", "copy_file_range", "mmap_write", "mmap_write",
                                          "fsync", "close"]
NAME_OPS = ["open"] * 2 + ["truncate", "rename", "rename", "unlink", "mkdir", "rmdir"]
META_OPS = ["chmod", "chown", "utimens", "stat", "stat", "listdir", "symlink", "readlink", "link"]

# Every operation the worker below implements is in one of these three lists: remove a name from
# its list to stop issuing it, repeat it to issue it more often.


# ---------------------------------------------------------------- the one table of differences

@dataclass(frozen=True)
class Difference:
    """The mount may answer `mount_errno` to `op` (when `when(args)` holds) where the reference
    directory does it. Then the reference does not do it either (the step is skipped there), so
    the two stay the same. `source` is the line of docs/SEMANTICS.md that says so; an entry whose
    `source` starts with "UNDOCUMENTED" is a defect this test found, tolerated here so the random
    test keeps looking for others, and encoded as a strict xfail regression test (`regression`)."""
    name: str
    op: str
    mount_errno: str
    source: str
    when: object = None          # callable(args: dict) -> bool, None: always
    regression: str = ""

    def applies(self, op: str, args: dict, mount_outcome) -> bool:
        return (op == self.op and mount_outcome == ("err", self.mount_errno)
                and (self.when is None or self.when(args)))


DIFFERENCES: list[Difference] = [
    # Before issue 15 item 5 (merged 2026-12-06) chown to another owner and symlink were EPERM here;
    # the mount now does both (SEMANTICS.md, Mapping and "Attributes in S3"), so the entries went.
    Difference("hard link", "link", "EPERM",
               "SEMANTICS.md, Operations: '| link, mknod | `EPERM`, what POSIX gives where a filesystem cannot hold "
               "them: S3 cannot make two names one object (hard links) ...'"),
    Difference("fallocate modes other than 0", "fallocate", "ENOTSUP",     # = EOPNOTSUPP on Linux
               "SEMANTICS.md, Operations: '| fallocate | not supported: pyfuse3 has no FALLOCATE handler, so the "
               "kernel answers `EOPNOTSUPP` for every mode ...' (found by this test)",
               when=lambda a: a["mode"] != "default",
               regression="test_fsrand.py::test_regression_fallocate_modes_documented_or_supported"),
    Difference("posix_fallocate on an O_APPEND handle", "fallocate", "EBADF",
               "SEMANTICS.md, Operations: '... glibc's `posix_fallocate` then writes the range itself, which "
               "works, except on a descriptor opened `O_APPEND` (`EBADF`, glibc's rule)' (found by fuzz seed "
               "822279060)",
               when=lambda a: a["mode"] == "default",
               regression="test_fsrand.py::test_regression_fallocate_modes_documented_or_supported"),
]


def expected_difference(op: str, args: dict, mount_outcome) -> Difference | None:
    for d in DIFFERENCES:
        if d.applies(op, args, mount_outcome):
            return d
    return None


# What a comparison of two trees checks, attribute by attribute, in each context:
#   "step"   - the mount while it runs (also after a clean remount with the same cache directory)
#   "kill9"  - the mount after `kill -9` of its daemon and a remount with the same cache directory
#   "fresh"  - a new mount of the bucket with an EMPTY cache directory (and --metadata-head-all, so
#              that every listed object's metadata is read: SEMANTICS.md, "Attributes in S3",
#              Reading), after `cachefs flush`
# Rules: "ref" equal to the reference; "skip" not compared; "default" the mount's --file-mode /
# --dir-mode; "mtime" see check_mtime (exact, to the second, for a utimens'd entry, else between the
# reference's mtime and now). Each with its SEMANTICS.md source. Until item 5, modes were "default"
# and owners the mount's on a fresh cache directory, and no directory time was compared.
ATTRIBUTES: dict[str, tuple[dict[str, str], str]] = {
    "type": ({"step": "ref", "kill9": "ref", "fresh": "ref"},
             "SEMANTICS.md, Mapping (and a symlink: 'an object whose body is the target and whose "
             "`x-amz-meta-mode` has `S_IFLNK`')"),
    "size": ({"step": "ref", "kill9": "ref", "fresh": "ref"},
             "SEMANTICS.md, Mapping: 'File size is the object's size'"),
    "bytes": ({"step": "ref", "kill9": "ref", "fresh": "ref"},
              "SEMANTICS.md, Writes (read-your-writes) and Crash safety ('A write acknowledged but not fsynced "
              "survives a daemon crash too')"),
    "file_mode": ({"step": "ref", "kill9": "ref", "fresh": "ref"},
                  "SEMANTICS.md, Attributes in S3: 'Every upload ... carries the four headers with the attributes the "
                  "file shows'; a chmod of an uploaded file is a CopyObject onto itself"),
    "dir_mode": ({"step": "ref", "kill9": "ref", "fresh": "ref"},
                 "SEMANTICS.md, Attributes in S3: 'Directories keep mode and owner on their `dir/` marker' (HEADed "
                 "when the directory is listed: the fresh snapshot lists every directory first)"),
    "owner": ({"step": "ref", "kill9": "ref", "fresh": "ref"},
              "SEMANTICS.md, Mapping: 'Ownership and permissions: ... what was set through this mount (LMDB), the "
              "object's `x-amz-meta-*`, and the mount's defaults'"),
    "file_mtime": ({"step": "mtime", "kill9": "mtime", "fresh": "mtime"},
                   "SEMANTICS.md, Mapping: '`st_mtime` is its `x-amz-meta-mtime` when cachefs knows it ..., else its "
                   "`LastModified`, or the time of the last write while the file is staged'; 'A file's `utimens` "
                   "mtime holds until the file is next changed'"),
    "dir_mtime": ({"step": "mtime", "kill9": "mtime", "fresh": "skip"},
                  "SEMANTICS.md, Mapping: 'Directories carry the mount time until an entry is added to or removed "
                  "from them through the mount ..., which sets their mtime'; Attributes in S3: 'A directory's mtime "
                  "is not written to S3'"),
    "atime_ctime": ({"step": "skip", "kill9": "skip", "fresh": "skip"},
                    "SEMANTICS.md, Mapping: '`st_ctime` is the mtime, or the time of the last chmod/chown/create if "
                    "later' (not compared: Linux sets ctime on rename and link count changes too); atime: none"),
    "file_nlink": ({"step": "ref", "kill9": "ref", "fresh": "ref"},
                   "SEMANTICS.md, Mapping: '`st_nlink` is 1 for files and links'"),
    "dir_nlink": ({"step": "ref", "kill9": "ref", "fresh": "ref"},
                  "SEMANTICS.md, Mapping: '2 + the number of subdirectories for directories, as far as known: after "
                  "the directory was listed, or for directories made through the mount'"),
}
DEFAULT_FILE_MODE, DEFAULT_DIR_MODE = 0o644, 0o755

# SEMANTICS.md, Mapping: 'st_mtime ... the time of the last write while the file is staged': a
# change that changes nothing (O_TRUNC of an empty file, ftruncate to the same size, fallocate or
# copy_file_range of nothing) is no write, and the mount keeps the mtime, where Linux's local file
# systems set it to now. The reference gets its old mtime back after such a no-op (Worker.run).
NO_OP_MTIME = True
NO_OP_MTIME_OPS = {"create", "open", "truncate", "ftruncate", "fallocate", "copy_file_range", "mmap_write", "write"}

# After kill -9: SEMANTICS.md, Limits: 'If the daemon dies while an upload started before an
# `unlink` is in flight, the object can reappear in S3.' A path removed before the kill may come
# back; the test then removes it again through the mount and says so.
RESURRECTION_AFTER_KILL9 = True


# ---------------------------------------------------------------- the worker (a process of its own)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def data_for(seed: int, length: int) -> bytes:
    return random.Random(seed).randbytes(length)


def _fallocate(fd: int, mode: int, off: int, length: int) -> int:
    if mode == 0:
        os.posix_fallocate(fd, off, length)      # glibc emulates it where the filesystem cannot
        return 0
    if _libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return 0


def _pread_all(fd: int, length: int, off: int) -> bytes:
    out = []
    while length > 0:
        chunk = os.pread(fd, length, off)
        if not chunk:
            break
        out.append(chunk)
        length -= len(chunk)
        off += len(chunk)
    return b"".join(out)


def _attrs(st: os.stat_result) -> dict:
    return {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode), "size": st.st_size,
            "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime, "nlink": st.st_nlink}


class Worker:
    """Runs in its own process: a handle table and the operations on one side at a time."""

    def __init__(self, roots: dict[str, str]):
        self.roots = roots
        self.handles: dict[int, dict[str, int | None]] = {}

    def p(self, side: str, rel: str) -> str:
        return os.path.join(self.roots[side], rel)

    def fd(self, side: str, hid: int) -> int:
        fd = self.handles[hid][side]
        if fd is None:
            raise OSError(errno.EBADF, "no descriptor on this side")
        return fd

    def one(self, side: str, op: str, a: dict):
        p = self.p
        if op in ("create", "open"):
            fd = os.open(p(side, a["path"]), OPEN_FLAGS[a["flags"]], 0o644)
            self.handles.setdefault(a["hid"], {s: None for s in SIDES})[side] = fd
            return a["hid"]
        if op == "write":
            data = data_for(a["seed"], a["length"])
            return os.pwrite(self.fd(side, a["hid"]), data, a["offset"])
        if op == "read":
            data = _pread_all(self.fd(side, a["hid"]), a["length"], a["offset"])
            return data
        if op == "truncate":
            return os.truncate(p(side, a["path"]), a["size"])
        if op == "ftruncate":
            return os.ftruncate(self.fd(side, a["hid"]), a["size"])
        if op == "fallocate":
            return _fallocate(self.fd(side, a["hid"]), FALLOC_MODES[a["mode"]], a["offset"], max(1, a["length"]))
        if op == "copy_file_range":
            src = os.open(p(side, a["src"]), os.O_RDONLY)
            try:
                done, length = 0, a["length"]
                while done < length:
                    n = os.copy_file_range(src, self.fd(side, a["hid"]), length - done, a["src_offset"] + done,
                                           a["offset"] + done)
                    if n == 0:
                        break
                    done += n
                return done
            finally:
                os.close(src)
        if op == "mmap_write":
            fd = self.fd(side, a["hid"])
            size = os.fstat(fd).st_size
            if size == 0:
                return "empty file: not mapped"
            mm = mmap.mmap(fd, size)             # MAP_SHARED, read+write: EACCES unless opened O_RDWR
            try:
                off = a["offset"] % size
                data = data_for(a["seed"], a["length"])[:size - off]
                mm[off:off + len(data)] = data
                mm.flush()
            finally:
                mm.close()
            return len(data)
        if op == "rename":
            return os.rename(p(side, a["src"]), p(side, a["dst"]))
        if op == "unlink":
            return os.unlink(p(side, a["path"]))
        if op == "mkdir":
            return os.mkdir(p(side, a["path"]), 0o755)
        if op == "rmdir":
            return os.rmdir(p(side, a["path"]))
        if op == "chmod":
            return os.chmod(p(side, a["path"]), a["mode"])
        if op == "chown":
            return os.chown(p(side, a["path"]), a["uid"], a["gid"])
        if op == "utimens":
            return os.utime(p(side, a["path"]), ns=(a["atime"] * 10**9, a["mtime"] * 10**9))
        if op == "symlink":
            return os.symlink(a["target"], p(side, a["path"]))
        if op == "readlink":
            return os.readlink(p(side, a["path"]))
        if op == "link":
            return os.link(p(side, a["src"]), p(side, a["dst"]))
        if op == "fsync":
            return os.fsync(self.fd(side, a["hid"]))
        if op == "close":
            if a["hid"] not in self.handles:
                raise OSError(errno.EBADF, "no such handle")
            fd = self.handles[a["hid"]][side]
            self.handles[a["hid"]][side] = None
            if fd is None:
                raise OSError(errno.EBADF, "no descriptor on this side")
            return os.close(fd)
        if op == "stat":
            return _attrs(os.lstat(p(side, a["path"])))
        if op == "listdir":
            return sorted(os.listdir(p(side, a["path"])))
        raise ValueError(f"unknown operation {op!r}")

    def _content(self, side: str, op: str, a: dict):
        """(stat, sha256) of the file a content-changing operation works on, or None."""
        try:
            if "hid" in a and op != "create" and op != "open":
                fd = self.handles.get(a["hid"], {}).get(side)
                if fd is None:
                    return None
                path = f"/proc/self/fd/{fd}"
            else:
                path = self.p(side, a["path"])
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                return None
            with open(path, "rb") as f:
                return st, hashlib.sha256(f.read()).digest(), path
        except OSError:
            return None

    def run(self, op: str, a: dict, sides=SIDES) -> dict[str, tuple]:
        out = {}
        for side in sides:
            # NO_OP_MTIME: on the reference, a change that leaves size and bytes as they were gets its
            # old mtime back (Linux sets it on O_TRUNC / ftruncate / fallocate / copy_file_range even then).
            before = (self._content(side, op, a)
                      if side == REF and op in NO_OP_MTIME_OPS and NO_OP_MTIME else None)
            try:
                out[side] = ("ok", self.one(side, op, a))
            except OSError as e:
                out[side] = ("err", errno.errorcode.get(e.errno, str(e.errno)))
            except ValueError as e:       # mmap of an empty region and the like: the same on both sides
                out[side] = ("err", f"ValueError: {e}")
            if before is not None:
                after = self._content(side, op, a)
                if after is not None and after[0].st_size == before[0].st_size and after[1] == before[1] \
                        and after[0].st_mtime_ns != before[0].st_mtime_ns:
                    os.utime(after[2], ns=(after[0].st_atime_ns, before[0].st_mtime_ns))
        if op == "close" and all(fd is None for fd in self.handles.get(a["hid"], {}).values()):
            self.handles.pop(a["hid"], None)
        return out

    def drop_side(self, side: str) -> None:
        """The daemon died: descriptors on the mount are dead; close them (ENOTCONN is fine)."""
        for h in self.handles.values():
            fd = h.get(side)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                h[side] = None

    def close_all(self) -> None:
        for h in self.handles.values():
            for side in SIDES:
                if h.get(side) is not None:
                    try:
                        os.close(h[side])
                    except OSError:
                        pass
        self.handles.clear()


def worker_main() -> None:
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr          # nothing else may write to the answer pipe
    worker = None
    while True:
        try:
            cmd, arg = pickle.load(inp)
        except EOFError:
            return
        try:
            if cmd == "roots":
                worker = Worker(arg)
                res = None
            elif cmd == "run":
                op, a, sides = arg
                res = worker.run(op, a, sides)
            elif cmd == "run_side":
                res = worker.run(arg[0], arg[1], (arg[2],))
            elif cmd == "drop_side":
                res = worker.drop_side(arg)
            elif cmd == "close_all":
                res = worker.close_all() if worker else None
            else:
                raise ValueError(cmd)
            reply = ("ok", res)
        except Exception as e:  # a bug in the harness, not an outcome: reported as such
            reply = ("bug", f"{type(e).__name__}: {e}")
        pickle.dump(reply, out)
        out.flush()


class Workers:
    """N worker processes, each with its own handles; `run(w, op, args)` -> {side: outcome}."""

    def __init__(self, n: int, timeout_s: float = 120.0):
        self.timeout_s = timeout_s
        self.procs = [subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                      for _ in range(n)]

    def __len__(self) -> int:
        return len(self.procs)

    def call(self, w: int, cmd: str, arg=None):
        proc = self.procs[w]
        pickle.dump((cmd, arg), proc.stdin)
        proc.stdin.flush()
        kind, res = pickle.load(proc.stdout)
        if kind == "bug":
            raise RuntimeError(f"worker {w}: {res}")
        return res

    def set_roots(self, roots: dict[str, str]) -> None:
        for w in range(len(self.procs)):
            self.call(w, "close_all")
            self.call(w, "roots", roots)

    def run(self, w: int, op: str, args: dict, sides=SIDES) -> dict[str, tuple]:
        return self.call(w, "run", (op, args, sides))

    def close(self) -> None:
        for proc in self.procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


# ---------------------------------------------------------------- trees and their comparison

@dataclass
class Entry:
    kind: str            # "file" | "dir" | "symlink" | "other"
    attrs: dict
    digest: str = ""     # sha256 of a file's bytes
    target: str = ""     # a symlink's target


def snapshot(root: Path | str) -> dict[str, Entry]:
    """Every entry under root (lstat, never following links), with the bytes' digest of each file."""
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            a = _attrs(st)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = Entry("dir", a)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = Entry("symlink", a, target=os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    out[rel] = Entry("file", a, hashlib.sha256(f.read()).hexdigest())
            else:
                out[rel] = Entry("other", a)
    return out


def check_mtime(mount_mtime: float, ref_mtime: float, now: float) -> str | None:
    """The 'mtime' rule: a utimens'd file exactly (to the second); another file between the
    reference's mtime (its last change) and now, 2 s of slack each way (the mount changes first;
    an upload later makes it the object's LastModified)."""
    if ref_mtime < UTIME_PINNED_BEFORE:
        return None if int(mount_mtime) == int(ref_mtime) else f"mtime {mount_mtime} != utimens'd {ref_mtime}"
    if ref_mtime - 2 <= mount_mtime <= now + 2:
        return None
    return f"mtime {mount_mtime} not in [{ref_mtime - 2:.0f}, now {now:.0f} + 2]"


def compare_entry(rel: str, m: Entry, r: Entry, context: str, now: float | None = None) -> list[str]:
    now = now or time.time()
    if m.kind != r.kind:
        return [f"{rel}: a {m.kind} on the mount, a {r.kind} in the reference"]
    problems = []

    def rule(attr: str) -> str:
        return ATTRIBUTES[attr][0][context]

    if m.kind == "symlink":
        if m.target != r.target and (m.target or r.target):
            problems.append(f"symlink target {m.target!r} != {r.target!r}")
        mode_rule, mtime_rule, nlink_rule, default_mode = "skip", rule("file_mtime"), rule("file_nlink"), 0
    elif m.kind == "file":
        if rule("size") == "ref" and m.attrs["size"] != r.attrs["size"]:
            problems.append(f"size {m.attrs['size']} != {r.attrs['size']}")
        elif rule("bytes") == "ref" and m.digest != r.digest:
            problems.append("bytes differ")
        mode_rule, mtime_rule, nlink_rule = rule("file_mode"), rule("file_mtime"), rule("file_nlink")
        default_mode = DEFAULT_FILE_MODE
    else:
        mode_rule, mtime_rule, nlink_rule = rule("dir_mode"), rule("dir_mtime"), rule("dir_nlink")
        default_mode = DEFAULT_DIR_MODE
    if mode_rule == "ref" and m.attrs["mode"] != r.attrs["mode"]:
        problems.append(f"mode {m.attrs['mode']:o} != {r.attrs['mode']:o}")
    if mode_rule == "default" and m.attrs["mode"] != default_mode:
        problems.append(f"mode {m.attrs['mode']:o} != the default {default_mode:o}")
    if rule("owner") == "ref" and (m.attrs["uid"], m.attrs["gid"]) != (r.attrs["uid"], r.attrs["gid"]):
        problems.append(f"owner {m.attrs['uid']}:{m.attrs['gid']} != {r.attrs['uid']}:{r.attrs['gid']}")
    if nlink_rule == "ref" and m.attrs["nlink"] != r.attrs["nlink"]:
        problems.append(f"nlink {m.attrs['nlink']} != {r.attrs['nlink']}")
    if mtime_rule == "mtime":
        p = check_mtime(m.attrs["mtime"], r.attrs["mtime"], now)
        if p:
            problems.append(p)
    return [f"{rel}: {p}" for p in problems]


def compare_trees(mount: dict[str, Entry], ref: dict[str, Entry], context: str) -> list[str]:
    now = time.time()
    problems = [f"{rel}: on the mount only ({mount[rel].kind})" for rel in sorted(set(mount) - set(ref))]
    problems += [f"{rel}: in the reference only ({ref[rel].kind})" for rel in sorted(set(ref) - set(mount))]
    for rel in sorted(set(mount) & set(ref)):
        problems += compare_entry(rel, mount[rel], ref[rel], context, now)
    return problems


def compare_s3(objects: dict[str, tuple[bytes, dict]], ref: dict[str, Entry]) -> list[str]:
    """objects: every key in the bucket with its bytes and user metadata. Files must be there byte for
    byte with the reference's mode, owner and (if the object has one: SEMANTICS.md, Attributes in S3,
    an early multipart upload has none) mtime to the second; symlinks as an object holding the target
    with S_IFLNK in its mode; every directory must exist (a marker or a key below), with its mode and
    owner on its marker if it has one; nothing else may be there."""
    files = {rel: e for rel, e in ref.items() if e.kind in ("file", "symlink")}
    dirs = {rel: e for rel, e in ref.items() if e.kind == "dir"}
    problems = []

    def meta_problems(key: str, meta: dict, e: Entry, check_mtime_too: bool) -> list[str]:
        out = []
        if "mode" in meta:
            mode = int(meta["mode"], 8) if meta["mode"].startswith("0") else int(meta["mode"])
            if stat.S_IMODE(mode) != e.attrs["mode"] and e.kind != "symlink":
                out.append(f"S3: {key} x-amz-meta-mode {mode:o}, the reference {e.attrs['mode']:o}")
            if e.kind == "symlink" and not stat.S_ISLNK(mode):
                out.append(f"S3: {key} is a symlink in the reference, its x-amz-meta-mode {mode:o} says otherwise")
        elif e.attrs["mode"] != (DEFAULT_FILE_MODE if e.kind == "file" else DEFAULT_DIR_MODE) or e.kind == "symlink":
            out.append(f"S3: {key} has no x-amz-meta-mode, the reference's mode is {e.attrs['mode']:o}")
        for name, attr in (("uid", "uid"), ("gid", "gid")):
            if name in meta and int(meta[name]) != e.attrs[attr]:
                out.append(f"S3: {key} x-amz-meta-{name} {meta[name]}, the reference {e.attrs[attr]}")
        if check_mtime_too and "mtime" in meta and e.kind == "file":
            try:
                mt = float(meta["mtime"])
            except ValueError:
                mt = None
            if mt is not None and int(mt) != int(e.attrs["mtime"]) and e.attrs["mtime"] < UTIME_PINNED_BEFORE:
                out.append(f"S3: {key} x-amz-meta-mtime {meta['mtime']}, the reference's utimens'd {e.attrs['mtime']}")
        return out

    for key, e in sorted(files.items()):
        if key not in objects:
            problems.append(f"S3: {key} ({e.kind}) missing")
            continue
        body, meta = objects[key]
        if e.kind == "symlink":
            if body != os.fsencode(e.target):
                problems.append(f"S3: symlink {key} holds {body[:100]!r}, not the target {e.target!r}")
        elif hashlib.sha256(body).hexdigest() != e.digest:
            problems.append(f"S3: {key} has {len(body)} bytes, not the reference's {e.attrs['size']} "
                            f"({'same size, other bytes' if len(body) == e.attrs['size'] else 'size differs'})")
        problems += meta_problems(key, meta, e, True)
    for d, e in sorted(dirs.items()):
        if d + "/" in objects:
            problems += meta_problems(d + "/", objects[d + "/"][1], e, False)
        elif not any(k.startswith(d + "/") for k in objects):
            problems.append(f"S3: directory {d} has neither a marker nor a key below it")
    for key in sorted(objects):
        if key.endswith("/"):
            if key[:-1] not in dirs:
                problems.append(f"S3: marker {key} of no directory in the reference")
        elif key not in files:
            problems.append(f"S3: {key} ({len(objects[key][0])} bytes) is not in the reference")
    return problems


if __name__ == "__main__":
    worker_main()
