"""Warm labels against a fake Kubernetes API, and the affinity terms validated against the
Kubernetes schema (kubernetes-validate)."""
from __future__ import annotations

import copy
import json
import subprocess

import kubernetes_validate
import pytest
from mount_helpers import CACHEFS_SRC, PYTHON

from cachefs.csi.affinity import node_affinity, to_yaml
from cachefs.csi.labels import ANNOTATION, LABEL_PREFIX, WarmReporter, label_key, quantize_gib
from cachefs.csi.records import CacheSlots, StateDir
from cachefs.csi.warm import warm_bytes

GiB = 1 << 30
K8S_VERSION = "1.30"


class FakeKube:
    """The node calls the driver makes, on an in-memory Node with merge-patch semantics."""

    def __init__(self, *names: str):
        self.nodes = {n: {"metadata": {"name": n, "labels": {"kubernetes.io/hostname": n},
                                       "annotations": {}}} for n in names}
        self.patches: list[dict] = []

    def get_node(self, name):
        return copy.deepcopy(self.nodes[name])

    def patch_node(self, name, patch):
        self.patches.append(patch)
        meta = self.nodes[name]["metadata"]
        for field in ("labels", "annotations"):
            for k, v in patch["metadata"].get(field, {}).items():
                if v is None:
                    meta[field].pop(k, None)
                else:
                    meta[field][k] = v
        return self.get_node(name)

    def list_nodes(self, label_selector=""):
        return [copy.deepcopy(n) for n in self.nodes.values() if label_selector in n["metadata"]["labels"]]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def warm_labels(kube, node):
    return {k: v for k, v in kube.nodes[node]["metadata"]["labels"].items() if k.startswith(LABEL_PREFIX)}


def test_reporter_labels_the_warmest_datasets_within_limits():
    kube, clock = FakeKube("gpu-1"), Clock()
    warm = {"data/imagenet": 150 * GiB + 7, "data/coco": 3 * GiB, "data/tiny": GiB // 2, "logs": 0}
    for i in range(20):
        warm[f"many/set{i}"] = (2 + i) * GiB
    reporter = WarmReporter(kube, "gpu-1", lambda: dict(warm), max_labels=8, min_interval=300, clock=clock)
    assert reporter.report_once()
    labels = warm_labels(kube, "gpu-1")
    assert len(labels) == 8                                        # the label-count limit
    assert labels[label_key("data/imagenet")] == "150"
    assert label_key("data/tiny") not in labels                    # under the 1 GiB floor
    assert label_key("data/coco") not in labels                    # not among the 8 warmest
    detail = json.loads(kube.nodes["gpu-1"]["metadata"]["annotations"][ANNOTATION])
    assert detail[label_key("data/imagenet")[len(LABEL_PREFIX):]] == {"dataset": "data/imagenet",
                                                                       "bytes": 150 * GiB + 7}
    assert kube.nodes["gpu-1"]["metadata"]["labels"]["kubernetes.io/hostname"] == "gpu-1"   # not ours: kept

    # Churn: nothing is patched within the interval, nor when the rounded figures do not move.
    warm["data/imagenet"] += 3 * GiB
    clock.now += 10
    assert not reporter.report_once()
    clock.now += 600
    assert not reporter.report_once() and len(kube.patches) == 1   # 153 GiB still rounds to 150

    # A dataset that goes cold loses its label; one that warms up gains one.
    del warm["many/set19"]
    warm["data/coco"] = 500 * GiB
    clock.now += 600
    assert reporter.report_once()
    labels = warm_labels(kube, "gpu-1")
    assert label_key("many/set19") not in labels and labels[label_key("data/coco")] == "500"
    assert len(labels) == 8


def test_quantized_values_bound_the_churn():
    assert [quantize_gib(n * GiB) for n in (0, 1, 99, 100, 109, 110, 1234, 98765)] == \
        [0, 1, 99, 100, 100, 110, 1200, 98000]
    assert len({quantize_gib(n * GiB) for n in range(1, 10_000)}) < 300


def _pod_with(affinity: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "train"},
            "spec": {"containers": [{"name": "train", "image": "pytorch/pytorch"}], **affinity}}


@pytest.mark.parametrize("required", [False, True])
def test_terms_weight_nodes_by_warm_bytes_and_validate(required):
    kube, dataset = FakeKube("a", "b", "c", "d"), "data/imagenet"
    for node, gib in (("a", 400), ("b", 200), ("c", 40)):
        WarmReporter(kube, node, lambda gib=gib: {dataset: gib * GiB}).report_once()
    nodes = kube.list_nodes(label_key(dataset))
    affinity = node_affinity(dataset, nodes, required=required, min_gib=100)
    kubernetes_validate.validate(_pod_with(affinity), K8S_VERSION, strict=True)

    terms = affinity["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]

    def score(node):    # what the scheduler adds up for a node: the weights of the terms it matches
        value = int(kube.nodes[node]["metadata"]["labels"].get(label_key(dataset), "-1"))
        return sum(t["weight"] for t in terms
                   if value > int(t["preference"]["matchExpressions"][0]["values"][0]))
    assert score("a") == 100 and score("a") > score("b") > score("c") > score("d") == 0
    if required:
        [term] = affinity["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"]
        assert term["matchExpressions"] == [{"key": label_key(dataset), "operator": "Gt", "values": ["99"]}]


def test_affinity_command_prints_valid_yaml_and_json(tmp_path):
    import yaml
    nodes = {"items": [{"metadata": {"name": "a", "labels": {label_key("bkt/ds"): "64"}}}]}
    (tmp_path / "nodes.json").write_text(json.dumps(nodes))
    outputs = {}
    for fmt in ("yaml", "json"):
        r = subprocess.run([PYTHON, "-m", "cachefs", "affinity", "s3://bkt/ds", "--nodes",
                            str(tmp_path / "nodes.json"), "--required", "-o", fmt],
                           cwd=CACHEFS_SRC, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        outputs[fmt] = yaml.safe_load(r.stdout)
    assert outputs["yaml"] == outputs["json"] == node_affinity("bkt/ds", nodes["items"], True, 1)
    kubernetes_validate.validate(_pod_with(outputs["yaml"]), K8S_VERSION, strict=True)
    assert yaml.safe_load(to_yaml({"a": [1, "x: y", {"b": []}]})) == {"a": [1, "x: y", {"b": []}]}


def test_affinity_command_rejects_a_bad_dataset():
    r = subprocess.run([PYTHON, "-m", "cachefs", "affinity", "s3://Bad_Bucket/x"], cwd=CACHEFS_SRC,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("cachefs: error: not a valid bucket name")


def test_idle_slots_are_measured_on_disk(tmp_path):
    state, slots = StateDir(str(tmp_path / "state")), CacheSlots(str(tmp_path / "cache"))
    a0 = slots.claim("aaaa", "b/a", set())
    a1 = slots.claim("aaaa", "b/a", {a0})
    (tmp_path / "cache" / a0 / "blk").write_bytes(b"x" * 3 * 4096)
    (tmp_path / "cache" / a1 / "blk").write_bytes(b"x" * 4096)
    warm = warm_bytes(state, slots, lambda slot: [slots.path(slot)])
    assert warm["b/a"] >= 3 * 4096 and a1 == "aaaa-1"     # the warmest slot counts, not the sum
