"""Node labels that say which datasets a node holds warm, maintained by the node plugin.

Scheme (docs/KUBERNETES.md): `warm.cachefs.io/<dsid>: "<GiB>"`, where dsid names the dataset
(`Dataset.dsid`, from bucket/prefix) and the value is the warm size in GiB rounded down to two
significant digits, so a filling cache changes it a bounded number of times (1..99, then 100, 110 ...)
rather than on every block. Only datasets with at least `min_bytes` warm are labelled, at most
`max_labels` of them (the warmest), and the node is patched at most once per `min_interval`. The
annotation `cachefs.io/warm-datasets` spells out each labelled dataset's name and exact bytes."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cachefs import supervise
from cachefs.csi.volumes import Dataset

log = logging.getLogger(__name__)

LABEL_PREFIX = "warm.cachefs.io/"
ANNOTATION = "cachefs.io/warm-datasets"
GiB = 1 << 30


class NodeApi(Protocol):
    def get_node(self, name: str) -> dict: ...
    def patch_node(self, name: str, patch: dict) -> dict: ...


def label_key(dataset: str) -> str:
    return LABEL_PREFIX + Dataset.parse(dataset).dsid


def quantize_gib(n_bytes: int) -> int:
    gib = n_bytes // GiB
    if gib < 100:
        return gib
    step = 10 ** (len(str(gib)) - 2)
    return gib // step * step


def desired(warm: dict[str, int], min_bytes: int, max_labels: int) -> tuple[dict[str, str], dict]:
    chosen = sorted(((n, d) for d, n in warm.items() if n >= max(min_bytes, GiB)), reverse=True)[:max_labels]
    labels = {label_key(d): str(quantize_gib(n)) for n, d in chosen}
    detail = {label_key(d)[len(LABEL_PREFIX):]: {"dataset": d, "bytes": n} for n, d in chosen}
    return labels, detail


@dataclass
class WarmReporter:
    api: NodeApi
    node_name: str
    measure: Callable[[], dict[str, int]]      # {dataset: warm bytes}, see warm.warm_bytes
    min_bytes: int = GiB
    max_labels: int = 16
    min_interval: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _last_patch: float | None = field(default=None, init=False)

    def report_once(self) -> bool:
        """Patch the node if its warm labels should change and the last patch is old enough.
        Returns whether it patched."""
        if self._last_patch is not None and self.clock() - self._last_patch < self.min_interval:
            return False
        labels, detail = desired(self.measure(), self.min_bytes, self.max_labels)
        node = self.api.get_node(self.node_name)
        meta = node.get("metadata", {})
        current = {k: v for k, v in (meta.get("labels") or {}).items() if k.startswith(LABEL_PREFIX)}
        if current == labels:
            return False
        patch_labels: dict[str, str | None] = {k: None for k in current if k not in labels}
        patch_labels.update(labels)
        annotation = json.dumps(detail, sort_keys=True, separators=(",", ":")) if detail else None
        self.api.patch_node(self.node_name, {"metadata": {"labels": patch_labels,
                                                          "annotations": {ANNOTATION: annotation}}})
        self._last_patch = self.clock()
        log.info("warm labels on %s: %s", self.node_name, labels or "none")
        return True

    def run(self, stop: threading.Event, poll: float = 60.0) -> None:
        while not stop.wait(poll):
            try:
                self.report_once()
            except Exception as e:   # the API being away must not stop the reporter for good
                supervise.record_failure("labels", e, "update of warm labels")
