"""schemathesis against a live worker's /openapi.json: no 5xx, no response that violates the document, no
schema-invalid request accepted, and the worker alive and serving afterwards.

Every check of `--checks all` runs except positive_data_acceptance: a schema cannot say that MAP vectors hold
only +1 and -1, that the operands of a bind have one length, or that a query matches its memory's dimension, so
schema-valid requests the worker rightly refuses are the rule for the vector routes, not a mismatch. The
opposite direction (negative_data_rejection: a request the document forbids must be refused) does run, which is
what keeps the document as strict as the server.

The seed is fixed so that `make test` is repeatable; HDC_FUZZ_SEED and HDC_FUZZ_EXAMPLES explore further.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from worker_process import WorkerProcess

pytestmark = pytest.mark.slow

SCHEMATHESIS = pathlib.Path(sys.executable).parent / "schemathesis"
SEED = int(os.environ.get("HDC_FUZZ_SEED", "20261204"))
MAX_EXAMPLES = int(os.environ.get("HDC_FUZZ_EXAMPLES", "100"))  # per operation: about a minute on 2 cores


@pytest.fixture
def worker(tmp_path):
    # Dimension 4 and a small allocation bound: the fuzzer's valid requests stay cheap on a shared machine.
    w = WorkerProcess(
        tmp_path,
        tmp_path / "state",
        HDC_DIMENSION="4",
        HDC_VSA="MAP",
        HDC_LOG_LEVEL="WARNING",
        HDC_MAX_ALLOCATION_BYTES=str(64 << 20),
        HDC_MAX_RESPONSE_BYTES=str(4 << 20),
    ).start()
    # the named entries of the document's examples, so that their routes get past 404
    assert w.request("POST", "/v1/memories", {"name": "colors", "dimension": 4})[0] == 201
    assert w.request("POST", "/v1/memories/colors/items", {"vectors": [[1, -1, 1, -1]], "keys": ["red"]})[0] == 200
    assert w.request("POST", "/v1/classifiers", {"name": "digits", "num_classes": 2, "dimension": 4})[0] == 201
    fit = {"x": [[1, -1, 1, -1], [1, 1, 1, 1]], "y": [0, 1]}
    assert w.request("POST", "/v1/classifiers/digits/fit", fit)[0] == 200
    try:
        yield w
    finally:
        w.stop()


def test_the_live_worker_matches_its_openapi_document(worker, tmp_path):
    command = [
        str(SCHEMATHESIS),
        "run",
        f"http://127.0.0.1:{worker.port}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-8000:]
    assert "passed" in report and "Fuzzing" in report
    assert worker.proc.poll() is None, "the worker died during the fuzzing"
    assert worker.request("GET", "/livez") == (200, {"status": "alive"})
    status, body = worker.request("POST", "/v1/ops/bind", {"a": [1, -1], "b": [-1, -1], "vsa": "MAP"})
    assert status == 200 and body["vectors"] == [-1, 1]
