"""Prometheus alerting and recording rules of one HDCWorkload, generated from its spec (pure; no I/O).

    groups = build_rule_groups("demo", "ml", spec)      # spec: the fully defaulted HDCWorkload spec dict
    # -> the `spec.groups` of the workload's PrometheusRule, or a Prometheus rule file as {"groups": groups}

Every expression selects the workload's series with {namespace="<ns>", workload="<name>"}: the target labels
the ServiceMonitor adds to every scraped series. The metric names are the worker's
(worker/hd_compute/monitoring/metrics.py); `up` is Prometheus' own. docs/monitoring.md explains each alert and
docs/runbooks/<AlertName>.md says what to do about it.

Groups (each name carries namespace and workload, so rule files of several workloads can be loaded together):
  hdc.<ns>.<name>.alerts     the seed's four alerts, workers down/absent, benchmark regression
  hdc.<ns>.<name>.baselines  per spec.baselines entry: latency, throughput, memory (absent without baselines)
  hdc.<ns>.<name>.slo        recording rules (error and slow-request ratios over 5m..3d) and the
                             multiwindow, multi-burn-rate SLO alerts of Google's SRE workbook (chapter 5)
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

__all__ = [
    "build_rule_groups",
    "rule_file",
    "ALERT_NAMES",
    "DEFAULT_RUNBOOK_BASE_URL",
    "WORKER_DURATION_BUCKETS",
    "SERVER_ERROR_CODES",
    "BENCHMARK_TESTS",
    "BURN_RATE_WINDOWS",
    "SLO_WINDOWS",
    "latency_bucket",
    "SpecContext",
    "promql_number",
]

# Where docs/runbooks/<AlertName>.md is published; build_rule_groups(runbook_base_url=...) overrides it.
DEFAULT_RUNBOOK_BASE_URL = "https://github.com/hd-compute/hd-compute-toolkit/blob/main/docs/runbooks"

# The bucket boundaries (seconds) of hdc_operation_duration_seconds, as the worker declares them
# (hd_compute.monitoring.metrics.DURATION_BUCKETS; a test keeps the two equal). The latency SLO counts
# requests under a boundary, so the target is rounded down to one of these.
WORKER_DURATION_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# Error codes (the `error` label of hdc_operation_errors_total) that are the worker's fault: they burn the
# availability SLO. Client errors (invalid_field, memory_not_found, body_too_large, ...) do not; they still
# count in HDC_HighErrorRate, as in the seed. A test keeps this list equal to the 5xx codes in the worker.
SERVER_ERROR_CODES = (
    "internal_error",
    "cuda_out_of_memory",
    "insufficient_memory",
    "not_ready",
    "injected_fault",
    "state_unavailable",
)

# The continuous benchmark's tests, the `test` label of hdc_benchmark_* (the worker schedules these; a test keeps
# the list equal to hd_compute.monitoring.benchmark.STANDARD_TESTS). A baseline's maxMemoryMb is judged by the
# peak memory of the test named like the baseline, the seed's baselines being named after them.
BENCHMARK_TESTS = ("bundle_10k_vectors", "bind_32k_dimension", "similarity_batch_1000")

# Multiwindow, multi-burn-rate alerts (SRE workbook, "Alerting on SLOs", recommendation 6):
# (long window, short window, burn rate, severity, for). Burn rate 14.4 over 1h spends 2 % of a 30-day
# budget; 6 over 6h spends 5 %: both page. 1 over 3d spends 10 %: a ticket. The short window (1/12 of the
# long one) makes an alert resolve soon after the burn stops.
BURN_RATE_WINDOWS = (
    ("1h", "5m", 14.4, "critical", "2m"),
    ("6h", "30m", 6.0, "critical", "2m"),
    ("3d", "6h", 1.0, "warning", "30m"),
)
SLO_WINDOWS = ("5m", "30m", "1h", "6h", "3d")

# How long a replica may know of a committed state version it has not applied (hdc_state_lag_seconds) before
# HDC_StateReplicaLagging: a follower polls the log every second, so a healthy replica stays far below.
STATE_LAG_SECONDS = 30.0

ALERT_NAMES = (
    "HDC_HighLatency",
    "HDC_HighMemoryUsage",
    "HDC_LowGPUUtilization",
    "HDC_HighErrorRate",
    "HDC_WorkerDown",
    "HDC_WorkersAbsent",
    "HDC_StateReplicaLagging",
    "HDC_StateStoreUnreachable",
    "HDC_BenchmarkRegression",
    "HDC_BaselineLatencyExceeded",
    "HDC_BaselineThroughputBelowMinimum",
    "HDC_BaselineMemoryExceeded",
    "HDC_AvailabilitySLOBurnRateHigh",
    "HDC_AvailabilitySLOBudgetBurning",
    "HDC_LatencySLOBurnRateHigh",
    "HDC_LatencySLOBudgetBurning",
)

# spec.baselines[].operation -> the worker's `operation` label, where the two differ.
_BASELINE_OPERATIONS = {
    "query": "memory_query",
    "add": "memory_add",
    "fit": "classifier_fit",
    "predict": "classifier_predict",
}

# One Prometheus rule or rule group, as the PrometheusRule's YAML holds it.
Rule = dict[str, Any]

_DURATION_RE = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|y))+$")
_LABEL_VALUE_FORBIDDEN = re.compile(r'["\\\n]')


def build_rule_groups(
    name: str, namespace: str, spec: Mapping[str, Any], *, runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL
) -> list[Rule]:
    """The rule groups (PrometheusRule `spec.groups`) of workload `name` in `namespace`.

    `spec` is the fully defaulted HDCWorkload spec (camelCase). A missing or ill-typed field raises ValueError
    naming it (spec.alerts.highLatency.p95ThresholdMs, ...)."""
    ctx = SpecContext(
        _label_value("name", name), _label_value("namespace", namespace), spec, runbook_base_url.rstrip("/")
    )
    groups = [{"name": f"hdc.{namespace}.{name}.alerts", "rules": _core_alerts(ctx)}]
    baseline_rules = _baseline_alerts(ctx)
    if baseline_rules:
        groups.append({"name": f"hdc.{namespace}.{name}.baselines", "rules": baseline_rules})
    groups.append({"name": f"hdc.{namespace}.{name}.slo", "rules": _slo_rules(ctx)})
    return groups


def rule_file(groups: list[Rule]) -> dict[str, list[Rule]]:
    """A Prometheus rule file (rule_files:) holding `groups`: what `promtool check rules` reads."""
    return {"groups": groups}


def latency_bucket(target_ms: float) -> float:
    """The largest worker bucket boundary (seconds) at or under `target_ms`: requests at or under it are
    'fast' for the latency SLO. Rounding down makes the SLI stricter, never looser; a target under the first
    boundary uses the first boundary."""
    seconds = target_ms / 1000.0
    fitting = [b for b in WORKER_DURATION_BUCKETS if b <= seconds * (1 + 1e-9)]
    return fitting[-1] if fitting else WORKER_DURATION_BUCKETS[0]


# ---------------------------------------------------------------------------------------------------------


class SpecContext:
    """One workload's spec as rules and dashboards read it: values checked as they are read (a bad one raises
    ValueError naming spec.<path>), the selector of its series (`sel`), and alert rules with their runbook link."""

    def __init__(self, name: str, namespace: str, spec: Mapping[str, Any], runbook_base_url: str):
        if not isinstance(spec, Mapping):
            raise ValueError(f"spec must be a mapping (the HDCWorkload spec), got {type(spec).__name__}")
        self.name, self.namespace, self.spec, self.runbook_base_url = name, namespace, spec, runbook_base_url
        self.sel = f'namespace="{namespace}", workload="{name}"'

    def get(self, path: str) -> Any:
        """spec value at dotted `path`; ValueError naming spec.<path> when absent."""
        node: Any = self.spec
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ValueError(f"spec.{path} is required (the spec must be fully defaulted)")
            node = node[part]
        return node

    def number(self, path: str, *, minimum: float = 0.0, maximum: float | None = None) -> float:
        value = self.get(path)
        return _number(f"spec.{path}", value, minimum=minimum, maximum=maximum)

    def duration(self, path: str) -> str:
        value = self.get(path)
        return _duration(f"spec.{path}", value)

    def alert(
        self,
        alert: str,
        expr: str,
        *,
        for_: str | None,
        severity: str,
        summary: str,
        description: str,
        labels: Mapping[str, str] | None = None,
    ) -> Rule:
        rule: dict[str, Any] = {"alert": alert, "expr": expr}
        if for_ and not re.fullmatch(r"0+(ms|s|m|h|d|w|y)", for_):
            rule["for"] = for_
        rule["labels"] = {"severity": severity, **(labels or {})}
        rule["annotations"] = {
            "summary": summary,
            "description": description,
            "runbook_url": f"{self.runbook_base_url}/{alert}.md",
        }
        return rule


def _number(field: str, value: Any, *, minimum: float = 0.0, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum:g}" if maximum is None else f"between {minimum:g} and {maximum:g}"
        raise ValueError(f"{field} must be {bound}, got {value!r}")
    return float(value)


def _duration(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _DURATION_RE.fullmatch(value):
        raise ValueError(f"{field} must be a Prometheus duration such as 30s, 5m or 1h30m, got {value!r}")
    return value


def _label_value(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value or _LABEL_VALUE_FORBIDDEN.search(value):
        raise ValueError(f"{field} must be a non-empty string without quotes, backslashes or newlines, got {value!r}")
    return value


def promql_number(value: float) -> str:
    """A PromQL number literal: 100 not 100.0, 0.001 not 0.0010000000000000009."""
    text = format(value, ".10g")
    return text


def _le_matcher(seconds: float) -> str:
    """The `le` matcher of bucket `seconds`: prometheus_client writes 1.0 where Prometheus 3 normalizes to 1."""
    from prometheus_client.utils import floatToGoString

    written: str = floatToGoString(seconds)  # type: ignore[no-untyped-call]  # prometheus_client.utils is unannotated
    normalized = str(int(seconds)) if float(seconds).is_integer() else written
    if written == normalized:
        return f'le="{written}"'
    # a PromQL string: the regex's backslashes are escaped once more
    return 'le=~"' + "|".join(re.escape(v).replace("\\", "\\\\") for v in (normalized, written)) + '"'


def _core_alerts(ctx: SpecContext) -> list[Rule]:
    sel = ctx.sel
    latency_ms = ctx.number("alerts.highLatency.p95ThresholdMs")
    memory_mb = ctx.number("alerts.highMemoryUsage.thresholdMb")
    gpu_percent = ctx.number("alerts.lowGpuUtilization.thresholdPercent", maximum=100)
    error_percent = ctx.number("alerts.highErrorRate.thresholdPercent", maximum=100)
    rules = [
        ctx.alert(
            "HDC_HighLatency",
            f"max by (namespace, workload, pod, operation) "
            f'(hdc_latency_percentiles{{{sel}, quantile="0.95"}}) > {promql_number(latency_ms)}',
            for_=ctx.duration("alerts.highLatency.for"),
            severity="warning",
            summary="HD-Compute operations experiencing high latency",
            description=(
                f"95th percentile latency of {{{{ $labels.operation }}}} on {{{{ $labels.pod }}}} is "
                f"{{{{ $value | humanize }}}}ms (threshold {promql_number(latency_ms)}ms)"
            ),
        ),
        ctx.alert(
            "HDC_HighMemoryUsage",
            f"max by (namespace, workload, pod) "
            f'(hdc_memory_usage_bytes{{{sel}, component="process"}}) / 1024 / 1024 > {promql_number(memory_mb)}',
            for_=ctx.duration("alerts.highMemoryUsage.for"),
            severity="critical",
            summary="HD-Compute high memory usage",
            description=(
                f'Memory usage of {{{{ $labels.pod }}}} is {{{{ printf "%.0f" $value }}}}MB '
                f"(threshold {promql_number(memory_mb)}MB)"
            ),
        ),
    ]
    if ctx.number("resources.gpus") > 0:  # without GPUs the gauge does not exist; the rule would be noise
        rules.append(
            ctx.alert(
                "HDC_LowGPUUtilization",
                f"max by (namespace, workload, pod, device) "
                f"(hdc_gpu_utilization_percent{{{sel}}}) < {promql_number(gpu_percent)}",
                for_=ctx.duration("alerts.lowGpuUtilization.for"),
                severity="info",
                summary="GPU underutilized",
                description=(
                    f"GPU utilization of {{{{ $labels.device }}}} on {{{{ $labels.pod }}}} is only "
                    f"{{{{ $value | humanize }}}}% (threshold {promql_number(gpu_percent)}%)"
                ),
            )
        )
    rules.append(
        ctx.alert(
            "HDC_HighErrorRate",
            f"sum by (namespace, workload) (rate(hdc_operation_errors_total{{{sel}}}[5m])) "
            f"/ sum by (namespace, workload) (rate(hdc_operation_total{{{sel}}}[5m])) "
            f"> {promql_number(error_percent / 100)}",
            for_=ctx.duration("alerts.highErrorRate.for"),
            severity="critical",
            summary="High error rate in HD-Compute operations",
            description=(
                f"Error rate of workload {{{{ $labels.namespace }}}}/{{{{ $labels.workload }}}} is "
                f"{{{{ $value | humanizePercentage }}}} (threshold {promql_number(error_percent)}%)"
            ),
        )
    )
    rules.append(
        ctx.alert(
            "HDC_WorkerDown",
            f"up{{{sel}}} == 0",
            for_="1m",
            severity="critical",
            summary="HD-Compute worker is not answering scrapes",
            description="Prometheus cannot scrape {{ $labels.pod }} ({{ $labels.instance }}) of workload "
            "{{ $labels.namespace }}/{{ $labels.workload }} for 1 minute",
        )
    )
    rules.append(
        ctx.alert(
            "HDC_WorkersAbsent",
            f"absent(up{{{sel}}})",
            for_="5m",
            severity="critical",
            summary="No HD-Compute worker of the workload is scraped",
            description=f"Prometheus has no scrape target of workload {ctx.namespace}/{ctx.name} for 5 minutes",
        )
    )
    if ctx.get("state.backend") != "none":  # without a state store the state gauges mean nothing
        rules += _state_alerts(ctx)
    if ctx.get("continuousBenchmark.enabled"):
        threshold = ctx.number("continuousBenchmark.degradationThreshold")
        rules.append(
            ctx.alert(
                "HDC_BenchmarkRegression",
                f"max by (namespace, workload, pod, test) "
                f"(hdc_benchmark_degradation_ratio{{{sel}}}) > {promql_number(threshold)}",
                for_=ctx.duration("alerts.benchmarkRegression.for"),
                severity="warning",
                summary="HD-Compute continuous benchmark regressed",
                description=(
                    f"Benchmark {{{{ $labels.test }}}} on {{{{ $labels.pod }}}} is "
                    f"{{{{ $value | humanizePercentage }}}} slower than its baseline "
                    f"(threshold {promql_number(threshold * 100)}%)"
                ),
            )
        )
    return rules


def _state_alerts(ctx: SpecContext) -> list[Rule]:
    """A replica that follows the state store too slowly, and one that cannot read it (docs/state.md)."""
    sel = ctx.sel
    return [
        ctx.alert(
            "HDC_StateReplicaLagging",
            f"max by (namespace, workload, pod) (hdc_state_lag_seconds{{{sel}}}) > {promql_number(STATE_LAG_SECONDS)}",
            for_="2m",
            severity="warning",
            summary="An HD-Compute replica serves an old state",
            description=(
                f"{{{{ $labels.pod }}}} has known of state versions it has not applied for "
                f"{{{{ $value | humanizeDuration }}}} (threshold {promql_number(STATE_LAG_SECONDS)}s); reads "
                f"without a version token see old memories and classifiers there"
            ),
        ),
        ctx.alert(
            "HDC_StateStoreUnreachable",
            f"max by (namespace, workload, pod) (hdc_state_store_reachable{{{sel}}}) == 0",
            for_="1m",
            severity="critical",
            summary="An HD-Compute replica cannot reach its state store",
            description=(
                "{{ $labels.pod }} has not read the state store's log for 1 minute (reachable = {{ $value }}): "
                "its writes answer 503 state_unavailable and it is not ready"
            ),
        ),
    ]


def _baseline_alerts(ctx: SpecContext) -> list[Rule]:
    baselines = ctx.get("baselines")
    if not isinstance(baselines, list):
        raise ValueError(f"spec.baselines must be a list, got {type(baselines).__name__}")
    sel = ctx.sel
    default_latency_ms = ctx.number("alerts.highLatency.p95ThresholdMs")
    benchmark_on = bool(ctx.get("continuousBenchmark.enabled"))
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, baseline in enumerate(baselines):
        field = f"spec.baselines[{i}]"
        if not isinstance(baseline, Mapping):
            raise ValueError(f"{field} must be a mapping, got {type(baseline).__name__}")
        bname = _label_value(f"{field}.name", baseline.get("name"))
        if bname in seen:
            raise ValueError(f"{field}.name: {bname!r} is used by an earlier baseline; names must be unique")
        seen.add(bname)
        operation = _label_value(f"{field}.operation", baseline.get("operation"))
        op = _BASELINE_OPERATIONS.get(operation, operation)
        limits = {
            k: _number(f"{field}.{k}", baseline[k])
            for k in ("maxLatencyMs", "minThroughputOpsPerSec", "maxMemoryMb")
            if baseline.get(k) is not None
        }
        if not limits:
            raise ValueError(f"{field} needs at least one of maxLatencyMs, minThroughputOpsPerSec, maxMemoryMb")
        labels = {"baseline": bname}
        p95 = f'hdc_latency_percentiles{{{sel}, operation="{op}", quantile="0.95"}}'
        if "maxLatencyMs" in limits:
            limit = limits["maxLatencyMs"]
            rules.append(
                ctx.alert(
                    "HDC_BaselineLatencyExceeded",
                    f"max by (namespace, workload, pod, operation) ({p95}) > {promql_number(limit)}",
                    for_=ctx.duration("alerts.highLatency.for"),
                    severity="warning",
                    labels=labels,
                    summary=f"Baseline {bname}: {op} slower than {promql_number(limit)}ms",
                    description=(
                        f"95th percentile latency of {op} on {{{{ $labels.pod }}}} is "
                        f"{{{{ $value | humanize }}}}ms; baseline {bname} allows {promql_number(limit)}ms"
                    ),
                )
            )
        if "minThroughputOpsPerSec" in limits:
            limit = limits["minThroughputOpsPerSec"]
            # Delivered throughput only means something when the workers are saturated: low throughput under
            # low demand is fine. Saturation shows as p95 latency over the baseline's (or the workload's) limit.
            slow_ms = limits.get("maxLatencyMs", default_latency_ms)
            rules.append(
                ctx.alert(
                    "HDC_BaselineThroughputBelowMinimum",
                    f"sum by (namespace, workload, operation) "
                    f'(rate(hdc_hypervector_operations_total{{{sel}, operation="{op}"}}[5m])) < {promql_number(limit)} '
                    f"and on (namespace, workload, operation) "
                    f"max by (namespace, workload, operation) ({p95}) > {promql_number(slow_ms)}",
                    for_=ctx.duration("alerts.highLatency.for"),
                    severity="warning",
                    labels=labels,
                    summary=f"Baseline {bname}: {op} throughput under {promql_number(limit)} ops/s while saturated",
                    description=(
                        f"Workload {ctx.namespace}/{ctx.name} delivers {{{{ $value | humanize }}}} {op} "
                        f"hypervector ops/s while its p95 latency is over {promql_number(slow_ms)}ms; "
                        f"baseline {bname} expects at least {promql_number(limit)} ops/s"
                    ),
                )
            )
        if "maxMemoryMb" in limits and benchmark_on and bname in BENCHMARK_TESTS:
            limit = limits["maxMemoryMb"]
            # The operation's own memory: the peak of one call of the benchmark test named like the baseline,
            # beyond what the worker held before it (hdc_benchmark_peak_memory_bytes, measured by each pod's
            # continuous benchmark), not the worker process's resident set, which an idle worker already fills
            # with the interpreter, torch and its memories. Other names, or the benchmark off, have no such
            # series: no rule (docs/monitoring.md).
            rules.append(
                ctx.alert(
                    "HDC_BaselineMemoryExceeded",
                    f"max by (namespace, workload, pod) "
                    f'(hdc_benchmark_peak_memory_bytes{{{sel}, test="{bname}"}}) / 1024 / 1024 '
                    f"> {promql_number(limit)}",
                    for_=ctx.duration("alerts.highMemoryUsage.for"),
                    severity="warning",
                    labels=labels,
                    summary=f"Baseline {bname}: one {bname} call needs over {promql_number(limit)}MB",
                    description=(
                        f"The continuous benchmark's latest {bname} run on {{{{ $labels.pod }}}} needed "
                        f'{{{{ printf "%.0f" $value }}}}MB at its peak; baseline {bname} allows '
                        f"{promql_number(limit)}MB"
                    ),
                )
            )
    return rules


def _slo_rules(ctx: SpecContext) -> list[Rule]:
    sel = ctx.sel
    availability = ctx.number("alerts.slo.availabilityTargetPercent", maximum=100)
    latency_percent = ctx.number("alerts.slo.latencyTargetPercent", maximum=100)
    target_ms = ctx.number("alerts.slo.latencyTargetMs")
    if availability >= 100 or latency_percent >= 100:
        raise ValueError(
            "spec.alerts.slo.availabilityTargetPercent and latencyTargetPercent must be under 100 "
            "(a 100 % target leaves no error budget to alert on)"
        )
    bucket = latency_bucket(target_ms)
    le = _le_matcher(bucket)
    server_errors = "|".join(SERVER_ERROR_CODES)
    rules: list[Rule] = []
    for window in SLO_WINDOWS:
        rules.append(
            {
                "record": f"hdc:slo_availability_errors:ratio_rate{window}",
                "expr": (
                    f"sum by (namespace, workload) "
                    f'(rate(hdc_operation_errors_total{{{sel}, error=~"{server_errors}"}}[{window}])) '
                    f"/ sum by (namespace, workload) (rate(hdc_operation_total{{{sel}}}[{window}]))"
                ),
            }
        )
        rules.append(
            {
                "record": f"hdc:slo_latency_errors:ratio_rate{window}",
                "expr": (
                    f"1 - sum by (namespace, workload) "
                    f"(rate(hdc_operation_duration_seconds_bucket{{{sel}, {le}}}[{window}])) "
                    f"/ sum by (namespace, workload) (rate(hdc_operation_duration_seconds_count{{{sel}}}[{window}]))"
                ),
            }
        )
    for slo, record, target, what in (
        ("Availability", "hdc:slo_availability_errors", availability, "failed requests (server errors)"),
        (
            "Latency",
            "hdc:slo_latency_errors",
            latency_percent,
            f"requests slower than {promql_number(bucket * 1000)}ms",
        ),
    ):
        budget = promql_number(1 - target / 100)
        for long_w, short_w, burn, severity, for_ in BURN_RATE_WINDOWS:
            page = severity == "critical"
            alert = f"HDC_{slo}SLOBurnRateHigh" if page else f"HDC_{slo}SLOBudgetBurning"
            expr = (
                f"{record}:ratio_rate{long_w}{{{sel}}} > ({promql_number(burn)} * {budget}) "
                f"and {record}:ratio_rate{short_w}{{{sel}}} > ({promql_number(burn)} * {budget})"
            )
            rules.append(
                ctx.alert(
                    alert,
                    expr,
                    for_=for_,
                    severity=severity,
                    labels={"slo": slo.lower(), "long_window": long_w, "short_window": short_w},
                    summary=(
                        f"{ctx.namespace}/{ctx.name} burns its {slo.lower()} error budget "
                        f"{promql_number(burn)}x as fast as the SLO allows"
                    ),
                    description=(
                        f"{{{{ $value | humanizePercentage }}}} of requests over the last {long_w} were "
                        f"{what} (also over the last {short_w}); the {promql_number(target)}% SLO allows "
                        f"{promql_number(100 - target)}%. At this rate the 30-day budget lasts "
                        f"{30 / burn:.3g} days."
                    ),
                )
            )
    return rules
