"""Helpers shared by the state store's tests: waiting for a condition, and a follower's cache as plain data."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from hd_compute.state import Follower


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Polls `condition` until it holds; fails the test after `timeout` seconds (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def cache_contents(follower: Follower) -> dict[str, Any]:
    """Everything a follower serves, as comparable plain data: per memory its generation, model, dimension,
    vectors (storage form) and keys; per classifier its generation, weights and samples seen."""
    memories = {
        name: (c.generation, c.memory.vsa.name, c.memory.dim, c.memory.vectors.data.cpu().tolist(), list(c.keys))
        for name, c in follower.memories().items()
    }
    classifiers = {
        name: (c.generation, c.vsa, c.samples_seen, None if c.model.weights is None else c.model.weights.cpu())
        for name, c in follower.classifiers().items()
    }
    return {"memories": memories, "classifiers": classifiers}


def assert_same_contents(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert left["memories"] == right["memories"]
    assert left["classifiers"].keys() == right["classifiers"].keys()
    for name, (gen, vsa, seen, weights) in left["classifiers"].items():
        other = right["classifiers"][name]
        assert (gen, vsa, seen) == other[:3], name
        if weights is None or other[3] is None:
            assert weights is None and other[3] is None, name
        else:
            assert weights.dtype == other[3].dtype and bool((weights == other[3]).all()), name
