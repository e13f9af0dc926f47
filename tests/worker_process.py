"""A real `hdc-worker serve` process for tests: started on a free port, waited on until ready."""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerProcess:
    def __init__(self, tmp_path: pathlib.Path, state_dir: pathlib.Path, **env: str):
        self.tmp_path, self.state_dir, self.extra_env = tmp_path, state_dir, env
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0

    def start(self) -> "WorkerProcess":
        self.port = free_port()
        self.starts += 1
        script = pathlib.Path(sys.executable).parent / "hdc-worker"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "hd_compute.service"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "worker"), env.get("PYTHONPATH")) if p)
        env.update(
            {
                "HDC_STATE_DIR": str(self.state_dir),
                "HDC_BENCHMARK_ENABLED": "false",
                "HDC_DEVICE": "cpu",
                "HDC_SHUTDOWN_GRACE_SECONDS": "10",
                "HDC_LOG_LEVEL": "INFO",
                **self.extra_env,
            }
        )
        self.log_path = self.tmp_path / f"worker-{self.starts}.log"
        self.proc = subprocess.Popen(
            [*command, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=open(self.log_path, "wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker exited early:\n{self.log_path.read_text()[-3000:]}"
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"worker never became ready:\n{self.log_path.read_text()[-3000:]}")

    def request(
        self,
        method: str,
        path: str,
        body=None,
        content_type: str = "application/json",
        timeout: float = 60,
        headers: dict[str, str] | None = None,
    ):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
            all_headers = {"Content-Type": content_type} if data is not None else {}
            all_headers.update(headers or {})
            conn.request(method, path, body=data, headers=all_headers)
            resp = conn.getresponse()
            payload = resp.read()
            is_json = resp.getheader("Content-Type", "").startswith("application/json")
            return resp.status, (json.loads(payload) if is_json else payload)
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def peak_rss_bytes(self) -> int:
        """The worker process's peak resident memory so far (VmHWM), from /proc."""
        assert self.proc is not None
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/<pid>/status")


class LivenessProbe:
    """GET /livez every `interval` seconds on a thread while the `with` block runs, as the kubelet would; keeps
    each answer's latency and every probe that failed or timed out (after `timeout` seconds)."""

    def __init__(self, worker: WorkerProcess, *, interval: float = 0.05, timeout: float = 10.0):
        self.worker, self.interval, self.timeout = worker, interval, timeout
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                status, _ = self.worker.request("GET", "/livez", timeout=self.timeout)
                if status != 200:
                    self.failures.append(f"status {status}")
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.latencies.append(time.perf_counter() - started)
            self._stop.wait(self.interval)

    def __enter__(self) -> "LivenessProbe":
        self._thread.start()
        time.sleep(self.interval)  # at least one probe before the hostile request
        return self

    def __exit__(self, *exc_info: object) -> None:
        time.sleep(self.interval)
        self._stop.set()
        self._thread.join()

    @property
    def worst(self) -> float:
        return max(self.latencies)
