"""The fault proxy's HTTP side (devtools/faultproxy.py): one request handler per client connection
that answers with the fault chosen for the request (an S3 error, a reset, a stall, a dripped or cut
answer) or forwards it to the real endpoint, plus the proxy's own control requests over HTTP."""
from __future__ import annotations

import http.client
import http.server
import json
import socket
import struct
import time
import urllib.parse
from typing import Any

from cachefs.devtools.faultrules import BLACKHOLE_DEFAULT_S, Fault, Seen, classify

CONTROL_PREFIX = "/__faultproxy__/"   # no S3 bucket can have this name (underscores)
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
               "te", "trailers", "transfer-encoding", "upgrade"}
DRIP_PIECES = 20            # a dripped body arrives in this many pieces


def reset_connection(sock: socket.socket, files=()) -> None:
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
    proxy: Any           # the FaultProxy serving (set by FaultProxy.start on a subclass; not imported: a cycle)
    protocol_version = "HTTP/1.1"
    _headers_buffer: list[bytes]    # BaseHTTPRequestHandler's header lines not yet sent (not in typeshed)

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
        reset_connection(self.connection, (self.rfile, self.wfile))

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
            chunks: list[bytes] = []
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
                host, port = self.proxy.target
                self._upstream = http.client.HTTPConnection(host, port, timeout=120)
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
