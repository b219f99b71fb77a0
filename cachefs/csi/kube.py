"""A minimal Kubernetes API client: the three calls the driver makes on Node objects, in-cluster
(service-account token). Kept tiny on purpose: the official client is a large dependency for three
requests, and tests substitute a fake with the same methods."""
from __future__ import annotations

import json
import os
import ssl
import urllib.parse
import urllib.request

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeClient:
    def __init__(self, host: str, token: str, ca_file: str | None, timeout: float = 10.0):
        self.host = host.rstrip("/")
        self.token = token
        self.ctx = ssl.create_default_context(cafile=ca_file)
        self.timeout = timeout

    @classmethod
    def in_cluster(cls) -> KubeClient:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise RuntimeError("not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST unset)")
        with open(os.path.join(SA_DIR, "token")) as f:
            token = f.read().strip()
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", token, os.path.join(SA_DIR, "ca.crt"))

    def _call(self, method: str, path: str, body: dict | None = None,
              content_type: str = "application/json") -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.host + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json", "Content-Type": content_type})
        with urllib.request.urlopen(req, context=self.ctx, timeout=self.timeout) as resp:
            return json.load(resp)

    def get_node(self, name: str) -> dict:
        return self._call("GET", f"/api/v1/nodes/{urllib.parse.quote(name)}")

    def patch_node(self, name: str, patch: dict) -> dict:
        return self._call("PATCH", f"/api/v1/nodes/{urllib.parse.quote(name)}", patch,
                          "application/merge-patch+json")

    def list_nodes(self, label_selector: str = "") -> list[dict]:
        query = "?" + urllib.parse.urlencode({"labelSelector": label_selector}) if label_selector else ""
        return self._call("GET", "/api/v1/nodes" + query).get("items", [])
