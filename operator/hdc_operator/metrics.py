"""The operator's own Prometheus metrics, in a registry of their own, served on the metrics port.

m = OperatorMetrics()
with m.reconcile_timer(): ...               # hdc_operator_reconcile_duration_seconds
m.count_write("apply", "Deployment")        # hdc_operator_api_writes_total{verb,kind}
port = m.serve(8081)                         # GET /metrics (0: a free port, returned)
"""

from __future__ import annotations

import contextlib
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["OperatorMetrics"]


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconcile_duration = Histogram(
            "hdc_operator_reconcile_duration_seconds",
            "Time one reconcile of one HDCWorkload took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.reconciles = Counter(
            "hdc_operator_reconciles_total", "Reconciles, by result (ok, error, invalid_spec).", ["result"], registry=r
        )
        self.reconcile_errors = Counter(
            "hdc_operator_reconcile_errors_total",
            "Reconciles that failed, by reason (the Degraded condition's).",
            ["reason"],
            registry=r,
        )
        self.managed_workloads = Gauge(
            "hdc_operator_managed_workloads", "HDCWorkloads the operator watches.", registry=r
        )
        self.scale_decisions = Counter(
            "hdc_operator_scale_decisions_total",
            "Changes of a workload's Deployment replica count, by direction (up, down).",
            ["direction"],
            registry=r,
        )
        self.autoscaler_decisions = Counter(
            "hdc_operator_autoscaler_decisions_total",
            "Evaluations of the operator's scaler (autoscaling.mode operator), by the decision's reason "
            "(MetricsUnavailable, WithinTolerance, DemandAboveTarget, ScaleDownStabilized, ...).",
            ["reason"],
            registry=r,
        )
        self.autoscaler_scales = Counter(
            "hdc_operator_autoscaler_scales_total",
            "Changes of a workload's spec.replicas by the operator's scaler, by direction (up, down).",
            ["direction"],
            registry=r,
        )
        self.api_writes = Counter(
            "hdc_operator_api_writes_total",
            "Write calls the operator made to the Kubernetes API, by verb and kind.",
            ["verb", "kind"],
            registry=r,
        )
        # Per workload, for the dashboards' "desired vs actual replicas" panel (hdc_operator.dashboards).
        self.desired_replicas = Gauge(
            "hdc_operator_desired_replicas",
            "Replicas the operator applied to a workload's Deployment.",
            ["namespace", "workload"],
            registry=r,
        )
        self.replicas = Gauge(
            "hdc_operator_replicas", "Pods a workload's Deployment has.", ["namespace", "workload"], registry=r
        )
        self.queue_depth = Gauge("hdc_operator_queue_depth", "Workloads waiting for a reconcile.", registry=r)

    @contextlib.contextmanager
    def reconcile_timer(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.reconcile_duration.observe(time.perf_counter() - start)

    def observe_workload(self, namespace: str, name: str, desired: int | None, replicas: int | None) -> None:
        if desired is not None:
            self.desired_replicas.labels(namespace=namespace, workload=name).set(desired)
        if replicas is not None:
            self.replicas.labels(namespace=namespace, workload=name).set(replicas)

    def forget_workload(self, namespace: str, name: str) -> None:
        for gauge in (self.desired_replicas, self.replicas):
            try:
                gauge.remove(namespace, name)
            except KeyError:
                pass

    def count_write(self, verb: str, kind: str) -> None:
        self.api_writes.labels(verb=verb, kind=kind).inc()

    def total_writes(self) -> float:
        return sum(s.value for m in self.api_writes.collect() for s in m.samples if s.name.endswith("_total"))

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serves /metrics in a background thread; returns the bound port (useful with port 0)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server.server_address[1]
