"""The Helm chart with a shared cache tier (values `sharedCache`): rendered with real Helm, linted, every
manifest validated against the Kubernetes schema, the node plugin's mount options and the mounter's
0600 credentials file; the MinIO example validates too (tests/csi/test_helm.py checks every example)."""
from __future__ import annotations

from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

from cachefs.csi.node import NodeConfig

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "cachefs"
EXAMPLE = REPO / "helm" / "examples" / "shared-cache-minio.yaml"
VALUES = {"sharedCache": {"enabled": True, "url": "s3://cachefs-shared/tier",
                          "endpointUrl": "http://cachefs-minio.cachefs:9000",
                          "secret": {"name": "cachefs-shared-cache", "key": "credentials"}}}


def render(values) -> list[dict]:
    out = helm.Chart.load(str(CHART)).render(values, name="cachefs", namespace="cachefs", is_install=True)
    return [d for path, text in sorted(out.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def daemonset(docs, suffix):
    return next(d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"].endswith(suffix))


def test_shared_cache_values_render_lint_and_validate():
    report = helm.lint(str(CHART), VALUES, strict=True)
    assert [m for m in report["messages"] if m["severity"] >= 2] + report["errors"] == []
    docs = render(VALUES)
    for doc in docs:
        if doc["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(doc, "1.30", strict=True)
    node = daemonset(docs, "-node")["spec"]["template"]["spec"]["containers"][0]["args"]
    options = [a.split("=", 1)[1] for a in node if a.startswith("--shared-cache-option=")]
    assert options == ["shared_cache=s3://cachefs-shared/tier",
                       "shared_cache_endpoint_url=http://cachefs-minio.cachefs:9000",
                       "shared_cache_addressing_style=path", "shared_cache_deadline=1",
                       "shared_cache_credentials_file=/etc/cachefs/shared-cache/credentials"]
    NodeConfig(node_id="n", shared_cache_options=options).check()
    pod = daemonset(docs, "-mounter")["spec"]["template"]["spec"]
    [vol] = [v for v in pod["volumes"] if v["name"] == "shared-cache-credentials"]
    assert vol["secret"]["secretName"] == "cachefs-shared-cache" and vol["secret"]["defaultMode"] == 0o600
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["shared-cache-credentials"] == "/etc/cachefs/shared-cache"


def test_without_shared_cache_nothing_of_it_renders():
    docs = render(None)
    assert not any("shared" in a for a in daemonset(docs, "-node")["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "shared-cache-credentials" not in {v["name"] for v in
                                              daemonset(docs, "-mounter")["spec"]["template"]["spec"]["volumes"]}


def test_minio_example_validates_and_matches_the_values():
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "cachefs-shared-cache")
    assert "aws_access_key_id" in secret["stringData"]["credentials"]
    job = next(d for d in docs if d["kind"] == "Job")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "mc ilm rule add --expire-days 7 --prefix tier/ shared/cachefs-shared" in script
