"""Generated alert rules: promtool checks them, promtool unit tests make each alert fire (after its `for:`) and
stay silent, and every expression uses only what a live worker exports (docs/monitoring.md, Alerts)."""

from __future__ import annotations

import pathlib
import re

import pytest
from monitoring_support import REPO, SEED_BASELINES, run_tool, spec_with, tool, unknown_names, used_names, write_yaml

from hdc_operator import alerts
from hdc_operator.alerts import ALERT_NAMES, build_rule_groups, latency_bucket, rule_file

NS, WL = "ml", "demo"
SEL = {"namespace": NS, "workload": WL}
# Series of other workloads, with values that would fire every alert if the rules were not scoped.
NOISE = [
    (
        'hdc_latency_percentiles{namespace="other", workload="demo", pod="x", operation="bind", quantile="0.95"}',
        "9000x90",
    ),
    (
        'hdc_latency_percentiles{namespace="ml", workload="other", pod="x", operation="bundle", quantile="0.95"}',
        "9000x90",
    ),
    ('hdc_memory_usage_bytes{namespace="ml", workload="other", pod="x", component="process"}', f"{10**12}x90"),
    ('hdc_gpu_utilization_percent{namespace="ml", workload="other", pod="x", device="cuda:0"}', "0x90"),
    ('hdc_operation_total{namespace="other", workload="demo", pod="x", operation="bind"}', "0+100x90"),
    (
        'hdc_operation_errors_total{namespace="other", workload="demo", pod="x", operation="bind", '
        'error="internal_error"}',
        "0+100x90",
    ),
    ('hdc_benchmark_degradation_ratio{namespace="ml", workload="other", pod="x", test="bind_32k_dimension"}', "5x90"),
    ('up{namespace="ml", workload="other", pod="x", job="other", instance="10.0.0.9:8080"}', "0x90"),
]


def series(name: str, values: str, **labels: str) -> tuple[str, str]:
    all_labels = {**SEL, **labels}
    inner = ", ".join(f'{k}="{v}"' for k, v in all_labels.items())
    return f"{name}{{{inner}}}", values


def firing(alertname: str, description: str, **labels: str) -> dict:
    """An expected alert: labels beyond alertname, and its rendered description."""
    return {"alertname": alertname, "labels": {**SEL, **labels}, "description": description}


def promtool_test(
    tmp_path: pathlib.Path,
    spec: dict,
    input_series: list[tuple[str, str]],
    checks: list[tuple[str, str, list[dict]]],
    *,
    interval: str = "1m",
    noise: bool = True,
):
    """Runs `promtool test rules` on the rules generated from `spec`.

    checks: (eval_time, alertname, expected alerts). Each expected alert needs its full labels (severity is
    taken from the rule) and description; summary and runbook_url are static per rule and filled in here."""
    groups = build_rule_groups(WL, NS, spec)
    rules_by_name: dict[str, list[dict]] = {}
    for group in groups:
        for rule in group["rules"]:
            if "alert" in rule:
                rules_by_name.setdefault(rule["alert"], []).append(rule)
    write_yaml(tmp_path / "rules.yml", rule_file(groups))
    tests = []
    for eval_time, alertname, expected in checks:
        assert alertname in rules_by_name, f"{alertname} is not generated for this spec"
        exp_alerts = []
        for e in expected:
            assert e["alertname"] == alertname
            labels = dict(e["labels"])
            rule = next(
                r
                for r in rules_by_name[alertname]
                if all(labels.get(k) == v for k, v in r["labels"].items() if k != "severity")
            )
            labels.setdefault("severity", rule["labels"]["severity"])
            annotations = {
                "summary": rule["annotations"]["summary"],
                "description": e["description"],
                "runbook_url": rule["annotations"]["runbook_url"],
            }
            exp_alerts.append({"exp_labels": labels, "exp_annotations": annotations})
        tests.append({"eval_time": eval_time, "alertname": alertname, "exp_alerts": exp_alerts})
    all_series = input_series + (NOISE if noise else [])
    write_yaml(
        tmp_path / "test.yml",
        {
            "rule_files": ["rules.yml"],
            "evaluation_interval": interval,
            "tests": [
                {
                    "interval": interval,
                    "input_series": [{"series": s, "values": v} for s, v in all_series],
                    "alert_rule_test": tests,
                }
            ],
        },
    )
    result = run_tool(tool("promtool"), "test", "rules", "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# --- promtool check rules -------------------------------------------------------------------------------

STATEFUL_SPEC = spec_with(**{"state.backend": "postgres"})  # a workload with a state store: the state alerts
SPECS = {
    "defaults": spec_with(),
    "stateful": STATEFUL_SPEC,
    "seed-baselines": spec_with(baselines=SEED_BASELINES),
    "cpu-only-no-benchmark": spec_with(**{"resources.gpus": 0, "continuousBenchmark.enabled": False}),
    "odd-slo": spec_with(
        **{
            "alerts.slo": {"availabilityTargetPercent": 99.95, "latencyTargetMs": 250.0, "latencyTargetPercent": 95},
            "alerts.highLatency.for": "30s",
        }
    ),
    "second-slo-target": spec_with(
        **{
            "alerts.slo.latencyTargetMs": 1000,
            "baselines": [{"name": "query-fast", "operation": "query", "maxLatencyMs": 5}],
        }
    ),
}


@pytest.mark.parametrize("case", sorted(SPECS))
def test_promtool_check_rules_accepts_generated_groups(tmp_path, case):
    path = write_yaml(tmp_path / "rules.yml", rule_file(build_rule_groups(WL, NS, SPECS[case])))
    result = run_tool(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_rules_rejects_a_broken_rule(tmp_path):
    """The check above can fail: a rule with a PromQL syntax error is refused."""
    groups = build_rule_groups(WL, NS, spec_with())
    groups[0]["rules"][0]["expr"] += " >"
    path = write_yaml(tmp_path / "rules.yml", rule_file(groups))
    result = run_tool(tool("promtool"), "check", "rules", str(path))
    assert result.returncode != 0


# --- promtool test rules: each alert fires, respects for:, and stays silent -------------------------------


def test_high_latency_fires_after_for_and_only_for_this_workload(tmp_path):
    promtool_test(
        tmp_path,
        spec_with(),
        [
            series("hdc_latency_percentiles", "150x20", pod="p1", operation="bind", quantile="0.95"),
            series("hdc_latency_percentiles", "90x20", pod="p1", operation="bundle", quantile="0.95"),
            series("hdc_latency_percentiles", "900x20", pod="p1", operation="bundle", quantile="0.5"),
        ],
        [
            ("4m", "HDC_HighLatency", []),  # pending: for 5m
            (
                "6m",
                "HDC_HighLatency",
                [
                    firing(
                        "HDC_HighLatency",
                        "95th percentile latency of bind on p1 is 150ms (threshold 100ms)",
                        pod="p1",
                        operation="bind",
                    )
                ],
            ),
        ],
    )


def test_high_latency_threshold_and_for_come_from_the_spec(tmp_path):
    spec = spec_with(**{"alerts.highLatency": {"p95ThresholdMs": 20, "for": "1m"}})
    promtool_test(
        tmp_path,
        spec,
        [
            series("hdc_latency_percentiles", "25x20", pod="p1", operation="bind", quantile="0.95"),
        ],
        [
            ("0m", "HDC_HighLatency", []),
            (
                "2m",
                "HDC_HighLatency",
                [
                    firing(
                        "HDC_HighLatency",
                        "95th percentile latency of bind on p1 is 25ms (threshold 20ms)",
                        pod="p1",
                        operation="bind",
                    )
                ],
            ),
        ],
    )


def test_high_memory_counts_the_worker_process_not_the_node(tmp_path):
    mb = 1024 * 1024
    promtool_test(
        tmp_path,
        spec_with(),
        [
            series("hdc_memory_usage_bytes", f"{9000 * mb}x10", pod="p1", component="process"),
            series("hdc_memory_usage_bytes", f"{100 * mb}x10", pod="p2", component="process"),
            series("hdc_memory_usage_bytes", f"{64000 * mb}x10", pod="p2", component="system_used"),
        ],
        [
            ("1m", "HDC_HighMemoryUsage", []),
            (
                "3m",
                "HDC_HighMemoryUsage",
                [firing("HDC_HighMemoryUsage", "Memory usage of p1 is 9000MB (threshold 8192MB)", pod="p1")],
            ),
        ],
    )


def test_low_gpu_utilization_fires_after_ten_minutes(tmp_path):
    promtool_test(
        tmp_path,
        spec_with(),
        [
            series("hdc_gpu_utilization_percent", "10x15", pod="p1", device="cuda:0"),
            series("hdc_gpu_utilization_percent", "80x15", pod="p2", device="cuda:0"),
        ],
        [
            ("9m", "HDC_LowGPUUtilization", []),
            (
                "11m",
                "HDC_LowGPUUtilization",
                [
                    firing(
                        "HDC_LowGPUUtilization",
                        "GPU utilization of cuda:0 on p1 is only 10% (threshold 20%)",
                        pod="p1",
                        device="cuda:0",
                    )
                ],
            ),
        ],
    )


def test_low_gpu_utilization_is_not_generated_without_gpus():
    names = {r.get("alert") for g in build_rule_groups(WL, NS, spec_with(**{"resources.gpus": 0})) for r in g["rules"]}
    assert "HDC_LowGPUUtilization" not in names and "HDC_HighLatency" in names


def test_high_error_rate_fires_over_one_percent(tmp_path):
    promtool_test(
        tmp_path,
        spec_with(),
        [
            series("hdc_operation_total", "0+100x20", pod="p1", operation="bind"),
            series("hdc_operation_total", "0+100x20", pod="p2", operation="bind"),
            series("hdc_operation_errors_total", "0+10x20", pod="p1", operation="bind", error="invalid_field"),
        ],
        [
            ("5m", "HDC_HighErrorRate", []),  # over the threshold since 1m: pending until 6m
            (
                "7m",
                "HDC_HighErrorRate",
                [firing("HDC_HighErrorRate", "Error rate of workload ml/demo is 5% (threshold 1%)")],
            ),
        ],
    )


def test_high_error_rate_stays_silent_under_the_threshold(tmp_path):
    promtool_test(
        tmp_path,
        spec_with(),
        [
            series("hdc_operation_total", "0+1000x20", pod="p1", operation="bind"),
            series("hdc_operation_errors_total", "0+5x20", pod="p1", operation="bind", error="internal_error"),
        ],
        [("15m", "HDC_HighErrorRate", [])],
    )


def test_worker_down_and_workers_absent(tmp_path):
    promtool_test(
        tmp_path,
        spec_with(),
        [
            series("up", "1 1 0 0 0 0 0 0", pod="p1", job="demo", instance="10.0.0.1:8080"),
            series("up", "1x8", pod="p2", job="demo", instance="10.0.0.2:8080"),
        ],
        [
            ("2m", "HDC_WorkerDown", []),  # down since 2m
            (
                "3m",
                "HDC_WorkerDown",
                [
                    firing(
                        "HDC_WorkerDown",
                        "Prometheus cannot scrape p1 (10.0.0.1:8080) of workload ml/demo for 1 minute",
                        pod="p1",
                        job="demo",
                        instance="10.0.0.1:8080",
                    )
                ],
            ),
            ("7m", "HDC_WorkersAbsent", []),
        ],
    )


def test_workers_absent_fires_when_no_target_is_scraped(tmp_path):
    promtool_test(
        tmp_path,
        spec_with(),
        [
            ('up{namespace="ml", workload="demo-2", pod="x", job="x", instance="10.0.0.3:8080"}', "1x10"),
        ],
        [
            ("4m", "HDC_WorkersAbsent", []),
            (
                "6m",
                "HDC_WorkersAbsent",
                [firing("HDC_WorkersAbsent", "Prometheus has no scrape target of workload ml/demo for 5 minutes")],
            ),
        ],
    )


def test_state_replica_lagging_fires_after_two_minutes_over_thirty_seconds(tmp_path):
    promtool_test(
        tmp_path,
        STATEFUL_SPEC,
        [
            series("hdc_state_lag_seconds", "0 0 40 100 160 220 280 0", pod="p1"),
            series("hdc_state_lag_seconds", "0 1 0 2 0 1 0 0", pod="p2"),  # a healthy follower's small lags
        ],
        [
            ("3m", "HDC_StateReplicaLagging", []),  # over the threshold since 2m
            (
                "5m",
                "HDC_StateReplicaLagging",
                [
                    firing(
                        "HDC_StateReplicaLagging",
                        "p1 has known of state versions it has not applied for 3m 40s (threshold 30s); reads without "
                        "a version token see old memories and classifiers there",
                        pod="p1",
                    )
                ],
            ),
            ("7m", "HDC_StateReplicaLagging", []),  # caught up
        ],
    )


def test_state_store_unreachable_fires_after_a_minute(tmp_path):
    promtool_test(
        tmp_path,
        STATEFUL_SPEC,
        [
            series("hdc_state_store_reachable", "1 1 0 0 0 1 1", pod="p1"),
            series("hdc_state_store_reachable", "1x6", pod="p2"),
        ],
        [
            ("2m", "HDC_StateStoreUnreachable", []),
            (
                "3m",
                "HDC_StateStoreUnreachable",
                [
                    firing(
                        "HDC_StateStoreUnreachable",
                        "p1 has not read the state store's log for 1 minute (reachable = 0): its writes answer 503 "
                        "state_unavailable and it is not ready",
                        pod="p1",
                    )
                ],
            ),
            ("5m", "HDC_StateStoreUnreachable", []),  # reachable again
        ],
    )


def test_state_alerts_are_not_generated_without_a_state_backend():
    names = {r.get("alert") for g in build_rule_groups(WL, NS, spec_with()) for r in g["rules"]}
    assert not names & {"HDC_StateReplicaLagging", "HDC_StateStoreUnreachable"}
    local = {
        r.get("alert") for g in build_rule_groups(WL, NS, spec_with(**{"state.backend": "local"})) for r in g["rules"]
    }
    assert {"HDC_StateReplicaLagging", "HDC_StateStoreUnreachable"} <= local


def test_benchmark_regression_uses_the_degradation_threshold(tmp_path):
    spec = spec_with(**{"continuousBenchmark.degradationThreshold": 0.2})
    promtool_test(
        tmp_path,
        spec,
        [
            series("hdc_benchmark_degradation_ratio", "0.25x10", pod="p1", test="bind_32k_dimension"),
            series("hdc_benchmark_degradation_ratio", "0.15x10", pod="p1", test="bundle_10k_vectors"),
        ],
        [
            ("4m", "HDC_BenchmarkRegression", []),
            (
                "6m",
                "HDC_BenchmarkRegression",
                [
                    firing(
                        "HDC_BenchmarkRegression",
                        "Benchmark bind_32k_dimension on p1 is 25% slower than its baseline (threshold 20%)",
                        pod="p1",
                        test="bind_32k_dimension",
                    )
                ],
            ),
        ],
    )


def test_benchmark_regression_is_not_generated_when_the_benchmark_is_off():
    spec = spec_with(**{"continuousBenchmark.enabled": False})
    names = {r.get("alert") for g in build_rule_groups(WL, NS, spec) for r in g["rules"]}
    assert "HDC_BenchmarkRegression" not in names


def test_baseline_latency_alert_per_operation(tmp_path):
    promtool_test(
        tmp_path,
        spec_with(baselines=SEED_BASELINES),
        [
            series("hdc_latency_percentiles", "60x10", pod="p1", operation="bundle", quantile="0.95"),
            series("hdc_latency_percentiles", "5x10", pod="p1", operation="bind", quantile="0.95"),
        ],
        [
            ("4m", "HDC_BaselineLatencyExceeded", []),
            (
                "6m",
                "HDC_BaselineLatencyExceeded",
                [
                    firing(
                        "HDC_BaselineLatencyExceeded",
                        "95th percentile latency of bundle on p1 is 60ms; baseline bundle_10k_vectors allows 50ms",
                        pod="p1",
                        operation="bundle",
                        baseline="bundle_10k_vectors",
                    )
                ],
            ),
            ("6m", "HDC_HighLatency", []),
        ],
    )


def test_baseline_throughput_fires_only_while_saturated(tmp_path):
    # 600 bundle hypervectors/s, p95 60 ms (over the baseline's 50 ms): saturated and too slow -> alert.
    # 600 similarity hypervectors/s with p95 20 ms: low demand, not a capacity problem -> silent.
    promtool_test(
        tmp_path,
        spec_with(baselines=SEED_BASELINES),
        [
            series("hdc_hypervector_operations_total", "0+36000x12", pod="p1", operation="bundle"),
            series("hdc_latency_percentiles", "60x12", pod="p1", operation="bundle", quantile="0.95"),
            series("hdc_hypervector_operations_total", "0+6000x12", pod="p1", operation="similarity"),
            series("hdc_latency_percentiles", "20x12", pod="p1", operation="similarity", quantile="0.95"),
        ],
        [
            ("5m", "HDC_BaselineThroughputBelowMinimum", []),
            (
                "7m",
                "HDC_BaselineThroughputBelowMinimum",
                [
                    firing(
                        "HDC_BaselineThroughputBelowMinimum",
                        "Workload ml/demo delivers 600 bundle hypervector ops/s while its "
                        "p95 latency is over 50ms; baseline bundle_10k_vectors expects at least 1000 ops/s",
                        operation="bundle",
                        baseline="bundle_10k_vectors",
                    )
                ],
            ),
        ],
    )


def test_baseline_memory_judges_the_benchmark_peak_of_the_baselines_test(tmp_path):
    # bind_32k_dimension allows 256MB. p1's latest bind_32k_dimension run peaked at 300MB: alert. p2's at 200MB:
    # silent, though its whole process holds 10 GB (an idle worker's interpreter, torch and memories are not the
    # operation's memory), and so is p1's bundle test at 900MB (no memory bound on that baseline).
    mb = 1024 * 1024
    promtool_test(
        tmp_path,
        spec_with(baselines=SEED_BASELINES),
        [
            series("hdc_benchmark_peak_memory_bytes", f"{300 * mb}x10", pod="p1", test="bind_32k_dimension"),
            series("hdc_benchmark_peak_memory_bytes", f"{900 * mb}x10", pod="p1", test="bundle_10k_vectors"),
            series("hdc_benchmark_peak_memory_bytes", f"{200 * mb}x10", pod="p2", test="bind_32k_dimension"),
            series("hdc_memory_usage_bytes", f"{10 * 1024 * mb}x10", pod="p2", component="process"),
            series("hdc_operation_total", "0+10x10", pod="p2", operation="bind"),
        ],
        [
            ("1m", "HDC_BaselineMemoryExceeded", []),  # pending: for 2m
            (
                "4m",
                "HDC_BaselineMemoryExceeded",
                [
                    firing(
                        "HDC_BaselineMemoryExceeded",
                        "The continuous benchmark's latest bind_32k_dimension run on p1 needed "
                        "300MB at its peak; baseline bind_32k_dimension allows 256MB",
                        pod="p1",
                        baseline="bind_32k_dimension",
                    )
                ],
            ),
        ],
    )


def test_baseline_memory_is_silent_on_an_idle_worker(tmp_path):
    # The demo's case: workers that serve nothing hold hundreds of MB each; their benchmark peaks are small.
    mb = 1024 * 1024
    promtool_test(
        tmp_path,
        spec_with(baselines=SEED_BASELINES),
        [
            series("hdc_memory_usage_bytes", f"{700 * mb}x10", pod="p1", component="process"),
            series("hdc_benchmark_peak_memory_bytes", f"{40 * mb}x10", pod="p1", test="bind_32k_dimension"),
        ],
        [("8m", "HDC_BaselineMemoryExceeded", [])],
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"baselines": [{"name": "my-bind", "operation": "bind", "maxMemoryMb": 256}]},  # no benchmark test of that name
        {"baselines": SEED_BASELINES, "continuousBenchmark.enabled": False},  # no benchmark runs at all
    ],
)
def test_baseline_memory_needs_a_benchmark_test_of_the_baselines_name(changes):
    names = {r.get("alert") for g in build_rule_groups(WL, NS, spec_with(**changes)) for r in g["rules"]}
    assert "HDC_BaselineMemoryExceeded" not in names


def test_benchmark_tests_mirror_the_worker():
    from hd_compute.monitoring.benchmark import STANDARD_TESTS

    assert set(alerts.BENCHMARK_TESTS) == set(STANDARD_TESTS)
    assert {b["name"] for b in SEED_BASELINES} <= set(STANDARD_TESTS)


def _slo(slo: str, long_w: str, short_w: str) -> dict:
    return {"slo": slo, "long_window": long_w, "short_window": short_w}


def test_availability_slo_pages_on_a_fast_burn(tmp_path):
    # 5 % server errors against a 99.9 % SLO: a 50x burn. Both page windows fire after for: 2m; the ticket
    # (3d/6h at 1x) is still pending (for: 30m).
    desc = (
        "5% of requests over the last {long} were failed requests (server errors) (also over the last {short}); "
        "the 99.9% SLO allows 0.1%. At this rate the 30-day budget lasts {days} days."
    )
    promtool_test(
        tmp_path,
        spec_with(),
        [
            series("hdc_operation_total", "0+6000x60", pod="p1", operation="bind"),
            series("hdc_operation_errors_total", "0+300x60", pod="p1", operation="bind", error="internal_error"),
        ],
        [
            ("1m", "HDC_AvailabilitySLOBurnRateHigh", []),
            (
                "4m",
                "HDC_AvailabilitySLOBurnRateHigh",
                [
                    firing(
                        "HDC_AvailabilitySLOBurnRateHigh",
                        desc.format(long="1h", short="5m", days="2.08"),
                        **_slo("availability", "1h", "5m"),
                    ),
                    firing(
                        "HDC_AvailabilitySLOBurnRateHigh",
                        desc.format(long="6h", short="30m", days="5"),
                        **_slo("availability", "6h", "30m"),
                    ),
                ],
            ),
            ("10m", "HDC_AvailabilitySLOBudgetBurning", []),
            (
                "40m",
                "HDC_AvailabilitySLOBudgetBurning",
                [
                    firing(
                        "HDC_AvailabilitySLOBudgetBurning",
                        desc.format(long="3d", short="6h", days="30"),
                        **_slo("availability", "3d", "6h"),
                    ),
                ],
            ),
        ],
    )


def test_availability_slo_ignores_client_errors(tmp_path):
    promtool_test(
        tmp_path,
        spec_with(),
        [
            series("hdc_operation_total", "0+6000x60", pod="p1", operation="bind"),
            series("hdc_operation_errors_total", "0+3000x60", pod="p1", operation="bind", error="invalid_field"),
        ],
        [
            ("10m", "HDC_AvailabilitySLOBurnRateHigh", []),
            ("50m", "HDC_AvailabilitySLOBudgetBurning", []),
            (
                "10m",
                "HDC_HighErrorRate",
                [firing("HDC_HighErrorRate", "Error rate of workload ml/demo is 50% (threshold 1%)")],
            ),
        ],
    )


def test_availability_slo_slow_burn_opens_a_ticket_but_does_not_page(tmp_path):
    # 0.2 % server errors: 2x the budget. Under both page thresholds (14.4x, 6x), over the ticket's 1x.
    promtool_test(
        tmp_path,
        spec_with(),
        [
            series("hdc_operation_total", "0+6000x60", pod="p1", operation="bind"),
            series("hdc_operation_errors_total", "0+12x60", pod="p1", operation="bind", error="cuda_out_of_memory"),
        ],
        [
            ("20m", "HDC_AvailabilitySLOBudgetBurning", []),
            ("45m", "HDC_AvailabilitySLOBurnRateHigh", []),
            (
                "45m",
                "HDC_AvailabilitySLOBudgetBurning",
                [
                    firing(
                        "HDC_AvailabilitySLOBudgetBurning",
                        "0.2% of requests over the last 3d were failed requests (server errors) (also over the "
                        "last 6h); the 99.9% SLO allows 0.1%. At this rate the 30-day budget lasts 30 days.",
                        **_slo("availability", "3d", "6h"),
                    )
                ],
            ),
        ],
    )


def test_latency_slo_counts_requests_over_the_target_bucket(tmp_path):
    # 10 % of requests over 100 ms against a 99 % latency SLO: a 10x burn, over 6x but under 14.4x:
    # only the 6h/30m page window fires.
    promtool_test(
        tmp_path,
        spec_with(),
        [
            series("hdc_operation_duration_seconds_bucket", "0+5400x60", pod="p1", operation="bind", le="0.1"),
            series("hdc_operation_duration_seconds_bucket", "0+6000x60", pod="p1", operation="bind", le="+Inf"),
            series("hdc_operation_duration_seconds_count", "0+6000x60", pod="p1", operation="bind"),
        ],
        [
            (
                "4m",
                "HDC_LatencySLOBurnRateHigh",
                [
                    firing(
                        "HDC_LatencySLOBurnRateHigh",
                        "10% of requests over the last 6h were requests slower than 100ms (also over "
                        "the last 30m); the 99% SLO allows 1%. At this rate the 30-day budget lasts 5 days.",
                        **_slo("latency", "6h", "30m"),
                    )
                ],
            ),
            ("20m", "HDC_LatencySLOBudgetBurning", []),  # over 1x since 1m; for: 30m
            (
                "40m",
                "HDC_LatencySLOBudgetBurning",
                [
                    firing(
                        "HDC_LatencySLOBudgetBurning",
                        "10% of requests over the last 3d were requests slower than 100ms (also "
                        "over the last 6h); the 99% SLO allows 1%. At this rate the 30-day budget lasts 30 days.",
                        **_slo("latency", "3d", "6h"),
                    )
                ],
            ),
        ],
    )


def test_latency_slo_fast_burn_pages_on_both_windows(tmp_path):
    # half the requests over 100 ms: a 50x burn, over 14.4x and 6x.
    desc = (
        "50% of requests over the last {long} were requests slower than 100ms (also over the last {short}); "
        "the 99% SLO allows 1%. At this rate the 30-day budget lasts {days} days."
    )
    promtool_test(
        tmp_path,
        spec_with(),
        [
            series("hdc_operation_duration_seconds_bucket", "0+3000x20", pod="p1", operation="bundle", le="0.1"),
            series("hdc_operation_duration_seconds_count", "0+6000x20", pod="p1", operation="bundle"),
        ],
        [
            ("2m", "HDC_LatencySLOBurnRateHigh", []),  # over since 1m; for: 2m
            (
                "4m",
                "HDC_LatencySLOBurnRateHigh",
                [
                    firing(
                        "HDC_LatencySLOBurnRateHigh",
                        desc.format(long="1h", short="5m", days="2.08"),
                        **_slo("latency", "1h", "5m"),
                    ),
                    firing(
                        "HDC_LatencySLOBurnRateHigh",
                        desc.format(long="6h", short="30m", days="5"),
                        **_slo("latency", "6h", "30m"),
                    ),
                ],
            ),
        ],
    )


def test_latency_slo_silent_when_fast(tmp_path):
    promtool_test(
        tmp_path,
        spec_with(),
        [
            series("hdc_operation_duration_seconds_bucket", "0+5997x60", pod="p1", operation="bind", le="0.1"),
            series("hdc_operation_duration_seconds_count", "0+6000x60", pod="p1", operation="bind"),
        ],
        [("10m", "HDC_LatencySLOBurnRateHigh", []), ("50m", "HDC_LatencySLOBudgetBurning", [])],
    )


def test_promtool_test_catches_a_wrong_expectation(tmp_path):
    """The harness can fail: expecting HighLatency at 4m (inside its for: 5m) is refused by promtool."""
    with pytest.raises(AssertionError, match="FAILED"):
        promtool_test(
            tmp_path,
            spec_with(),
            [
                series("hdc_latency_percentiles", "150x20", pod="p1", operation="bind", quantile="0.95"),
            ],
            [
                (
                    "4m",
                    "HDC_HighLatency",
                    [
                        firing(
                            "HDC_HighLatency",
                            "95th percentile latency of bind on p1 is 150ms (threshold 100ms)",
                            pod="p1",
                            operation="bind",
                        )
                    ],
                )
            ],
        )


# --- structure: scoping, names, runbooks ----------------------------------------------------------------


def _all_rules(spec) -> list[dict]:
    return [r for g in build_rule_groups(WL, NS, spec) for r in g["rules"]]


@pytest.mark.parametrize("case", sorted(SPECS))
def test_every_selector_is_scoped_to_the_workload(case):
    for rule in _all_rules(SPECS[case]):
        metrics, _ = used_names(rule["expr"])
        assert metrics, rule["expr"]
        for name in metrics:
            for m in re.finditer(re.escape(name) + r"\{([^}]*)\}", rule["expr"]):
                assert f'namespace="{NS}"' in m.group(1) and f'workload="{WL}"' in m.group(1), rule["expr"]
            assert re.search(re.escape(name) + r"\{", rule["expr"]), f"{name} unscoped in {rule['expr']}"


def test_every_alert_has_a_runbook_and_is_listed():
    spec = spec_with(baselines=SEED_BASELINES, **{"state.backend": "postgres"})
    generated = {r["alert"] for r in _all_rules(spec) if "alert" in r}
    assert generated == set(ALERT_NAMES)
    for name in ALERT_NAMES:
        runbook = REPO / "docs" / "runbooks" / f"{name}.md"
        assert runbook.is_file(), f"missing runbook {runbook}"
        text = runbook.read_text()
        for heading in ("## Meaning", "## Check", "## Fix"):
            assert heading in text, f"{runbook} lacks {heading}"
    for rule in _all_rules(spec):
        if "alert" in rule:
            assert rule["annotations"]["runbook_url"].endswith(f"/docs/runbooks/{rule['alert']}.md")
            assert "$value" in rule["annotations"]["description"] or rule["alert"] in (
                "HDC_WorkersAbsent",
                "HDC_WorkerDown",
            ), rule["alert"]


def test_runbook_base_url_is_configurable():
    rules = [
        r
        for g in build_rule_groups(WL, NS, spec_with(), runbook_base_url="https://wiki.example/rb/")
        for r in g["rules"]
        if "alert" in r
    ]
    assert all(r["annotations"]["runbook_url"] == f"https://wiki.example/rb/{r['alert']}.md" for r in rules)


def test_group_names_are_unique_across_workloads():
    names = [
        g["name"]
        for ns, wl in (("a", "x"), ("b", "x"), ("a", "y"))
        for g in build_rule_groups(wl, ns, spec_with(baselines=SEED_BASELINES))
    ]
    assert len(names) == len(set(names))


def test_duration_buckets_mirror_the_worker():
    from hd_compute.monitoring.metrics import DURATION_BUCKETS

    assert alerts.WORKER_DURATION_BUCKETS == DURATION_BUCKETS
    assert 0.1 in DURATION_BUCKETS  # the default latencyTargetMs (100) is a bucket boundary


def test_latency_target_rounds_down_to_a_bucket():
    assert latency_bucket(100) == 0.1
    assert latency_bucket(249) == 0.1 and latency_bucket(250) == 0.25
    assert latency_bucket(0.01) == 0.00005
    rules = _all_rules(spec_with(**{"alerts.slo.latencyTargetMs": 1000}))
    expr = next(r["expr"] for r in rules if r.get("record") == "hdc:slo_latency_errors:ratio_rate5m")
    assert 'le=~"1|1\\\\.0"' in expr  # prometheus_client writes 1.0, Prometheus 3 normalizes it to 1


def test_server_error_codes_cover_every_5xx_the_worker_answers():
    source = "\n".join(p.read_text() for p in (REPO / "worker" / "hd_compute" / "service").rglob("*.py"))
    codes = set(re.findall(r'\b5\d\d,\s*"([a-z_]+)"', source))
    assert codes, "no 5xx error codes found in the worker source"
    assert codes <= set(alerts.SERVER_ERROR_CODES), codes - set(alerts.SERVER_ERROR_CODES)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"alerts.highLatency.p95ThresholdMs": "fast"}, "spec.alerts.highLatency.p95ThresholdMs"),
        ({"alerts.highLatency.for": "5 minutes"}, "spec.alerts.highLatency.for"),
        ({"alerts.highErrorRate.thresholdPercent": 120}, "spec.alerts.highErrorRate.thresholdPercent"),
        ({"alerts.slo.availabilityTargetPercent": 100}, "spec.alerts.slo.availabilityTargetPercent"),
        ({"baselines": [{"name": "a", "operation": "bind"}]}, "spec.baselines[0]"),
        ({"baselines": [{"name": "a", "operation": "bind", "maxLatencyMs": 1}] * 2}, "spec.baselines[1].name"),
        ({"baselines": [{"name": 'a"b', "operation": "bind", "maxLatencyMs": 1}]}, "spec.baselines[0].name"),
        ({"alerts": {}}, "spec.alerts.highLatency"),
    ],
)
def test_bad_spec_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        build_rule_groups(WL, NS, spec_with(**changes))


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="namespace"):
        build_rule_groups(WL, 'x"y', spec_with())


# --- against a live worker --------------------------------------------------------------------------------


def test_expressions_use_only_what_a_live_worker_exports():
    rules = _all_rules(spec_with(baselines=SEED_BASELINES))
    recorded = {r["record"] for r in rules if "record" in r}
    assert unknown_names([r["expr"] for r in rules], recorded=recorded) == []


def test_name_check_catches_what_the_worker_does_not_export():
    problems = unknown_names(
        ['hdc_latency_percentiles{namespace="a", colour="red"}', "hdc_made_up_total", "sum by (shoe) (up)"]
    )
    assert len(problems) == 3 and "colour" in problems[0] and "hdc_made_up_total" in problems[1]


def test_name_reader_finds_metrics_labels_and_grouping():
    metrics, grouping = used_names(
        'sum by (pod) (rate(hdc_nope_total{namespace="a", le=~"1|1\\\\.0"}[5m])) '
        '/ 1024 > 0.5 and on (pod, operation) up{job="x"} or absent(foo)'
    )
    assert metrics == {"hdc_nope_total": {"namespace", "le"}, "up": {"job"}, "foo": set()}
    assert grouping == {"pod", "operation"}


def test_every_baseline_operation_of_the_crd_is_a_worker_operation():
    from hdc_operator.spec import spec_schema

    schema = spec_schema()["properties"]["baselines"]["items"]["properties"]["operation"]
    source = "\n".join(p.read_text() for p in (REPO / "worker" / "hd_compute" / "service").rglob("*.py"))
    worker_ops = set(re.findall(r'@operation\("([a-z_]+)"\)', source))
    assert worker_ops, "no @operation(...) found in the worker's service"
    for op in schema["enum"]:
        rules = _all_rules(spec_with(baselines=[{"name": "b", "operation": op, "maxLatencyMs": 1}]))
        expr = next(r["expr"] for r in rules if r.get("alert") == "HDC_BaselineLatencyExceeded")
        label = re.search(r'operation="([a-z_]+)"', expr).group(1)
        assert label in worker_ops, (op, label)
