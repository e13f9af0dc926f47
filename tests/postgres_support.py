"""A throwaway PostgreSQL server for tests and benchmarks: initdb + pg_ctl from Debian's postgresql package
(/usr/lib/postgresql/*/bin), run as the postgres user when the caller is root (PostgreSQL refuses root).

    with PostgresServer.started() as server:
        url = server.create_database("t1")          # postgresql+psycopg://hdc@127.0.0.1:<port>/t1
        server.stop(); server.start()               # a restart on the same port and data

Not pytest-specific (benchmarks use it too): failures raise PostgresError with the command's output.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql


class PostgresError(RuntimeError):
    pass


def pg_bin(tool: str) -> str | None:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), reverse=True)
    return candidates[0] if candidates else shutil.which(tool)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One cluster in a temporary directory on a free loopback port; `fsync` off unless asked for (tests
    measure behaviour, not the disk)."""

    def __init__(self, *, fsync: bool = False, max_connections: int = 100) -> None:
        initdb, self.pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if not (initdb and self.pg_ctl):
            raise PostgresError("PostgreSQL server binaries not found: `apt-get install -y postgresql` (Debian)")
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresError("running as root and there is no 'postgres' user to run the server as") from None
            self._run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self.root = tempfile.mkdtemp(prefix="hdc-pg-")
        if self._run_as:
            os.chown(self.root, self._run_as["user"], self._run_as["group"])
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self._env = {**os.environ, "HOME": self.root, "LC_ALL": "C"}
        self.options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            f"-c fsync={'on' if fsync else 'off'} -c max_connections={max_connections}"
        )
        self._run(initdb, "-D", self.data, "-U", "hdc", "--auth=trust", "--encoding=UTF8", "--no-sync")

    def _run(self, *argv: str) -> None:
        result = subprocess.run(
            argv, env=self._env, cwd=self.root, capture_output=True, text=True, timeout=120, **self._run_as
        )
        if result.returncode != 0:
            raise PostgresError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

    @classmethod
    @contextlib.contextmanager
    def started(cls, **options: Any) -> Iterator["PostgresServer"]:
        server = cls(**options)
        try:
            server.start()
            yield server
        finally:
            server.destroy()

    def start(self) -> None:
        self._run(
            self.pg_ctl,
            "-D",
            self.data,
            "-l",
            os.path.join(self.root, "server.log"),
            "-o",
            self.options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", self.data, "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        subprocess.run(
            [self.pg_ctl, "-D", self.data, "-m", "immediate", "-w", "stop"],
            env=self._env,
            cwd=self.root,
            capture_output=True,
            timeout=60,
            **self._run_as,
        )
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        """postgresql+psycopg://... (SQLAlchemy); driver="" gives the libpq form psycopg.connect takes."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://hdc@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its SQLAlchemy URL."""
        with psycopg.connect(self.url(driver=""), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def execute(self, query: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Runs one statement as the superuser; its rows (empty for statements without a result)."""
        with psycopg.connect(self.url(database, driver=""), autocommit=True) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []
