"""`hdcctl dev ...`: the local harness (hdc_operator.dev): real workers behind kwok pods, Prometheus, the demo.

hdcctl dev workers --kubeconfig K --file-sd workers.json [--namespace NS] [--work-dir DIR]
hdcctl dev prometheus --kubeconfig K --file-sd workers.json [--port 9090] [--data-dir DIR]
hdcctl dev demo                        # what `make demo` runs; HDC_DEMO_SECONDS=N stops after N s
hdcctl dev cluster up|down|status      # hack/cluster.sh (HDC_CLUSTER_NAME, HDC_CLUSTER_DIR)
"""

from __future__ import annotations

import pathlib
import signal
import sys
import tempfile
import threading
from typing import Optional

import typer

dev_app = typer.Typer(
    help="Local harness: real worker processes for kwok pods, Prometheus, the demo.", no_args_is_help=True
)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so the command's finally-blocks stop what it started."""
    stop = threading.Event()

    def handler(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _kubeconfig(value: Optional[str]) -> str:
    import os

    path = value or os.environ.get("KUBECONFIG")
    if not path:
        typer.echo(
            "hdcctl: error: --kubeconfig: no kubeconfig given (or KUBECONFIG); `make cluster-up` prints one", err=True
        )
        raise typer.Exit(2)
    if not pathlib.Path(path).is_file():
        typer.echo(f"hdcctl: error: --kubeconfig: {path} is not a file", err=True)
        raise typer.Exit(2)
    return path


@dev_app.command("workers")
def workers(
    file_sd: pathlib.Path = typer.Option(..., "--file-sd", help="Prometheus file_sd JSON file to write."),
    kubeconfig: Optional[str] = typer.Option(None, "--kubeconfig", help="Default: $KUBECONFIG."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Only this namespace (default: all)."),
    work_dir: Optional[pathlib.Path] = typer.Option(
        None, "--work-dir", help="Worker state and logs, status.json (default: a temp dir)."
    ),
    interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between pod lists."),
) -> None:
    """Run one real `hdc-worker serve` per worker pod of the cluster; write their Prometheus targets."""
    from hdc_operator.dev.workers import run_mirror

    path = _kubeconfig(kubeconfig)
    work = work_dir or pathlib.Path(tempfile.mkdtemp(prefix="hdc-workers-"))
    run_mirror(
        kubeconfig=path,
        file_sd=file_sd,
        work_dir=work,
        namespace=namespace,
        interval_s=interval,
        log=_log,
        stop=_stop_on_signals(),
    )


@dev_app.command("prometheus")
def prometheus(
    file_sd: pathlib.Path = typer.Option(..., "--file-sd", help="The pod mirror's file_sd JSON file."),
    kubeconfig: Optional[str] = typer.Option(
        None, "--kubeconfig", help="Cluster whose hdc PrometheusRules are loaded (default: $KUBECONFIG)."
    ),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Only this namespace's rules."),
    port: int = typer.Option(9090, "--port", min=0, max=65535, help="Listen port on 127.0.0.1 (0: a free one)."),
    data_dir: Optional[pathlib.Path] = typer.Option(None, "--data-dir", help="Config, rules, TSDB, log."),
    scrape_interval: str = typer.Option("2s", "--scrape-interval", help="Scrape and rule evaluation interval."),
    alertmanager: Optional[str] = typer.Option(None, "--alertmanager", help="host:port of an Alertmanager."),
    operator_metrics: Optional[str] = typer.Option(
        None, "--operator-metrics", help="host:port of hdc-operator's /metrics, scraped as job hdc-operator."
    ),
) -> None:
    """Run a real Prometheus scraping the mirrored workers, with the operator's PrometheusRules."""
    from hdc_operator.dev.prometheus import free_port, run_prometheus

    path = _kubeconfig(kubeconfig)
    data = data_dir or pathlib.Path(tempfile.mkdtemp(prefix="hdc-prometheus-"))
    static = {"hdc-operator": {"targets": [operator_metrics]}} if operator_metrics else None
    run_prometheus(
        kubeconfig=path,
        file_sd=file_sd,
        data_dir=data,
        port=port or free_port(),
        namespace=namespace,
        scrape_interval=scrape_interval,
        alertmanager=alertmanager,
        static_jobs=static,
        log=_log,
        stop=_stop_on_signals(),
    )


@dev_app.command("demo")
def demo() -> None:
    """The quickstart (`make demo`): cluster, operator, real workers, Prometheus, load and a live status.

    Settings: HDC_DEMO_SECONDS (stop after N s instead of Ctrl-C), HDC_DEMO_KEEP_CLUSTER=1,
    HDC_DEMO_EXAMPLE (an HDCWorkload file; default deploy/examples/with-baselines.yaml), HDC_DEMO_CLIENTS,
    HDC_DEMO_DIR (work dir), HDC_CLUSTER_NAME / HDC_CLUSTER_DIR (hack/cluster.sh)."""
    from hdc_operator.dev.demo import main as demo_main

    raise typer.Exit(demo_main())


cluster_app = typer.Typer(
    help="The local control plane with fake GPU nodes (hack/cluster.sh; docs/testing.md).", no_args_is_help=True
)
dev_app.add_typer(cluster_app, name="cluster")


def _cluster(verb: str) -> None:
    import subprocess

    from hdc_operator.dev.prometheus import REPO

    script = REPO / "hack" / "cluster.sh"
    if not script.exists():
        typer.echo(f"hdcctl: error: {script} not found: `hdcctl dev cluster` runs from a source checkout", err=True)
        raise typer.Exit(2)
    raise typer.Exit(subprocess.run([str(script), verb]).returncode)


@cluster_app.command("up")
def cluster_up() -> None:
    """Create (or reuse) the cluster; the last line printed is `export KUBECONFIG=...`."""
    _cluster("up")


@cluster_app.command("down")
def cluster_down() -> None:
    """Delete the cluster and its kubeconfig."""
    _cluster("down")


@cluster_app.command("status")
def cluster_status() -> None:
    """The control-plane processes (with memory) and the nodes."""
    _cluster("status")


def register(app: typer.Typer) -> None:
    app.add_typer(dev_app, name="dev")
