"""One truth across replicas while the operator scales: an HDCWorkload with a postgres state backend (the URL from
a Secret by reference) on the local control plane, its fake pods backed by real worker processes (the pod mirror
reads the Secret as a kubelet would), one real PostgreSQL. A client adds items and queries them back through
whichever replicas are ready, carrying the version token from each write to the next read, while the workload
scales 1 -> 3 -> 1: no existing memory is ever 404, every acknowledged item is found at the id it was given on
every replica that serves, and none is lost or added twice (docs/state.md, docs/worker-api.md "State").
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid

import paths
import pytest
import torch
from dev_harness import LocalMonitoring
from kubernetes import client
from operator_process import OperatorProcess
from postgres_support import PostgresServer
from test_operator_k8s import kubectl

import hd_compute as hd
from hd_compute.client import Client, RetryPolicy, Unavailable, WorkerTimeout, WorkerUnreachable

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

DIM = 1024
MIN_VERSION = "X-HDC-Min-State-Version"


class Traffic:
    """Adds and token-carrying reads through the ready replicas, on a thread, until stopped."""

    def __init__(self, mon: LocalMonitoring, memory: str) -> None:
        self.mon, self.memory = mon, memory
        self.items = hd.random(2000, DIM, "BSC", seed=21)
        self.acknowledged: list[tuple[int, int]] = []  # (item, id)
        self.version = 0  # the newest state version a write answered
        self.failures: list[str] = []  # a 404 of the memory, a wrong answer
        self.retried = 0  # calls repeated on another replica (one stopped or not ready under the call)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="traffic")
        self.rng = random.Random(5)

    def replicas(self) -> list[str]:
        return [f"http://127.0.0.1:{w['port']}" for w in self.mon.workers() if w["ready"]]

    def on_some_replica(self, call):
        """call(url) on a random ready replica; again on another while the one chosen goes away under it."""
        for _ in range(60):
            urls = self.replicas()
            if urls:
                try:
                    return call(self.rng.choice(urls))
                except (WorkerUnreachable, WorkerTimeout, Unavailable):
                    self.retried += 1
            time.sleep(0.1)
        raise AssertionError("no replica answered for 6 s")

    def add(self, i: int) -> None:
        key = f"add-{i}-{uuid.uuid4().hex}"  # the same key on every replica it is tried on: applied once

        def call(url: str):
            with Client(url, retry=RetryPolicy(attempts=1)) as c:
                added = c.memory_add(self.memory, self.items[i : i + 1], idempotency_key=key)
                return added, c.state_version

        added, version = self.on_some_replica(call)
        self.acknowledged.append((i, int(added.ids[0])))
        self.version = max(self.version, version or 0)

    def check(self) -> None:
        i, expected = self.rng.choice(self.acknowledged)
        token = {MIN_VERSION: str(self.version)}

        def call(url: str):
            with Client(url, retry=RetryPolicy(attempts=1), headers=token) as c:
                return c.memory_query(self.memory, self.items[i : i + 1], k=1)

        try:
            found = self.on_some_replica(call)
        except Exception as exc:  # noqa: BLE001 - a 404 (NotFound) or anything else is what this test looks for
            self.failures.append(f"query of item {i}: {type(exc).__name__}: {exc}")
            return
        if int(found.indices[0, 0]) != expected:
            self.failures.append(f"item {i}: id {int(found.indices[0, 0])}, acknowledged as {expected}")

    def run(self) -> None:
        i = 0
        while not self.stop.is_set() and i < len(self.items):
            try:
                self.add(i)
                self.check()
            except Exception as exc:  # noqa: BLE001 - recorded, the test fails on it
                self.failures.append(f"step {i}: {type(exc).__name__}: {exc}")
            i += 1


def test_scaling_a_postgres_workload_loses_nothing_and_never_404s(k8s_cluster, k8s_namespace, tmp_path):
    ns, name, memory = k8s_namespace, "shared", "items"
    core = client.CoreV1Api(k8s_cluster.api)
    kubectl(k8s_cluster, "apply", "--server-side", "--force-conflicts", "-f", str(paths.REPO / "crds"))
    with PostgresServer.started() as server:
        url = server.create_database("scaling")
        core.create_namespaced_secret(ns, {"metadata": {"name": "state-db"}, "stringData": {"uri": url}})
        operator = OperatorProcess(k8s_cluster.kubeconfig, tmp_path, "--namespace", ns, "--resync-interval", "5")
        mon = LocalMonitoring(k8s_cluster.kubeconfig, tmp_path, ns)
        workload = {
            "apiVersion": "hdcompute.io/v1alpha1",
            "kind": "HDCWorkload",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "replicas": 1,
                "hdc": {"dimension": DIM, "vsa": "BSC"},
                "continuousBenchmark": {"enabled": False},
                "state": {"backend": "postgres", "postgres": {"secretName": "state-db", "secretKey": "uri"}},
            },
        }
        traffic = None
        try:
            kubectl(
                k8s_cluster, "wait", "--for", "condition=Established", "--timeout=60s", "crd/hdcworkloads.hdcompute.io"
            )
            operator.start()
            mon.start()
            kubectl(k8s_cluster, "apply", "-f", "-", input=json.dumps(workload))
            first = mon.wait_workers(1, timeout_s=180)
            with Client(f"http://127.0.0.1:{first[0]['port']}") as c:
                c.memory_create(memory, vsa="BSC", dimension=DIM)
            traffic = Traffic(mon, memory)
            traffic.thread.start()
            mon.wait(lambda: len(traffic.acknowledged) >= 20, "20 acknowledged adds on one replica")

            kubectl(k8s_cluster, "scale", "hdcw", name, "-n", ns, "--replicas=3")
            mon.wait_workers(3, timeout_s=180)
            at_three = len(traffic.acknowledged)
            mon.wait(lambda: len(traffic.acknowledged) >= at_three + 40, "40 more adds across 3 replicas")

            kubectl(k8s_cluster, "scale", "hdcw", name, "-n", ns, "--replicas=1")
            mon.wait(lambda: len(mon.workers()) == 1, "the mirror down to one process", 120)
            at_one = len(traffic.acknowledged)
            mon.wait(lambda: len(traffic.acknowledged) >= at_one + 20, "20 more adds on the one replica left")
            traffic.stop.set()
            traffic.thread.join(120)

            assert not traffic.failures, traffic.failures[:10]
            ids = sorted(i for _, i in traffic.acknowledged)
            assert ids == list(range(len(ids))), "ids unique and gap-free: no add lost or applied twice"
            last = traffic.replicas()
            assert len(last) == 1
            with Client(last[0], headers={MIN_VERSION: str(traffic.version)}) as c:
                info = c.memory_get(memory)
                assert info.size == len(ids)
                order = [i for i, _ in sorted(traffic.acknowledged, key=lambda pair: pair[1])]
                found = c.memory_query(memory, traffic.items[order], k=1)
                assert torch.equal(found.indices[:, 0], torch.arange(len(ids))), "every item at its id"
        finally:
            if traffic is not None:
                traffic.stop.set()
                traffic.thread.join(60)
            kubectl(k8s_cluster, "delete", "hdcw", name, "-n", ns, "--wait=true", "--timeout=60s", check=False)
            mon.stop()
            operator.stop()
