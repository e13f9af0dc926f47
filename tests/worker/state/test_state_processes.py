"""The state store across real processes: the SQLite state directory's lock, and concurrent adds from three
processes to one memory in PostgreSQL."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
import torch
from state_process import REFUSED, digest, item_for

from hd_compute.state import Follower, StateDirLocked, StateStore

SCRIPT = pathlib.Path(__file__).with_name("state_process.py")


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_process_on_the_same_state_dir_refuses_to_start(tmp_path: pathlib.Path) -> None:
    state_dir = str(tmp_path / "state")
    holder = spawn("hold", state_dir)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    second = spawn("hold", state_dir)
    _, err = second.communicate(timeout=60)
    assert second.returncode == REFUSED
    assert state_dir in err and f"pid {holder.pid}" in err
    with pytest.raises(StateDirLocked) as locked:  # this process too
        StateStore.open(state_dir=state_dir)
    assert locked.value.directory == state_dir

    holder.send_signal(signal.SIGKILL)  # kill -9 leaves no stale lock: the kernel releases it with the process
    holder.wait(timeout=30)
    store = StateStore.open(state_dir=state_dir)
    store.create_memory("m", 64, "MAP")
    store.close()
    after = spawn("hold", state_dir)  # and closing the store released it
    assert after.stdout is not None and after.stdout.readline().strip() == "holding"
    after.communicate(input="", timeout=60)
    assert after.returncode == 0


@pytest.mark.slow
def test_concurrent_adds_from_three_processes_get_unique_gap_free_ids_in_one_order(pg_url: str) -> None:
    dim, per_process, tags = 1000, 40, ["a", "b", "c"]
    total = per_process * len(tags)
    store = StateStore.open(database_url=pg_url)
    store.create_memory("shared", dim, "BSC")
    procs = [spawn("add", pg_url, "shared", tag, str(per_process), str(dim), str(total)) for tag in tags]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
        for proc in procs:  # all three start adding at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)

    ids = sorted(i for result in results for i in result["ids"])
    assert ids == list(range(total))  # unique and gap-free
    for tag, result in zip(tags, results, strict=True):
        assert result["ids"] == sorted(result["ids"])  # one process's adds keep their order
        assert [key for key in results[0]["keys"] if key.startswith(tag)] == [f"{tag}-{i}" for i in range(per_process)]
    follower = Follower(store)
    follower.catch_up()
    cached = follower.memory("shared")
    expected_rows = torch.cat([item_for(key, dim).data for key in cached.keys])
    assert torch.equal(cached.memory.vectors.data, expected_rows)  # each id holds the vector of its key
    for result in results:  # every process's follower holds the same items in the same order
        assert result["keys"] == cached.keys
        assert result["digest"] == digest(expected_rows.numpy().tobytes())
    for tag, result in zip(tags, results, strict=True):
        assert [cached.keys[i] for i in result["ids"]] == [f"{tag}-{i}" for i in range(per_process)]
    store.close()
