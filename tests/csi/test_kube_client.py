"""The minimal Kubernetes client speaks the API as the server expects (against a local fake server),
and `cachefs csi` start-up errors are one line."""
from __future__ import annotations

import http.server
import json
import subprocess
import threading

from mount_helpers import CACHEFS_SRC, PYTHON, one_line_error

from cachefs.csi.kube import KubeClient


class _Api(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def _answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.seen.append(("GET", self.path, self.headers["Authorization"], None, None))
        self._answer({"items": [{"metadata": {"name": "n1"}}]} if self.path.startswith("/api/v1/nodes?")
                     else {"metadata": {"name": "n1", "labels": {}}})

    def do_PATCH(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("PATCH", self.path, self.headers["Authorization"], self.headers["Content-Type"], body))
        self._answer({"metadata": {"name": "n1"}})

    def log_message(self, *args):
        pass


def test_client_requests():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        kube = KubeClient(f"http://127.0.0.1:{server.server_port}", "tok", None)
        assert kube.get_node("n1")["metadata"]["name"] == "n1"
        kube.patch_node("n1", {"metadata": {"labels": {"warm.cachefs.io/ab": "3", "old": None}}})
        assert [n["metadata"]["name"] for n in kube.list_nodes("warm.cachefs.io/ab")] == ["n1"]
    finally:
        server.shutdown()
    get, patch, lst = _Api.seen
    assert get[:3] == ("GET", "/api/v1/nodes/n1", "Bearer tok")
    assert patch[3] == "application/merge-patch+json"
    assert patch[4] == {"metadata": {"labels": {"warm.cachefs.io/ab": "3", "old": None}}}
    assert lst[1] == "/api/v1/nodes?labelSelector=warm.cachefs.io%2Fab"


def test_csi_startup_errors_are_one_line(tmp_path):
    base = [PYTHON, "-m", "cachefs", "csi", "--endpoint", f"unix://{tmp_path}/s.sock", "--mode", "node",
            "--state-dir", str(tmp_path / "state"), "--cache-root", str(tmp_path / "cache")]
    for extra, expected in ((["--cache", "ssd:/nvme/cachefs:10GiB"], "{slot}"),
                            (["--cache", "tape:/x/{slot}:1GiB"], "kind must be one of"),
                            (["--cache-size", "lots"], "--cache-size")):
        r = subprocess.run(base + extra, cwd=CACHEFS_SRC, capture_output=True, text=True, timeout=60)
        line = one_line_error(r.stderr)
        assert r.returncode == 1 and line and expected in line, r.stderr
