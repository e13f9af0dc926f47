"""The lock-free hand-off the request path uses for its records (log lines, metric observations)."""

from __future__ import annotations

from collections import deque
from typing import TypeVar

T = TypeVar("T")


def drain(queue: deque[T]) -> list[T]:
    """Everything in `queue` now, oldest first, taken with popleft (atomic): other threads may append meanwhile
    or take the last ones too, and nothing is taken twice or lost."""
    taken: list[T] = []
    while True:
        try:
            taken.append(queue.popleft())
        except IndexError:
            return taken
