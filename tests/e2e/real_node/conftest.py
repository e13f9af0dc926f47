"""The `real_node` fixture: the real node of hack/real-node.sh, up once per run (docs/testing.md, "A real node")."""

import os

import pytest
from real_node_support import real_node_or_skip


@pytest.fixture(scope="session")
def real_node(k8s_cluster):
    """Brought up once per run on the local cluster: one that is up already is reused and left up; one brought up
    here is taken down (`hack/real-node.sh down`) at the end unless HDC_KEEP_REAL_NODE=1."""
    node = real_node_or_skip(k8s_cluster)
    was_up = node.run("status", timeout=60).returncode == 0
    up = node.run("up")
    if up.returncode != 0:
        pytest.fail(f"hack/real-node.sh up failed (exit {up.returncode}):\n{up.stderr[-4000:]}", pytrace=False)
    yield node
    if not was_up and os.environ.get("HDC_KEEP_REAL_NODE") != "1":
        node.run("down")
