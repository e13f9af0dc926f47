"""Shared by the alert, dashboard and monitoring-stack tests: a defaulted spec, the Prometheus tools, and the
metric names and labels a live worker exports."""

from __future__ import annotations

import copy
import functools
import pathlib
import re
import subprocess
import time

import yaml
from worker_process import REPO, WorkerProcess  # noqa: F401 - REPO: re-exported for the monitoring-stack tests

from hdc_operator.dev.prometheus import (  # noqa: F401 - re-exported for the alert and monitoring-stack tests
    ToolProcess,
    alertmanager_process,
    prometheus_process,
    tool,
    tools_dir,
)
from hdc_operator.spec import default_spec

# The HDCWorkload spec with every schema default, read from crds/hdcworkload.yaml (the one source of truth).
DEFAULT_SPEC = default_spec()

# The seed's performance baselines ("Best Practices"), as spec.baselines entries.
SEED_BASELINES = [
    {"name": "bundle_10k_vectors", "operation": "bundle", "maxLatencyMs": 50, "minThroughputOpsPerSec": 1000},
    {"name": "bind_32k_dimension", "operation": "bind", "maxLatencyMs": 10, "maxMemoryMb": 256},
    {"name": "similarity_batch_1000", "operation": "similarity", "maxLatencyMs": 100, "minThroughputOpsPerSec": 500},
]

# Labels Prometheus adds to every scraped worker series (ServiceMonitor relabelling + scrape defaults).
TARGET_LABELS = {"namespace", "pod", "workload", "job", "instance"}
# Series Prometheus makes itself, with the labels it gives them (ALERTS also carries each rule's labels).
PROMETHEUS_SERIES = {"up": set(), "ALERTS": {"alertname", "alertstate", "severity"}}


def spec_with(**changes) -> dict:
    """DEFAULT_SPEC with dotted-path changes: spec_with(**{"alerts.highLatency.for": "1m"})."""
    spec = copy.deepcopy(DEFAULT_SPEC)
    for path, value in changes.items():
        node = spec
        *parents, last = path.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return spec


def run_tool(*args: str, cwd: pathlib.Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, timeout=timeout)


def write_yaml(path: pathlib.Path, data) -> pathlib.Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- PromQL: metric and label names used by an expression ---------------------------------------------------

_SELECTOR_RE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*["\']')
_GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_KEYWORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "histogram_quantile",
    "absent",
    "absent_over_time",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "clamp_min",
    "clamp_max",
    "clamp",
    "abs",
    "ceil",
    "floor",
    "round",
    "vector",
    "scalar",
    "time",
    "label_replace",
    "label_join",
    "sort",
    "sort_desc",
    "predict_linear",
    "changes",
    "resets",
    "timestamp",
    "inf",
    "nan",
}


def used_names(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """({metric name: label names in its selector}, label names used in by/on/... clauses) of `expr`.

    Strings and durations are blanked first, so only identifiers in metric position are read as names."""
    blank = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    blank = re.sub(r"'(?:[^'\\]|\\.)*'", "''", blank)
    blank = re.sub(r"\[[^\]]*\]", "", blank)
    grouping = set()
    for m in _GROUPING_RE.finditer(blank):
        grouping |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    no_grouping = _GROUPING_RE.sub(" ", blank)
    metrics: dict[str, set[str]] = {}
    for m in _SELECTOR_RE.finditer(no_grouping):
        name, braces = m.group(1), m.group(2)
        start = m.start(1)
        if start > 0 and (no_grouping[start - 1].isalnum() or no_grouping[start - 1] in "_.$"):
            continue  # the tail of a number or identifier
        if name.lower() in _KEYWORDS:
            continue
        rest = no_grouping[m.end(1) :].lstrip()
        if rest.startswith("(") and not braces:
            continue  # a function call
        labels = set()
        if braces:
            # re-read the matchers from the original text at the same position (values were blanked)
            labels = set(_MATCHER_RE.findall(braces))
        metrics.setdefault(name, set()).update(labels)
    return metrics, grouping


# --- what a live worker exports --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def live_worker_exports() -> dict[str, set[str]]:
    """{sample name: label names} from /metrics of a real worker that served traffic, failed a request, ran
    its continuous benchmark, and micro-batched. Families a CPU-only worker declares but cannot fill (the GPU
    gauges) come with the label names the worker declares for them (MetricsCollector)."""
    import tempfile

    from prometheus_client.parser import text_string_to_metric_families

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="hdc-exports-"))
    worker = WorkerProcess(
        tmp, tmp / "state", HDC_BENCHMARK_ENABLED="true", HDC_BENCHMARK_INTERVAL_SECONDS="1", HDC_DIMENSION="512"
    ).start()
    try:
        vectors = [[1.0, -1.0, 1.0, -1.0]] * 2
        assert worker.request("POST", "/v1/ops/bind", {"a": vectors, "b": vectors, "vsa": "MAP"})[0] == 200
        assert worker.request("POST", "/v1/ops/bundle", {"vectors": vectors, "vsa": "MAP"})[0] == 200
        assert worker.request("POST", "/v1/ops/bind", {"a": [1.0], "b": [1.0, 1.0], "vsa": "MAP"})[0] == 400
        assert worker.request("POST", "/v1/memories", {"name": "m", "vsa": "MAP", "dimension": 4})[0] == 201
        assert worker.request("POST", "/v1/memories/m/items", {"vectors": vectors})[0] == 200
        assert worker.request("POST", "/v1/memories/m/query", {"queries": vectors[0], "k": 1})[0] == 200
        deadline = time.monotonic() + 120
        while True:
            body = worker.request("GET", "/metrics")[1].decode()
            if "hdc_benchmark_degradation_ratio{" in body and "hdc_capacity_ops_per_second " in body:
                break
            if time.monotonic() > deadline:
                if "hdc_benchmark_degradation_ratio{" in body:
                    break  # capacity is optional (measured by the service when it can)
                raise AssertionError("the worker's continuous benchmark never exported a result")
            time.sleep(0.5)
    finally:
        worker.stop()
    exports: dict[str, set[str]] = {}
    declared_only = []
    for family in text_string_to_metric_families(body):
        if not family.samples:
            declared_only.append(family.name)
        for sample in family.samples:
            exports.setdefault(sample.name, set()).update(sample.labels)
    if declared_only:
        from hd_compute.monitoring.metrics import MetricsCollector

        label_names = MetricsCollector().label_names
        for name in declared_only:
            exports.setdefault(name, set()).update(label_names.get(name, ()))
    return exports


# --- real Prometheus and Alertmanager processes: hdc_operator.dev.prometheus (ToolProcess, prometheus_process,
# alertmanager_process: config written to <dir>/<tool>.yml, data and log in <dir>, a free port on 127.0.0.1) ---


def unknown_names(
    exprs: list[str], *, recorded: set[str] = frozenset(), extra_series: dict[str, set[str]] | None = None
) -> list[str]:
    """Problems with `exprs`: metric names a live worker does not export (nor Prometheus, nor `extra_series`,
    nor the recording rules `recorded`), and labels those series do not carry. Empty when all is well."""
    exports = live_worker_exports()
    allowed = {name: labels | TARGET_LABELS for name, labels in exports.items()}
    allowed.update({name: labels | TARGET_LABELS for name, labels in PROMETHEUS_SERIES.items()})
    allowed.update({name: set(labels) for name, labels in (extra_series or {}).items()})
    every_label = set().union(*allowed.values()) | {"le"}
    problems = []
    for expr in exprs:
        metrics, grouping = used_names(expr)
        for name, labels in metrics.items():
            if name in recorded:
                if not labels <= {"namespace", "workload"}:
                    problems.append(f"{name}: recorded series carry namespace and workload only, not {labels}")
            elif name not in allowed:
                problems.append(f"{name} is exported by nothing (in {expr})")
            elif not labels <= allowed[name]:
                problems.append(f"{name} has no label(s) {sorted(labels - allowed[name])} (in {expr})")
        if not grouping <= every_label:
            problems.append(f"grouping by unknown label(s) {sorted(grouping - every_label)} (in {expr})")
    return problems


def promtool_parse(tmp: pathlib.Path, exprs: list[str]) -> subprocess.CompletedProcess:
    """`promtool check rules` on a throwaway rule file holding each expression as a recording rule."""
    rules = [{"record": f"check:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = write_yaml(tmp / "exprs.yml", {"groups": [{"name": "exprs", "rules": rules}]})
    return run_tool(tool("promtool"), "check", "rules", str(path))


def rule_file_path(tmp: pathlib.Path, groups: list[dict], name: str = "rules.yml") -> pathlib.Path:
    return write_yaml(tmp / name, {"groups": groups})
