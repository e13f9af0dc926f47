"""One process per SQLite state directory: an exclusive OS lock (flock) on <state dir>/state.lock.

The lock belongs to the open file, so the kernel releases it when the process exits however it exits (kill -9
included) and a stale lock never blocks a restart; a second open of the same directory, in another process or
in this one, fails at once. The holder writes who it is into the file so the refusal can name it. flock is not
reliable on every network file system; the state directory is meant to be a local disk or a ReadWriteOnce
volume of one pod.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket

from .errors import StateDirLocked

LOCK_FILE = "state.lock"


class DirectoryLock:
    """Holds the exclusive lock of `directory` from construction until `release()` (or the process's end)."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.path = os.path.join(self.directory, LOCK_FILE)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateDirLocked(self.directory, holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        since = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    return text or "a process that has not written its name yet"
