"""Grafana dashboards of HDC workloads, built with grafana-foundation-sdk (pure; no I/O).

    files = build_dashboards("demo", "ml", spec)        # {"hdc-ml-demo.json": <dashboard JSON model>}

The seed document's API builds any dashboard; build_dashboards uses it for the per-workload one:

    dashboard = PerformanceDashboard("HD-Compute-Toolkit")
    dashboard.add_metric("Throughput (ops/sec)", "hdc_throughput_ops_per_second")
    dashboard.add_metric("Latency p95 (ms)", "hdc_latency_percentiles{quantile='0.95'}", unit="ms")
    dashboard.add_alert(name="high_latency", condition="hdc_latency_percentiles{quantile='0.95'} > 100",
                        severity="warning")
    model = dashboard.build()            # Grafana dashboard JSON (dict); dashboard.alert_rules(): Prometheus rules

Every workload panel selects {namespace="<ns>", workload="<name>"} (the ServiceMonitor's target labels). The
replica panel reads the operator's `hdc_operator_desired_replicas` and `hdc_operator_replicas` gauges (labels
namespace, workload); the SLO panel reads the recording rules of hdc_operator.alerts. docs/monitoring.md,
Dashboards, lists the panels.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import GraphThresholdsStyleMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef, Threshold, ThresholdsMode
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from .alerts import SpecContext, promql_number

__all__ = ["PerformanceDashboard", "build_dashboards", "dashboard_file_name", "OPERATOR_SERIES", "PANEL_KINDS"]

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Series the operator exports (operator/hdc_operator/metrics.py), with their labels.
OPERATOR_SERIES = {
    "hdc_operator_desired_replicas": {"namespace", "workload"},
    "hdc_operator_replicas": {"namespace", "workload"},
}
PANEL_KINDS = ("timeseries", "stat", "heatmap", "table")
_SEVERITY_COLOURS = {"critical": "red", "warning": "orange", "info": "blue"}
_ALERT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PerformanceDashboard:
    """The seed's dashboard API: panels from PromQL (`add_metric`), alert conditions (`add_alert`), then
    `build()` -> Grafana dashboard JSON and `alert_rules()` -> the conditions as Prometheus alerting rules."""

    def __init__(
        self,
        title: str = "HD-Compute-Toolkit Dashboard",
        *,
        uid: str | None = None,
        tags: tuple[str, ...] = ("hdc",),
        refresh: str = "10s",
        description: str = "",
    ):
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"title must be a non-empty string, got {title!r}")
        self.title, self.uid, self.tags, self.refresh, self.description = title, uid, tuple(tags), refresh, description
        self._panels: list[tuple[str | None, Any]] = []  # (row title or None, panel builder)
        self._alerts: list[dict] = []
        self._row: str | None = None
        self._x = 0
        self._y = 0
        self._row_height = 0

    # --- the seed's API -------------------------------------------------------------------------------------
    def add_metric(
        self,
        title: str,
        expr: str | list[tuple[str, str]],
        *,
        unit: str | None = None,
        legend: str | None = None,
        kind: str = "timeseries",
        width: int = 12,
        height: int = 8,
        thresholds: list[tuple[float, str]] | None = None,
        description: str = "",
        heatmap_format: bool = False,
        minimum: float | None = None,
    ) -> "PerformanceDashboard":
        """A panel of one PromQL expression, or several as [(expr, legend), ...]. kind: timeseries (default),
        stat, heatmap or table; thresholds: [(value, colour)] drawn as lines/colours (base colour green)."""
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"title must be a non-empty string, got {title!r}")
        if kind not in PANEL_KINDS:
            raise ValueError(f"kind must be one of {', '.join(PANEL_KINDS)}, got {kind!r}")
        if not 1 <= width <= 24:
            raise ValueError(f"width must be between 1 and 24 grid columns, got {width!r}")
        queries = [(expr, legend)] if isinstance(expr, str) else list(expr)
        if not queries or not all(isinstance(e, str) and e.strip() for e, _ in queries):
            raise ValueError(f"expr must be a PromQL expression or a list of (expr, legend), got {expr!r}")
        panel = {"timeseries": timeseries.Panel, "stat": stat.Panel, "heatmap": heatmap.Panel, "table": table.Panel}[
            kind
        ]()
        panel.title(title).datasource(DATASOURCE)
        if description:
            panel.description(description)
        if unit:
            panel.unit(unit)
        if minimum is not None:
            panel.min(minimum)
        for i, (e, leg) in enumerate(queries):
            query = prometheus.Dataquery().expr(e).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
            if leg:
                query.legend_format(leg)
            if heatmap_format:
                query.format(PromQueryFormat.HEATMAP)
            if kind == "table":
                query.instant().format(PromQueryFormat.TABLE)
            panel.with_target(query)
        if thresholds:
            steps = [Threshold(value=None, color="green")] + [Threshold(value=v, color=c) for v, c in thresholds]
            panel.thresholds(gdash.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
            if kind == "timeseries":
                panel.thresholds_style(_line_thresholds())
        self._place(panel, width, height)
        return self

    def add_alert(
        self,
        name: str,
        condition: str,
        severity: str = "warning",
        *,
        for_: str = "0s",
        summary: str = "",
        description: str = "",
    ) -> "PerformanceDashboard":
        """An alert condition (PromQL that returns series while alerting): a stat panel counting the series
        that match it (red while any does), and a rule in alert_rules()."""
        if not isinstance(name, str) or not _ALERT_NAME_RE.match(name):
            raise ValueError(f"name must be a Prometheus alert name ([A-Za-z_][A-Za-z0-9_]*), got {name!r}")
        if severity not in _SEVERITY_COLOURS:
            raise ValueError(f"severity must be one of {', '.join(_SEVERITY_COLOURS)}, got {severity!r}")
        if not isinstance(condition, str) or not condition.strip():
            raise ValueError(f"condition must be a PromQL expression, got {condition!r}")
        self._alerts.append(
            {
                "alert": name,
                "expr": condition,
                **({"for": for_} if for_ not in ("0s", "") else {}),
                "labels": {"severity": severity},
                "annotations": {
                    "summary": summary or f"{name} ({severity})",
                    **({"description": description} if description else {}),
                },
            }
        )
        panel = (
            stat.Panel()
            .title(f"Alert: {name}")
            .datasource(DATASOURCE)
            .description(f"Series matching `{condition}` ({severity}); 0 when quiet.")
            .with_target(
                prometheus.Dataquery()
                .expr(f"count({condition}) or vector(0)")
                .ref_id("A")
                .datasource(DATASOURCE)
                .instant()
            )
            .thresholds(
                gdash.ThresholdsConfig()
                .mode(ThresholdsMode.ABSOLUTE)
                .steps([Threshold(value=None, color="green"), Threshold(value=1, color=_SEVERITY_COLOURS[severity])])
            )
        )
        self._place(panel, 6, 4)
        return self

    # --- layout and output ------------------------------------------------------------------------------------
    def row(self, title: str) -> "PerformanceDashboard":
        """Starts a new row; the following panels go under it."""
        self._new_line()
        self._panels.append((title, gdash.Row(title).grid_pos(_grid(0, self._y, 24, 1))))
        self._y += 1
        return self

    def build(self) -> dict:
        builder = (
            gdash.Dashboard(self.title)
            .tags(list(self.tags))
            .refresh(self.refresh)
            .time("now-1h", "now")
            .timezone("browser")
            .editable()
            .with_variable(gdash.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        )
        if self.uid:
            builder.uid(self.uid)
        if self.description:
            builder.description(self.description)
        for _row, panel in self._panels:
            if isinstance(panel, gdash.Row):
                builder.with_row(panel)
            else:
                builder.with_panel(panel)
        model = json.loads(JSONEncoder(sort_keys=True).encode(builder.build()))
        for i, panel in enumerate(_walk_panels(model["panels"]), start=1):
            panel["id"] = i
        return model

    def alert_rules(self) -> list[dict]:
        """The add_alert conditions as Prometheus alerting rules (a group's `rules`)."""
        return [dict(rule) for rule in self._alerts]

    def expressions(self) -> list[str]:
        """Every PromQL expression of the dashboard's panels (for checking them)."""
        return [t["expr"] for p in _walk_panels(self.build()["panels"]) for t in p.get("targets", [])]

    def _place(self, panel, width: int, height: int) -> None:
        if self._x + width > 24:
            self._new_line()
        panel.grid_pos(_grid(self._x, self._y, width, height))
        self._panels.append((self._row, panel))
        self._x += width
        self._row_height = max(self._row_height, height)

    def _new_line(self) -> None:
        if self._x:
            self._y += self._row_height
        self._x, self._row_height = 0, 0


def _grid(x: int, y: int, w: int, h: int):
    from grafana_foundation_sdk.models.dashboard import GridPos

    return GridPos(x=x, y=y, w=w, h=h)


def _line_thresholds():
    from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig

    return GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.LINE)


def _walk_panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels", []))


def dashboard_file_name(name: str, namespace: str) -> str:
    return f"hdc-{namespace}-{name}.json"


def build_dashboards(name: str, namespace: str, spec: Mapping[str, Any]) -> dict[str, dict]:
    """{file name: Grafana dashboard JSON model} of workload `name` in `namespace` (spec: the defaulted spec)."""
    ctx = SpecContext(_check("name", name), _check("namespace", namespace), spec, "")
    sel = ctx.sel
    latency_ms = ctx.number("alerts.highLatency.p95ThresholdMs")
    error_ratio = ctx.number("alerts.highErrorRate.thresholdPercent", maximum=100) / 100
    memory_mb = ctx.number("alerts.highMemoryUsage.thresholdMb")
    gpu_percent = ctx.number("alerts.lowGpuUtilization.thresholdPercent", maximum=100)
    degradation = ctx.number("continuousBenchmark.degradationThreshold")
    availability = ctx.number("alerts.slo.availabilityTargetPercent", maximum=100)
    latency_slo = ctx.number("alerts.slo.latencyTargetPercent", maximum=100)

    d = PerformanceDashboard(
        f"HDC workload {namespace}/{name}",
        uid=_uid(name, namespace),
        tags=("hdc", "hdc-workload", f"namespace:{namespace}"),
        description=f"HDCWorkload {namespace}/{name}: generated by hdc-operator",
    )
    d.row("Traffic")
    d.add_metric(
        "Throughput (hypervector ops/sec)",
        [
            (f"sum by (operation) (rate(hdc_hypervector_operations_total{{{sel}}}[1m]))", "{{operation}}"),
            (f"sum(rate(hdc_hypervector_operations_total{{{sel}}}[1m]))", "total"),
        ],
        unit="ops",
        minimum=0,
        description="Hypervectors processed per second, by operation (all pods)",
    )
    d.add_metric(
        "Requests/sec",
        f"sum by (operation) (rate(hdc_operation_total{{{sel}}}[1m]))",
        unit="reqps",
        legend="{{operation}}",
        minimum=0,
    )
    buckets = f"sum by (le) (rate(hdc_operation_duration_seconds_bucket{{{sel}}}[5m]))"
    d.add_metric(
        "Latency percentiles (ms)",
        [(f"histogram_quantile({q}, {buckets}) * 1000", f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)],
        unit="ms",
        thresholds=[(latency_ms, "red")],
        minimum=0,
        description=f"All pods, from the duration histogram; HDC_HighLatency fires over {promql_number(latency_ms)} ms",
    )
    d.add_metric(
        "Latency p95 by operation and pod (ms, last 60 s)",
        f'max by (operation, pod) (hdc_latency_percentiles{{{sel}, quantile="0.95"}})',
        legend="{{operation}} {{pod}}",
        unit="ms",
        thresholds=[(latency_ms, "red")],
        minimum=0,
        description="What HDC_HighLatency evaluates: each worker's sliding-window p95",
    )
    d.add_metric(
        "Error rate",
        [
            (
                f"sum(rate(hdc_operation_errors_total{{{sel}}}[5m])) / sum(rate(hdc_operation_total{{{sel}}}[5m]))",
                "all errors",
            ),
        ],
        unit="percentunit",
        thresholds=[(error_ratio, "red")],
        minimum=0,
        description=f"Failed / all /v1 operations; HDC_HighErrorRate fires over {promql_number(error_ratio * 100)}%",
    )
    d.add_metric(
        "Errors/sec by code",
        f"sum by (error, operation) (rate(hdc_operation_errors_total{{{sel}}}[5m]))",
        legend="{{operation}}: {{error}}",
        unit="reqps",
        minimum=0,
    )

    d.row("Resources")
    d.add_metric(
        "GPU utilization (%)",
        f"max by (pod, device) (hdc_gpu_utilization_percent{{{sel}}})",
        legend="{{pod}} {{device}}",
        unit="percent",
        thresholds=[(gpu_percent, "orange")],
        minimum=0,
        width=8,
    )
    d.add_metric(
        "GPU memory",
        f"max by (pod, device) (hdc_gpu_memory_usage_bytes{{{sel}}})",
        legend="{{pod}} {{device}}",
        unit="bytes",
        minimum=0,
        width=8,
    )
    d.add_metric(
        "Worker memory",
        [
            (f'max by (pod) (hdc_memory_usage_bytes{{{sel}, component="process"}})', "{{pod}} process"),
            (f'max by (pod) (hdc_memory_usage_bytes{{{sel}, component="item_memories"}})', "{{pod}} item memories"),
        ],
        unit="bytes",
        thresholds=[(memory_mb * 1024 * 1024, "red")],
        minimum=0,
        width=8,
    )
    d.add_metric(
        "Batch size distribution",
        f"sum by (le) (rate(hdc_batch_size_distribution_bucket{{{sel}}}[1m]))",
        legend="{{le}}",
        kind="heatmap",
        heatmap_format=True,
        description="Micro-batch sizes (requests per kernel call)",
    )
    d.add_metric(
        "CPU (% of one core)",
        f"max by (pod) (hdc_cpu_usage_percent{{{sel}}})",
        legend="{{pod}}",
        unit="percent",
        minimum=0,
    )

    d.row("Scaling")
    d.add_metric(
        "Desired vs actual replicas",
        [
            (f"max(hdc_operator_desired_replicas{{{sel}}})", "desired (operator)"),
            (f"max(hdc_operator_replicas{{{sel}}})", "actual (operator)"),
            (f"count(up{{{sel}}} == 1)", "scraped and up"),
        ],
        minimum=0,
    )
    d.add_metric(
        "Capacity vs demand (hypervector ops/sec)",
        [
            (f"sum(hdc_capacity_ops_per_second{{{sel}}})", "capacity (measured, all pods)"),
            (f"sum(rate(hdc_hypervector_operations_total{{{sel}}}[1m]))", "demand"),
        ],
        unit="ops",
        minimum=0,
    )

    d.row("Benchmarks and SLOs")
    d.add_metric(
        "Benchmark trend (seconds per run)",
        f"max by (test) (hdc_benchmark_duration_seconds{{{sel}}})",
        legend="{{test}}",
        unit="s",
        minimum=0,
    )
    d.add_metric(
        "Benchmark degradation",
        f"max by (test) (hdc_benchmark_degradation_ratio{{{sel}}})",
        legend="{{test}}",
        unit="percentunit",
        thresholds=[(degradation, "red")],
        description=(
            f"(current - baseline) / baseline; HDC_BenchmarkRegression over {promql_number(degradation * 100)}%"
        ),
    )
    d.add_metric(
        "SLO burn rate (1h)",
        [
            (
                f"hdc:slo_availability_errors:ratio_rate1h{{{sel}}} / {promql_number(1 - availability / 100)}",
                f"availability ({promql_number(availability)}%)",
            ),
            (
                f"hdc:slo_latency_errors:ratio_rate1h{{{sel}}} / {promql_number(1 - latency_slo / 100)}",
                f"latency ({promql_number(latency_slo)}%)",
            ),
        ],
        thresholds=[(6, "orange"), (14.4, "red")],
        minimum=0,
        description="Error-budget burn rate: 1 spends the 30-day budget in 30 days; 14.4 pages (with the 5m window)",
    )
    d.add_metric(
        "Firing alerts",
        f'ALERTS{{{sel}, alertstate="firing"}}',
        kind="table",
        description="The workload's alerts now firing (Prometheus' ALERTS series)",
    )
    return {dashboard_file_name(name, namespace): d.build()}


def _check(field: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", value or ""):
        raise ValueError(
            f"{field} must be a Kubernetes object name (lowercase letters, digits, '-', '.'), got {value!r}"
        )
    return value


def _uid(name: str, namespace: str) -> str:
    """A Grafana uid (at most 40 characters), unique per namespace/name."""
    import hashlib

    text = f"hdc-{namespace}-{name}"
    if len(text) <= 40:
        return text
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:10]
    return f"{text[:29]}-{digest}"
