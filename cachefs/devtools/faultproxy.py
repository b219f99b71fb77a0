"""A fault-injecting HTTP reverse proxy for S3, on 127.0.0.1: the real S3 client path, real sockets.

    cachefs --endpoint-url http://127.0.0.1:PROXY_PORT  ->  FaultProxy  ->  S3 endpoint (moto, RGW ...)

Every request is parsed (method, key, query, Range), classified into an S3 operation (get, head,
list, put, upload_part, create_multipart, complete_multipart, abort_multipart, copy, copy_part,
delete, delete_objects, list_multipart, list_parts ...),
recorded, and either forwarded or answered by the first matching fault. Faults are added and
removed at run time, from Python (`proxy.add(Fault(...))`, `with proxy.outage("blackhole"):`) or over
HTTP on the proxy itself (`/__faultproxy__/faults`, see `_control` in faulthttp.py), and can be limited
to operations, a key pattern, a probability (seeded), a number of times, and skip the first N matches.
What a fault is and how requests are classified: faultrules.py; the HTTP handler: faulthttp.py.

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
import http.server
import json
import random
import socket
import socketserver
import threading
import time
import urllib.parse

from cachefs.devtools.faulthttp import _Handler, reset_connection
from cachefs.devtools.faultrules import BLACKHOLE_DEFAULT_S, OUTAGE_MODES, Fault, Seen, classify

__all__ = ["Fault", "FaultProxy", "Seen", "classify"]


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

    def start(self) -> FaultProxy:
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

    def __enter__(self) -> FaultProxy:
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
            reset_connection(c)

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
