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


# The prober: GET /livez every INTERVAL seconds until its stdin closes, then one JSON line of what it saw.
_PROBE = """
import http.client, json, sys, threading, time
port, interval, timeout = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
done, latencies, failures = threading.Event(), [], []
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
print("probing", flush=True)
while not done.is_set():
    started = time.perf_counter()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", "/livez")
        status = conn.getresponse().status
        conn.close()
        if status != 200:
            failures.append(f"status {status}")
    except OSError as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
    latencies.append(time.perf_counter() - started)
    done.wait(interval)
print(json.dumps({"latencies": latencies, "failures": failures}))
"""


class LivenessProbe:
    """GET /livez every `interval` seconds while the `with` block runs, as the kubelet would, from a process of its
    own (a thread of the test would measure the test's own GIL, e.g. while it parses a large answer); keeps each
    answer's latency and every probe that failed or timed out (after `timeout` seconds)."""

    def __init__(self, worker: WorkerProcess, *, interval: float = 0.05, timeout: float = 10.0):
        self.worker, self.interval, self.timeout = worker, interval, timeout
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "LivenessProbe":
        command = [sys.executable, "-c", _PROBE, str(self.worker.port), str(self.interval), str(self.timeout)]
        self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None and self._proc.stdout.readline().strip() == "probing"
        time.sleep(2 * self.interval)  # at least one probe before the hostile request
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._proc is not None
        time.sleep(2 * self.interval)
        out, _ = self._proc.communicate(timeout=self.timeout + 30)  # closes stdin: the prober stops
        seen = json.loads(out.strip().splitlines()[-1])
        self.latencies, self.failures = seen["latencies"], seen["failures"]

    @property
    def worst(self) -> float:
        return max(self.latencies)
