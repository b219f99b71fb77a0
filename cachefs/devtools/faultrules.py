"""What the fault proxy (devtools/faultproxy.py) injects: S3 operations told apart by method and
query (`classify`), and the faults that match them (`Fault`, parsed from 'action:name=value,...');
`Seen` is one request as the proxy saw it."""
from __future__ import annotations

import dataclasses
import re
import threading
import urllib.parse
from dataclasses import dataclass

READ_OPS = frozenset({"get", "head", "list"})
WRITE_OPS = frozenset({"put", "upload_part", "create_multipart", "complete_multipart", "abort_multipart",
                       "copy", "copy_part", "delete", "delete_objects"})
ALL_OPS = READ_OPS | WRITE_OPS | {"list_multipart", "list_parts", "list_buckets", "head_bucket", "create_bucket",
                                  "delete_bucket", "other"}
ACTIONS = ("error", "reset", "delay", "blackhole", "drip", "truncate")
OUTAGE_MODES = ("blackhole", "reset", "error", "refuse")
BLACKHOLE_DEFAULT_S = 600.0  # a blackhole with no bound holds a request at most this long


def classify(method: str, path: str, query: dict[str, list[str]], headers) -> tuple[str, str, str]:
    """(operation, bucket, key) of one S3 request (path-style addressing)."""
    parts = urllib.parse.unquote(path).lstrip("/").split("/", 1)
    bucket = parts[0]
    key = parts[1] if len(parts) > 1 else ""
    if not bucket:
        return "list_buckets", "", ""
    if not key:
        op = {"GET": "list", "HEAD": "head_bucket", "PUT": "create_bucket", "DELETE": "delete_bucket"}.get(method)
        if method == "GET" and "uploads" in query:
            op = "list_multipart"         # ListMultipartUploads: not a listing of objects
        if method == "POST" and "delete" in query:
            op = "delete_objects"
        # a listing's "key" is its prefix: a fault's key pattern (say ^dir/) then matches the
        # listings of that directory as it matches the objects below it
        prefix = query.get("prefix", [""])[0] if op in ("list", "list_multipart") else ""
        return op or "other", bucket, prefix
    if method == "GET":
        return ("list_parts" if "uploadId" in query else "get"), bucket, key
    if method == "HEAD":
        return "head", bucket, key
    if method == "PUT":
        copy = bool(headers.get("x-amz-copy-source"))
        if "partNumber" in query and "uploadId" in query:
            # UploadPartCopy: boto3's managed copy (S3Store.copy) copies objects of 8 MiB and more
            # (its multipart_threshold) in parts, between a create_multipart and a complete_multipart
            return ("copy_part" if copy else "upload_part"), bucket, key
        return ("copy" if copy else "put"), bucket, key
    if method == "POST":
        if "uploads" in query:
            return "create_multipart", bucket, key
        if "uploadId" in query:
            return "complete_multipart", bucket, key
    if method == "DELETE":
        return ("abort_multipart" if "uploadId" in query else "delete"), bucket, key
    return "other", bucket, key


def _ops(spec) -> frozenset[str]:
    """'get,head' / ['read'] / None -> a set of operations; 'read', 'write' and '*' name groups."""
    if spec is None or spec == "*":
        return ALL_OPS
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: set[str] = set()
    for n in names:
        n = n.strip()
        out |= {"read": READ_OPS, "write": WRITE_OPS, "*": ALL_OPS}.get(n, {n})
    unknown = out - ALL_OPS
    if unknown:
        raise ValueError(f"unknown S3 operation(s) {sorted(unknown)}; known: {sorted(ALL_OPS)}")
    return frozenset(out)


@dataclass
class Fault:
    action: str
    ops: frozenset[str] | str | None = None     # None: every operation; "read" / "write" groups
    key: str | None = None          # regex searched in the object key (a listing's: its prefix)
    probability: float = 1.0
    count: int | None = None        # fire at most this many times (None: until removed)
    skip: int = 0                   # let the first `skip` matching requests through
    status: int = 500
    code: str = "InternalError"
    seconds: float = 0.0
    fired: int = 0                  # how often it fired
    matched: int = 0                # how many requests matched (fired or not)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}; one of {', '.join(ACTIONS)}")
        self._op_set = _ops(self.ops)
        self.ops = self._op_set         # repr and describe() show the normalised set
        self._key_re = re.compile(self.key) if self.key else None
        self._released = threading.Event()    # set when removed: releases blackholed requests

    def matches(self, op: str, key: str) -> bool:
        return op in self._op_set and (self._key_re is None or bool(self._key_re.search(key)))

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """'action[:name=value,...]', e.g. 'error:ops=get,status=503,code=SlowDown,p=0.1,count=3'.
        Several operations: 'ops=get+head'."""
        action, _, rest = spec.partition(":")
        kwargs: dict = {}
        names = {"p": "probability", "prob": "probability", "n": "count", "s": "seconds"}
        for item in filter(None, rest.split(",")):
            name, _, value = item.partition("=")
            name = names.get(name.strip(), name.strip())
            if name == "ops":
                kwargs[name] = value.replace("+", ",")
            elif name in ("count", "skip", "status"):
                kwargs[name] = int(value)
            elif name in ("probability", "seconds"):
                kwargs[name] = float(value)
            elif name in ("key", "code"):
                kwargs[name] = value
            else:
                raise ValueError(f"unknown fault field {name!r} in {spec!r}")
        return cls(action.strip(), **kwargs)

    def describe(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["ops"] = sorted(self._op_set)
        return d


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it, and what it did with it."""
    t: float                 # time.monotonic() when the request arrived
    op: str
    bucket: str
    key: str
    range: str | None
    outcome: str             # "forwarded", or the fault action
    status: int | None       # the HTTP status sent back (None: no answer)
    elapsed: float = 0.0     # seconds until the proxy was done with it
