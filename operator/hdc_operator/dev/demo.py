"""`make demo` (`hdcctl dev demo`): the whole system on this machine, with a live status until Ctrl-C.

1. the local control plane with fake GPU nodes (hack/cluster.sh up; reused when it already runs);
2. the HDCWorkload CRD (crds/), a namespace (HDC_DEMO_NAMESPACE, default hdc-demo);
3. the operator (`hdc-operator`, scoped to the namespace), the pod mirror (`hdcctl dev workers`: one real worker
   process per pod) and Prometheus (`hdcctl dev prometheus`: scrapes the workers and the operator, loads the
   operator's PrometheusRules);
4. an HDCWorkload (HDC_DEMO_EXAMPLE, default deploy/examples/with-baselines.yaml);
5. load (HDC_DEMO_CLIENTS closed-loop clients, default 4) and a live table from Prometheus: replicas, ready
   workers, throughput, latency percentiles, firing alerts;
6. Ctrl-C (or HDC_DEMO_SECONDS=N: stop after N seconds, exit 0): stops everything it started, in reverse order,
   and deletes the cluster if it created it (HDC_DEMO_KEEP_CLUSTER=1 keeps it).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from ..live_metrics import fetch_live_metrics
from ..live_metrics import fmt as _fmt
from . import prometheus as prom
from .load import LoadGenerator
from .workers import die_with_parent

REPO = prom.REPO
CLUSTER_SH = REPO / "hack" / "cluster.sh"
DEFAULT_EXAMPLE = REPO / "deploy" / "examples" / "with-baselines.yaml"
WINDOW = "10s"


class DemoError(RuntimeError):
    """A step failed; the message says which and where its log is."""


@dataclass
class Settings:
    seconds: float | None
    keep_cluster: bool
    example: pathlib.Path
    namespace: str
    clients: int
    work_dir: pathlib.Path | None

    @classmethod
    def from_env(cls, env=os.environ) -> "Settings":
        def number(name: str, default, cast, minimum):
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = cast(raw)
            except ValueError:
                raise DemoError(f"{name} must be a number, got {raw!r}") from None
            if value < minimum:
                raise DemoError(f"{name} must be >= {minimum}, got {raw!r}")
            return value

        example = pathlib.Path(env.get("HDC_DEMO_EXAMPLE") or DEFAULT_EXAMPLE)
        if not example.is_file():
            raise DemoError(f"HDC_DEMO_EXAMPLE: {example} is not a file")
        namespace = env.get("HDC_DEMO_NAMESPACE") or "hdc-demo"
        work = env.get("HDC_DEMO_DIR")
        return cls(
            seconds=number("HDC_DEMO_SECONDS", None, float, 1),
            keep_cluster=env.get("HDC_DEMO_KEEP_CLUSTER") == "1",
            example=example,
            namespace=namespace,
            clients=number("HDC_DEMO_CLIENTS", 4, int, 1),
            work_dir=pathlib.Path(work) if work else None,
        )


@dataclass
class Proc:
    """A child process of the demo, in its own session (Ctrl-C reaches only the demo, which stops it in order)."""

    name: str
    args: list[str]
    log_path: pathlib.Path
    env: dict | None = None
    proc: subprocess.Popen | None = None

    def start(self) -> "Proc":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, chars: int = 2500) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, grace_s: float = 20) -> None:
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _command(script: str, module: str) -> list[str]:
    """The console script next to this Python (the venv's), else `python -m module`."""
    path = pathlib.Path(sys.executable).parent / script
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait_until(check: Callable[[], object], what: str, timeout_s: float, proc: Proc | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise DemoError(
                f"{proc.name} exited ({proc.proc.returncode}) while waiting for {what}; log "
                f"{proc.log_path}:\n{proc.tail()}"
            )
        try:
            value = check()
        except DemoError:
            raise
        except Exception:  # not there yet (a file, a port)
            value = None
        if value:
            return value
        time.sleep(0.5)
    tail = f"; log {proc.log_path}:\n{proc.tail()}" if proc else ""
    raise DemoError(f"timed out after {timeout_s:.0f} s waiting for {what}{tail}")


# --- status ------------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    phase: str = "?"
    desired: int | None = None
    replicas: int | None = None
    ready: int | None = None
    workers_ready: int = 0
    workers: int = 0
    restarts: int = 0
    targets_up: int = 0
    throughput: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    errors_per_s: float | None = None
    by_operation: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    firing: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    client_rate: float = 0.0
    client_errors: int = 0
    client_last_error: str = ""


def collect(
    prom_url: str,
    namespace: str,
    name: str,
    workload_obj: dict | None,
    mirror_status: pathlib.Path,
    load: LoadGenerator | None,
) -> Snapshot:
    snap = Snapshot()
    st = (workload_obj or {}).get("status") or {}
    snap.phase = st.get("phase", "?")
    snap.desired, snap.replicas, snap.ready = st.get("desiredReplicas"), st.get("replicas"), st.get("readyReplicas")
    try:
        workers = json.loads(mirror_status.read_text())["workers"]
    except (OSError, ValueError, KeyError):
        workers = []
    snap.workers = len(workers)
    snap.workers_ready = sum(1 for w in workers if w.get("ready"))
    snap.restarts = sum(w.get("restarts", 0) for w in workers)
    with contextlib.suppress(Exception):  # Prometheus not ready yet: the table shows "-"
        live = fetch_live_metrics(prom_url, namespace, name, WINDOW)
        snap.targets_up, snap.throughput, snap.errors_per_s = live.targets_up, live.requests_per_s, live.errors_per_s
        snap.p50_ms, snap.p95_ms, snap.p99_ms = live.p50_ms, live.p95_ms, live.p99_ms
        snap.by_operation, snap.firing, snap.pending = live.by_operation, live.firing, live.pending
    if load is not None:
        snap.client_rate, snap.client_errors = load.stats.rate(), load.stats.errors
        snap.client_last_error = load.stats.last_error
    return snap


def render(snap: Snapshot, title: str, elapsed_s: float) -> Group:
    main = Table(title=f"{title}  ({elapsed_s:.0f} s)", title_justify="left")
    for col in (
        "phase",
        "replicas\ndesired/current/ready",
        "worker\nprocesses ready",
        "targets\nup",
        "throughput\nops/s",
        "p50\nms",
        "p95\nms",
        "p99\nms",
        "errors/s",
    ):
        main.add_column(col, justify="right")
    counts = "/".join("-" if n is None else str(n) for n in (snap.desired, snap.replicas, snap.ready))
    main.add_row(
        snap.phase,
        counts,
        f"{snap.workers_ready}/{snap.workers}" + (f" ({snap.restarts} restarts)" if snap.restarts else ""),
        str(snap.targets_up),
        _fmt(snap.throughput),
        _fmt(snap.p50_ms, digits=2),
        _fmt(snap.p95_ms, digits=2),
        _fmt(snap.p99_ms, digits=2),
        _fmt(snap.errors_per_s, digits=2),
    )
    ops = Table(title="by operation (Prometheus)", title_justify="left")
    ops.add_column("operation")
    ops.add_column("ops/s", justify="right")
    ops.add_column("p95 ms", justify="right")
    for op, (rate, p95) in snap.by_operation.items():
        ops.add_row(op, _fmt(rate), _fmt(p95, digits=2))
    alerts = ", ".join(snap.firing) if snap.firing else "none"
    client = f"load generator: {snap.client_rate:,.1f} req/s completed, {snap.client_errors} errors" + (
        f" (last: {snap.client_last_error})" if snap.client_last_error else ""
    )
    pending = ", ".join(snap.pending) if snap.pending else "none"
    return Group(main, ops, f"firing alerts: [bold]{alerts}[/bold]   pending: {pending}", client)


def summary_line(snap: Snapshot) -> str:
    """One plain `key=value` line (for logs and tests; numbers without thousands separators)."""
    num = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    return (
        f"status: phase={snap.phase} replicas={snap.replicas} ready={snap.ready} "
        f"workers_ready={snap.workers_ready} targets_up={snap.targets_up} "
        f"throughput_ops_per_s={num(snap.throughput)} p50_ms={num(snap.p50_ms)} "
        f"p95_ms={num(snap.p95_ms)} p99_ms={num(snap.p99_ms)} errors_per_s={num(snap.errors_per_s)} "
        f"firing={','.join(snap.firing) or 'none'} pending={','.join(snap.pending) or 'none'}"
    )


# --- the run -----------------------------------------------------------------------------------------------


class Demo:
    def __init__(self, settings: Settings, console: Console):
        self.s, self.console = settings, console
        self.started = time.monotonic()
        self.procs: list[Proc] = []
        self.kubeconfig = ""
        self.cluster_created = False
        self.workload_applied = False
        self.namespace_created = False
        self.temp_work = settings.work_dir is None
        self.work = settings.work_dir or pathlib.Path(tempfile.mkdtemp(prefix="hdc-demo-"))
        self.work.mkdir(parents=True, exist_ok=True)

    def step(self, text: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.started:6.1f} s[/dim]  {text}")

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [prom.tool("kubectl"), "--kubeconfig", self.kubeconfig, *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )
        if check and out.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        return out

    def cluster_up(self) -> None:
        was_running = subprocess.run([str(CLUSTER_SH), "running"], capture_output=True).returncode == 0
        self.step(
            "local control plane: "
            + (
                "reusing the running cluster"
                if was_running
                else "starting etcd, kube-apiserver, controller-manager, scheduler, kwok"
            )
        )
        out = subprocess.run([str(CLUSTER_SH), "up"], capture_output=True, text=True, timeout=900)
        self.cluster_created = not was_running
        if out.returncode != 0:
            raise DemoError(f"hack/cluster.sh up failed (exit {out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}")
        self.kubeconfig = out.stdout.strip().splitlines()[-1].removeprefix("export KUBECONFIG=")
        nodes = self.kubectl("get", "nodes", "-l", "type=kwok", "-o", "name").stdout.split()
        self.step(f"cluster up: {len(nodes)} fake GPU nodes; KUBECONFIG={self.kubeconfig}")

    def install(self) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        # (kubectl wait fails at once while a new CRD has no status.conditions yet: hence the retries)
        wait_until(
            lambda: (
                self.kubectl(
                    "wait",
                    "--for",
                    "condition=Established",
                    "--timeout=30s",
                    "crd/hdcworkloads.hdcompute.io",
                    check=False,
                ).returncode
                == 0
            ),
            "the HDCWorkload CRD to be Established",
            60,
        )
        if self.kubectl("get", "namespace", self.s.namespace, check=False).returncode != 0:
            self.kubectl("create", "namespace", self.s.namespace)
            self.namespace_created = True
        self.step(f"CRD hdcworkloads.hdcompute.io installed; namespace {self.s.namespace}")

    def spawn(self, name: str, args: list[str], env: dict | None = None) -> Proc:
        proc = Proc(name, args, self.work / f"{name}.log", env).start()
        self.procs.append(proc)
        return proc

    def start_components(self) -> None:
        ns = self.s.namespace
        metrics_port, liveness_port, self.prom_port = prom.free_port(), prom.free_port(), prom.free_port()
        self.prom_url = f"http://127.0.0.1:{self.prom_port}"
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        self.operator = self.spawn(
            "operator",
            [
                *_command("hdc-operator", "hdc_operator.main"),
                "--namespace",
                ns,
                "--metrics-port",
                str(metrics_port),
                "--liveness-port",
                str(liveness_port),
                "--prometheus-url",
                self.prom_url,
                "--resync-interval",
                "10",
            ],
            env,
        )
        self.file_sd, self.mirror_status = self.work / "workers.json", self.work / "workers" / "status.json"
        hdcctl = _command("hdcctl", "hdc_operator.cli")
        self.mirror = self.spawn(
            "workers",
            [
                *hdcctl,
                "dev",
                "workers",
                "--kubeconfig",
                self.kubeconfig,
                "--file-sd",
                str(self.file_sd),
                "-n",
                ns,
                "--work-dir",
                str(self.work / "workers"),
            ],
        )
        self.prometheus = self.spawn(
            "prometheus",
            [
                *hdcctl,
                "dev",
                "prometheus",
                "--kubeconfig",
                self.kubeconfig,
                "--file-sd",
                str(self.file_sd),
                "-n",
                ns,
                "--port",
                str(self.prom_port),
                "--data-dir",
                str(self.work / "prometheus"),
                "--operator-metrics",
                f"127.0.0.1:{metrics_port}",
            ],
        )
        wait_until(
            lambda: _http_ok(f"http://127.0.0.1:{liveness_port}/healthz"), "the operator's /healthz", 90, self.operator
        )
        self.step(f"operator running (pid {self.operator.proc.pid}; metrics :{metrics_port})")
        wait_until(lambda: _http_ok(f"{self.prom_url}/-/ready"), "Prometheus ready", 90, self.prometheus)
        self.step(
            f"Prometheus ready at {self.prom_url} (scrapes every 2 s); pod mirror running (pid {self.mirror.proc.pid})"
        )

    def apply_workload(self) -> dict:
        docs = [d for d in yaml.safe_load_all(self.s.example.read_text()) if d]
        workload = next((d for d in docs if d.get("kind") == "HDCWorkload"), None)
        if workload is None:
            raise DemoError(f"HDC_DEMO_EXAMPLE: {self.s.example} holds no HDCWorkload")
        self.kubectl("apply", "-n", self.s.namespace, "-f", str(self.s.example))
        self.workload_applied = True
        self.name = workload["metadata"]["name"]
        example = self.s.example.relative_to(REPO) if self.s.example.is_relative_to(REPO) else self.s.example
        self.step(f"applied {example}: HDCWorkload {self.s.namespace}/{self.name}")
        return workload

    def workload_obj(self) -> dict | None:
        out = self.kubectl("get", "hdcw", self.name, "-n", self.s.namespace, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def check_alive(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                raise DemoError(f"{proc.name} exited ({proc.proc.returncode}); log {proc.log_path}:\n{proc.tail()}")

    def run(self) -> int:
        self.cluster_up()
        self.install()
        self.start_components()
        workload = self.apply_workload()
        spec = (workload.get("spec") or {}).get("hdc") or {}
        vsa, dimension = spec.get("vsa", "MAP"), int(spec.get("dimension", 10000))

        def first_ready():
            self.check_alive()
            return json.loads(self.mirror_status.read_text())["workers"] and any(
                w["ready"] for w in json.loads(self.mirror_status.read_text())["workers"]
            )

        wait_until(first_ready, "a ready worker process (pods scheduled by the operator's Deployment)", 240)
        self.step("first worker process ready (real hdc-worker behind a kwok pod)")
        self.load = LoadGenerator(
            self.mirror_status, self.s.namespace, self.name, vsa, dimension, self.s.clients
        ).start()
        self.step(f"load: {self.s.clients} clients, bind/bundle/similarity {vsa} D={dimension} (.npz bodies)")
        return self.watch()

    def watch(self) -> int:
        interactive = self.console.is_terminal and self.s.seconds is None
        deadline = None if self.s.seconds is None else time.monotonic() + self.s.seconds
        title = f"HDCWorkload {self.s.namespace}/{self.name}"
        load_started = time.monotonic()
        first_throughput = None
        peak = 0.0
        snap = Snapshot()
        last_line = 0.0
        hint = "Ctrl-C stops the demo and cleans up" if deadline is None else f"stops after {self.s.seconds:.0f} s"
        self.console.print(f"[bold]live status[/bold] from Prometheus every 2 s ({hint})")
        with Live(
            render(snap, title, 0),
            console=self.console,
            refresh_per_second=2,
            auto_refresh=interactive,
            transient=False,
        ) as live:
            while deadline is None or time.monotonic() < deadline:
                self.check_alive()
                snap = collect(
                    self.prom_url, self.s.namespace, self.name, self.workload_obj(), self.mirror_status, self.load
                )
                if snap.throughput and snap.throughput > 0:
                    peak = max(peak, snap.throughput)
                    if first_throughput is None:
                        first_throughput = time.monotonic()
                live.update(render(snap, title, time.monotonic() - self.started), refresh=interactive)
                if not interactive and time.monotonic() - last_line >= 5:
                    self.console.print(summary_line(snap), highlight=False)
                    last_line = time.monotonic()
                time.sleep(2)
        self.console.print()
        self.console.print(summary_line(snap), highlight=False)
        if first_throughput is not None:
            self.console.print(
                "demo: start-up to first throughput in Prometheus "
                f"{first_throughput - self.started:.1f} s "
                f"(load started at {load_started - self.started:.1f} s); peak {peak:,.1f} ops/s",
                highlight=False,
            )
        else:
            self.console.print("demo: Prometheus saw no throughput", highlight=False)
        return 0

    def cleanup(self, failed: bool) -> None:
        t0 = time.monotonic()
        load = getattr(self, "load", None)
        if load is not None:
            load.stop()
        stopped = []
        delete_cluster = self.cluster_created and not self.s.keep_cluster
        operator = getattr(self, "operator", None)
        if self.workload_applied and not delete_cluster and operator is not None and operator.alive():
            # Delete the workload on a kept cluster; the garbage collector removes its children (no finalizer).
            self.kubectl(
                "delete", "hdcw", self.name, "-n", self.s.namespace, "--wait=true", "--timeout=60s", check=False
            )
        for proc in reversed(self.procs):  # Prometheus, then the mirror (which stops the workers), the operator
            proc.stop()
            stopped.append(f"{proc.name} (pid {proc.proc.pid}, exit {proc.proc.returncode})")
        if self.namespace_created and not delete_cluster and self.kubeconfig:
            self.kubectl("delete", "namespace", self.s.namespace, "--wait=false", check=False)
        if delete_cluster:
            subprocess.run([str(CLUSTER_SH), "down"], capture_output=True, timeout=180)
            stopped.append("the cluster")
        elif self.kubeconfig:
            stopped.append(f"nothing else: the cluster stays (KUBECONFIG={self.kubeconfig})")
        self.console.print(
            f"demo: stopped {', '.join(stopped) or 'nothing'} in {time.monotonic() - t0:.1f} s", highlight=False
        )
        if failed or not self.temp_work:
            self.console.print(f"demo: logs in {self.work}", highlight=False)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 140))  # a pipe or a log: no wrapped status lines
    try:
        settings = Settings.from_env()
        prom.tools_dir()
    except (DemoError, prom.ToolsMissing) as exc:
        console.print(f"demo: error: {exc}", highlight=False)
        return 2
    demo = Demo(settings, console)
    failed = True
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM as Ctrl-C: the cleanup below runs for both
    try:
        code = demo.run()
        failed = False
        return code
    except KeyboardInterrupt:
        failed = False
        console.print("\ndemo: interrupted, cleaning up", highlight=False)
        return 0
    except (DemoError, prom.ToolsMissing) as exc:
        console.print(f"demo: error: {exc}", highlight=False)
        return 1
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            demo.cleanup(failed)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
