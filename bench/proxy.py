"""A delaying TCP proxy: models a remote object store in front of a local one.

Every chunk the client sends (an HTTP request, in practice) is held for `--latency-ms` before it is
forwarded; a chunk that starts a request (nothing of the connection is still waiting) is held, with
probability `--straggler-p`, `--straggler-ms` more (the slow tail that object stores show). Chunks keep
their order: a delay line, not a queue of sleeps, so an upload is not throttled to a chunk per latency.
Responses are not delayed and cost no Python per byte: they move server -> pipe -> client with
os.splice, inside the kernel. Listens on 127.0.0.1 only. Used when `tc netem` is not available
(bench/latency.py); on SIGTERM/SIGINT it prints its counters and CPU seconds and exits 0.
`python -m bench.proxy --listen 127.0.0.1:PORT --target 127.0.0.1:7480 --latency-ms 20`
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import fcntl
import os
import random
import resource
import signal
import socket
import sys

UP_CHUNK = 256 * 1024          # requests are small; uploads come in chunks of this
UP_BUFFER_LIMIT = 64 << 20     # stop reading a client whose delayed bytes exceed this
PIPE_BYTES = 1 << 20           # the kernel buffer a response crosses (fs.pipe-max-size's default)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
# PROXY_LOG=FILE: each request's first line with the time it arrived (the event loop's clock,
# time.monotonic(): bench/loader's LOADER_TRACE uses the same), appended line-buffered; a request
# made a straggler is marked " STRAGGLER+<ms>ms".
REQUEST_LOG = open(os.environ["PROXY_LOG"], "a", buffering=1) if os.environ.get("PROXY_LOG") else None  # noqa: SIM115


class Counters:
    def __init__(self):
        self.connections = self.up_bytes = self.down_bytes = self.down_splices = self.stragglers = 0


class Link:
    """One client connection and its connection to the target; callbacks on the loop, no tasks."""

    def __init__(self, loop, client: socket.socket, server: socket.socket, model: DelayModel,
                 counters: Counters, links: set):
        self.loop, self.client, self.server, self.model = loop, client, server, model
        self.counters, self.links = counters, links
        self.cfd, self.sfd = client.fileno(), server.fileno()
        self.pending: collections.deque = collections.deque()   # (release time, memoryview)
        self.pending_bytes = 0
        self.last_release = 0.0
        self.timer = None
        self.up_writing = self.up_eof = self.up_done = self.client_paused = False
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.pipe_w, F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # a smaller pipe only means more splices
        self.in_pipe = 0
        self.down_eof = self.down_done = self.down_writing = False
        self.closed = False
        links.add(self)
        loop.add_reader(self.cfd, self._client_readable)
        loop.add_reader(self.sfd, self._server_readable)

    # --- client -> server: the delay line ---

    def _client_readable(self) -> None:
        try:
            data = self.client.recv(UP_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            return self.close()
        if not data:
            self.loop.remove_reader(self.cfd)
            self.up_eof = True
            if not self.pending:
                self._finish_up()
            return
        now = self.loop.time()
        starts_request = not self.pending and now >= self.last_release
        delay = self.model.delay(starts_request)
        if starts_request and REQUEST_LOG is not None:
            line = bytes(data[:200]).split(b"\r\n", 1)[0].decode(errors="replace")
            extra = delay - self.model.latency_s
            mark = f" STRAGGLER+{1000 * extra:.0f}ms" if extra > 1e-6 else ""
            REQUEST_LOG.write(f"{now:.6f} {line}{mark}\n")
        self.last_release = max(now + delay, self.last_release)
        self.pending.append((self.last_release, memoryview(data)))
        self.pending_bytes += len(data)
        self.counters.up_bytes += len(data)
        if self.pending_bytes > UP_BUFFER_LIMIT:
            self.loop.remove_reader(self.cfd)
            self.client_paused = True
        if self.timer is None and not self.up_writing:
            self.timer = self.loop.call_at(self.pending[0][0], self._send_due)

    def _send_due(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.pending and self.pending[0][0] <= now:
            release, view = self.pending[0]
            try:
                n = self.server.send(view)
            except BlockingIOError:
                n = 0
            except OSError:
                return self.close()
            self.pending_bytes -= n
            if n < len(view):
                self.pending[0] = (release, view[n:])
                if not self.up_writing:
                    self.up_writing = True
                    self.loop.add_writer(self.sfd, self._server_writable)
                return
            self.pending.popleft()
        if self.client_paused and self.pending_bytes <= UP_BUFFER_LIMIT // 2:
            self.client_paused = False
            self.loop.add_reader(self.cfd, self._client_readable)
        if self.pending:
            self.timer = self.loop.call_at(self.pending[0][0], self._send_due)
        elif self.up_eof:
            self._finish_up()

    def _server_writable(self) -> None:
        self.up_writing = False
        self.loop.remove_writer(self.sfd)
        self._send_due()

    def _finish_up(self) -> None:
        try:
            self.server.shutdown(socket.SHUT_WR)
        except OSError:
            return self.close()
        self.up_done = True
        self._maybe_close()

    # --- server -> client: splice through a pipe, no bytes in Python ---

    def _server_readable(self) -> None:
        if self.in_pipe >= PIPE_BYTES:   # a zero-length splice would read as EOF
            return self._drain_pipe()
        try:
            n = os.splice(self.sfd, self.pipe_w, PIPE_BYTES - self.in_pipe, flags=SPLICE)
        except BlockingIOError:
            n = -1
        except OSError:
            return self.close()
        if n == 0:
            self.loop.remove_reader(self.sfd)
            self.down_eof = True
        elif n > 0:
            self.in_pipe += n
            self.counters.down_bytes += n
            self.counters.down_splices += 1
        self._drain_pipe()

    def _drain_pipe(self) -> None:
        while self.in_pipe:
            try:
                n = os.splice(self.pipe_r, self.cfd, self.in_pipe, flags=SPLICE)
            except BlockingIOError:
                break
            except OSError:
                return self.close()
            self.in_pipe -= n
        if self.in_pipe and not self.down_writing:       # the client is slow: wait for it, not the server
            self.down_writing = True
            if not self.down_eof:
                self.loop.remove_reader(self.sfd)
            self.loop.add_writer(self.cfd, self._client_writable)
        elif not self.in_pipe and self.down_eof and not self.down_done:
            try:
                self.client.shutdown(socket.SHUT_WR)
            except OSError:
                return self.close()
            self.down_done = True
            self._maybe_close()

    def _client_writable(self) -> None:
        self.down_writing = False
        self.loop.remove_writer(self.cfd)
        if not self.down_eof:
            self.loop.add_reader(self.sfd, self._server_readable)
        self._drain_pipe()

    # --- teardown ---

    def _maybe_close(self) -> None:
        if self.up_done and self.down_done:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        for fd in (self.cfd, self.sfd):
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
        for s in (self.client, self.server):
            s.close()
        os.close(self.pipe_r)
        os.close(self.pipe_w)
        self.links.discard(self)


class DelayModel:
    def __init__(self, latency_s: float, straggler_p: float, straggler_s: float, seed: int,
                 counters: Counters):
        self.latency_s, self.straggler_p, self.straggler_s = latency_s, straggler_p, straggler_s
        self.rng, self.counters = random.Random(seed), counters

    def delay(self, starts_request: bool) -> float:
        if starts_request and self.straggler_p > 0 and self.rng.random() < self.straggler_p:
            self.counters.stragglers += 1
            return self.latency_s + self.straggler_s
        return self.latency_s


async def serve(listen: str, target: str, latency_s: float, straggler_p: float, straggler_s: float, seed: int,
                stop: asyncio.Future | None = None, counters: Counters | None = None) -> Counters:
    loop = asyncio.get_running_loop()
    counters = counters or Counters()
    model = DelayModel(latency_s, straggler_p, straggler_s, seed, counters)
    thost, tport = target.rsplit(":", 1)
    host, port = listen.rsplit(":", 1)
    assert host == "127.0.0.1", "the proxy listens on loopback only"
    listener = socket.create_server((host, int(port)), backlog=512)
    listener.setblocking(False)
    links: set[Link] = set()

    async def connect(client: socket.socket) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setblocking(False)
        try:
            await loop.sock_connect(server, (thost, int(tport)))
        except OSError:
            server.close()
            client.close()
            return
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        counters.connections += 1
        Link(loop, client, server, model, counters, links)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and the like: the client sees a refused/reset connection and retries
            client.setblocking(False)
            loop.create_task(connect(client))

    loop.add_reader(listener.fileno(), accept)
    stop = stop or loop.create_future()
    try:
        await stop
    finally:
        loop.remove_reader(listener.fileno())
        listener.close()
        for link in list(links):
            link.close()
    return counters


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--straggler-p", type=float, default=0.01)
    p.add_argument("--straggler-ms", type=float, default=500.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)

    async def run() -> Counters:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        print(f"proxy: 127.0.0.1 {a.listen} -> {a.target}, requests +{a.latency_ms:g} ms, "
              f"stragglers {a.straggler_p:.1%} +{a.straggler_ms:g} ms, responses by splice", flush=True)
        return await serve(a.listen, a.target, a.latency_ms / 1e3, a.straggler_p, a.straggler_ms / 1e3, a.seed,
                           stop)

    c = asyncio.run(run())
    r = resource.getrusage(resource.RUSAGE_SELF)
    print(f"proxy: stopped; connections {c.connections}, request bytes {c.up_bytes}, response bytes "
          f"{c.down_bytes} in {c.down_splices} splices, stragglers {c.stragglers}, "
          f"CPU {r.ru_utime + r.ru_stime:.3f} s", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
