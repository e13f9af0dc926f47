"""A real `hdc-operator` process for tests: started against a kubeconfig, waited on until its liveness answers."""

from __future__ import annotations

import http.client
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

from prometheus_client.parser import text_string_to_metric_families
from worker_process import free_port

REPO = pathlib.Path(__file__).resolve().parent.parent

# What a refusal by RBAC looks like in the operator's log: the API's reason (kopf's APIForbiddenError, our
# reconcile errors), kopf's own warning for a resource it may not watch, or a 403 as a status code. Not any
# "403" in the text: timestamps and ports hold those digits too.
PERMISSION_DENIAL = re.compile(
    r"forbidden|not enough permissions|[\"']code[\"']:\s*403\b|\bHTTP/1\.1\\?\"? 403\b", re.IGNORECASE
)


class OperatorProcess:
    def __init__(self, kubeconfig: str, tmp_path: pathlib.Path, *args: str, **env: str):
        self.kubeconfig, self.tmp_path, self.args, self.extra_env = kubeconfig, tmp_path, list(args), env
        self.proc: subprocess.Popen | None = None
        self.metrics_port = self.liveness_port = 0
        self.starts = 0

    def start(self, timeout_s: float = 60) -> "OperatorProcess":
        self.metrics_port, self.liveness_port = free_port(), free_port()
        self.starts += 1
        script = pathlib.Path(sys.executable).parent / "hdc-operator"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "hdc_operator.main"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO / "operator"), str(REPO / "worker"), env.get("PYTHONPATH")) if p
        )
        env.update({"KUBECONFIG": self.kubeconfig, "HDC_OPERATOR_LOG_LEVEL": "INFO", **self.extra_env})
        self.log_path = self.tmp_path / f"operator-{self.starts}.log"
        self.proc = subprocess.Popen(
            [
                *command,
                "--metrics-port",
                str(self.metrics_port),
                "--liveness-port",
                str(self.liveness_port),
                *self.args,
            ],
            env=env,
            stdout=open(self.log_path, "wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"operator exited early:\n{self.log()[-4000:]}"
            try:
                if self._get(self.liveness_port, "/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"operator never became live:\n{self.log()[-4000:]}")

    def _get(self, port: int, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def permission_denials(self) -> list[str]:
        """The log lines that say the API server refused the operator something (see PERMISSION_DENIAL)."""
        return [line for line in self.log().splitlines() if PERMISSION_DENIAL.search(line)]

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample of /metrics: (name, sorted label items) -> value."""
        status, text = self._get(self.metrics_port, "/metrics")
        assert status == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def metric_sum(self, name: str, **labels: str) -> float:
        return sum(
            v
            for (n, items), v in self.metrics().items()
            if n == name and all(dict(items).get(k) == val for k, val in labels.items())
        )

    def writes(self) -> float:
        return self.metric_sum("hdc_operator_api_writes_total")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 20) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
