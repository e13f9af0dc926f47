"""`hdc-worker serve` as a real process: restart reloads the state, a kill -9 in the middle of a snapshot leaves
no torn file, and SIGTERM stops accepting, finishes the request in flight, snapshots and exits in time."""

from __future__ import annotations

import http.client
import io
import json
import signal
import socket
import time

import numpy as np
import pytest
import torch
from worker_process import REPO, WorkerProcess, free_port  # noqa: F401

import hd_compute.functional as F
from hd_compute.service.codec import hv_to_json


@pytest.fixture
def worker_factory(tmp_path):
    started: list[WorkerProcess] = []

    def make(**env) -> WorkerProcess:
        w = WorkerProcess(tmp_path, tmp_path / "state", **env)
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


def test_sigterm_finishes_in_flight_request_snapshots_and_restart_reloads(worker_factory):
    dim = 512
    w = worker_factory(HDC_DIMENSION=str(dim)).start()
    items = F.random(40, dim, "MAP", seed=1)
    assert w.request("POST", "/v1/memories", {"name": "m"})[0] == 201
    assert w.request("POST", "/v1/memories/m/items", {"vectors": hv_to_json(items[:20])})[0] == 200
    assert w.request("POST", "/v1/classifiers", {"name": "c", "num_classes": 2})[0] == 201
    x, y = items[:10], [i % 2 for i in range(10)]
    assert w.request("POST", "/v1/classifiers/c/fit", {"x": hv_to_json(x), "y": y})[0] == 200
    predicted = w.request("POST", "/v1/classifiers/c/predict", {"x": hv_to_json(x)})[1]

    # An add request whose body is still arriving when SIGTERM comes: it is in flight.
    body = json.dumps({"vectors": hv_to_json(items[20:])}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=30)
    conn.putrequest("POST", "/v1/memories/m/items")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[: len(body) // 2])
    time.sleep(0.5)
    sent_at = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(ConnectionRefusedError):  # no longer accepting
        socket.create_connection(("127.0.0.1", w.port), timeout=5).close()
    conn.send(body[len(body) // 2 :])
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    assert json.loads(resp.read())["size"] == 40
    assert w.proc.wait(timeout=15) == 0
    assert time.monotonic() - sent_at < 10  # within HDC_SHUTDOWN_GRACE_SECONDS
    log = w.log_path.read_text()
    assert "shutdown_completed" in log and "state_snapshotted" in log

    w.start()  # same state directory
    status, info = w.request("GET", "/v1/memories/m")
    assert status == 200 and info["size"] == 40
    status, found = w.request("POST", "/v1/memories/m/query", {"queries": hv_to_json(items[[3, 33]]), "k": 1})
    assert status == 200 and found["indices"] == [[3], [33]]
    assert w.request("POST", "/v1/classifiers/c/predict", {"x": hv_to_json(x)})[1] == predicted


def test_kill_9_during_snapshot_leaves_a_loadable_state(worker_factory, tmp_path):
    dim, count = 4096, 4000
    w = worker_factory(HDC_DIMENSION=str(dim), HDC_SNAPSHOT_INTERVAL_SECONDS="0.001").start()
    items = F.random(count, dim, "MAP", seed=2)
    assert w.request("POST", "/v1/memories", {"name": "big"})[0] == 201
    buf = io.BytesIO()
    np.savez(buf, vectors=items.data.numpy())
    status, _ = w.request("POST", "/v1/memories/big/items", buf.getvalue(), content_type="application/x-npz")
    assert status == 200

    memories = tmp_path / "state" / "memories"
    caught_mid_write = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the worker snapshots in a loop; kill it while a temp file is open
        if any(p.name.startswith(".tmp-") for p in memories.iterdir()):
            w.proc.send_signal(signal.SIGKILL)
            caught_mid_write = True
            break
        time.sleep(0.0005)
    w.proc.wait(10)
    assert caught_mid_write, "never saw a snapshot in progress"

    state = torch.load(memories / "big.pt", weights_only=True)  # never torn: the old or the new file
    assert state["vectors"].shape == (count, dim)
    assert torch.equal(state["vectors"], items.data)

    w.extra_env["HDC_SNAPSHOT_INTERVAL_SECONDS"] = "0"
    w.start()
    assert not any(p.name.startswith(".tmp-") for p in memories.iterdir())
    status, info = w.request("GET", "/v1/memories/big")
    assert status == 200 and info["size"] == count
    status, found = w.request("POST", "/v1/memories/big/query", {"queries": hv_to_json(items[1234]), "k": 1})
    assert found["indices"] == [1234]
