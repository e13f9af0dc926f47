"""A real `hdc-worker serve` process for tests: started on a free port, waited on until ready."""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import socket
import subprocess
import sys
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
        env.update({"HDC_STATE_DIR": str(self.state_dir), "HDC_BENCHMARK_ENABLED": "false", "HDC_DEVICE": "cpu",
                    "HDC_SHUTDOWN_GRACE_SECONDS": "10", "HDC_LOG_LEVEL": "INFO", **self.extra_env})
        self.log_path = self.tmp_path / f"worker-{self.starts}.log"
        self.proc = subprocess.Popen([*command, "serve", "--host", "127.0.0.1", "--port", str(self.port)], env=env,
                                     stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT)
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

    def request(self, method: str, path: str, body=None, content_type: str = "application/json", timeout: float = 60,
                headers: dict[str, str] | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
            all_headers = {"Content-Type": content_type} if data is not None else {}
            all_headers.update(headers or {})
            conn.request(method, path, body=data, headers=all_headers)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, (json.loads(payload) if resp.getheader("Content-Type", "").startswith("application/json") else payload)
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
