"""Failures of PostgreSQL under followers: the LISTEN connection terminated (followers converge by polling),
and the server stopped and restarted (writes raise the retryable StoreUnavailable, the cache keeps serving
reads, every follower converges afterwards)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from postgres_support import PostgresServer
from state_support import assert_same_contents, cache_contents, wait_until

import hd_compute as hd
from hd_compute.state import Follower, StateStore, StoreUnavailable
from hd_compute.state.database import LISTENER_APPLICATION_NAME

LISTENERS = f"SELECT pid FROM pg_stat_activity WHERE application_name = '{LISTENER_APPLICATION_NAME}'"


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A server of this test's own, free to stop and restart."""
    with PostgresServer.started() as server:
        yield server


def test_followers_converge_by_polling_after_the_listen_connection_is_killed(
    pg_url: str, pg_server: PostgresServer
) -> None:
    writer = StateStore.open(database_url=pg_url)  # another store: no in-process wake-up reaches the followers
    writer.create_memory("m", 256, "MAP")
    followers = []
    for _ in range(2):
        store = StateStore.open(database_url=pg_url)
        follower = Follower(store, poll_interval=0.3, listen_retry_seconds=3600.0)  # the listener stays down
        follower.catch_up()
        follower.start()
        followers.append(follower)
    database = pg_url.rsplit("/", 1)[1]
    listeners = LISTENERS + f" AND datname = '{database}'"
    wait_until(lambda: len(pg_server.execute(listeners)) == 2, what="both LISTEN connections")
    for (pid,) in pg_server.execute(listeners):
        assert pg_server.execute(f"SELECT pg_terminate_backend({pid})") == [(True,)]
    wait_until(lambda: all(f.status().listener_disconnects == 1 for f in followers), what="listeners noticing")
    assert pg_server.execute(listeners) == []

    items = hd.random(5, 256, "MAP")
    for i in range(5):
        written = writer.add_items("m", items[i : i + 1])
    for follower in followers:
        wait_until(lambda f=follower: f.applied_version >= written.version, what="convergence by polling")
        assert torch.equal(follower.memory("m").memory.vectors.data, items.data)
    for follower in followers:
        follower.stop()
        follower.store.close()
    writer.close()


def test_a_postgres_restart_fails_writes_keeps_reads_and_converges_after(own_server: PostgresServer) -> None:
    url = own_server.url()
    stores = [StateStore.open(database_url=url) for _ in range(3)]
    followers = [Follower(store, poll_interval=0.2, listen_retry_seconds=0.2) for store in stores]
    stores[0].create_memory("m", 512, "BSC")
    before = hd.random(4, 512, "BSC")
    written = stores[1].add_items("m", before)
    for follower in followers:
        follower.catch_up()
        follower.start()
    for follower in followers:
        follower.wait_for(written.version, timeout=30.0)

    own_server.stop()
    for store in stores:
        with pytest.raises(StoreUnavailable) as unavailable:
            store.add_items("m", hd.random(1, 512, "BSC"))
        assert unavailable.value.retryable
    with pytest.raises(StoreUnavailable):
        followers[0].catch_up()
    for follower in followers:  # reads of the cache go on
        assert follower.memory("m").memory.search(before[2]).indices.item() == 2
    wait_until(lambda: all(f.status().store_errors > 0 for f in followers), what="the followers' failed polls")
    assert all(f.status().seconds_since_check is not None for f in followers)

    own_server.start()
    after = hd.random(3, 512, "BSC")
    wait_until(lambda: _try_add(stores[2], after), what="a write after the restart")
    head = stores[0].head_version()
    for follower in followers:
        follower.wait_for(head, timeout=30.0)
        assert torch.equal(follower.memory("m").memory.vectors.data, torch.cat([before.data, after.data]))
    contents = [cache_contents(f) for f in followers]
    for other in contents[1:]:
        assert_same_contents(contents[0], other)
    for follower, store in zip(followers, stores, strict=True):
        follower.stop()
        store.close()


def _try_add(store: StateStore, items: hd.Hypervectors) -> bool:
    try:
        store.add_items("m", items)
    except StoreUnavailable:
        return False
    return True
