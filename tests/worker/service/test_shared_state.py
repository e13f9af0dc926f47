"""Two real worker processes on one real PostgreSQL (and one on SQLite): one truth across replicas.

Writes through either worker are acknowledged once committed and answer X-HDC-State-Version; a read that sends it
as X-HDC-Min-State-Version is served from at least that state on any worker; an Idempotency-Key makes a retry on
the other worker answer the first answer without a second write; a restart keeps everything; and while the
store is down, writes are a retryable 503 state_unavailable, /livez stays 200, /readyz turns 503, and all of it
recovers when the store is back (docs/state.md, docs/worker-api.md).
"""

from __future__ import annotations

import http.client
import json
import pathlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from postgres_support import PostgresServer
from worker_process import WorkerProcess

import hd_compute.functional as F
from hd_compute.models import Centroid
from hd_compute.service.codec import hv_to_json

pytestmark = pytest.mark.slow

DIM = 256

VERSION = "x-hdc-state-version"
MIN_VERSION = "X-HDC-Min-State-Version"
KEY = "Idempotency-Key"


def call(
    worker: WorkerProcess, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """(status, headers with lower-case names, JSON body or raw bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=60)
    try:
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Content-Type": "application/json"} if data is not None else {}
        sent.update(headers or {})
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        payload = resp.read()
        got = {k.lower(): v for k, v in resp.getheaders()}
        is_json = got.get("content-type", "").startswith("application/json")
        return resp.status, got, json.loads(payload) if is_json else payload
    finally:
        conn.close()


def version_of(headers: dict[str, str]) -> int:
    return int(headers[VERSION])


def token(version: int) -> dict[str, str]:
    return {MIN_VERSION: str(version)}


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Polls `condition`; fails after `timeout` seconds (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def worker_on(tmp_path: pathlib.Path, name: str, database_url: str | None = None, **env: str) -> WorkerProcess:
    extra = {"HDC_DIMENSION": str(DIM), "HDC_LOG_LEVEL": "WARNING", **env}
    if database_url is not None:
        extra["HDC_STATE_DATABASE_URL"] = database_url
    (tmp_path / name).mkdir(exist_ok=True)
    return WorkerProcess(tmp_path / name, tmp_path / name / "state", **extra)


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    with PostgresServer.started() as server:
        yield server


@pytest.fixture(scope="module")
def pair(pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, ...]]:
    """Workers A and B on one database."""
    url = pg_server.create_database("pair")
    tmp = tmp_path_factory.mktemp("pair")
    workers = [worker_on(tmp, name, url) for name in ("a", "b")]
    try:
        for w in workers:
            w.start()
        yield tuple(workers)
    finally:
        for w in workers:
            w.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_memory_written_on_one_worker_answers_the_same_on_the_other(pair: tuple[WorkerProcess, ...]) -> None:
    a, b = pair
    name = unique("animals")
    items = F.random(30, DIM, "MAP", seed=1)
    status, headers, created = call(a, "POST", "/v1/memories", {"name": name})
    assert status == 201 and created == {"name": name, "vsa": "MAP", "dimension": DIM, "size": 0}
    created_at = version_of(headers)
    keys = [f"k{i}" for i in range(30)]
    status, headers, added = call(a, "POST", f"/v1/memories/{name}/items", {"vectors": hv_to_json(items), "keys": keys})
    assert status == 200 and added["ids"] == list(range(30)) and added["size"] == 30
    written = version_of(headers)
    assert written > created_at

    query = {"queries": hv_to_json(items[[3, 17, 29]]), "k": 2}
    status, on_a_headers, on_a = call(a, "POST", f"/v1/memories/{name}/query", query)
    assert status == 200 and version_of(on_a_headers) >= written  # the writer's own replica applied it
    status, on_b_headers, on_b = call(b, "POST", f"/v1/memories/{name}/query", query, token(written))
    assert status == 200 and version_of(on_b_headers) >= written
    assert on_b == on_a and [row[0] for row in on_b["indices"]] == [3, 17, 29]
    status, _, info = call(b, "GET", f"/v1/memories/{name}", headers=token(written))
    assert status == 200 and info["size"] == 30 and info["keys"] == keys

    # without the token B may lag, but once it has the memory it never loses it again
    other = unique("later")
    status, headers, _ = call(a, "POST", "/v1/memories", {"name": other})
    assert status == 201
    wait_until(lambda: call(b, "GET", f"/v1/memories/{other}")[0] == 200, what="B to see the new memory")
    for _ in range(20):
        status, headers, _ = call(b, "GET", f"/v1/memories/{other}")
        assert status == 200 and version_of(headers) >= 1

    status, headers, deleted = call(a, "DELETE", f"/v1/memories/{name}")
    assert status == 200 and deleted == {"deleted": name}
    status, missing_headers, missing = call(b, "GET", f"/v1/memories/{name}", headers=token(version_of(headers)))
    assert status == 404 and missing["error"] == "memory_not_found"
    assert version_of(missing_headers) >= version_of(headers)  # the 404 says which state it is from
    status, _, refused = call(b, "DELETE", f"/v1/memories/{name}")
    assert status == 404 and refused["error"] == "memory_not_found"


def test_a_classifier_fitted_on_one_worker_predicts_the_same_on_the_other(pair: tuple[WorkerProcess, ...]) -> None:
    a, b = pair
    name = unique("digits")
    x = F.random(12, DIM, "MAP", seed=2)
    y = [i % 3 for i in range(12)]
    assert call(a, "POST", "/v1/classifiers", {"name": name, "num_classes": 3})[0] == 201
    status, _, taken = call(b, "POST", "/v1/classifiers", {"name": name, "num_classes": 3})
    assert status == 409 and taken["error"] == "already_exists"  # the store decides, whatever B has applied
    status, headers, fitted = call(a, "POST", f"/v1/classifiers/{name}/fit", {"x": hv_to_json(x[:6]), "y": y[:6]})
    assert status == 200 and fitted["fitted"] and fitted["samples_seen"] == 6
    partial = {"x": hv_to_json(x[6:]), "y": y[6:], "partial": True}
    status, headers, fitted = call(b, "POST", f"/v1/classifiers/{name}/fit", partial, token(version_of(headers)))
    assert status == 200 and fitted["samples_seen"] == 12
    fitted_at = version_of(headers)
    status, _, on_a = call(a, "POST", f"/v1/classifiers/{name}/predict", {"x": hv_to_json(x)}, token(fitted_at))
    status_b, _, on_b = call(b, "POST", f"/v1/classifiers/{name}/predict", {"x": hv_to_json(x)}, token(fitted_at))
    assert status == status_b == 200 and on_a == on_b
    reference = Centroid(3, DIM).fit(x[:6], torch.tensor(y[:6])).partial_fit(x[6:], torch.tensor(y[6:]))
    assert on_b["labels"] == reference.predict(x).tolist()


def test_an_idempotent_add_retried_on_the_other_worker_adds_once(pair: tuple[WorkerProcess, ...]) -> None:
    a, b = pair
    name = unique("keyed")
    assert call(a, "POST", "/v1/memories", {"name": name})[0] == 201
    body = {"vectors": hv_to_json(F.random(5, DIM, "MAP", seed=3))}
    key = {KEY: unique("add")}
    status, first_headers, first = call(a, "POST", f"/v1/memories/{name}/items", body, key)
    assert status == 200 and first["ids"] == [0, 1, 2, 3, 4]
    status, again_headers, again = call(b, "POST", f"/v1/memories/{name}/items", body, key)
    assert status == 200 and again == first
    assert version_of(again_headers) == version_of(first_headers) and again_headers["idempotent-replayed"] == "true"
    status, _, info = call(b, "GET", f"/v1/memories/{name}", headers=token(version_of(first_headers)))
    assert info["size"] == 5

    other_body = {"vectors": hv_to_json(F.random(1, DIM, "MAP", seed=4))}
    status, _, reused = call(b, "POST", f"/v1/memories/{name}/items", other_body, key)
    assert status == 422 and reused["error"] == "idempotency_key_reused" and "Idempotency-Key" in reused["detail"]
    assert call(a, "GET", f"/v1/memories/{name}")[2]["size"] == 5

    status, _, bad = call(a, "POST", f"/v1/memories/{name}/items", body, {KEY: "no spaces allowed"})
    assert status == 400 and bad["detail"].startswith("Idempotency-Key")
    status, _, bad = call(a, "GET", f"/v1/memories/{name}", headers={MIN_VERSION: "soon"})
    assert status == 400 and bad["error"] == "invalid_header" and bad["detail"].startswith(MIN_VERSION)
    status, _, never = call(a, "GET", f"/v1/memories/{name}", headers=token(10**15))
    assert status == 400 and never["error"] == "unknown_state_version"


def test_concurrent_adds_through_both_workers_lose_nothing(pair: tuple[WorkerProcess, ...]) -> None:
    a, b = pair
    name = unique("busy")
    assert call(a, "POST", "/v1/memories", {"name": name})[0] == 201
    per_thread, answers, errors = 15, [], []

    def add(worker: WorkerProcess, seed: int) -> None:
        for i in range(per_thread):
            vector = hv_to_json(F.random(1, DIM, "MAP", seed=seed * 1000 + i))
            status, headers, body = call(worker, "POST", f"/v1/memories/{name}/items", {"vectors": vector})
            (answers if status == 200 else errors).append((version_of(headers), body) if status == 200 else body)

    threads = [threading.Thread(target=add, args=(w, s)) for s, w in enumerate((a, b, a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    ids = sorted(i for _, body in answers for i in body["ids"])
    assert ids == list(range(4 * per_thread))  # unique and gap-free
    newest = max(v for v, _ in answers)
    for w in (a, b):
        status, _, info = call(w, "GET", f"/v1/memories/{name}", headers=token(newest))
        assert status == 200 and info["size"] == 4 * per_thread


def test_a_restart_keeps_everything(pair: tuple[WorkerProcess, ...]) -> None:
    a, b = pair
    name = unique("kept")
    items = F.random(8, DIM, "MAP", seed=5)
    assert call(a, "POST", "/v1/memories", {"name": name})[0] == 201
    status, headers, _ = call(a, "POST", f"/v1/memories/{name}/items", {"vectors": hv_to_json(items)})
    query = {"queries": hv_to_json(items[[1, 6]]), "k": 1}
    before = call(a, "POST", f"/v1/memories/{name}/query", query)[2]
    a.stop()  # kill -9: nothing acknowledged may depend on a clean shutdown
    a.start()
    status, _, after = call(a, "POST", f"/v1/memories/{name}/query", query)
    assert status == 200 and after == before and after["indices"] == [[1], [6]]


def test_kill_9_in_a_stream_of_adds_loses_nothing_and_the_restart_catches_up_before_ready(
    pair: tuple[WorkerProcess, ...],
) -> None:
    """Adds stream through A, which is killed -9 in the middle; B (with the newest token) has every acknowledged
    item at its id; A, restarted while B goes on writing, is ready only with every write committed before its
    start applied."""
    a, b = pair
    name = unique("stream")
    assert call(a, "POST", "/v1/memories", {"name": name})[0] == 201
    items = F.random(300, DIM, "MAP", seed=11)
    acknowledged: list[tuple[int, list[int], int]] = []  # (item, ids, version)

    def stream() -> None:
        for i in range(len(items)):
            try:
                status, headers, body = call(
                    a, "POST", f"/v1/memories/{name}/items", {"vectors": hv_to_json(items[i : i + 1])}
                )
            except OSError:  # killed
                return
            if status == 200:
                acknowledged.append((i, body["ids"], version_of(headers)))

    thread = threading.Thread(target=stream)
    thread.start()
    wait_until(lambda: len(acknowledged) >= 20, what="20 acknowledged adds")
    a.proc.kill()
    a.proc.wait(10)
    thread.join(60)
    newest = max(v for _, _, v in acknowledged)
    queries = {"queries": hv_to_json(items[[i for i, _, _ in acknowledged]]), "k": 1}
    expected = [ids for _, ids, _ in acknowledged]
    status, _, found = call(b, "POST", f"/v1/memories/{name}/query", queries, headers=token(newest))
    assert status == 200 and found["indices"] == expected

    status, headers, _ = call(b, "POST", f"/v1/memories/{name}/items", {"vectors": hv_to_json(items[-1:])})
    assert status == 200
    before_restart = version_of(headers)
    a.start()  # returns once /readyz is 200
    status, headers, found = call(a, "POST", f"/v1/memories/{name}/query", queries)  # no token: caught up at start
    assert status == 200 and found["indices"] == expected and version_of(headers) >= before_restart


def test_sqlite_backend_keeps_everything_and_imports_old_snapshot_files_once(tmp_path: pathlib.Path) -> None:
    w = worker_on(tmp_path, "solo")
    old = w.state_dir / "memories"
    old.mkdir(parents=True)
    legacy = F.random(4, DIM, "MAP", seed=6)
    torch.save(  # what a worker before the state store left in HDC_STATE_DIR
        {
            "format": 1,
            "name": "legacy",
            "dim": DIM,
            "vsa": "MAP",
            "dtype": str(legacy.data.dtype).removeprefix("torch."),
            "vectors": legacy.data,
            "keys": [],
        },
        old / "legacy.pt",
    )
    w.start()
    try:
        status, headers, info = call(w, "GET", "/v1/memories/legacy")
        assert status == 200 and info["size"] == 4 and version_of(headers) > 0
        assert call(w, "POST", "/v1/memories/legacy/items", {"vectors": hv_to_json(legacy[:1])})[0] == 200
        assert call(w, "POST", "/v1/classifiers", {"name": "c", "num_classes": 2})[0] == 201
        fit = {"x": hv_to_json(legacy), "y": [0, 1, 0, 1]}
        assert call(w, "POST", "/v1/classifiers/c/fit", fit)[0] == 200
        predicted = call(w, "POST", "/v1/classifiers/c/predict", {"x": hv_to_json(legacy)})[2]
        w.stop()
        w.start()  # the files are still there: imported once, not again
        status, _, info = call(w, "GET", "/v1/memories/legacy")
        assert status == 200 and info["size"] == 5
        assert call(w, "POST", "/v1/classifiers/c/predict", {"x": hv_to_json(legacy)})[2] == predicted
        status, health_headers, health = call(w, "GET", "/health")
        assert health["state"]["backend"] == "sqlite" and health["state"]["lag_versions"] == 0
    finally:
        w.stop()


def test_store_outage_fails_writes_and_readiness_not_liveness_and_recovers(tmp_path: pathlib.Path) -> None:
    with PostgresServer.started() as server:
        url = server.create_database("outage")
        a = worker_on(tmp_path, "a", url).start()
        b = worker_on(tmp_path, "b", url)
        try:
            assert call(a, "POST", "/v1/memories", {"name": "m"})[0] == 201
            server.stop()
            status, headers, refused = call(
                a, "POST", "/v1/memories/m/items", {"vectors": hv_to_json(F.random(1, DIM))}
            )
            assert status == 503 and refused["error"] == "state_unavailable" and headers["retry-after"] == "1"
            assert call(a, "GET", "/livez")[0] == 200
            status, _, info = call(a, "GET", "/v1/memories/m")  # reads go on from the cache
            assert status == 200 and info["size"] == 0
            wait_until(lambda: call(a, "GET", "/readyz")[0] == 503, what="/readyz to turn 503 without the store")
            assert "state store" in call(a, "GET", "/readyz")[2]["reason"]
            assert (
                "hdc_state_store_reachable 0.0" in call(a, "GET", "/metrics")[2].decode()
            )  # HDC_StateStoreUnreachable

            starting = threading.Thread(target=b.start)  # a new replica cannot catch up: never ready meanwhile
            starting.start()
            wait_until(lambda: b.proc is not None and b.port != 0, what="B's process")
            wait_until(lambda: _status(b, "/livez") == 200, what="B to listen")
            for _ in range(5):
                assert _status(b, "/readyz") == 503
                time.sleep(0.2)

            server.start()
            starting.join(120)
            assert _status(b, "/readyz") == 200
            wait_until(lambda: _status(a, "/readyz") == 200, what="A ready again")
            assert "hdc_state_store_reachable 1.0" in call(a, "GET", "/metrics")[2].decode()
            status, headers, added = call(a, "POST", "/v1/memories/m/items", {"vectors": hv_to_json(F.random(2, DIM))})
            assert status == 200 and added["size"] == 2
            status, _, info = call(b, "GET", "/v1/memories/m", headers=token(version_of(headers)))
            assert status == 200 and info["size"] == 2
        finally:
            a.stop()
            b.stop()


def _status(worker: WorkerProcess, path: str) -> int:
    try:
        return call(worker, "GET", path)[0]
    except OSError:
        return 0
