"""A fault-injecting HTTP reverse proxy for S3, on 127.0.0.1: the real S3 client path, real sockets.

    cachefs --endpoint-url http://127.0.0.1:PROXY_PORT  ->  FaultProxy  ->  S3 endpoint (moto, RGW ...)

Every request is parsed (method, key, query, Range), classified into an S3 operation (get, head,
list, put, upload_part, create_multipart, complete_multipart, abort_multipart, copy, copy_part,
delete, delete_objects, list_multipart, list_parts ...),
recorded, and either forwarded or answered by the first matching fault. Faults are added and
removed at run time, from Python (`proxy.add(Fault(...))`, `with proxy.outage("blackhole"):`) or over
HTTP on the proxy itself (`/__faultproxy__/faults`, see `_control`), and can be limited to operations,
a key pattern, a probability (seeded), a number of times, and skip the first N matches.

Actions:
  error      answer `status` with an S3 XML error `code` (500 InternalError, 503 SlowDown ...)
  reset      close the client connection with a TCP RST, no answer
  delay      wait `seconds`, then forward (a slow response; past the client's read timeout: a timeout)
  blackhole  accept the request and never answer (for `seconds`, or until the fault is removed)
  drip       forward, then send the response body in small pieces over `seconds` (a very slow body)
  truncate   forward, then send the headers and half the body, and close (a short read); an answer
             without a body (HEAD, PUT, UploadPart, DELETE, abort) is cut half-way through its headers.
             Either way the request reached S3 and took effect there: only the answer is lost
A stall longer than the client's read timeout is `delay` with `seconds` past it (the request reaches
S3 after the client gave up) or `blackhole` (it never does).
An outage is a fault on every request: `blackhole`, `reset`, `error` (503), or `refuse`, which closes
the listening socket (connection refused) until the outage ends.

Standalone: `python -m cachefs.devtools.faultproxy --target http://127.0.0.1:5000 --listen 127.0.0.1:8001
--fault 'error:ops=get,status=503,code=SlowDown,p=0.05'`. It listens on loopback only.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import http.server
import json
import random
import re
import socket
import socketserver
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass

READ_OPS = frozenset({"get", "head", "list"})
WRITE_OPS = frozenset({"put", "upload_part", "create_multipart", "complete_multipart", "abort_multipart",
                       "copy", "copy_part", "delete", "delete_objects"})
ALL_OPS = READ_OPS | WRITE_OPS | {"list_multipart", "list_parts", "list_buckets", "head_bucket", "create_bucket",
                                  "delete_bucket", "other"}
ACTIONS = ("error", "reset", "delay", "blackhole", "drip", "truncate")
OUTAGE_MODES = ("blackhole", "reset", "error", "refuse")
CONTROL_PREFIX = "/__faultproxy__/"   # no S3 bucket can have this name (underscores)
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
               "te", "trailers", "transfer-encoding", "upgrade"}
DRIP_PIECES = 20            # a dripped body arrives in this many pieces
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
        self.ops = _ops(self.ops)
        self._key_re = re.compile(self.key) if self.key else None
        self._released = threading.Event()    # set when removed: releases blackholed requests

    def matches(self, op: str, key: str) -> bool:
        return op in self.ops and (self._key_re is None or bool(self._key_re.search(key)))

    @classmethod
    def parse(cls, spec: str) -> "Fault":
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
        d["ops"] = sorted(self.ops)
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


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class FaultProxy:
    """A reverse proxy in threads of this process. `start()`/`stop()` or a context manager."""

    def __init__(self, target_url: str, port: int = 0, seed: int = 1) -> None:
        target = urllib.parse.urlsplit(target_url)
        if target.scheme != "http":
            raise ValueError("the fault proxy forwards plain http only")
        self.target = (target.hostname, target.port or 80)
        self.port = port
        self.rng = random.Random(seed)
        self.faults: list[Fault] = []
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._refusing = False

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(_Handler):
            pass
        Handler.proxy = proxy
        self._server = _Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"faultproxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.clear()
        self._close_listener()
        self._drop_connections()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _close_listener(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _drop_connections(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            _reset(c)

    # -- faults ---------------------------------------------------------------------------------
    def add(self, fault: Fault | str) -> Fault:
        fault = Fault.parse(fault) if isinstance(fault, str) else fault
        with self._lock:
            self.faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        with self._lock:
            if fault in self.faults:
                self.faults.remove(fault)
        fault._released.set()

    def clear(self) -> None:
        with self._lock:
            faults, self.faults = self.faults, []
        for f in faults:
            f._released.set()

    @contextlib.contextmanager
    def fault(self, fault: Fault | str):
        f = self.add(fault)
        try:
            yield f
        finally:
            self.remove(f)

    def start_outage(self, mode: str = "blackhole") -> Fault | None:
        """Every request fails until `end_outage()`; 'refuse' stops listening altogether."""
        if mode not in OUTAGE_MODES:
            raise ValueError(f"unknown outage mode {mode!r}; one of {', '.join(OUTAGE_MODES)}")
        if mode == "refuse":
            self._refusing = True
            self._close_listener()
            self._drop_connections()
            return None
        fault = Fault(mode, status=503, code="ServiceUnavailable", seconds=BLACKHOLE_DEFAULT_S)
        with self._lock:
            self.faults.insert(0, fault)
        self._drop_connections()      # kept-alive connections see the outage at once too
        return fault

    def end_outage(self, fault: Fault | None = None) -> None:
        if self._refusing:
            self._refusing = False
            self.start()
        if fault is not None:
            self.remove(fault)

    @contextlib.contextmanager
    def outage(self, mode: str = "blackhole"):
        fault = self.start_outage(mode)
        try:
            yield fault
        finally:
            self.end_outage(fault)

    def _choose(self, op: str, key: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if not f.matches(op, key):
                    continue
                f.matched += 1
                if f.matched <= f.skip or (f.count is not None and f.fired >= f.count):
                    continue
                if f.probability < 1.0 and self.rng.random() >= f.probability:
                    continue
                f.fired += 1
                return f
        return None

    # -- what happened --------------------------------------------------------------------------
    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def seen(self, op: str | set[str] | None = None, key: str | None = None, since: float = 0.0) -> list[Seen]:
        """Requests recorded, filtered by operation(s), exact key and arrival time."""
        ops = {op} if isinstance(op, str) else op
        with self._lock:
            reqs = list(self.requests)
        reqs.sort(key=lambda r: r.t)
        return [r for r in reqs if (ops is None or r.op in ops) and (key is None or r.key == key) and r.t >= since]

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.seen():
            per = out.setdefault(r.op, {})
            per[r.outcome] = per.get(r.outcome, 0) + 1
        return out


def _reset(sock: socket.socket, files=()) -> None:
    """Close with RST (SO_LINGER 0), not FIN: what a crashed or overloaded endpoint does. `files`: the
    handler's own rfile/wfile, which keep the descriptor open until they are closed too. From another
    thread (no files): shut the connection down now; the RST follows when its handler closes it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    if not files:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return
    for f in files:
        try:
            f.close()
        except (OSError, ValueError):
            pass
    try:
        sock.close()
    except OSError:
        pass


def _error_body(code: str, key: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by the fault proxy</Message><Key>{key}</Key>"
            f"<RequestId>faultproxy</RequestId></Error>").encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    proxy: FaultProxy
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.proxy._lock:
            self.proxy._conns.add(self.connection)
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        with self.proxy._lock:
            self.proxy._conns.discard(self.connection)
        if self._upstream is not None:
            self._upstream.close()
        try:
            super().finish()
        except (OSError, ValueError):
            pass

    def _reset(self) -> None:
        _reset(self.connection, (self.rfile, self.wfile))

    def log_message(self, *args) -> None:   # quiet: the proxy keeps its own record
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ValueError):     # the connection was reset under us (an outage began)
            self.close_connection = True

    def do_GET(self):
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        t0 = time.monotonic()
        split = urllib.parse.urlsplit(self.path)
        body = self._body()
        if split.path.startswith(CONTROL_PREFIX):
            return self._control(split.path[len(CONTROL_PREFIX):], body)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        op, bucket, key = classify(self.command, split.path, query, self.headers)
        fault = self.proxy._choose(op, key)
        rng = self.headers.get("Range")

        def record(outcome: str, status: int | None) -> None:
            self.proxy._record(Seen(t0, op, bucket, key, rng, outcome, status, time.monotonic() - t0))

        action = fault.action if fault else None
        if action == "reset":
            record("reset", None)
            self._reset()
            self.close_connection = True
            return
        if action == "blackhole":
            record("blackhole", None)         # now: a client that gives up must find it counted
            fault._released.wait(fault.seconds or BLACKHOLE_DEFAULT_S)
            self._reset()
            self.close_connection = True
            return
        if action == "error":
            payload = _error_body(fault.code, key)
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            if fault.status == 503:
                self.send_header("Retry-After", "1")
            self.end_headers()
            record("error", fault.status)   # before the bytes: a client that has them must find it counted
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        if action == "delay":
            record("delay", None)
            fault._released.wait(fault.seconds)
        try:
            status, headers, payload = self._forward(split, body)
        except OSError as e:
            record(f"upstream failed: {e}", 502)
            self.send_error(502, "upstream failed")
            return
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP and name.lower() not in ("content-length", "date", "server"):
                self.send_header(name, value)
        declared = headers_get(headers, "Content-Length")
        self.send_header("Content-Length", declared if self.command == "HEAD" and declared else str(len(payload)))
        if action == "truncate" and (self.command == "HEAD" or not payload):
            # No body to cut (HEAD, PUT, UploadPart, DELETE, abort ...): the answer is cut inside its
            # headers. The request did reach S3 (and took effect there); only its answer is lost.
            record("truncate", status)
            raw = b"".join(self._headers_buffer) + b"\r\n"
            self._headers_buffer = []
            self.wfile.write(raw[:len(raw) // 2])
            self.wfile.flush()
            self._reset()
            self.close_connection = True
            return
        if action is None or (action == "drip" and (self.command == "HEAD" or not payload)):
            # before the headers go out: a client done once it has them (HEAD, an answer without a
            # body) must find its request counted
            record(action or "forwarded", status)
        if self.command == "HEAD":
            self.end_headers()
            return
        self.end_headers()
        if action == "truncate":
            record("truncate", status)
            self.wfile.write(payload[:len(payload) // 2])
            self.wfile.flush()
            self._reset()
            self.close_connection = True
            return
        if action == "drip" and payload:
            piece = max(1, -(-len(payload) // DRIP_PIECES))
            pause = (fault.seconds or 1.0) / DRIP_PIECES
            try:
                for i in range(0, len(payload), piece):
                    self.wfile.write(payload[i:i + piece])
                    self.wfile.flush()
                    if fault._released.wait(pause):
                        pause = 0.0
            except OSError:           # the client gave up on us
                record("drip (client gone)", status)
                self.close_connection = True
                return
            record("drip", status)
            return
        self.wfile.write(payload)

    def _forward(self, split, body: bytes):
        target = split.path + (f"?{split.query}" if split.query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        for attempt in (1, 2):    # a kept-alive upstream connection may have been closed by the server
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.proxy.target, timeout=120)
            try:
                self._upstream.request(self.command, target, body=body, headers=headers)
                resp = self._upstream.getresponse()
                payload = resp.read()
                return resp.status, resp.getheaders(), payload
            except (http.client.HTTPException, OSError):
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _control(self, path: str, body: bytes) -> None:
        """POST faults {Fault fields} adds one; DELETE faults clears; GET requests -> counts;
        POST outage {"mode": ...} / DELETE outage."""
        p = self.proxy
        status, answer = 200, {}
        try:
            if path == "faults" and self.command == "POST":
                answer = p.add(Fault(**json.loads(body or b"{}"))).describe()
            elif path == "faults" and self.command == "DELETE":
                p.clear()
            elif path == "faults":
                answer = {"faults": [f.describe() for f in p.faults]}
            elif path == "requests":
                answer = {"counts": p.counts(), "total": len(p.seen())}
            elif path == "outage" and self.command == "POST":
                mode = json.loads(body or b"{}").get("mode", "blackhole")
                if mode == "refuse":
                    raise ValueError("a refusing proxy could not be told to stop refusing; use the Python API")
                p.start_outage(mode)
            elif path == "outage" and self.command == "DELETE":
                p.clear()
            else:
                status, answer = 404, {"error": f"no control {self.command} {path}"}
        except (ValueError, TypeError) as e:
            status, answer = 400, {"error": str(e)}
        payload = json.dumps(answer, default=sorted).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def headers_get(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name.lower():
            return v
    return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="the S3 endpoint to forward to (http://HOST:PORT)")
    ap.add_argument("--listen", default="127.0.0.1:0", help="127.0.0.1:PORT (loopback only)")
    ap.add_argument("--fault", action="append", default=[], help="a fault spec, e.g. 'error:ops=get,p=0.1' "
                    "(repeatable); more can be added at run time: POST /__faultproxy__/faults")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    if host != "127.0.0.1":
        ap.error("the fault proxy listens on 127.0.0.1 only")
    proxy = FaultProxy(a.target, int(port), seed=a.seed)
    for spec in a.fault:
        try:
            proxy.add(spec)
        except ValueError as e:
            ap.error(str(e))
    proxy.start()
    print(f"fault proxy on {proxy.url} -> {a.target}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
        print(json.dumps(proxy.counts(), indent=1))


if __name__ == "__main__":
    main()
