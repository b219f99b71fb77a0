"""Write requests as the endpoint saw them, the same way for every system under test (none of s3fs,
rclone and cachefs count their uploads alike, so the endpoint does the counting).

Ceph RGW: the gateway's perf counters (`put`: PutObject and UploadPart requests, `put_b`: their bytes)
through its admin socket, and with `debug_rgw 2` (set at run time by `enable()`) one "s3:<op> executing"
log line per request, which names the multipart initiations, completions and copies the counters leave
out. moto: its one-line-per-request access log (method and query string; no bytes).
Polling HEADs of the harness itself show up as `get_obj`/HEAD and are not write requests.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter

from bench.endpoint import Endpoint

RGW_NAME = "client.rgw.bench"  # bench/ceph.sh's gateway
_RGW_OP = re.compile(r" s3:(\w+) executing")
_MOTO_REQ = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+" (?P<status>\d{3})')
WRITE_OPS = ("put_obj", "init_multipart", "complete_multipart", "copy_obj", "delete_obj", "abort_multipart")


class RequestCounter:
    """snapshot() -> an opaque mark; since(mark) -> {put_requests, put_mib?, ops: {op: count}}."""

    def __init__(self, scratch: str, endpoint: Endpoint, bucket: str):
        self.kind, self.bucket = endpoint.kind, bucket
        if endpoint.kind == "ceph-rgw":
            ceph = os.path.join(scratch, "ceph")
            self.asok = os.path.join(ceph, "run", f"{RGW_NAME}.asok")
            self.log = os.path.join(ceph, "log", f"{RGW_NAME}.log")
        else:
            self.asok, self.log = None, os.path.join(scratch, "moto.log")  # bench.endpoint.moto_endpoint's

    def enable(self) -> str | None:
        """Turn on what counting needs; returns a note if it could not be."""
        if not self.asok:
            return None
        try:
            self._admin("config", "set", "debug_rgw", "2/2")
        except (OSError, subprocess.SubprocessError) as exc:
            return f"RGW op names unavailable (debug_rgw not set: {exc}); PUT counters only"
        return None

    def _admin(self, *args: str) -> str:
        return subprocess.run(["ceph", "--admin-daemon", self.asok, *args], capture_output=True, text=True,
                              timeout=20, check=True).stdout

    def _perf(self) -> dict:
        try:
            return json.loads(self._admin("perf", "dump", "rgw"))["rgw"]
        except (OSError, subprocess.SubprocessError, ValueError, KeyError):
            return {}

    def snapshot(self) -> tuple:
        try:
            size = os.path.getsize(self.log)
        except OSError:
            size = 0
        return size, self._perf() if self.asok else {}

    def since(self, mark: tuple) -> dict:
        offset, perf0 = mark
        try:
            with open(self.log, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            text = ""
        ops = Counter()
        if self.asok:
            ops.update(m[1] for m in _RGW_OP.finditer(text))
            perf1 = self._perf()
            out = {}
            if perf0 and perf1:
                out = {"put_requests": perf1["put"] - perf0["put"],
                       "put_mib": (perf1["put_b"] - perf0["put_b"]) / (1 << 20)}
        else:
            for m in _MOTO_REQ.finditer(text):
                target = m["target"]
                if not target.lstrip("/").startswith(self.bucket + "/"):
                    continue
                ops[_moto_op(m["method"], target)] += 1
            out = {"put_requests": ops["put_obj"]}
        out["ops"] = {op: ops[op] for op in WRITE_OPS if ops[op]}
        return out


def _moto_op(method: str, target: str) -> str:
    """The RGW name of a request from its method and query string (copies look like PUTs here)."""
    query = target.partition("?")[2]
    if method == "PUT":
        return "put_obj"
    if method == "POST":
        return "complete_multipart" if "uploadId" in query else "init_multipart" if "uploads" in query else "post"
    if method == "DELETE":
        return "abort_multipart" if "uploadId" in query else "delete_obj"
    return method.lower()
