"""`hdc-worker serve` as a real process: restart reloads the state, a kill -9 in the middle of a stream of adds
loses nothing acknowledged, and SIGTERM stops accepting, finishes the request in flight, closes the state store and
exits in time."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time

import pytest
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


def test_sigterm_finishes_in_flight_request_and_restart_reloads(worker_factory):
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
    assert "shutdown_completed" in log and "state_closed" in log

    w.start()  # same state directory
    status, info = w.request("GET", "/v1/memories/m")
    assert status == 200 and info["size"] == 40
    status, found = w.request("POST", "/v1/memories/m/query", {"queries": hv_to_json(items[[3, 33]]), "k": 1})
    assert status == 200 and found["indices"] == [[3], [33]]
    assert w.request("POST", "/v1/classifiers/c/predict", {"x": hv_to_json(x)})[1] == predicted


def test_kill_9_in_a_stream_of_adds_loses_nothing_acknowledged(worker_factory):
    """SQLite (the local backend): an add is answered after its commit, so a kill -9 at any moment keeps every
    acknowledged item at the id it was given; the add in flight is either all there or not at all."""
    dim = 1024
    w = worker_factory(HDC_DIMENSION=str(dim)).start()
    assert w.request("POST", "/v1/memories", {"name": "stream"})[0] == 201
    items = F.random(400, dim, "MAP", seed=2)
    acknowledged: list[tuple[int, list[int]]] = []  # (item, ids)
    stop = threading.Event()

    def stream() -> None:
        for i in range(len(items)):
            if stop.is_set():
                return
            try:
                status, body = w.request("POST", "/v1/memories/stream/items", {"vectors": hv_to_json(items[i : i + 1])})
            except OSError:  # killed
                return
            if status == 200:
                acknowledged.append((i, body["ids"]))

    thread = threading.Thread(target=stream)
    thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 25 and time.monotonic() < deadline:
        time.sleep(0.005)
    w.proc.send_signal(signal.SIGKILL)  # while the stream goes on: some add is in flight
    w.proc.wait(10)
    stop.set()
    thread.join(60)
    assert len(acknowledged) >= 25 and [ids for _, ids in acknowledged] == [[n] for n in range(len(acknowledged))]

    w.start()  # same state directory; ready only once the store is loaded
    status, info = w.request("GET", "/v1/memories/stream")
    assert status == 200 and info["size"] in (len(acknowledged), len(acknowledged) + 1)
    queries = items[[i for i, _ in acknowledged]]
    status, found = w.request("POST", "/v1/memories/stream/query", {"queries": hv_to_json(queries), "k": 1})
    assert status == 200 and found["indices"] == [ids for _, ids in acknowledged]
