"""`cachefs affinity DATASET`: the nodeAffinity that steers a pod to nodes warm for a dataset.

Preferred terms test the node's warm label against thresholds at 0, 1/4, 1/2 and 3/4 of the warmest
node's figure, 25 weight each: a node collects weight for every threshold it passes, so its total
grows with its warm bytes, and the terms keep working as the labels change after they were printed.
`required` adds a hard term: the node must hold at least `min_gib` GiB of the dataset."""
from __future__ import annotations

import json

from cachefs.csi.labels import label_key

WEIGHT_STEPS = 4     # thresholds; 100 / 4 = 25 weight each, the scheduler's maximum being 100


def _expr(key: str, gt: int) -> dict:
    return {"key": key, "operator": "Gt", "values": [str(gt)]}


def node_values(nodes: list[dict], key: str) -> list[int]:
    out = []
    for node in nodes:
        value = ((node.get("metadata") or {}).get("labels") or {}).get(key)
        if value is not None and value.isdigit():
            out.append(int(value))
    return out


def node_affinity(dataset: str, nodes: list[dict], required: bool = False, min_gib: int = 1) -> dict:
    key = label_key(dataset)
    values = node_values(nodes, key)
    top = max(values, default=0)
    weights: dict[int, int] = {}
    for k in range(WEIGHT_STEPS):
        t = top * k // WEIGHT_STEPS
        weights[t] = weights.get(t, 0) + 100 // WEIGHT_STEPS
    preferred = [{"weight": w, "preference": {"matchExpressions": [_expr(key, t)]}}
                 for t, w in sorted(weights.items())]
    out: dict = {"preferredDuringSchedulingIgnoredDuringExecution": preferred}
    if required:
        out["requiredDuringSchedulingIgnoredDuringExecution"] = {
            "nodeSelectorTerms": [{"matchExpressions": [_expr(key, max(min_gib, 1) - 1)]}]}
    return {"affinity": {"nodeAffinity": out}}


def to_yaml(value, indent: int = 0) -> str:
    """Block YAML for the dicts, lists and scalars above (no dependency for one small output)."""
    pad = " " * indent
    lines = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{to_yaml(v, indent + 2)}")
            else:
                lines.append(f"{pad}{k}: {_scalar(v)}")
    else:
        for item in value:
            body = to_yaml(item, indent + 2) if isinstance(item, (dict, list)) else pad + "  " + _scalar(item)
            lines.append(f"{pad}- {body.lstrip()}")
    return "\n".join(lines)


def _scalar(v) -> str:
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else json.dumps(v)
