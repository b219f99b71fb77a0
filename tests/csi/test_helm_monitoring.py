"""The chart's Grafana dashboard and PrometheusRule: off by default, rendered when enabled, every
metric they name exported by cachefs (cachefs/metrics.py) or the kubelet, and the rules checked and
unit-tested by `promtool` (Debian's `prometheus` package; scripts/setup-debian.sh installs it)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import Histogram

from cachefs import metrics

from .test_helm import CHART, render

PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool_rules_test.yaml"
# Series from outside cachefs the dashboard and rules may use: the kubelet's volume health (what
# NodeGetVolumeStats' condition becomes) and nothing else.
EXTERNAL = {"kubelet_volume_stats_health_status_abnormal"}
ON = {"metrics": {"dashboard": {"enabled": True}, "prometheusRule": {"enabled": True}}}
# PromQL words that look like metric names: functions, aggregations, keywords, and label names.
_WORD = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NOT_METRICS = {"sum", "by", "rate", "increase", "scalar", "on", "group_left", "max", "min", "count", "or",
                "vector", "and", "histogram_quantile", "offset", "le", "label_values"}


def exported_names() -> set[str]:
    histograms = {m._name for m in vars(metrics).values() if isinstance(m, Histogram)}
    names = set(metrics.ALL_NAMES) - histograms          # a histogram exists only as its three series
    return names | {h + s for h in histograms for s in ("_bucket", "_sum", "_count")}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside {...} label matchers and [...]
    ranges and quotes, not followed by '(' (a function) and not a grouping label list."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"label_values\(([^,)]+)(,[^)]*)?\)", r"(\1)", text)     # Grafana: (metric, label)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    return {w for w in _WORD.findall(text) if w not in _NOT_METRICS and not re.fullmatch(r"\d.*", w)
            and not re.search(rf"\b{re.escape(w)}\s*\(", text)}


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def monitoring():
    docs = render(ON)
    [cm] = by_kind(docs, "ConfigMap")
    [rule] = by_kind(docs, "PrometheusRule")
    return json.loads(cm["data"]["cachefs.json"]), cm, rule


def dashboard_exprs(dash: dict) -> list[str]:
    out = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    out += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    return out


def test_off_by_default():
    docs = render(None)
    assert not by_kind(docs, "PrometheusRule") and not by_kind(docs, "ConfigMap")


def test_metric_names_are_found_in_promql():
    assert metric_names('sum by (tier) (rate(cachefs_cache_hits_total{a="b"}[5m])) / scalar(x_total offset 1h)') \
        == {"cachefs_cache_hits_total", "x_total"}
    assert metric_names('label_values(cachefs_mount_info{source=~"$source"}, instance)') == {"cachefs_mount_info"}
    assert metric_names("histogram_quantile(0.9, sum by (le) (rate(cachefs_s3_request_seconds_bucket[1m])))") \
        == {"cachefs_s3_request_seconds_bucket"}


def test_dashboard_is_a_sidecar_configmap_with_the_panels_asked_for(monitoring):
    dash, cm, _ = monitoring
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dash["uid"] and dash["title"] == "cachefs"
    titles = " | ".join(p["title"] for p in dash["panels"])
    for want in ("Hit ratio per tier", "Hit ratio per dataset", "cache tiers vs S3", "S3 requests", "S3 errors",
                 "First byte", "Write-back queue", "Oldest pending upload", "Background failures", "Prefetch",
                 "warmup"):
        assert want in titles, want
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]


def test_every_metric_in_the_dashboard_and_rules_is_exported(monitoring):
    dash, _, rule = monitoring
    known = exported_names() | EXTERNAL
    exprs = dashboard_exprs(dash) + [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used - known == set(), f"not exported by cachefs/metrics.py: {sorted(used - known)}"
    # and the dashboard names what the issue asks for: ratios, S3, uploads, failures, prefetch
    for name in ("cachefs_cache_hits_total", "cachefs_cache_misses_total", "cachefs_cache_hit_bytes_total",
                 "cachefs_s3_requests_total", "cachefs_s3_request_seconds_bucket", "cachefs_uploads_pending",
                 "cachefs_uploads_oldest_age_seconds", "cachefs_background_failures_total",
                 "cachefs_readahead_blocks_total", "cachefs_mount_info", "cachefs_s3_down"):
        assert name in used, name


def test_rules_cover_the_alerts_and_take_the_values(monitoring):
    _, _, rule = monitoring
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {"CachefsVolumeAbnormal", "CachefsS3Down", "CachefsUploadBacklog", "CachefsCacheTierDown",
                           "CachefsHitRatioCollapse"}
    assert "> 1800" in alerts["CachefsUploadBacklog"]["expr"]            # 30 minutes by default
    assert "__" not in json.dumps(alerts)                                 # every placeholder filled
    docs = render({"metrics": {"prometheusRule": {"enabled": True, "uploadBacklogMinutes": 5, "hitRatioBelow": 0.3,
                                                  "kubeletSelector": 'namespace="ml"'}}})
    [custom] = by_kind(docs, "PrometheusRule")
    text = json.dumps(custom["spec"])
    assert "> 300" in text and "< 0.3" in text and 'abnormal{namespace=\\"ml\\"} == 1' in text


@pytest.fixture(scope="module")
def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool missing: install Debian's `prometheus` package (scripts/setup-debian.sh)")
    return path


def test_promtool_checks_and_unit_tests_the_rules(monitoring, promtool, tmp_path):
    _, _, rule = monitoring
    (tmp_path / "cachefs.rules.yaml").write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    shutil.copy(PROMTOOL_TESTS, tmp_path / "rules_test.yaml")
    check = subprocess.run([promtool, "check", "rules", "cachefs.rules.yaml"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 5 rules found" in check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "rules_test.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert test.returncode == 0, test.stdout + test.stderr


def test_chart_ships_the_monitoring_files():
    assert (CHART / "monitoring" / "dashboard.json").exists() and (CHART / "monitoring" / "rules.yaml").exists()


def test_dashboard_json_is_the_generators_output(tmp_path):
    out = tmp_path / "dashboard.json"
    subprocess.run([sys.executable, str(CHART.parents[1] / "scripts" / "gen_grafana_dashboard.py"), str(out)],
                   check=True, timeout=60)
    assert out.read_text() == (CHART / "monitoring" / "dashboard.json").read_text(), \
        "run scripts/gen_grafana_dashboard.py after editing it"
