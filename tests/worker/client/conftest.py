"""One real `hdc-worker serve` process for the client's tests (fault injection on, for the timeout tests)."""

from __future__ import annotations

import pytest
from worker_process import WorkerProcess

DIMENSION = 256


@pytest.fixture(scope="session")
def worker(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("client-worker")
    process = WorkerProcess(
        tmp, tmp / "state", HDC_DIMENSION=str(DIMENSION), HDC_ADMIN_FAULTS="true", HDC_BATCH_MAX_WAIT_MS="1"
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def url(worker: WorkerProcess) -> str:
    return f"http://127.0.0.1:{worker.port}"
