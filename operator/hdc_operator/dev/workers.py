"""The pod mirror: one real `hdc-worker serve` process per fake (kwok) worker pod, and a Prometheus file_sd file.

    hdcctl dev workers --kubeconfig K --file-sd workers.json [--namespace NS] [--work-dir DIR]

Every second the mirror lists the pods labelled app.kubernetes.io/managed-by=hdc-operator (a poll: simple, and
it survives API-server restarts without watch bookkeeping) and makes the set of processes match:

- a pod bound to a node, not terminating and not finished gets a process, started with the pod's `worker`
  container environment (values, `fieldRef` metadata.name/namespace/uid, `secretKeyRef` read from the Secret:
  a postgres state backend's database URL, `$(VAR)` references expanded) and
  with HDC_HOST=127.0.0.1, HDC_PORT=<a free port>, HDC_STATE_DIR=<work dir>/<namespace>/<pod>, HDC_DEVICE=cpu;
- a pod that is gone or terminating gets its process stopped (SIGTERM, SIGKILL after the grace period), as the
  kubelet does;
- a process that exits while its pod still exists is restarted on the same port with a doubling back-off
  (1 s .. 30 s, like CrashLoopBackOff), and the restart is counted and logged with the exit status.

The file_sd file (written atomically, only when it changes) has one target per process, labelled as the
ServiceMonitor's relabelings label the pods in a cluster: namespace, pod, workload (the pod's
hdcompute.io/workload label) and job (the Service's name = the workload's name). A status file (JSON) lists the
processes: pod, port, pid, ready (/readyz), restarts, last exit status.

kwok marks the fake pods Ready by its own stages; the mirror does not write pod status (kwok's controller would
overwrite it), so pod readiness in the API and process readiness (/readyz, in the status file) are separate.
"""

from __future__ import annotations

import base64
import ctypes
import functools
import http.client
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ..names import MANAGED_SELECTOR, WORKLOAD_LABEL
from .prometheus import free_port, write_atomic

CONTAINER_NAME = "worker"
MAX_BACKOFF_S = 30.0
MAX_GRACE_S = 10.0
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD_PATHS = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "metadata.uid": ("metadata", "uid"),
    "spec.nodeName": ("spec", "nodeName"),
}


# --- pods -> wanted processes (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class PodWorker:
    """What one pod asks for: its identity, labels for the target, and its container's environment."""

    namespace: str
    name: str
    uid: str
    workload: str
    env: tuple[tuple[str, str], ...]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.name, self.uid)


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a defined variable is replaced, an undefined reference stays as it is."""
    return _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), value)


# (namespace, Secret name, key) -> the value, or None when the Secret or the key does not exist
SecretReader = Callable[[str, str, str], "str | None"]


def container_env(
    pod: Mapping, container: str = CONTAINER_NAME, read_secret: SecretReader | None = None
) -> dict[str, str]:
    """The environment of `container` in `pod` as the kubelet would give it (values, fieldRefs, $(VAR), and with
    `read_secret` secretKeyRefs: the state database URL of a postgres backend)."""
    containers = (pod.get("spec") or {}).get("containers") or []
    chosen = next((c for c in containers if c.get("name") == container), containers[0] if containers else {})
    env: dict[str, str] = {}
    for item in chosen.get("env") or []:
        name = item.get("name")
        if not name:
            continue
        if "value" in item:
            env[name] = _expand(str(item.get("value") or ""), env)
        elif item.get("value") is None and "valueFrom" not in item:
            env[name] = ""
        else:
            source = item.get("valueFrom") or {}
            path = (source.get("fieldRef") or {}).get("fieldPath")
            ref = source.get("secretKeyRef") or {}
            if path in _FIELD_PATHS:
                section, key = _FIELD_PATHS[path]
                env[name] = str((pod.get(section) or {}).get(key) or "")
            elif ref and read_secret is not None:
                namespace = (pod.get("metadata") or {}).get("namespace", "")
                value = read_secret(namespace, ref.get("name", ""), ref.get("key", ""))
                if value is not None:  # a missing Secret leaves the variable unset: the worker says what it lacks
                    env[name] = value
            # configMapKeyRef/resourceFieldRef: not mirrored (the builders use none)
    return env


def pod_worker(pod: Mapping, read_secret: SecretReader | None = None) -> PodWorker | None:
    """The process a pod should have, or None: not scheduled yet, terminating, or finished."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or not spec.get("nodeName"):
        return None
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    labels = meta.get("labels") or {}
    env = container_env(pod, read_secret=read_secret)
    return PodWorker(
        meta["namespace"], meta["name"], meta.get("uid", ""), labels.get(WORKLOAD_LABEL, ""), tuple(sorted(env.items()))
    )


def local_env(pod_env: Mapping[str, str], *, port: int, state_dir: str, base: Mapping[str, str]) -> dict[str, str]:
    """`base` (this process' environment) <- the pod's environment <- the local overrides (address, state, CPU).

    OMP_NUM_THREADS defaults to 1 (unless the pod sets it): several workers share this machine's cores."""
    env = dict(base)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(pod_env)
    env.update({"HDC_HOST": "127.0.0.1", "HDC_PORT": str(port), "HDC_STATE_DIR": state_dir, "HDC_DEVICE": "cpu"})
    return env


def target_labels(worker: PodWorker) -> dict[str, str]:
    """The labels the ServiceMonitor's relabelings give the pod's series (plus job = the Service's name)."""
    return {
        "namespace": worker.namespace,
        "pod": worker.name,
        "workload": worker.workload,
        "job": worker.workload or worker.name,
    }


def file_sd_groups(targets: Iterable[tuple[PodWorker, int]]) -> list[dict]:
    """Prometheus file_sd content: one group per (worker, port), sorted so equal sets give equal text."""
    return [
        {"targets": [f"127.0.0.1:{port}"], "labels": target_labels(w)}
        for w, port in sorted(targets, key=lambda t: t[0].key)
    ]


# --- processes ---------------------------------------------------------------------------------------------------


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the worker gets SIGTERM when the mirror dies, so a killed mirror leaves no orphans."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def worker_command() -> list[str]:
    script = pathlib.Path(sys.executable).parent / "hdc-worker"
    return [str(script), "serve"] if script.exists() else [sys.executable, "-m", "hd_compute.service", "serve"]


@dataclass
class MirroredWorker:
    pod: PodWorker
    port: int
    state_dir: pathlib.Path
    log_path: pathlib.Path
    proc: subprocess.Popen | None = None
    ready: bool = False
    restarts: int = 0
    last_exit: int | None = None
    dead_pid: int | None = None  # the pid whose exit was already counted
    next_start: float = 0.0
    started_at: float = 0.0
    stopping_since: float | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def grace_s(self) -> float:
        try:
            return min(float(dict(self.pod.env).get("HDC_SHUTDOWN_GRACE_SECONDS", MAX_GRACE_S)), MAX_GRACE_S)
        except ValueError:
            return MAX_GRACE_S

    def status(self) -> dict[str, Any]:
        return {
            "namespace": self.pod.namespace,
            "pod": self.pod.name,
            "workload": self.pod.workload,
            "port": self.port,
            "pid": self.proc.pid if self.alive() else None,
            "ready": self.ready,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "log": str(self.log_path),
        }


def probe_ready(port: int, timeout: float = 1.0) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/readyz")
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    except OSError:
        return False
    finally:
        conn.close()


class PodMirror:
    """Keeps one real worker process per wanted pod; see the module doc."""

    def __init__(
        self,
        list_pods: Callable[[], list[Mapping]],
        file_sd: pathlib.Path,
        work_dir: pathlib.Path,
        *,
        status_file: pathlib.Path | None = None,
        command: list[str] | None = None,
        log: Callable[[str], None] = print,
        probe: Callable[[int], bool] = probe_ready,
        read_secret: SecretReader | None = None,
    ):
        self.list_pods, self.file_sd = list_pods, pathlib.Path(file_sd)
        self.work_dir = pathlib.Path(work_dir)
        self.status_file = pathlib.Path(status_file) if status_file else self.work_dir / "status.json"
        self.command = command or worker_command()
        self.log, self.probe, self.read_secret = log, probe, read_secret
        self.workers: dict[tuple[str, str, str], MirroredWorker] = {}
        self.stopping: list[MirroredWorker] = []
        self._sd_text: str | None = None
        self._status_text: str | None = None
        self.work_dir.mkdir(parents=True, exist_ok=True)

    # one step -----------------------------------------------------------------------------------------------
    def sync(self, pods: list[Mapping] | None = None) -> None:
        """Lists the pods (unless given), starts, stops and restarts processes, probes, writes the files."""
        read_secret = functools.cache(self.read_secret) if self.read_secret else None  # each Secret once a sync
        listed = self.list_pods() if pods is None else pods
        wanted = {w.key: w for w in (pod_worker(p, read_secret) for p in listed) if w}
        for key in list(self.workers):
            if key not in wanted:
                self._begin_stop(self.workers.pop(key), "pod gone or terminating")
        for key, pod in wanted.items():
            if key not in self.workers:
                self.workers[key] = self._new(pod)
        now = time.monotonic()
        for mw in self.workers.values():
            if mw.proc is None or not mw.alive():
                if mw.proc is not None and mw.dead_pid != mw.proc.pid:  # just died
                    mw.dead_pid, mw.last_exit = mw.proc.pid, mw.proc.returncode
                    mw.restarts += 1
                    backoff = min(MAX_BACKOFF_S, 2.0 ** (mw.restarts - 1))
                    mw.next_start = now + backoff
                    mw.ready = False
                    self.log(
                        f"workers: {mw.pod.namespace}/{mw.pod.name} exited with {mw.last_exit}; restart "
                        f"{mw.restarts} in {backoff:.0f} s (log {mw.log_path})"
                    )
                if now >= mw.next_start:
                    self._start(mw)
            else:
                mw.ready = self.probe(mw.port)
        self._reap()
        self._write()

    def _new(self, pod: PodWorker) -> MirroredWorker:
        base = self.work_dir / pod.namespace / pod.name
        base.mkdir(parents=True, exist_ok=True)
        return MirroredWorker(pod, free_port(), base / "state", base / "worker.log")

    def _start(self, mw: MirroredWorker) -> None:
        mw.state_dir.mkdir(parents=True, exist_ok=True)
        env = local_env(dict(mw.pod.env), port=mw.port, state_dir=str(mw.state_dir), base=os.environ)
        with open(mw.log_path, "ab") as log:
            mw.proc = subprocess.Popen(
                self.command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        mw.started_at = time.monotonic()
        self.log(
            f"workers: started {mw.pod.namespace}/{mw.pod.name} (workload {mw.pod.workload}) on "
            f"127.0.0.1:{mw.port}, pid {mw.proc.pid}"
        )

    def _begin_stop(self, mw: MirroredWorker, why: str) -> None:
        if mw.alive():
            mw.proc.send_signal(signal.SIGTERM)
            mw.stopping_since = time.monotonic()
            self.stopping.append(mw)
        self.log(f"workers: stopping {mw.pod.namespace}/{mw.pod.name} ({why})")

    def _reap(self) -> None:
        still = []
        for mw in self.stopping:
            if not mw.alive():
                continue
            if time.monotonic() - (mw.stopping_since or 0) > mw.grace_s():
                mw.proc.kill()
                mw.proc.wait(5)
                self.log(f"workers: killed {mw.pod.namespace}/{mw.pod.name} after {mw.grace_s():.0f} s grace")
                continue
            still.append(mw)
        self.stopping = still

    def _write(self) -> None:
        groups = file_sd_groups((mw.pod, mw.port) for mw in self.workers.values() if mw.alive())
        text = json.dumps(groups, indent=1)
        if text != self._sd_text:
            write_atomic(self.file_sd, text)
            self._sd_text = text
        status = json.dumps(
            {"workers": [mw.status() for mw in sorted(self.workers.values(), key=lambda m: m.pod.key)]}, indent=1
        )
        if status != self._status_text:
            write_atomic(self.status_file, status)
            self._status_text = status

    # lifetime ---------------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        """sync() every `interval_s` until `stop` is set; a failed pod list keeps the processes as they are."""
        try:
            while not stop.is_set():
                try:
                    self.sync()
                except Exception as exc:  # API server down or restarting: keep what runs, retry
                    self.log(f"workers: listing pods failed, keeping {len(self.workers)} processes: {exc}")
                    self._reap()
                stop.wait(interval_s)
        finally:
            self.close()

    def close(self) -> None:
        """Stops every process (SIGTERM, then SIGKILL after the grace period) and empties the file_sd file."""
        for key in list(self.workers):
            self._begin_stop(self.workers.pop(key), "mirror stopping")
        deadline = time.monotonic() + MAX_GRACE_S + 1
        while self.stopping and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.1)
        for mw in self.stopping:
            if mw.alive():
                mw.proc.kill()
                mw.proc.wait(5)
        self.stopping = []
        self._write()


def list_pods_fn(api_client, namespace: str | None = None) -> Callable[[], list[dict]]:
    """A function listing the operator's pods as plain dicts (the raw JSON, no model conversion)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)

    def list_pods() -> list[dict]:
        kw = {"label_selector": MANAGED_SELECTOR, "_preload_content": False, "_request_timeout": 10}
        resp = core.list_namespaced_pod(namespace, **kw) if namespace else core.list_pod_for_all_namespaces(**kw)
        return json.loads(resp.data)["items"]

    return list_pods


def secret_reader(api_client) -> SecretReader:
    """Reads one key of a Secret (None when the Secret or the key is missing or cannot be read)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)

    def read(namespace: str, name: str, key: str) -> str | None:
        try:
            secret = core.read_namespaced_secret(name, namespace, _request_timeout=10)
        except Exception:  # noqa: BLE001 - missing or unreadable: the variable stays unset, as without the Secret
            return None
        raw = (secret.data or {}).get(key)
        return None if raw is None else base64.b64decode(raw).decode()

    return read


def run_mirror(
    *,
    kubeconfig: str | None,
    file_sd: pathlib.Path,
    work_dir: pathlib.Path,
    namespace: str | None = None,
    interval_s: float = 1.0,
    log=print,
    stop: threading.Event | None = None,
) -> None:
    from kubernetes import config as kconfig

    stop = stop or threading.Event()
    api_client = kconfig.new_client_from_config(config_file=kubeconfig)
    mirror = PodMirror(
        list_pods_fn(api_client, namespace), file_sd, work_dir, log=log, read_secret=secret_reader(api_client)
    )
    log(
        f"workers: mirroring pods ({MANAGED_SELECTOR}) in {namespace or 'all namespaces'}; targets -> {file_sd}, "
        f"status -> {mirror.status_file}"
    )
    try:
        mirror.run(stop, interval_s)
    finally:
        api_client.close()
