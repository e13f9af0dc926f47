"""A real Prometheus (and Alertmanager) for local runs: the pinned binaries, a generated configuration, and the
PrometheusRules the operator applied in the cluster, mirrored into a rule file.

    hdcctl dev prometheus --kubeconfig K --file-sd workers.json --port 9090 --data-dir DIR

Scrape targets come from the pod mirror's file_sd file (hdc_operator.dev.workers): one target per real worker
process, labelled namespace/pod/workload as the ServiceMonitor's relabelings label the pods in a cluster.
Rules: every PrometheusRule labelled app.kubernetes.io/managed-by=hdc-operator is read from the API server every
few seconds; when their groups change, the rule file is rewritten and Prometheus reloaded (POST /-/reload), as the
Prometheus operator does in a real cluster.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Any, Iterable, Mapping

import yaml

from ..names import MANAGED_SELECTOR

REPO = pathlib.Path(__file__).resolve().parents[3]


class ToolsMissing(RuntimeError):
    """The pinned tools are not built (hack/build-tools.sh); the message says what to run."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.lru_cache(maxsize=1)
def tools_dir() -> pathlib.Path:
    """The pinned tools' bin directory, from `hack/build-tools.sh --check`."""
    result = subprocess.run([str(REPO / "hack" / "build-tools.sh"), "--check"], capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        raise ToolsMissing(f"the pinned tools are missing; run `make tools`:\n{result.stdout}{result.stderr}")
    return pathlib.Path(lines[0].strip())


def tool(name: str) -> str:
    """prometheus, promtool, alertmanager, kubectl... from the tools dir, else from PATH."""
    import shutil

    path = tools_dir() / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise ToolsMissing(f"{name} is not installed (tools dir {tools_dir()}, PATH); run `make tools`")
    return found


def write_atomic(path: pathlib.Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename: a reader sees the old or the new file."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


class ToolProcess:
    """A Prometheus or Alertmanager process on 127.0.0.1:<port>, ready (/-/ready) when start() returns."""

    def __init__(self, name: str, args: list[str], port: int, log_path: pathlib.Path):
        self.name, self.args, self.port, self.log_path = name, args, port, pathlib.Path(log_path)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> "ToolProcess":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} never became ready in {timeout} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --- configuration (pure) -----------------------------------------------------------------------------------


def prometheus_config(
    *,
    file_sd: Iterable[str | os.PathLike] = (),
    rule_files: Iterable[str | os.PathLike] = (),
    scrape_interval: str = "2s",
    evaluation_interval: str = "2s",
    alertmanager: str | None = None,
    static_jobs: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict:
    """prometheus.yml as a dict. `file_sd`: the pod mirror's files (job `hdc-workers`, each target already
    labelled namespace/pod/workload/job); `static_jobs`: job name -> {"targets": [...], "labels": {...}}
    (e.g. the operator's /metrics); `alertmanager`: host:port."""
    scrape_configs: list[dict] = []
    files = [str(f) for f in file_sd]
    if files:
        scrape_configs.append(
            {
                "job_name": "hdc-workers",
                "scrape_interval": scrape_interval,
                "metrics_path": "/metrics",
                # Each target's own `job` label (the Service's name, as the ServiceMonitor gives) is kept: Prometheus
                # sets job=<job_name> only on targets without one.
                "file_sd_configs": [{"files": files, "refresh_interval": "1s"}],
            }
        )
    for job, static in (static_jobs or {}).items():
        scrape_configs.append(
            {
                "job_name": job,
                "scrape_interval": scrape_interval,
                "static_configs": [{"targets": list(static["targets"]), "labels": dict(static.get("labels") or {})}],
            }
        )
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": [str(f) for f in rule_files],
        "scrape_configs": scrape_configs,
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config


def rule_groups_from_cluster(prometheus_rules: Iterable[Mapping]) -> dict:
    """{"groups": [...]}: every group of every PrometheusRule object, ordered by namespace/name (stable text)."""
    groups: list[dict] = []
    for obj in sorted(prometheus_rules, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])):
        groups += list((obj.get("spec") or {}).get("groups") or [])
    return {"groups": groups}


def _configured(name: str, data_dir: pathlib.Path, config: Mapping, port: int | None) -> tuple[pathlib.Path, int]:
    """Writes data_dir/<name>.yml; (its path, the port: `port` or a free one)."""
    data_dir = pathlib.Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"{name}.yml"
    write_atomic(path, yaml.safe_dump(dict(config), sort_keys=False))
    return path, port or free_port()


def prometheus_process(
    data_dir: pathlib.Path, config: Mapping, *, port: int | None = None, retention: str = "2h"
) -> ToolProcess:
    """A Prometheus on 127.0.0.1 with `config` written to data_dir/prometheus.yml; /-/reload enabled (local only)."""
    path, port = _configured("prometheus", data_dir, config, port)
    args = [
        tool("prometheus"),
        f"--config.file={path}",
        f"--storage.tsdb.path={path.parent / 'tsdb'}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--rules.alert.resend-delay=1s",
        "--log.level=warn",
    ]
    return ToolProcess("prometheus", args, port, path.parent / "prometheus.log")


def alertmanager_process(data_dir: pathlib.Path, config: Mapping, *, port: int | None = None) -> ToolProcess:
    """An Alertmanager on 127.0.0.1 with `config` written to data_dir/alertmanager.yml; no clustering."""
    path, port = _configured("alertmanager", data_dir, config, port)
    args = [
        tool("alertmanager"),
        f"--config.file={path}",
        f"--storage.path={path.parent / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    return ToolProcess("alertmanager", args, port, path.parent / "alertmanager.log")


# --- the HTTP API ---------------------------------------------------------------------------------------------


def query(url: str, promql: str, timeout: float = 5) -> list[dict]:
    """The instant vector of `promql` ([{"metric": {...}, "value": [ts, "v"]}, ...]); RuntimeError on an error."""
    full = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(full, timeout=timeout) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus query {promql!r} failed: {body}")
    return body["data"]["result"]


def scalar(url: str, promql: str, default: float | None = None) -> float | None:
    """The first sample's value of `promql`, or `default` when the result is empty."""
    result = query(url, promql)
    return float(result[0]["value"][1]) if result else default


def reload(url: str, timeout: float = 10) -> None:
    req = urllib.request.Request(f"{url.rstrip('/')}/-/reload", method="POST")
    with urllib.request.urlopen(req, timeout=timeout):
        pass


# --- rules from the cluster ------------------------------------------------------------------------------------


def list_prometheus_rules(api_client, namespace: str | None = None) -> list[dict]:
    from kubernetes import client

    custom = client.CustomObjectsApi(api_client)
    kw = {"label_selector": MANAGED_SELECTOR}
    if namespace:
        out = custom.list_namespaced_custom_object("monitoring.coreos.com", "v1", namespace, "prometheusrules", **kw)
    else:
        out = custom.list_cluster_custom_object("monitoring.coreos.com", "v1", "prometheusrules", **kw)
    return out.get("items", [])


class RuleSync:
    """Keeps `rule_file` equal to the cluster's hdc PrometheusRules; reloads Prometheus when it changes."""

    def __init__(self, rule_file: pathlib.Path, list_rules, prometheus_url: str | None = None):
        self.rule_file, self.list_rules, self.prometheus_url = pathlib.Path(rule_file), list_rules, prometheus_url
        self.text = None
        self.reloads = 0
        if not self.rule_file.exists():
            write_atomic(self.rule_file, yaml.safe_dump({"groups": []}))

    def sync(self) -> bool:
        """True when the rule file changed (and Prometheus was reloaded)."""
        text = yaml.safe_dump(rule_groups_from_cluster(self.list_rules()), sort_keys=False)
        if text == self.text:
            return False
        write_atomic(self.rule_file, text)
        self.text = text
        if self.prometheus_url:
            reload(self.prometheus_url)
            self.reloads += 1
        return True


def run_prometheus(
    *,
    kubeconfig: str | None,
    file_sd: pathlib.Path,
    data_dir: pathlib.Path,
    port: int,
    namespace: str | None = None,
    scrape_interval: str = "2s",
    alertmanager: str | None = None,
    static_jobs: Mapping | None = None,
    sync_interval_s: float = 3.0,
    log=print,
    stop=None,
) -> None:
    """Runs Prometheus until `stop` (a threading.Event) is set or SIGTERM/SIGINT; syncs rules meanwhile."""
    import threading

    from kubernetes import config as kconfig

    stop = stop or threading.Event()
    data_dir = pathlib.Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rule_file = data_dir / "rules.yml"
    api_client = kconfig.new_client_from_config(config_file=kubeconfig) if kubeconfig is not None else None
    sync = RuleSync(rule_file, lambda: list_prometheus_rules(api_client, namespace)) if api_client else None
    if not pathlib.Path(file_sd).exists():
        write_atomic(pathlib.Path(file_sd), "[]")
    cfg = prometheus_config(
        file_sd=[file_sd],
        rule_files=[rule_file],
        scrape_interval=scrape_interval,
        evaluation_interval=scrape_interval,
        alertmanager=alertmanager,
        static_jobs=static_jobs,
    )
    prom = prometheus_process(data_dir, cfg, port=port).start()
    if sync:
        sync.prometheus_url = prom.url
    log(f"prometheus: {prom.url} (pid {prom.proc.pid}), targets from {file_sd}, rules in {rule_file}")
    try:
        while not stop.is_set():
            if not prom.alive():
                raise RuntimeError(f"prometheus exited ({prom.proc.returncode}):\n{prom.log_tail()}")
            if sync:
                try:
                    if sync.sync():
                        log(f"prometheus: rules reloaded ({len(yaml.safe_load(sync.text)['groups'])} groups)")
                except Exception as exc:  # the API server may be restarting: keep the last rules
                    log(f"prometheus: rule sync failed, keeping the last rules: {exc}")
            stop.wait(sync_interval_s)
    finally:
        prom.stop()
        if api_client is not None:
            api_client.close()
