"""The S3 endpoint every system reads from: Ceph RGW on 127.0.0.1 (preferred) or moto (loud fallback).

moto answers a ranged GET by reading the whole object, so moto figures measure moto; the report says
which endpoint ran. An optional delaying proxy (bench/proxy.py) sits in front to model a remote store.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field, replace

from bench import util
from cachefs.devtools.devserver import MotoServer, free_port

CEPH_SCRIPT = os.path.join(os.path.dirname(__file__), "ceph.sh")
CEPH_START_TIMEOUT_S = 300  # bring-up ~18 s, plus ~50 s of apt-get the first time on a fresh machine
ACCESS_KEY = "benchaccesskey"
SECRET_KEY = "benchsecretkey"  # a throw-away local cluster; moto accepts anything
BUCKET = "bench-data"  # RGW wants bucket names of 3+ characters


@dataclass
class Endpoint:
    url: str
    kind: str  # "ceph-rgw" or "moto"
    note: str = ""
    pids: list[int] = field(default_factory=list)  # the endpoint's own processes, for its CPU figures
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    proxy: str = "off"  # what the delaying proxy in front adds, if there is one

    def env(self) -> dict:
        """Environment for every S3 client: credentials in the environment, never argv; plain HTTP."""
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                   AWS_DEFAULT_REGION="us-east-1")
        env.pop("AWS_CA_BUNDLE", None)  # a CA bundle breaks rclone's mount and is useless over http
        return env

    def client(self, max_pool: int = 32):
        import boto3
        from botocore.config import Config
        return boto3.session.Session().client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=max_pool,
                          retries={"max_attempts": 5, "mode": "standard"}))


@contextlib.contextmanager
def ceph_endpoint(scratch: str):
    ceph_dir = os.path.join(scratch, "ceph")
    port = str(free_port())
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    try:
        out = util.run(["bash", CEPH_SCRIPT, "start", ceph_dir, port, ACCESS_KEY, SECRET_KEY],
                       timeout=CEPH_START_TIMEOUT_S, env=env)
        url = out.stdout.strip().splitlines()[-1]
        pids = [int(open(os.path.join(ceph_dir, "run", p)).read()) for p in os.listdir(os.path.join(ceph_dir, "run"))
                if p.endswith(".pid")]
        yield Endpoint(url, "ceph-rgw", "single-node Ceph (1 mon, 1 bluestore OSD on a sparse file, pool size 1)",
                       pids)
    finally:
        util.run(["bash", CEPH_SCRIPT, "stop", ceph_dir], timeout=60, env=env, check=False)


@contextlib.contextmanager
def moto_endpoint(scratch: str, note: str):
    with MotoServer(log_path=os.path.join(scratch, "moto.log")) as server:
        yield Endpoint(server.endpoint_url, "moto", note, [server.proc.pid])


@contextlib.contextmanager
def open_endpoint(scratch: str, prefer: str = "ceph"):
    """Ceph if it comes up, else moto with a loud note (the note lands in results.json and the table)."""
    if prefer == "ceph":
        stack = contextlib.ExitStack()
        try:
            ep = stack.enter_context(ceph_endpoint(scratch))
        except Exception as exc:  # noqa: BLE001 - any failure to start means: fall back, say why
            stack.close()
            note = f"FALLBACK TO MOTO: Ceph RGW could not start ({exc}); ranged reads on moto read whole objects"
            print("\n" + "!" * 100 + f"\n{note}\n" + "!" * 100 + "\n", file=sys.stderr, flush=True)
        else:
            with stack:
                yield ep
            return
    else:
        note = "moto chosen explicitly: it reads whole objects for every ranged GET; figures measure moto"
    with moto_endpoint(scratch, note) as ep:
        yield ep


@contextlib.contextmanager
def delaying_proxy(endpoint: Endpoint, latency_ms: float, straggler_p: float, straggler_ms: float,
                   log_path: str):
    """Put bench/proxy.py in front of `endpoint`; yields a copy of the endpoint that points at the proxy."""
    port = free_port()
    target = endpoint.url.split("//", 1)[1]
    logf = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.proxy", "--listen", f"127.0.0.1:{port}", "--target", target,
         "--latency-ms", str(latency_ms), "--straggler-p", str(straggler_p), "--straggler-ms", str(straggler_ms)],
        stdout=logf, stderr=logf, start_new_session=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        util.wait_until(lambda: _connects(port), 15, "the delaying proxy")
        note = (f"delaying proxy ON: +{latency_ms:g} ms per request, {straggler_p:.1%} stragglers of "
                f"+{straggler_ms:g} ms")
        yield replace(endpoint, url=f"http://127.0.0.1:{port}", proxy=note)
    finally:
        util.kill_group(proc)
        logf.close()


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
