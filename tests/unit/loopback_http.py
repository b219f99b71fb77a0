"""A loopback HTTP/1.1 server for the libcurl tests (tests/unit/test_curl_engine.py,
tests/unit/test_fetch_native.py): answers chosen per path, requests and connections recorded."""
from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Reply:
    """What the server answers: `framing` is "length" (Content-Length), "chunked", or "close" (no
    length, the body ends with the connection); `hold`: the headers go out, the body only once set."""
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    framing: str = "length"
    hold: threading.Event | None = None


class Server:
    """HTTP/1.1 on loopback, one thread per connection: `behaviour(path)` -> a Reply, 'ok' (200 with
    the path 100 times as its body), 'close' (hang up without an answer) or 'stall' (never answer;
    `closed` is set when the client hangs up)."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str]]] = []     # (raw path, headers), in arrival order
        self.stalled = threading.Event()         # a stalled request arrived
        self.closed = threading.Event()          # a client hung up on a stalled request
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split()[1]
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                self.requests.append((path, headers))
                what = self.behaviour(path)
                if what == "ok":
                    what = Reply(body=path.encode() * 100)
                if what == "close":
                    return
                if what == "stall":
                    self.stalled.set()
                    conn.settimeout(20)
                    try:
                        if not conn.recv(1):
                            self.closed.set()
                    except OSError:
                        self.closed.set()
                    return
                try:
                    if not self._answer(conn, what):
                        return
                except OSError:
                    return

    @staticmethod
    def _answer(conn, reply: Reply) -> bool:
        """Send `reply`; False when the connection must close after it."""
        lines = [f"HTTP/1.1 {reply.status} X"]
        lines += [f"{k}: {v}" for k, v in reply.headers]
        if reply.framing == "length":
            lines.append(f"Content-Length: {len(reply.body)}")
        elif reply.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
        else:
            lines.append("Connection: close")
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if reply.hold is not None:
            reply.hold.wait(20)
        if reply.framing == "chunked":
            step = 10_000
            for i in range(0, len(reply.body), step):
                piece = reply.body[i:i + step]
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.sendall(b"0\r\n\r\n")
            return True
        conn.sendall(reply.body)
        return reply.framing == "length"

    def close(self):
        self.listener.close()


@contextlib.contextmanager
def serving(behaviour):
    server = Server(behaviour)
    try:
        yield server
    finally:
        server.close()
