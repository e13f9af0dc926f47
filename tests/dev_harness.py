"""For end-to-end tests on the kwok cluster: the pod mirror (real workers behind the fake pods) and a real
Prometheus scraping them, both as `hdcctl dev` processes (hdc_operator.dev; docs/testing.md, "The pod mirror").

    mon = LocalMonitoring(cluster.kubeconfig, tmp_path, namespace).start()
    mon.wait_workers(2)                    # 2 ready processes, one per running pod of the namespace
    mon.query('up{namespace="ns",workload="w"} == 1')
    mon.stop_prometheus(); ...; mon.start_prometheus()   # same port and TSDB: "Prometheus is down" tests
    mon.stop()

Load: hdc_operator.dev.load.LoadGenerator(mon.status_file, namespace, workload, vsa, dimension, clients).

A restarted Prometheus (same TSDB) answers with the previous run's last samples for its 5-minute lookback until
it scrapes again, and applies target changes at most every 5 s: a target removed within those 5 s of a restart
is never scraped by the new process, gets no staleness marker, and its old `up` sample lingers. After a restart,
select fresh samples: `up{...} and timestamp(up{...}) > <restart time>`.
"""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import time

from hdc_operator.dev import prometheus as prom


def _hdcctl(args: list[str], log: pathlib.Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hdc_operator.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen | None, timeout_s: float = 30) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


class LocalMonitoring:
    def __init__(
        self,
        kubeconfig: str,
        tmp_path: pathlib.Path,
        namespace: str | None = None,
        scrape_interval: str = "1s",
        operator_metrics: str | None = None,
    ):
        self.kubeconfig, self.tmp, self.namespace = kubeconfig, pathlib.Path(tmp_path), namespace
        self.scrape_interval, self.operator_metrics = scrape_interval, operator_metrics
        self.file_sd = self.tmp / "workers.json"
        self.mirror_dir = self.tmp / "mirror"
        self.status_file = self.mirror_dir / "status.json"
        self.prom_dir = self.tmp / "prometheus"
        self.mirror_log, self.prometheus_log = self.tmp / "mirror.log", self.tmp / "prometheus-cli.log"
        self.port = prom.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mirror: subprocess.Popen | None = None
        self.prometheus: subprocess.Popen | None = None

    @property
    def logs(self) -> list[pathlib.Path]:
        return [self.mirror_log, self.prometheus_log, self.prom_dir / "prometheus.log"]

    def log_tails(self, chars: int = 3000) -> str:
        return "".join(f"\n--- {p}:\n{p.read_text(errors='replace')[-chars:]}" for p in self.logs if p.exists())

    def _ns(self) -> list[str]:
        return ["-n", self.namespace] if self.namespace else []

    def start(self) -> "LocalMonitoring":
        self.mirror = _hdcctl(
            [
                "dev",
                "workers",
                "--kubeconfig",
                self.kubeconfig,
                "--file-sd",
                str(self.file_sd),
                "--work-dir",
                str(self.mirror_dir),
                *self._ns(),
            ],
            self.mirror_log,
        )
        return self.start_prometheus()

    def start_prometheus(self, timeout_s: float = 60) -> "LocalMonitoring":
        args = [
            "dev",
            "prometheus",
            "--kubeconfig",
            self.kubeconfig,
            "--file-sd",
            str(self.file_sd),
            "--port",
            str(self.port),
            "--data-dir",
            str(self.prom_dir),
            "--scrape-interval",
            self.scrape_interval,
            *self._ns(),
        ]
        if self.operator_metrics:
            args += ["--operator-metrics", self.operator_metrics]
        self.prometheus = _hdcctl(args, self.prometheus_log)
        self.wait(lambda: self.prometheus_ready(), "Prometheus ready", timeout_s)
        return self

    def prometheus_ready(self) -> bool:
        import urllib.request

        if self.prometheus is not None and self.prometheus.poll() is not None:
            raise AssertionError(f"hdcctl dev prometheus exited ({self.prometheus.returncode}){self.log_tails()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop_prometheus(self) -> int | None:
        code, self.prometheus = _stop(self.prometheus), None
        return code

    def stop(self) -> tuple[int | None, int | None]:
        """(exit status of the mirror, of hdcctl dev prometheus); the mirror stops its workers first."""
        return _stop(self.mirror), self.stop_prometheus()

    # --- reading ---------------------------------------------------------------------------------------------
    def workers(self) -> list[dict]:
        return json.loads(self.status_file.read_text())["workers"] if self.status_file.exists() else []

    def query(self, promql: str) -> list[dict]:
        return prom.query(self.url, promql)

    def wait(self, fn, what: str, timeout_s: float = 120):
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = fn()
            except AssertionError:
                raise
            except Exception as exc:  # not up yet
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}{self.log_tails()}")

    def ready_workers(self, n: int, pods=None) -> list[dict] | None:
        """The workers when there are exactly n, all ready (for exactly the pods `pods()` names, when given)."""
        ws = self.workers()
        ok = len(ws) == n and all(w["ready"] and w["pid"] for w in ws)
        return ws if ok and (pods is None or {w["pod"] for w in ws} == set(pods())) else None

    def wait_workers(self, n: int, pods=None, timeout_s: float = 120) -> list[dict]:
        """n ready worker processes; `pods`: a function giving the pod names they must belong to."""
        return self.wait(lambda: self.ready_workers(n, pods), f"{n} ready worker processes", timeout_s)
