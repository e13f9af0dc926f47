"""A real second process for the state store's tests (run as a script, never imported by pytest's collection).

    state_process.py hold <state_dir>
        opens a SQLite store on <state_dir>, prints "holding", then waits for stdin to close.
    state_process.py add <database_url> <memory> <tag> <count> <dim> <total>
        opens the store, follows it, prints "ready", waits for a line on stdin, then adds <count> single items
        with keys <tag>-<i> (the vector of a key is seeded by the key), waits until its follower holds <total>
        items, and prints one JSON line: the ids it was given and its follower's keys and vectors' digest.
A refused open prints the error on stderr and exits with status 3.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import zlib

import hd_compute as hd
from hd_compute.state import Follower, StateDirLocked, StateStore

REFUSED = 3
WAIT_SECONDS = 120.0  # bound on waiting for the other processes' adds


def item_for(key: str, dim: int) -> hd.Hypervectors:
    """The one vector the tests expect under `key`."""
    return hd.random(1, dim, "BSC", seed=zlib.crc32(key.encode()))


def digest(rows: bytes) -> str:
    return hashlib.sha256(rows).hexdigest()


def hold(state_dir: str) -> None:
    try:
        store = StateStore.open(state_dir=state_dir)
    except StateDirLocked as exc:
        print(str(exc), file=sys.stderr, flush=True)
        sys.exit(REFUSED)
    print("holding", flush=True)
    sys.stdin.read()
    store.close()


def add(url: str, memory: str, tag: str, count: int, dim: int, total: int) -> None:
    store = StateStore.open(database_url=url)
    follower = Follower(store, poll_interval=0.2)
    follower.catch_up()
    follower.start()
    print("ready", flush=True)
    sys.stdin.readline()
    ids = []
    for i in range(count):
        ids += list(store.add_items(memory, item_for(f"{tag}-{i}", dim), keys=[f"{tag}-{i}"]).ids)
    deadline = time.monotonic() + WAIT_SECONDS
    while len(follower.memory(memory).memory) < total and time.monotonic() < deadline:
        time.sleep(0.01)  # the background thread applies the other processes' adds
    cached = follower.memory(memory)
    rows = cached.memory.vectors.data.cpu().numpy().tobytes()
    print(json.dumps({"ids": ids, "keys": cached.keys, "digest": digest(rows)}), flush=True)
    follower.stop()
    store.close()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "hold":
        hold(args[0])
    else:
        add(args[0], args[1], args[2], int(args[3]), int(args[4]), int(args[5]))
