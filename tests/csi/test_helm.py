"""The Helm chart rendered with real Helm (helm-python-sdk) for the default values and non-default
sets, linted, and every manifest validated against the Kubernetes schema (kubernetes-validate)."""
from __future__ import annotations

import re
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from cachefs.csi import DRIVER_NAME

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "cachefs"
EXAMPLES = REPO / "helm" / "examples"
K8S_VERSION = "1.30"
# No schema in kubernetes-validate: checked by hand below (a PrometheusRule's groups also by
# `promtool check rules`, test_helm_monitoring.py).
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

VALUE_SETS = {
    "default": None,
    "tiers-and-monitoring": {
        "s3": {"endpointUrl": "http://rgw.storage:7480", "region": "us-east-1", "addressingStyle": "path"},
        "node": {"tiers": [{"name": "ram", "kind": "mem", "size": "4GiB"},
                           {"name": "nvme", "kind": "ssd", "size": "400GiB", "hostPath": "/mnt/nvme0/cachefs"},
                           {"name": "scratch", "kind": "hdd", "size": "2TiB", "emptyDir": {"sizeLimit": "2Ti"}}],
                 "nodeSelector": {"nvidia.com/gpu.present": "true"}, "maxVolumes": 4},
        "warmLabels": {"enabled": False},
        "metrics": {"ports": 4, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                    "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Storage"}},
                    "prometheusRule": {"enabled": True, "labels": {"release": "prom"}, "uploadBacklogMinutes": 45,
                                       "kubeletSelector": 'namespace=~"ml-.*"'}},
        "storageClasses": [
            {"name": "datasets", "default": True, "bucket": "datasets", "prefixBase": "",
             "onDelete": "retain", "reclaimPolicy": "Retain", "secret": {"name": "s3-ro", "namespace": "ml"},
             "mountOptions": {"block_size": "8MiB", "entry_timeout": 7200}},
            {"name": "scratch", "bucket": "scratch", "prefixBase": "runs", "onDelete": "delete",
             "secret": {"name": ""}},
        ],
    },
    "pinned-mounter": {"mounter": {"image": {"repository": "registry.example/cachefs", "tag": "0.0.9"}}},
    "node-only": {"controller": {"enabled": False}, "metrics": {"enabled": False}, "storageClasses": [],
                  "image": {"tag": "dev"}, "imagePullSecrets": [{"name": "regcred"}]},
}


def render(values) -> list[dict]:
    out = helm.Chart.load(str(CHART)).render(values, name="cachefs", namespace="cachefs", is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            assert "csi.cachefs.io" in text
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def validate(doc: dict) -> None:
    if doc["kind"] == "PrometheusRule":
        validate_prometheus_rule(doc)
        return
    if doc["kind"] in CRD_KINDS:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["spec"]["endpoints"]
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def validate_prometheus_rule(doc: dict) -> None:
    """The Prometheus Operator's CRD schema for what the chart uses: spec.groups[] of {name, rules[]},
    each rule an alert (or record) with a string expr, a duration `for`, string labels/annotations."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc["spec"]) == {"groups"} and doc["spec"]["groups"]
    for group in doc["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}, rule
            assert ("alert" in rule) != ("record" in rule) and isinstance(rule["expr"], str)
            assert re.fullmatch(r"(\d+[smhdwy])+", rule.get("for", "0s")), rule
            for key in ("labels", "annotations"):
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in rule.get(key, {}).items())


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request):
    return request.param, render(VALUE_SETS[request.param])


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def test_lint_is_clean_for_every_value_set():
    for name, values in VALUE_SETS.items():
        report = helm.lint(str(CHART), values, strict=True)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert problems == [], f"{name}: {problems}"


def test_every_manifest_validates(rendered):
    name, docs = rendered
    assert docs
    for doc in docs:
        validate(doc)


def test_node_plugin_has_what_fuse_and_kubelet_need(rendered):
    name, docs = rendered
    sets = {d["metadata"]["name"]: d for d in by_kind(docs, "DaemonSet")}
    assert sorted(sets) == ["cachefs-mounter", "cachefs-node"]
    pod = sets["cachefs-node"]["spec"]["template"]["spec"]
    mpod = sets["cachefs-mounter"]["spec"]["template"]["spec"]
    main, mounter = pod["containers"][0], mpod["containers"][0]

    # The mounter holds the FUSE daemons: privileged, /dev/fuse, Bidirectional propagation.
    assert mounter["securityContext"]["privileged"] is True
    mmounts = {m["name"]: m for m in mounter["volumeMounts"]}
    assert mmounts["pods-dir"]["mountPropagation"] == "Bidirectional"
    assert mmounts["fuse"]["mountPath"] == "/dev/fuse"
    assert mounter["args"][:2] == ["csi", "mounter"] and "livenessProbe" not in mounter
    assert mounter["resources"]["limits"]["memory"]
    assert sets["cachefs-mounter"]["spec"]["updateStrategy"]["type"] == "OnDelete"
    assert mpod["automountServiceAccountToken"] is False
    assert mpod["terminationGracePeriodSeconds"] > 20

    # The node server is not privileged; it sees the mounts and reaches the mounter's socket.
    assert "privileged" not in main["securityContext"] and main["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    assert mounts["pods-dir"]["mountPropagation"] == "HostToContainer"
    assert "fuse" not in mounts
    socket_arg = next(a for a in mounter["args"] if a.startswith("--socket="))
    assert socket_arg.replace("--socket=", "--mounter=") in main["args"]
    sock_dir = socket_arg.removeprefix("--socket=unix://").rsplit("/", 1)[0]
    assert mounts["mounter-socket"]["mountPath"] == mmounts["mounter-socket"]["mountPath"] == sock_dir
    assert mounts["state"]["mountPath"] == mmounts["state"]["mountPath"]
    assert sets["cachefs-node"]["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert main["livenessProbe"]["httpGet"]["port"] == "healthz"
    names = [c["name"] for c in pod["containers"]]
    assert names == ["cachefs", "node-driver-registrar", "liveness-probe"]
    registrar = pod["containers"][1]["args"]
    assert f"--kubelet-registration-path=/var/lib/kubelet/plugins/{DRIVER_NAME}/csi.sock" in registrar
    assert mpod["tolerations"] == pod["tolerations"]
    [driver] = by_kind(docs, "CSIDriver")
    assert driver["metadata"]["name"] == DRIVER_NAME and driver["spec"]["attachRequired"] is False
    if name == "tiers-and-monitoring":
        assert "--cache=mem:4GiB" in main["args"]
        assert "--cache=ssd:/cache/nvme/{slot}:400GiB" in main["args"]
        vols = {v["name"]: v for v in mpod["volumes"]}
        assert vols["tier-nvme"]["hostPath"]["path"] == "/mnt/nvme0/cachefs"
        assert vols["tier-scratch"]["emptyDir"] == {"sizeLimit": "2Ti"}
        assert mmounts["tier-nvme"]["mountPath"] == mounts["tier-nvme"]["mountPath"] == "/cache/nvme"
        assert mounts["tier-nvme"]["readOnly"] is True and "tier-scratch" not in mounts
        assert "--endpoint-url=http://rgw.storage:7480" in main["args"]
        assert not any(a.startswith("--warm-labels") for a in main["args"])
        assert pod["automountServiceAccountToken"] is False
        ports = [p["containerPort"] for p in mounter["ports"]]
        assert ports == [9750, 9751, 9752, 9753]
        [svc] = by_kind(docs, "Service")
        assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "mounter"
    if name == "node-only":
        assert mounter["image"] == main["image"] == "ghcr.io/cachefs/cachefs:dev"
    if name == "pinned-mounter":
        assert mounter["image"] == "registry.example/cachefs:0.0.9"
        assert main["image"] == "ghcr.io/cachefs/cachefs:0.1.0"


def test_rbac_is_least_privilege(rendered):
    name, docs = rendered
    roles = {d["metadata"]["name"]: d for d in by_kind(docs, "ClusterRole") + by_kind(docs, "Role")}
    node_role = roles.get("cachefs-node")
    if name == "tiers-and-monitoring":
        assert node_role is None                       # no warm labels: no API access at all
    else:
        assert node_role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    for role in roles.values():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            if "secrets" in rule["resources"]:
                assert rule["verbs"] == ["get"] and rule["resourceNames"]
    assert bool(by_kind(docs, "Deployment")) == (name != "node-only")


def test_storage_classes_carry_bucket_policy_and_secrets(rendered):
    name, docs = rendered
    classes = {d["metadata"]["name"]: d for d in by_kind(docs, "StorageClass")}
    if name == "default":
        p = classes["cachefs"]["parameters"]
        assert p["bucket"] == "datasets" and p["onDelete"] == "retain"
        assert p["csi.storage.k8s.io/node-publish-secret-name"] == "cachefs-s3"
        assert p["csi.storage.k8s.io/provisioner-secret-namespace"] == "cachefs"
    if name == "tiers-and-monitoring":
        ds = classes["datasets"]
        assert ds["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
        assert ds["parameters"]["block_size"] == "8MiB" and ds["parameters"]["entry_timeout"] == "7200"
        assert ds["reclaimPolicy"] == "Retain"
        assert not any(k.startswith("csi.storage.k8s.io/") for k in classes["scratch"]["parameters"])
        assert by_kind(docs, "ServiceMonitor")[0]["metadata"]["labels"]["release"] == "prom"
        [svc] = by_kind(docs, "Service")
        assert [p["port"] for p in svc["spec"]["ports"]] == [9750, 9751, 9752, 9753]
    if name == "node-only":
        assert classes == {} and not by_kind(docs, "Service")


def test_examples_validate():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                validate(doc)


def test_every_volume_mount_names_a_volume_of_its_pod(rendered):
    name, docs = rendered
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if not spec:
            continue
        volumes = {v["name"] for v in spec.get("volumes", [])}
        used = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        assert used <= volumes, (name, doc["metadata"]["name"], used - volumes)
        assert volumes <= used, (name, doc["metadata"]["name"], volumes - used)
