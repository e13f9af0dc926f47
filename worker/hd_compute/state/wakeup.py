"""PostgreSQL LISTEN as a wake-up for followers: a thread that holds one LISTEN connection (psycopg 3) and calls
`on_wake(version)` for each NOTIFY, and `on_wake(None)` after each (re)connection, since notifications sent while
it was away are lost.

A notification only makes a follower look at the log sooner: correctness never depends on one arriving (the
follower polls the log regardless), so a dropped connection is retried after `retry_seconds` and counted in
`disconnects`, nothing more.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
from psycopg import sql

from .database import CONNECT_TIMEOUT_SECONDS, LISTENER_APPLICATION_NAME
from .schema import NOTIFY_CHANNEL

RECEIVE_SECONDS = 0.5  # how often the listening loop looks at its stop flag


class Listener:
    def __init__(self, conninfo: str, on_wake: Callable[[int | None], None], *, retry_seconds: float) -> None:
        self.conninfo = conninfo
        self.on_wake = on_wake
        self.retry_seconds = retry_seconds
        self.disconnects = 0
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hdc-state-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.conninfo,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    application_name=LISTENER_APPLICATION_NAME,
                ) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                    self.connected.set()
                    self.on_wake(None)
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=RECEIVE_SECONDS):
                            self.on_wake(_version(notify.payload))
            except psycopg.Error:
                self.disconnects += 1
            finally:
                self.connected.clear()
            self._stop.wait(self.retry_seconds)


def _version(payload: str) -> int | None:
    return int(payload) if payload.isdigit() else None
