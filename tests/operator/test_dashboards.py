"""Generated Grafana dashboards: the panels the issue asks for, PromQL that promtool parses and that reads only
what a live worker (or the operator, or the alert rules) exports, and the seed's PerformanceDashboard API."""

from __future__ import annotations

import json
import re

import pytest
from monitoring_support import SEED_BASELINES, promtool_parse, rule_file_path, run_tool, spec_with, tool, unknown_names

from hdc_operator.alerts import build_rule_groups
from hdc_operator.dashboards import OPERATOR_SERIES, PerformanceDashboard, build_dashboards

NS, WL = "ml", "demo"


def _panels(model: dict) -> list[dict]:
    return [p for p in model["panels"] if p["type"] != "row"]


def _exprs(model: dict) -> list[str]:
    return [t["expr"] for p in _panels(model) for t in p["targets"]]


@pytest.fixture(scope="module")
def model() -> dict:
    files = build_dashboards(WL, NS, spec_with(baselines=SEED_BASELINES))
    assert list(files) == ["hdc-ml-demo.json"]
    return files["hdc-ml-demo.json"]


def test_has_the_panels_the_issue_asks_for(model):
    titles = [p["title"] for p in _panels(model)]
    for wanted in (
        "Throughput",
        "Latency percentiles",
        "Error rate",
        "GPU utilization",
        "GPU memory",
        "Batch size distribution",
        "Desired vs actual replicas",
        "Benchmark trend",
    ):
        assert any(t.startswith(wanted) for t in titles), f"no panel {wanted!r} in {titles}"
    assert model["title"] == "HDC workload ml/demo"
    assert model["uid"] == "hdc-ml-demo"
    assert [v["name"] for v in model["templating"]["list"]] == ["datasource"]
    assert model["schemaVersion"] >= 39  # produced by grafana-foundation-sdk's model, not hand-written JSON


def test_panels_are_well_formed(model):
    json.dumps(model)  # JSON-serializable for the ConfigMap
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels(model):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert all(ref_ids) and len(ref_ids) == len(set(ref_ids)), panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0


def test_every_selector_is_scoped_to_the_workload(model):
    for expr in _exprs(model):
        selectors = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*\{([^}]*)\}", expr)
        assert selectors, expr
        for inner in selectors:
            assert f'namespace="{NS}"' in inner and f'workload="{WL}"' in inner, expr


def test_promtool_parses_every_expression(tmp_path, model):
    result = promtool_parse(tmp_path, _exprs(model))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parse_can_fail(tmp_path):
    assert promtool_parse(tmp_path, ["sum by (le (rate(x[5m]))"]).returncode != 0


def test_expressions_read_only_exported_series(model):
    rules = [r for g in build_rule_groups(WL, NS, spec_with()) for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    assert unknown_names(_exprs(model), recorded=recorded, extra_series=OPERATOR_SERIES) == []


def test_thresholds_follow_the_spec():
    spec = spec_with(**{"alerts.highLatency.p95ThresholdMs": 250, "continuousBenchmark.degradationThreshold": 0.3})
    model = build_dashboards(WL, NS, spec)["hdc-ml-demo.json"]
    by_title = {p["title"]: p for p in _panels(model)}
    steps = by_title["Latency percentiles (ms)"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s.get("value") for s in steps] == [None, 250]
    steps = by_title["Benchmark degradation"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s.get("value") for s in steps] == [None, 0.3]


def test_uids_are_short_and_unique_for_long_names():
    a = build_dashboards("w" * 60, "n" * 60, spec_with())
    b = build_dashboards("w" * 60 + "x", "n" * 60, spec_with())
    (ma,), (mb,) = a.values(), b.values()
    assert len(ma["uid"]) <= 40 and len(mb["uid"]) <= 40 and ma["uid"] != mb["uid"]


@pytest.mark.parametrize("name, namespace, field", [("Demo", NS, "name"), (WL, 'a"b', "namespace"), ("", NS, "name")])
def test_bad_names_are_refused(name, namespace, field):
    with pytest.raises(ValueError, match=field):
        build_dashboards(name, namespace, spec_with())


def test_bad_spec_names_the_field():
    with pytest.raises(ValueError, match=re.escape("spec.alerts.highLatency.p95ThresholdMs")):
        build_dashboards(WL, NS, spec_with(**{"alerts.highLatency.p95ThresholdMs": None}))


# --- the seed's PerformanceDashboard ----------------------------------------------------------------------


def seed_dashboard() -> PerformanceDashboard:
    """The seed document's example, verbatim."""
    dashboard = PerformanceDashboard()
    dashboard.add_metric("Throughput (ops/sec)", "hdc_throughput_ops_per_second")
    dashboard.add_metric("Latency p95 (ms)", "hdc_latency_percentiles{quantile='0.95'}")
    dashboard.add_metric("Memory Usage (MB)", "hdc_memory_usage_bytes / 1024 / 1024")
    dashboard.add_metric("GPU Utilization (%)", "hdc_gpu_utilization_percent")
    dashboard.add_alert(
        name="high_latency", condition="hdc_latency_percentiles{quantile='0.95'} > 100", severity="warning"
    )
    return dashboard


def test_seed_example_builds_a_dashboard_and_a_rule(tmp_path):
    dashboard = seed_dashboard()
    model = dashboard.build()
    assert [p["title"] for p in model["panels"]] == [
        "Throughput (ops/sec)",
        "Latency p95 (ms)",
        "Memory Usage (MB)",
        "GPU Utilization (%)",
        "Alert: high_latency",
    ]
    alert_panel = model["panels"][-1]
    assert alert_panel["type"] == "stat"
    assert alert_panel["targets"][0]["expr"] == "count(hdc_latency_percentiles{quantile='0.95'} > 100) or vector(0)"
    steps = alert_panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s.get("color") for s in steps] == ["green", "orange"]
    rules = dashboard.alert_rules()
    assert rules == [
        {
            "alert": "high_latency",
            "expr": "hdc_latency_percentiles{quantile='0.95'} > 100",
            "labels": {"severity": "warning"},
            "annotations": {"summary": "high_latency (warning)"},
        }
    ]
    path = rule_file_path(tmp_path, [{"name": "seed", "rules": rules}])
    result = run_tool(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert promtool_parse(tmp_path, dashboard.expressions()).returncode == 0
    assert unknown_names(dashboard.expressions()) == []


def test_panels_flow_left_to_right_then_down():
    model = seed_dashboard().build()
    positions = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in model["panels"]]
    assert positions == [(0, 0), (12, 0), (0, 8), (12, 8), (0, 16)]


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda d: d.add_metric("", "up"), "title"),
        (lambda d: d.add_metric("x", ""), "expr"),
        (lambda d: d.add_metric("x", "up", kind="pie"), "kind"),
        (lambda d: d.add_metric("x", "up", width=30), "width"),
        (lambda d: d.add_alert("high latency", "up == 0"), "name"),
        (lambda d: d.add_alert("HighLatency", "up == 0", severity="urgent"), "severity"),
        (lambda d: d.add_alert("HighLatency", " "), "condition"),
    ],
)
def test_bad_arguments_name_the_parameter(call, field):
    with pytest.raises(ValueError, match=f"^{field} "):
        call(PerformanceDashboard())
