"""`hdc-operator`: runs the HDCWorkload operator against the current kubeconfig (in-cluster config in a pod).

    hdc-operator                                   # all namespaces, metrics on :8081, liveness on :8082
    hdc-operator -n team-a -n team-b               # only these namespaces
    hdc-operator --peering hdc-operator            # HA: replicas share the KopfPeering object, one is active
Settings: config.py (flags, or HDC_OPERATOR_* environment variables). docs/operator.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import sys
from typing import Optional

import typer

from .config import ConfigError, OperatorConfig, load_config

app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


def kubernetes_client(pool_size: int = 32):
    """An ApiClient from the in-cluster service account, else from KUBECONFIG / ~/.kube/config, with a connection
    pool as large as the reconciler's thread pool (the client's default is 5 per CPU)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def run_operator(cfg: OperatorConfig) -> None:
    import kopf
    import structlog

    from hd_compute.monitoring.logging import configure_logging

    from .handlers import register
    from .metrics import OperatorMetrics

    configure_logging(cfg.log_level, cfg.log_format)
    # kopf logs every timer run at INFO; its per-object lines are useful only when debugging.
    if cfg.log_level != "DEBUG":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("kopf.activities.probe").setLevel(logging.WARNING)
    log = structlog.get_logger("hdc_operator")

    try:
        api_client = kubernetes_client(pool_size=max(8, cfg.workers * 4))
    except Exception as exc:  # kubernetes.config.ConfigException, a bad file, ...
        typer.echo(
            f"hdc-operator: no usable Kubernetes configuration (KUBECONFIG, ~/.kube/config or the in-cluster "
            f"service account): {exc}",
            err=True,
        )
        raise typer.Exit(2) from None
    metrics = OperatorMetrics()
    try:
        metrics_port = metrics.serve(cfg.metrics_port)
    except OSError as exc:
        typer.echo(f"hdc-operator: --metrics-port {cfg.metrics_port} cannot be served: {exc}", err=True)
        raise typer.Exit(2) from None
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs):
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    identity = f"hdc-operator@{socket.gethostname()}/{os.getpid()}-{secrets.token_hex(3)}"
    register(registry, cfg, api_client, metrics, identity)
    liveness = f"http://0.0.0.0:{cfg.liveness_port}/healthz" if cfg.liveness_port else None
    log.info(
        "operator_starting",
        namespaces=list(cfg.namespaces) or "all",
        metrics_port=metrics_port,
        liveness=liveness,
        resync_interval_s=cfg.resync_interval_s,
        peering=cfg.peering or None,
        priority=cfg.priority if cfg.peering else None,
        prometheus_url=cfg.prometheus_url or None,
    )
    kwargs = dict(
        registry=registry,
        liveness_endpoint=liveness,
        standalone=not cfg.peering,
        identity=identity,
        peering_name=cfg.peering or None,
        priority=cfg.priority,
    )
    if cfg.namespaces:
        kwargs["namespaces"] = list(cfg.namespaces)
    else:
        kwargs["clusterwide"] = True
    try:
        asyncio.run(kopf.operator(**kwargs))
    finally:
        api_client.close()


@app.command()
def main(
    namespace: Optional[list[str]] = typer.Option(
        None, "--namespace", "-n", help="Watch only this namespace (repeat for a list)."
    ),
    all_namespaces: Optional[bool] = typer.Option(
        None, "--all-namespaces", "-A", help="Watch every namespace (the default)."
    ),
    metrics_port: Optional[int] = typer.Option(None, help="Port of /metrics (0: a free port). Default 8081."),
    liveness_port: Optional[int] = typer.Option(None, help="Port of /healthz (0: off). Default 8082."),
    prometheus_url: Optional[str] = typer.Option(None, help="Prometheus the autoscaler queries."),
    resync_interval: Optional[float] = typer.Option(None, help="Seconds between level-based resyncs. Default 60."),
    resync_jitter: Optional[float] = typer.Option(None, help="Extra random delay per resync, as a fraction."),
    autoscale_interval: Optional[float] = typer.Option(
        None, help="Seconds between evaluations of the scaler (autoscaling.mode operator). Default 15."
    ),
    peering: Optional[str] = typer.Option(None, help="KopfPeering name for HA (empty: standalone)."),
    priority: Optional[int] = typer.Option(
        None, help="Peering priority: the highest live peer is active; equal priorities pause all of them."
    ),
    workers: Optional[int] = typer.Option(None, help="Concurrent reconciles. Default 8."),
    log_level: Optional[str] = typer.Option(None, help="DEBUG, INFO, WARNING, ERROR."),
    log_format: Optional[str] = typer.Option(None, help="json or console."),
) -> None:
    """Run the HDCWorkload operator."""
    try:
        cfg = load_config(
            {
                "namespaces": tuple(namespace) if namespace else None,
                "all_namespaces": all_namespaces,
                "metrics_port": metrics_port,
                "liveness_port": liveness_port,
                "prometheus_url": prometheus_url,
                "resync_interval": resync_interval,
                "resync_jitter": resync_jitter,
                "autoscale_interval": autoscale_interval,
                "peering": peering,
                "priority": priority,
                "workers": workers,
                "log_level": log_level,
                "log_format": log_format,
            }
        )
    except ConfigError as exc:
        typer.echo(f"hdc-operator: {exc}", err=True)
        raise typer.Exit(2) from None
    run_operator(cfg)


def cli() -> None:
    app(prog_name="hdc-operator")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
