"""`make demo` (hdcctl dev demo): its load generator's requests against a real worker, its settings errors, and a
30 s non-interactive run on a cluster of its own that must show throughput and leave no process behind."""

from __future__ import annotations

import io
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import paths
import pytest
from worker_process import WorkerProcess

from hdc_operator.dev.demo import DemoError, Settings
from hdc_operator.dev.load import OPERATIONS, request_bodies, storage_vectors

REPO = paths.REPO


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo-worker")
    w = WorkerProcess(tmp, tmp / "state", HDC_DIMENSION="256").start()
    yield w
    w.stop()


@pytest.mark.parametrize("vsa", ["MAP", "BSC", "HRR", "FHRR"])
def test_load_generator_requests_are_served(worker, vsa):
    dimension = 200  # not a multiple of 64: BSC padding bits must be zero
    for op, (path, body) in request_bodies(vsa, dimension).items():
        status, payload = worker.request("POST", path, body, content_type="application/x-npz")
        assert status == 200, (op, payload)
        arrays = np.load(io.BytesIO(payload))
        if op == "similarity":
            assert arrays["similarities"].shape == (1, 16)
        elif op == "bundle":
            assert arrays["vectors"].ndim == 1  # 8 vectors bundled into one
        else:
            assert arrays["vectors"].shape[0] == 1
    assert set(request_bodies(vsa, dimension)) == set(OPERATIONS)


def test_storage_vectors_refuse_an_unknown_model():
    with pytest.raises(ValueError, match="vsa must be one of"):
        storage_vectors(np.random.default_rng(0), "XYZ", 8, 1)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"HDC_DEMO_SECONDS": "soon"}, "HDC_DEMO_SECONDS must be a number"),
        ({"HDC_DEMO_SECONDS": "0"}, "HDC_DEMO_SECONDS must be >= 1"),
        ({"HDC_DEMO_CLIENTS": "2.5"}, "HDC_DEMO_CLIENTS must be a number"),
        ({"HDC_DEMO_EXAMPLE": "/nonexistent.yaml"}, "HDC_DEMO_EXAMPLE: /nonexistent.yaml is not a file"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(DemoError, match=re.escape(message)):
        Settings.from_env(env)


def test_default_settings():
    s = Settings.from_env({})
    assert s.seconds is None and s.clients == 4 and s.namespace == "hdc-demo" and not s.keep_cluster
    assert s.example == REPO / "deploy" / "examples" / "with-baselines.yaml"


def processes_mentioning(text: str) -> list[str]:
    """pid: command of every live process whose command line or environment contains `text`."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if text.encode() in cmdline or text.encode() in environ:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
            found.append(f"{proc.name}: {command}")
    return found


@pytest.mark.k8s
@pytest.mark.slow
def test_demo_runs_shows_throughput_and_cleans_up(tmp_path):
    env = {
        **os.environ,
        # a cluster of its own, in this test's directory: created and deleted by the demo
        "HDC_CLUSTER_NAME": "hdc-demo-test",
        "HDC_CLUSTER_DIR": str(tmp_path / "cluster"),
        "HDC_DEMO_DIR": str(tmp_path / "demo"),
        "HDC_DEMO_SECONDS": "30",
    }
    env.pop("HDC_DEMO_KEEP_CLUSTER", None)
    out = subprocess.run(
        [sys.executable, "-m", "hdc_operator.cli", "dev", "demo"], env=env, capture_output=True, text=True, timeout=400
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-5000:]
    lines = [line for line in text.splitlines() if line.startswith("status: ")]
    assert lines, text[-5000:]
    rates = [float(m.group(1)) for line in lines if (m := re.search(r"throughput_ops_per_s=([0-9.]+)", line))]
    assert rates and max(rates) > 0, text[-5000:]
    assert "workers_ready=1" in lines[-1] and "targets_up=1" in lines[-1], lines[-1]
    assert re.search(r"p95_ms=[0-9]", lines[-1]), lines[-1]
    assert "HDCWorkload hdc-demo/hdc-baselines" in text  # the rich table was printed
    assert "the cluster" in text.split("demo: stopped", 1)[1], text[-2000:]
    left = processes_mentioning(str(tmp_path))
    assert not left, "the demo left processes behind:\n" + "\n".join(left)
