"""Fixtures of the state store's tests: a real PostgreSQL server (one per session, a fresh database per test),
and stores on both backends."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Iterator

import pytest
from postgres_support import PostgresServer

from hd_compute.state import StateStore


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with PostgresServer.started() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.create_database("t_" + uuid.uuid4().hex[:12])


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[StateStore]:
    """A store on each backend: SQLite in a temporary state directory, PostgreSQL in a fresh database."""
    if request.param == "sqlite":
        store = StateStore.open(state_dir=str(tmp_path / "state"))
    else:
        store = StateStore.open(database_url=request.getfixturevalue("pg_url"))
    yield store
    store.close()
