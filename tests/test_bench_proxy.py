"""The latency model of `bench.run --latency-ms`: the delaying proxy (bench/proxy.py) forwards bytes exactly
both ways, delays requests (not responses) by about the latency, does not throttle uploads, stops cleanly;
and bench/latency.py picks netem or the proxy and says why. No root, no FUSE, no S3: plain sockets."""
import contextlib
import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from bench import latency
from cachefs.devtools.devserver import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 4 * MiB))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


class Target:
    """A tiny request/response server: a request is (8-byte body length, 8-byte reply length, body); the
    reply is (sha256 of the body, then `reply length` bytes derived from a seed), and it notes when each
    request's first byte arrived."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.arrivals: list[float] = []
        self.threads = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn):
        with conn, contextlib.suppress(OSError):  # a client that goes away mid-reply resets us
            while True:
                first = conn.recv(1)
                if not first:
                    return
                self.arrivals.append(time.monotonic())
                body_len, reply_len = struct.unpack("<QQ", first + recv_exact(conn, 15))
                digest = hashlib.sha256(recv_exact(conn, body_len)).digest()
                conn.sendall(digest + reply(reply_len))

    def close(self):
        self.listener.close()


def reply(n: int) -> bytes:
    return (hashlib.sha256(str(n).encode()).digest() * (n // 32 + 1))[:n]


@pytest.fixture
def target():
    t = Target()
    yield t
    t.close()


def start_proxy(target_port: int, latency_ms: float, *extra: str):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.proxy", "--listen", f"127.0.0.1:{port}",
                             "--target", f"127.0.0.1:{target_port}", "--latency-ms", str(latency_ms), *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "proxy did not start"
            time.sleep(0.05)


def stop_proxy(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    return out


def exchange(sock, body: bytes, reply_len: int) -> None:
    sock.sendall(struct.pack("<QQ", len(body), reply_len) + body)
    got = recv_exact(sock, 32 + reply_len)
    assert got[:32] == hashlib.sha256(body).digest(), "the request body arrived changed"
    assert got[32:] == reply(reply_len), "the response arrived changed"


def test_forwards_bytes_exactly_both_ways_on_keep_alive(target):
    proc, port = start_proxy(target.port, 1, "--straggler-p", "0")
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sizes = [(0, 0), (10, 1), (300, 110_000), (0, 4 * MiB + 17), (5 * MiB + 3, 100), (70_000, 33 * MiB)]
            for body_len, reply_len in sizes * 3:
                exchange(sock, os.urandom(body_len), reply_len)
        # several connections at once, each with its own requests in order
        errors = []

        def client(i):
            try:
                with socket.create_connection(("127.0.0.1", port)) as s:
                    for j in range(20):
                        exchange(s, os.urandom(j * 997), (i * 31 + j) * 9973)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(repr(exc))
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
    finally:
        out = stop_proxy(proc)
    assert "connections 10" in out and "stopped" in out  # 9 and the readiness probe


def test_delays_requests_not_responses(target):
    proc, port = start_proxy(target.port, 300, "--straggler-p", "0")
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for reply_len in (100, 1000, 4 * MiB):
                sent = time.monotonic()
                exchange(sock, b"x" * 100, reply_len)
                answered = time.monotonic()
                arrived = target.arrivals[-1]
                assert 0.29 <= arrived - sent < 0.6, arrived - sent
                assert answered - arrived < 0.2, "the response was delayed too"
    finally:
        stop_proxy(proc)


def test_upload_is_a_delay_line_not_a_sleep_per_chunk(target):
    """An upload of many chunks pays the latency once, as on a real link, not once per chunk."""
    proc, port = start_proxy(target.port, 100, "--straggler-p", "0")
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            start = time.monotonic()
            exchange(sock, os.urandom(64 * MiB), 10)  # 256 chunks of 256 KiB: 25 s if each slept
            assert time.monotonic() - start < 5
    finally:
        stop_proxy(proc)


def test_stragglers_hold_whole_requests(target):
    proc, port = start_proxy(target.port, 10, "--straggler-p", "1", "--straggler-ms", "200")
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            start = time.monotonic()
            exchange(sock, os.urandom(8 * MiB), 10)
            assert 0.2 <= time.monotonic() - start < 2
    finally:
        out = stop_proxy(proc)
    assert "stragglers 1," in out  # one request, one draw, however many chunks it took


def test_stops_cleanly_with_open_connections_and_closes_them(target):
    proc, port = start_proxy(target.port, 5, "--straggler-p", "0")
    sock = socket.create_connection(("127.0.0.1", port))
    exchange(sock, b"hello", 1000)
    sock.sendall(struct.pack("<QQ", 10, 10))  # a request half sent
    out = stop_proxy(proc)
    assert "connections 2" in out and "CPU" in out  # 1 and the readiness probe
    sock.settimeout(5)
    try:
        assert sock.recv(10) == b""  # the proxy closed the client's connection
    except ConnectionResetError:
        pass
    sock.close()


def test_client_going_away_mid_response_does_not_stop_the_proxy(target):
    proc, port = start_proxy(target.port, 1, "--straggler-p", "0")
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(struct.pack("<QQ", 0, 64 * MiB))
            recv_exact(sock, MiB)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            exchange(sock, b"again", 123_456)
    finally:
        stop_proxy(proc)


def test_target_down_refuses_politely():
    proc, port = start_proxy(free_port(), 1)
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(5)
            assert sock.recv(1) == b""
    finally:
        stop_proxy(proc)


def test_netem_commands_filter_the_endpoint_port_only():
    for root in ("prio", "htb"):
        cmds = latency.netem_commands(7480, 20, root)
        assert cmds[0][:6] == ["qdisc", "add", "dev", "lo", "root", "handle"]
        netem = next(c for c in cmds if "netem" in c)
        assert netem[netem.index("delay") + 1] == "20ms"
        flt = cmds[-1]
        assert ["dst", "127.0.0.1/32"] == flt[flt.index("dst"):flt.index("dst") + 2]
        assert flt[flt.index("dport") + 1:flt.index("dport") + 3] == ["7480", "0xffff"]
        assert flt[-1] == netem[netem.index("parent") + 1]


def test_latency_model_says_why_netem_is_not_used(tmp_path):
    from bench.endpoint import Endpoint
    target = Target()
    ep = Endpoint(f"http://127.0.0.1:{target.port}", "moto")
    try:
        with latency.remote_store_model(ep, 20, 0.01, 500, str(tmp_path / "proxy.log")) as (delayed, info, undelayed):
            assert info["model"].startswith("proxy (netem unavailable: ")
            if latency.Netem.precheck() is None:
                assert "straggler tail needs the proxy" in info["model"]
            else:  # this machine: the kernel has no netem, and that is the reason given
                assert latency.Netem.precheck() in info["model"]
            assert undelayed is None and delayed.url != ep.url and "proxy (netem unavailable" in delayed.proxy
            with socket.create_connection(("127.0.0.1", int(delayed.url.rsplit(":", 1)[1]))) as sock:
                exchange(sock, b"abc", MiB)
        assert info["proxy_cpu_s"] is not None and info["proxy_cpu_s"] >= 0
        why = latency.Netem(target.port, 20).setup()
        if latency.kernel_config("CONFIG_NET_SCH_NETEM") == "n" or os.geteuid() != 0:
            assert why  # this machine: no netem in the kernel, or not root
        elif why is None:
            latency.Netem(target.port, 20).teardown()
    finally:
        target.close()


def test_bench_run_records_the_latency_model_and_the_proxy_cpu(tmp_path):
    """The wiring in bench.run: which model ran and why, the proxy's CPU per row, the proxy gone after."""
    import json
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--tiny", "--endpoint", "moto", "--systems", "local",
                           "--workloads", "fio", "--latency-ms", "5", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    model = res["latency_model"]
    assert model["model"] == "netem" or model["model"].startswith("proxy (netem unavailable: ")
    assert f"latency model: {model['model']}" in proc.stdout
    if model["model"] != "netem":
        assert model["proxy_cpu_s"] > 0 and all("proxy_cpu_s" in r for r in res["rows"] if not r.get("error"))
        probe = [r for r in res["rows"] if r["workload"] == "endpoint" and r["job"] == "through-proxy"]
        assert probe and probe[0]["proxy_cpu_s"] > 0
        assert not os.path.exists(f"/proc/{model['pid']}"), "the proxy outlived the run"
        assert "netem unavailable" in (out / "results.md").read_text()
