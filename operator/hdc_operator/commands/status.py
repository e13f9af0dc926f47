"""`hdcctl status`: HDCWorkloads like `kubectl get hdcw`, with conditions and, given Prometheus, live metrics.

    hdcctl status [-n NS | -A] [--prometheus URL] [--watch [--interval S]] [--kubeconfig PATH] [-o table|json]

Per workload: phase, replicas (desired/current/ready), the conditions that need attention (with their reasons),
and with --prometheus: requests/s, hypervector ops/s, p50/p95/p99 latency, error ratio and firing alerts
(hdc_operator.live_metrics, the PromQL `make demo` shows). When Prometheus cannot answer, the cluster's view is
still printed, with a warning naming the URL. When the cluster cannot be reached, the error names the kubeconfig
and what to run. Exit status: 0 shown, 1 cluster or kubeconfig problem, 2 usage error.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import typer

from hdc_operator.live_metrics import DEFAULT_WINDOW, LiveMetrics, PrometheusUnavailable, fetch_live_metrics, fmt
from hdc_operator.names import CRD_NAME, GROUP, PLURAL, VERSION

LOCAL_CLUSTER_HINT = (
    "for the local control plane run `make cluster-up` (or `hdcctl dev cluster up`) and then the "
    "`export KUBECONFIG=...` line it prints; for another cluster pass --kubeconfig or set KUBECONFIG"
)


class StatusError(Exception):
    """A problem the user can fix; the message says what and how. code: the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# --- pure: workload objects -> rows -----------------------------------------------------------------------------


def condition_summary(conditions: list[dict]) -> list[str]:
    """The conditions worth a look, as `Type=Status(Reason)`; ["Ready"] when all is well, [] when none yet."""
    attention = []
    healthy_ready = False
    for c in conditions or []:
        ctype, status, reason = c.get("type", "?"), c.get("status", "?"), c.get("reason") or ""
        bad = (
            (ctype == "Ready" and status != "True")
            or (ctype == "Degraded" and status == "True")
            or (ctype == "MonitoringUnavailable" and status == "True")
            or (ctype == "ScalingActive" and status == "False")
            or (ctype == "Progressing" and status == "True")
        )
        if ctype == "Ready" and status == "True":
            healthy_ready = True
        if bad:
            attention.append(f"{ctype}={status}" + (f"({reason})" if reason else ""))
    return attention or (["Ready"] if healthy_ready else [])


@dataclass
class Row:
    namespace: str
    name: str
    phase: str
    spec_replicas: int | None
    desired: int | None
    current: int | None
    ready: int | None
    throughput: float | None  # status.throughputOpsPerSec, when the operator wrote one
    stale: bool  # status.observedGeneration behind metadata.generation
    conditions: list[dict]
    attention: list[str]
    live: LiveMetrics | None = None

    def as_dict(self) -> dict:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "phase": self.phase,
            "replicas": {
                "spec": self.spec_replicas,
                "desired": self.desired,
                "current": self.current,
                "ready": self.ready,
            },
            "throughputOpsPerSec": self.throughput,
            "statusStale": self.stale,
            "conditions": self.conditions,
            "attention": self.attention,
            "live": self.live.as_dict() if self.live else None,
        }


def workload_row(obj: dict) -> Row:
    meta, spec, st = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    observed, generation = st.get("observedGeneration"), meta.get("generation")
    return Row(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        phase=st.get("phase") or "Unknown",
        spec_replicas=spec.get("replicas"),
        desired=st.get("desiredReplicas"),
        current=st.get("replicas"),
        ready=st.get("readyReplicas"),
        throughput=st.get("throughputOpsPerSec"),
        stale=observed is not None and generation is not None and observed < generation,
        conditions=st.get("conditions") or [],
        attention=condition_summary(st.get("conditions") or []),
    )


@dataclass
class Report:
    rows: list[Row]
    scope: str  # "namespace NS" or "all namespaces"
    prometheus_url: str | None = None
    prometheus_error: str | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "workloads": [r.as_dict() for r in self.rows],
            "scope": self.scope,
            "prometheus": {"url": self.prometheus_url, "error": self.prometheus_error} if self.prometheus_url else None,
        }


def _n(value: Any) -> str:
    return "-" if value is None else str(value)


def render_table(report: Report, all_namespaces: bool):
    from rich.table import Table

    live = report.prometheus_url is not None and report.prometheus_error is None
    table = Table(box=None, pad_edge=False, header_style="bold")
    if all_namespaces:
        table.add_column("NAMESPACE")
    table.add_column("NAME")
    table.add_column("PHASE")
    table.add_column("REPLICAS\ndes/cur/ready", justify="right")
    if live:
        for col in ("REQ/S", "HV OPS/S", "P50 MS", "P95 MS", "P99 MS", "ERRORS", "UP"):
            table.add_column(col, justify="right")
        table.add_column("FIRING ALERTS")
    else:
        table.add_column("THROUGHPUT", justify="right")
    table.add_column("CONDITIONS")
    for r in report.rows:
        cells = [r.namespace] if all_namespaces else []
        cells += [r.name, r.phase + (" (stale)" if r.stale else ""), f"{_n(r.desired)}/{_n(r.current)}/{_n(r.ready)}"]
        if live:
            m = r.live or LiveMetrics()
            ratio = m.error_ratio
            cells += [
                fmt(m.requests_per_s),
                fmt(m.hypervector_ops_per_s),
                fmt(m.p50_ms, digits=2),
                fmt(m.p95_ms, digits=2),
                fmt(m.p99_ms, digits=2),
                "-" if ratio is None else f"{ratio * 100:.2f}%",
                str(m.targets_up),
                ", ".join(m.firing) or "none",
            ]
        else:
            cells.append(fmt(r.throughput))
        cells.append(", ".join(r.attention) or "-")
        table.add_row(*cells)
    return table


# --- I/O: kubeconfig, API server, Prometheus --------------------------------------------------------------------


def resolve_kubeconfig(explicit: str | None, env=os.environ) -> tuple[str, str]:
    """(path, where it came from); StatusError naming the path and what to run when there is no such file."""
    if explicit:
        path, source = explicit, "--kubeconfig"
    elif env.get("KUBECONFIG"):
        path, source = env["KUBECONFIG"].split(os.pathsep)[0], "$KUBECONFIG"
    else:
        path, source = str(pathlib.Path.home() / ".kube" / "config"), "the default"
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise StatusError(f"no kubeconfig at {path} ({source}): {LOCAL_CLUSTER_HINT}")
    return path, source


def connect(kubeconfig: str):
    """(ApiClient, the current context's namespace); StatusError when the kubeconfig cannot be used."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (ConfigException, ValueError, TypeError, KeyError, OSError) as exc:
        raise StatusError(f"the kubeconfig {kubeconfig} cannot be used: {exc}") from None
    cfg.retries = 1  # a down API server answers in seconds, not after urllib3's default retries
    namespace = ((active or {}).get("context") or {}).get("namespace") or "default"
    return client.ApiClient(cfg), namespace


def list_workloads(api, kubeconfig: str, namespace: str | None) -> list[dict]:
    """The HDCWorkloads of `namespace` (None: all); StatusError saying what is wrong and what to do."""
    import urllib3
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(api)
    server = api.configuration.host
    try:
        if namespace is None:
            out = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=(5, 15))
        else:
            out = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _request_timeout=(5, 15))
    except ApiException as exc:
        if exc.status == 404:
            raise StatusError(
                f"the API server at {server} does not serve {CRD_NAME}: the HDCWorkload CRD is not "
                f"installed. Install it with `kubectl apply --server-side -f crds/hdcworkload.yaml` "
                f"or the Helm chart (docs/install.md)"
            ) from None
        if exc.status in (401, 403):
            raise StatusError(
                f"the API server at {server} refused to list {PLURAL} ({exc.status} {exc.reason}) "
                f"for the user of {kubeconfig}: {_api_message(exc)}"
            ) from None
        raise StatusError(
            f"the API server at {server} answered {exc.status} {exc.reason}: {_api_message(exc)}"
        ) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise StatusError(
            f"cannot reach the Kubernetes API server at {server} (kubeconfig {kubeconfig}): {reason}. "
            f"Is the cluster running? {LOCAL_CLUSTER_HINT[0].upper()}{LOCAL_CLUSTER_HINT[1:]}"
        ) from None
    items = out.get("items") or []
    return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))


def _api_message(exc) -> str:
    try:
        return json.loads(exc.body).get("message") or exc.body
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or exc)


def build_report(api, kubeconfig: str, namespace: str | None, prometheus: str | None, window: str) -> Report:
    rows = [workload_row(o) for o in list_workloads(api, kubeconfig, namespace)]
    report = Report(rows, "all namespaces" if namespace is None else f"namespace {namespace}", prometheus)
    if prometheus:
        for row in rows:
            try:
                row.live = fetch_live_metrics(prometheus, row.namespace, row.name, window)
            except PrometheusUnavailable as exc:
                report.prometheus_error = str(exc)
                for r in rows:
                    r.live = None
                break
    return report


# --- the command ------------------------------------------------------------------------------------------------


def _print(console, report: Report, all_namespaces: bool, output: str) -> None:
    if output == "json":
        sys.stdout.write(json.dumps(report.as_dict(), indent=1) + "\n")
        sys.stdout.flush()
    else:
        console.print(_renderable(report, all_namespaces))
    if report.prometheus_error and output == "json":  # the table shows it in place
        typer.echo(
            f"hdcctl: warning: {report.prometheus_error}; live metrics left out, the cluster's view is shown", err=True
        )


def _renderable(report: Report, all_namespaces: bool):
    from rich.console import Group

    if not report.rows:
        return f"No HDCWorkloads in {report.scope}."
    parts = [render_table(report, all_namespaces)]
    if report.prometheus_url and report.prometheus_error:
        parts.append(f"[yellow]warning: {report.prometheus_error}; live metrics left out[/yellow]")
    return Group(*parts)


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(
        namespace: Optional[str] = typer.Option(
            None, "-n", "--namespace", help="Namespace (default: the kubeconfig context's, else default)."
        ),
        all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces", help="Workloads of every namespace."),
        prometheus: Optional[str] = typer.Option(
            None,
            "--prometheus",
            metavar="URL",
            help="Prometheus scraping the workers (e.g. http://127.0.0.1:9090): "
            "adds throughput, latency percentiles, errors, alerts.",
        ),
        watch: bool = typer.Option(False, "--watch", "-w", help="Refresh until Ctrl-C."),
        interval: float = typer.Option(2.0, "--interval", min=0.5, help="Seconds between refreshes with --watch."),
        window: str = typer.Option(DEFAULT_WINDOW, "--window", help="PromQL rate window of the live metrics."),
        kubeconfig: Optional[str] = typer.Option(
            None, "--kubeconfig", help="Default: $KUBECONFIG, else ~/.kube/config."
        ),
        output: str = typer.Option("table", "-o", "--output", help="table or json."),
    ) -> None:
        """HDCWorkloads with replicas, phase and conditions, plus live metrics from Prometheus (--prometheus)."""
        from rich.console import Console

        try:
            if namespace and all_namespaces:
                raise StatusError("-n/--namespace and -A/--all-namespaces exclude each other", code=2)
            if output not in ("table", "json"):
                raise StatusError(f"-o/--output: expected table or json, got {output!r}", code=2)
            if prometheus and not prometheus.startswith(("http://", "https://")):
                raise StatusError(f"--prometheus: expected an http:// or https:// URL, got {prometheus!r}", code=2)
            path, _ = resolve_kubeconfig(kubeconfig)
            api, context_ns = connect(path)
            scope = None if all_namespaces else (namespace or context_ns)
            console = Console() if Console().is_terminal else Console(width=200)
            if not watch:
                _print(console, build_report(api, path, scope, prometheus, window), all_namespaces, output)
                return
            _watch(console, api, path, scope, prometheus, window, all_namespaces, output, interval)
        except StatusError as exc:
            typer.echo(f"hdcctl: error: {exc}", err=True)
            raise typer.Exit(exc.code) from None


def _watch(console, api, path, scope, prometheus, window, all_namespaces, output, interval) -> None:
    """Refreshes every `interval` s until Ctrl-C; a failed refresh is shown and retried, the command goes on."""
    from rich.console import Group
    from rich.live import Live

    def frame():
        stamp = time.strftime("%H:%M:%S")
        try:
            report = build_report(api, path, scope, prometheus, window)
        except StatusError as exc:
            return None, f"[red]{stamp} {exc}[/red]"
        return report, Group(
            f"[dim]{stamp}, every {interval:g} s, Ctrl-C to stop[/dim]", _renderable(report, all_namespaces)
        )

    try:
        if output == "json" or not console.is_terminal:
            while True:
                report, view = frame()
                if report is None or output != "json":
                    console.print(view)
                else:
                    _print(console, report, all_namespaces, output)
                sys.stdout.flush()
                time.sleep(interval)
        with Live(frame()[1], console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame()[1], refresh=True)
    except KeyboardInterrupt:
        pass
