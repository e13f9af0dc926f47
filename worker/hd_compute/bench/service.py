"""`hdc-bench --service`: the worker's HTTP API under concurrent clients, against the same kernel in-process.

Real `hdc-worker serve` processes are started on free loopback ports, each with the same item memories (one
per VSA, written as snapshots before start), and driven by concurrent aiohttp clients sending .npz queries to
`POST /v1/memories/{name}/query` (k=1, JSON answers). Three workers differ in one setting each:

    default     micro-batching on (HDC_BATCH_MAX_SIZE 256, HDC_BATCH_MAX_WAIT_MS 0), HDC_OBSERVABILITY=true
    unbatched   HDC_BATCH_MAX_SIZE=1: every request is its own kernel call
    quiet       HDC_OBSERVABILITY=false: no per-request metrics, spans or log lines

Scenarios, per VSA: batched requests of 64 and 256 queries; single-query requests from many clients with
micro-batching on and off (the gain); and observability on vs off (single-query and 64-query loads, the two
settings measured alternately, several rounds, so drift on a shared machine hits both alike; the rounds take
turns on `ab_workers` processes of each setting, so that one process's luck of memory layout is not in every
pair; with the event loop's CPU per request of each round next to the throughput). Each service
throughput (queries/s) is divided by the in-process throughput of the same ItemMemory.search call (same
memory, same queries, same number of torch threads, same device) measured in the same run, in this process
before and after the service runs of that VSA, and once more in a child process with the workers' OpenMP wait
policy (PASSIVE;
this process keeps libgomp's default spinning): the highest figure is the baseline (`ratio`). The shared
machine's speed drifts within a run, so each round of a measured load is also paired with an in-process
measurement taken right after it; the median of those per-round ratios (`paired_ratio`) is what the floors
are judged on, and likewise the observability ceiling is judged on the median of the back-to-back on/off
pairs (the pooled figures are shown next to them). For a request of q queries,
search calls of q queries. So a single-query request is compared with one-query search calls (`ratio`, the
one the issue's floor applies to), and, so that nothing is hidden, also with the best batched in-process
throughput of the run (`ratio_vs_batched`: what micro-batching could reach at most). Queries are
noisy copies of stored items (25 % of the dimensions flipped), so each has one right answer; before timing,
every worker's top-1 answers (sent concurrently, so they go through the batcher) are checked against it and
against the in-process search.

The client's overhead (issue 20): the single-query and the first batched load again on the default worker,
through hd_compute.client's AsyncClient (memory_query of query rows: the client encodes each call's .npy body and
reads the answer into tensors) and as raw aiohttp requests of pre-encoded .npy bodies (the baseline), the two
alternating round by round; the median of the rounds' 1 - client q/s / raw q/s is judged against
CLIENT_SINGLE_CEILING and CLIENT_BATCHED_CEILING. The raw path stays only as that baseline and for the loads
above; the answers are checked, the workers probed and their metrics read through the client.

This module is over 400 lines because it is one procedure (workers, loads, baselines, verdicts) that reads top to
bottom; what it prints and writes is in service_report.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

import hd_compute as hd
from hd_compute.client import AsyncClient, Client, ClientError, RetryPolicy
from hd_compute.hypervectors import Hypervectors
from hd_compute.structures import ItemMemory

from .measure import machine_description, time_call

# The floors (service queries/s as a fraction of in-process queries/s) and the observability ceilings (throughput
# lost with metrics, tracing and logging on vs off), per load.
BATCHED_FLOOR = 0.70  # requests of >= 64 queries
SINGLE_FLOOR = 0.50  # single-query requests, micro-batching on
SINGLE_OVERHEAD_CEILING = 0.15  # single-query requests: the per-request observability is a visible share of each
BATCHED_OVERHEAD_CEILING = 0.05  # requests of >= 64 queries: it is spread over their queries


# The client's ceilings: throughput lost by going through hd_compute.client's AsyncClient instead of a raw aiohttp
# request with a pre-encoded body, per load (issue 20).
CLIENT_SINGLE_CEILING = 0.10
CLIENT_BATCHED_CEILING = 0.03


def overhead_ceiling(queries_per_request: int) -> float:
    """The observability ceiling of a load of `queries_per_request` queries per request."""
    return SINGLE_OVERHEAD_CEILING if queries_per_request == 1 else BATCHED_OVERHEAD_CEILING


WORKERS = {
    "default": {},
    "unbatched": {"HDC_BATCH_MAX_SIZE": "1"},
    "quiet": {"HDC_OBSERVABILITY": "false"},
}


@dataclass
class ServiceConfig:
    vsas: list[str] = field(default_factory=lambda: ["MAP", "BSC"])
    items: int = 10_000
    dimension: int = 10_000
    batch_sizes: list[int] = field(default_factory=lambda: [64, 256])
    batch_clients: int = 2  # concurrent clients sending batched requests
    single_clients: int = 32  # concurrent clients sending single-query requests
    seconds: float = 3.0  # per measurement (a scenario stops at this or at max_requests, whichever is first)
    max_requests: int = 5_000
    rounds: int = 2  # observability on/off alternations
    ab_workers: int = 2  # worker processes per setting in the on/off rounds (round r uses the r-th pair, cyclically)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)  # torch threads: worker and in-process
    repeats: int = 5  # in-process timing repeats (median)
    device: str = "cpu"
    seed: int = 0
    body: str = "npy"  # the queries' body: "npy" (the array alone, application/x-npy) or "npz" (an archive)


# ---------------------------------------------------------------------------------------------------------
# worker processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceWorker:
    """One `hdc-worker serve` on 127.0.0.1:<free port>, logging to a file; kill() stops it without a snapshot."""

    def __init__(self, name: str, state_dir: pathlib.Path, log_path: pathlib.Path, env: dict[str, str]):
        self.name, self.state_dir, self.log_path, self.extra_env = name, state_dir, log_path, env
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def launch(self, threads: int, device: str) -> None:
        self.port = free_port()
        package_root = str(pathlib.Path(__file__).resolve().parents[2])  # the directory holding hd_compute
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env.update(
            {
                "HDC_STATE_DIR": str(self.state_dir),
                "HDC_BENCHMARK_ENABLED": "false",
                "HDC_DEVICE": device,
                "HDC_LOG_LEVEL": "INFO",
                "HDC_LOG_FORMAT": "json",
                "HDC_SHUTDOWN_GRACE_SECONDS": "5",
                "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads),
                **self.extra_env,
            }
        )
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hd_compute.service", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        with Client(self.url, timeout=30, retry=RetryPolicy(attempts=1)) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker {self.name} exited early:\n{self.log_tail()}")
                try:
                    if client.ready().ready:
                        return
                except ClientError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} never became ready:\n{self.log_tail()}")

    def batch_counts(self) -> tuple[float, float]:
        """(kernel calls, query rows) so far, from hdc_batch_size_distribution."""
        with Client(self.url, timeout=30) as client:
            text = client.metrics()
        count = re.search(r"^hdc_batch_size_distribution_count(?:\{[^}]*\})? (\S+)$", text, re.M)
        total = re.search(r"^hdc_batch_size_distribution_sum(?:\{[^}]*\})? (\S+)$", text, re.M)
        return (float(count.group(1)) if count else 0.0, float(total.group(1)) if total else 0.0)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the worker process so far (all its threads)."""
        fields = pathlib.Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def loop_cpu_seconds(self) -> float:
        """CPU seconds of the worker's main thread (its event loop) so far: the scheduler's run time in ns
        (/proc/.../schedstat), else user + system time in clock ticks (10 ms: too coarse for short rounds)."""
        task = pathlib.Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}")
        try:
            return int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if getattr(self, "_log", None) is not None:
            self._log.close()


# ---------------------------------------------------------------------------------------------------------
# data


@dataclass
class Dataset:
    vsa: str
    memory: ItemMemory
    queries: Hypervectors  # (n, ) noisy copies of items[targets]
    targets: torch.Tensor
    items: Hypervectors  # what `memory` holds, in order: what each worker's state store is seeded with

    @property
    def name(self) -> str:
        return f"bench-{self.vsa.lower()}"


def make_dataset(vsa: str, cfg: ServiceConfig, n_queries: int) -> Dataset:
    device = torch.device(cfg.device)
    items = hd.random(cfg.items, cfg.dimension, vsa, seed=cfg.seed).to(device)
    memory = ItemMemory(cfg.dimension, vsa, device=device, initial_capacity=cfg.items)
    memory.add(items)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    targets = torch.randint(0, cfg.items, (n_queries,), generator=generator)
    clean = items.data[targets.to(device)]
    noise_a = hd.random(n_queries, cfg.dimension, vsa, seed=cfg.seed + 2).to(device).data
    noise_b = hd.random(n_queries, cfg.dimension, vsa, seed=cfg.seed + 3).to(device).data
    if vsa == "BSC":  # words: a & b has 25 % of the bits set (padding bits stay zero)
        noisy = clean ^ (noise_a & noise_b)
    else:  # MAP ±1: flip where both noise vectors are -1 (25 %)
        flip = (noise_a < 0) & (noise_b < 0)
        noisy = torch.where(flip, -clean, clean)
    return Dataset(vsa, memory, Hypervectors(noisy.contiguous(), memory.vsa, cfg.dimension), targets, items)


BODY_TYPES = {"npy": "application/x-npy", "npz": "application/x-npz"}


def npz_body(rows: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, queries=rows.cpu().numpy())
    return buffer.getvalue()


def npy_body(rows: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, rows.cpu().numpy(), allow_pickle=False)
    return buffer.getvalue()


def query_body(rows: torch.Tensor, body: str) -> bytes:
    """A memory query's body in format `body` (a key of BODY_TYPES)."""
    return npy_body(rows) if body == "npy" else npz_body(rows)


def headers(body: str) -> dict[str, str]:
    return {"Content-Type": BODY_TYPES[body], "Accept": "application/json"}


# ---------------------------------------------------------------------------------------------------------
# clients


async def _drive(
    port: int,
    memory: str,
    items: list,
    queries_per_request: int,
    clients: int,
    seconds: float,
    max_requests: int,
    warmup: int,
    body_format: str,
    via_client: bool = False,
) -> dict:
    """`clients` concurrent loops querying memory `memory` (k=1) with `items` round-robin, until `seconds` or
    `max_requests`: raw aiohttp posts of pre-encoded bodies (`items` are bodies in `body_format`), or, with
    `via_client`, AsyncClient.memory_query calls (`items` are query rows, encoded by the client on each call, as a
    caller's would be)."""
    import aiohttp

    if via_client:
        async with AsyncClient(f"http://127.0.0.1:{port}", pool_size=clients, timeout=120) as client:

            async def query(rows: Hypervectors) -> None:
                await client.memory_query(memory, rows, k=1)

            return await _loops(query, items, queries_per_request, clients, seconds, max_requests, warmup)

    path = f"/v1/memories/{memory}/query?k=1"
    url = f"http://127.0.0.1:{port}{path}"
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(body: bytes) -> None:
            async with session.post(url, data=body, headers=headers(body_format)) as response:
                payload = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"POST {path}: {response.status} {payload[:300]!r}")

        return await _loops(post, items, queries_per_request, clients, seconds, max_requests, warmup)


async def _loops(
    send, items: list, queries_per_request: int, clients: int, seconds: float, max_requests: int, warmup: int
) -> dict:
    """The warm-up (it opens the connections and lets the batcher see the load), then `clients` loops awaiting
    `send(item)` with `items` round-robin until `seconds` or `max_requests`; each request's latency."""
    warmup = max(warmup, clients)
    await asyncio.gather(*(send(items[i % len(items)]) for i in range(warmup)))
    latencies: list[float] = []
    issued = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def loop() -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            item = items[issued % len(items)]
            issued += 1
            t0 = time.perf_counter()
            await send(item)
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(loop() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "queries": len(latencies) * queries_per_request,
        "seconds": elapsed,
        "latencies": latencies,
        "warmup_requests": warmup,
    }


def drive(
    worker: ServiceWorker,
    dataset: Dataset,
    items: list,
    queries_per_request: int,
    clients: int,
    cfg: ServiceConfig,
    *,
    via_client: bool = False,
    body: str | None = None,
) -> dict:
    """One measured load (see _drive: `items` are bodies, or query rows `via_client`); `body`: the raw bodies'
    format when it is not cfg.body."""
    calls_before, rows_before = worker.batch_counts()
    worker_cpu, loop_cpu, client_cpu = worker.cpu_seconds(), worker.loop_cpu_seconds(), time.process_time()
    result = asyncio.run(
        _drive(
            worker.port,
            dataset.name,
            items,
            queries_per_request,
            clients,
            cfg.seconds,
            cfg.max_requests,
            warmup=2 * clients,
            body_format=body or cfg.body,
            via_client=via_client,
        )
    )
    # CPU seconds of the worker (all threads, and its event loop's thread) and of the clients (this process) over
    # the run, warm-up requests included; the loop's per request counts them too.
    result["worker_cpu_s"] = worker.cpu_seconds() - worker_cpu
    result["loop_cpu_s"] = worker.loop_cpu_seconds() - loop_cpu
    result["client_cpu_s"] = time.process_time() - client_cpu
    served = result["requests"] + result["warmup_requests"]
    result["loop_cpu_us_per_request"] = result["loop_cpu_s"] / served * 1e6  # served >= clients >= 1
    calls_after, rows_after = worker.batch_counts()
    result["kernel_calls"] = calls_after - calls_before
    result["kernel_rows"] = rows_after - rows_before
    return result


async def _answers(port: int, memory: str, batches: list[Hypervectors]) -> list[list[int]]:
    """The top-1 item of each query of each batch, the batches sent concurrently through the client."""
    async with AsyncClient(f"http://127.0.0.1:{port}", timeout=120) as client:
        results = await asyncio.gather(*(client.memory_query(memory, rows, k=1) for rows in batches))
    return [r.indices.reshape(-1).tolist() for r in results]


def check_answers(worker: ServiceWorker, dataset: Dataset, cfg: ServiceConfig, singles: int = 16) -> dict:
    """Top-1 of the service (batched requests, and single ones sent concurrently) vs the in-process search."""
    n = dataset.queries.shape[0]
    batch = min(max(cfg.batch_sizes), n)
    picks = [(0, batch)] + [(i, i + 1) for i in range(min(singles, n))]
    got = asyncio.run(_answers(worker.port, dataset.name, [dataset.queries[a:b] for a, b in picks]))
    expected = dataset.memory.search(dataset.queries, k=1).indices.reshape(-1).cpu()
    checked = mismatches = 0
    for (a, b), answer in zip(picks, got, strict=True):
        checked += b - a
        mismatches += int((torch.tensor(answer) != expected[a:b]).sum())
    return {
        "checked": checked,
        "mismatches": mismatches,
        "in_process_equals_targets": bool(torch.equal(expected, dataset.targets)),
    }


# ---------------------------------------------------------------------------------------------------------
# in-process baselines


def in_process_qps(dataset: Dataset, queries_per_call: int, cfg: ServiceConfig) -> float:
    """Queries/s of ItemMemory.search(k=1) on `queries_per_call` queries per call, in this process."""
    return in_process_cost(dataset, queries_per_call, cfg)[0]


def in_process_cost(dataset: Dataset, queries_per_call: int, cfg: ServiceConfig) -> tuple[float, float]:
    """(queries/s, CPU µs per query) of ItemMemory.search(k=1) on `queries_per_call` queries per call, here.

    Queries/s from the median call (time_call); CPU from this process's CPU time over all those calls.
    """
    device = torch.device(cfg.device)
    data = dataset.queries.data
    if queries_per_call == 1:  # one query per call, as the unbatched requests ask for; 16 calls per sample
        singles = [Hypervectors(data[i : i + 1], dataset.memory.vsa, cfg.dimension) for i in range(16)]
        fn, per_sample = (lambda: [dataset.memory.search(q, k=1) for q in singles]), 16
    else:
        q = Hypervectors(data[:queries_per_call], dataset.memory.vsa, cfg.dimension)
        fn, per_sample = (lambda: dataset.memory.search(q, k=1)), queries_per_call
    cpu = time.process_time()
    seconds = time_call(fn, device, repeats=cfg.repeats)
    cpu_us = (time.process_time() - cpu) / (per_sample * (cfg.repeats + 1)) * 1e6  # + 1: time_call's warm-up
    return per_sample / seconds, cpu_us


PASSIVE_CHILD = """
import json, sys
import torch
from hd_compute.bench.service import Dataset, ServiceConfig, in_process_cost
from hd_compute.hypervectors import Hypervectors
from hd_compute.state import StateStore
args = json.loads(sys.argv[1])
cfg = ServiceConfig(**args["config"])
torch.set_num_threads(cfg.threads)
store = StateStore.open(state_dir=args["state_dir"])
memory = store.load_cache(torch.device(cfg.device)).memories[args["name"]].memory
store.close()
queries = Hypervectors(torch.load(args["queries"], weights_only=True), memory.vsa, cfg.dimension)
dataset = Dataset(args["vsa"], memory, queries, torch.zeros(0), queries)
print(json.dumps({str(q): in_process_cost(dataset, q, cfg) for q in args["per_call"]}))
"""


def in_process_cost_passive(
    dataset: Dataset, per_call: list[int], cfg: ServiceConfig, state_dir: pathlib.Path, work_dir: pathlib.Path
) -> dict[int, tuple[float, float]]:
    """The same in-process figures in a child process with OMP_WAIT_POLICY=PASSIVE, the workers' policy.

    libgomp reads the policy once, when torch loads, so this process cannot switch; on a busy machine the
    spinning policy of this process can lose against the workers' sleeping one, and the baseline must be the
    best in-process figure, not the one that flatters the service. Same memory (its snapshot), same queries.
    """
    queries_path = work_dir / f"queries-{dataset.vsa.lower()}.pt"
    torch.save(dataset.queries.data.cpu(), queries_path)
    package_root = str(pathlib.Path(__file__).resolve().parents[2])
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(cfg.threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    args = {
        "config": asdict(cfg),
        "state_dir": str(state_dir),
        "name": dataset.name,
        "vsa": dataset.vsa,
        "queries": str(queries_path),
        "per_call": per_call,
    }
    out = subprocess.run(
        [sys.executable, "-c", PASSIVE_CHILD, json.dumps(args)], env=env, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"in-process baseline (OMP_WAIT_POLICY=PASSIVE) failed:\n{out.stderr[-3000:]}")
    return {int(q): tuple(v) for q, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


# ---------------------------------------------------------------------------------------------------------
# the run


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def _row(
    vsa: str,
    scenario: str,
    worker: str,
    queries_per_request: int,
    clients: int,
    runs: list[dict],
    baseline_qps: float,
    floor: float | None,
) -> dict:
    requests = sum(r["requests"] for r in runs)
    queries = sum(r["queries"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    latencies = [x for r in runs for x in r["latencies"]]
    calls = sum(r["kernel_calls"] for r in runs)
    worker_cpu = sum(r["worker_cpu_s"] for r in runs)
    client_cpu = sum(r["client_cpu_s"] for r in runs)
    rows = sum(r["kernel_rows"] for r in runs)
    qps = queries / seconds if seconds > 0 else 0.0
    ratio = qps / baseline_qps if baseline_qps > 0 else float("nan")
    return {
        "vsa": vsa,
        "scenario": scenario,
        "worker": worker,
        "batching": worker != "unbatched",
        "observability": worker != "quiet",
        "queries_per_request": queries_per_request,
        "clients": clients,
        "requests": requests,
        "seconds": seconds,
        "service_qps": qps,
        "in_process_qps": baseline_qps,
        "ratio": ratio,
        "floor": floor,
        "meets_floor": None if floor is None else ratio >= floor,
        "p50_ms": _percentile(latencies, 50) * 1e3,
        "p99_ms": _percentile(latencies, 99) * 1e3,
        "batched_in_process_qps": None,
        "ratio_vs_batched": None,
        "cpu_us_per_query": (worker_cpu + client_cpu) / queries * 1e6 if queries else None,
        "worker_cpu_us_per_query": worker_cpu / queries * 1e6 if queries else None,
        "in_process_cpu_us_per_query": None,
        "cpu_ratio": None,
        "mean_batch_rows": rows / calls if calls else None,
        "kernel_calls": calls,
        "per_round_qps": [r["queries"] / r["seconds"] for r in runs if r["seconds"] > 0],
    }


def _pair_with_baseline(row: dict, in_process_rounds: list[float]) -> dict:
    """Each round's service throughput over the in-process throughput measured right after it (same moment of a
    shared machine's load); their median is `paired_ratio`, the figure the floor is judged on."""
    row["in_process_qps_rounds"] = in_process_rounds
    row["paired_ratios"] = [
        svc / base for svc, base in zip(row["per_round_qps"], in_process_rounds, strict=True) if base > 0
    ]
    row["paired_ratio"] = statistics.median(row["paired_ratios"]) if row["paired_ratios"] else None
    return row


def ab_order(round_index: int) -> tuple[str, str]:
    """The observability-on ("default") and -off ("quiet") workers in the order round `round_index` drives them:
    alternating, because the first of a pair follows the in-process measurement (this process's OpenMP threads,
    the caches it used) and the second follows the first."""
    return ("default", "quiet") if round_index % 2 == 0 else ("quiet", "default")


def client_order(round_index: int) -> tuple[str, str]:
    """The raw and the client path in the order round `round_index` drives them (alternating, as ab_order)."""
    return ("raw", "client") if round_index % 2 == 0 else ("client", "raw")


def client_overhead(vsa: str, scenario: str, queries_per_request: int, clients: int, runs: dict[str, list]) -> dict:
    """The client's cost on one load: throughput through AsyncClient vs raw aiohttp requests, round by round
    (each round's pair ran back to back on the same worker: the median of their ratios is the verdict), and
    this process's CPU per request on each path (where the client's own work shows)."""

    def qps(results: list[dict]) -> float:
        seconds = sum(r["seconds"] for r in results)
        return sum(r["queries"] for r in results) / seconds if seconds > 0 else 0.0

    def cpu_us(result: dict) -> float:
        return result["client_cpu_s"] / (result["requests"] + result["warmup_requests"]) * 1e6

    raw, client = runs["raw"], runs["client"]
    paired = [1 - qps([c]) / qps([r]) for r, c in zip(raw, client, strict=True) if qps([r]) > 0]
    median = statistics.median(paired) if paired else float("nan")
    ceiling = CLIENT_SINGLE_CEILING if queries_per_request == 1 else CLIENT_BATCHED_CEILING
    return {
        "vsa": vsa,
        "scenario": scenario,
        "queries_per_request": queries_per_request,
        "clients": clients,
        "qps_raw": qps(raw),
        "qps_client": qps(client),
        "ratio": qps(client) / qps(raw) if qps(raw) else float("nan"),
        "overhead": 1 - qps(client) / qps(raw) if qps(raw) else float("nan"),
        "overhead_paired": paired,
        "overhead_paired_median": median,
        "client_cpu_us_raw": statistics.median(cpu_us(r) for r in raw),
        "client_cpu_us_client": statistics.median(cpu_us(c) for c in client),
        "p50_ms_raw": _percentile([x for r in raw for x in r["latencies"]], 50) * 1e3,
        "p50_ms_client": _percentile([x for c in client for x in c["latencies"]], 50) * 1e3,
        "ceiling": ceiling,
        "meets_ceiling": median <= ceiling,
    }


def ab_process(setting: str, round_index: int, copies: int) -> str:
    """Which of the `copies` worker processes of `setting` round `round_index` drives: "default", "default-2",
    ... cyclically. Processes of one version and setting differ by a few per cent in event-loop CPU per request
    (measured; the cause is not known): one process per setting would put that difference into every pair."""
    copy = round_index % copies
    return setting if copy == 0 else f"{setting}-{copy + 1}"


def worker_processes(copies: int) -> dict[str, dict[str, str]]:
    """Every worker process of a run and its environment: one per setting, `copies` of default and quiet."""
    processes = dict(WORKERS)
    for copy in range(2, copies + 1):
        for setting in ("default", "quiet"):
            processes[f"{setting}-{copy}"] = WORKERS[setting]
    return processes


def run_service_bench(cfg: ServiceConfig, *, log=print, work_dir: pathlib.Path | None = None) -> dict:
    from hd_compute.state import StateStore
    from hd_compute.state.database import DATABASE_FILE

    torch.set_num_threads(cfg.threads)
    load_start = [round(x, 2) for x in os.getloadavg()]  # other users of a shared machine show up here
    owned = work_dir is None
    root = pathlib.Path(tempfile.mkdtemp(prefix="hdc-bench-service-")) if owned else pathlib.Path(work_dir)
    workers: dict[str, ServiceWorker] = {}
    n_queries = max(max(cfg.batch_sizes), 64)
    try:
        datasets = {}
        for vsa in cfg.vsas:
            log(f"{vsa}: {cfg.items} items, D={cfg.dimension}")
            datasets[vsa] = make_dataset(vsa, cfg, n_queries)
        # every worker's SQLite store is a copy of this one (a state directory has one process: the in-process
        # baseline's child reads this seed, not a worker's)
        first = root / "state-seed"
        store = StateStore.open(state_dir=str(first))
        try:
            for dataset in datasets.values():
                store.create_memory(dataset.name, cfg.dimension, dataset.vsa)
                store.add_items(dataset.name, dataset.items.to("cpu"))
        finally:
            store.close()
        for name, env in worker_processes(cfg.ab_workers).items():
            state_dir = root / f"state-{name}"
            state_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(first / DATABASE_FILE, state_dir / DATABASE_FILE)
            workers[name] = ServiceWorker(name, state_dir, root / f"worker-{name}.log", env)
        log(f"starting workers {', '.join(workers)} ({cfg.threads} torch threads each)")
        for worker in workers.values():
            worker.launch(cfg.threads, cfg.device)
        for worker in workers.values():
            worker.wait_ready()

        rows, overheads, checks, client_overheads = [], [], [], []
        for vsa, dataset in datasets.items():
            for name, worker in workers.items():
                result = check_answers(worker, dataset, cfg)
                checks.append({"vsa": vsa, "worker": name, **result})
            data = dataset.queries.data
            single_bodies = [query_body(data[i : i + 1], cfg.body) for i in range(data.shape[0])]
            batch_bodies = {
                q: [query_body(data[:q], cfg.body), query_body(torch.roll(data, q // 2, 0)[:q], cfg.body)]
                for q in cfg.batch_sizes
            }
            costs = {q: in_process_cost(dataset, q, cfg) for q in sorted({1, *cfg.batch_sizes})}
            baselines = {q: qps for q, (qps, _) in costs.items()}
            cpu_baselines = {q: cpu for q, (_, cpu) in costs.items()}
            log(f"{vsa}: in-process queries/s " + ", ".join(f"{q}/call {v:,.0f}" for q, v in baselines.items()))

            # Observability on vs off, alternating, on the single-query load and the first batched load.
            ab_loads = [("single", 1, cfg.single_clients, single_bodies)]
            ab_loads.append(
                (
                    f"batched {cfg.batch_sizes[0]}",
                    cfg.batch_sizes[0],
                    cfg.batch_clients,
                    batch_bodies[cfg.batch_sizes[0]],
                )
            )
            ab_rows = {}
            for scenario, q, clients, bodies in ab_loads:
                runs = {"default": [], "quiet": []}
                in_process_rounds = []
                pairs = []
                for round_index in range(cfg.rounds):
                    pair = {}
                    for name in ab_order(round_index):
                        process = ab_process(name, round_index, cfg.ab_workers)
                        log(f"{vsa}: {scenario} x {clients} clients on {process}")
                        runs[name].append(drive(workers[process], dataset, bodies, q, clients, cfg))
                        pair[name] = process
                    pairs.append(pair)
                    in_process_rounds.append(in_process_cost(dataset, q, cfg)[0])  # this round's baseline
                floor = SINGLE_FLOOR if q == 1 else BATCHED_FLOOR if q >= 64 else None
                on = _row(vsa, scenario, "default", q, clients, runs["default"], baselines[q], floor)
                _pair_with_baseline(on, in_process_rounds)
                off = _row(vsa, scenario, "quiet", q, clients, runs["quiet"], baselines[q], None)
                ab_rows[scenario] = (on, off)
                overhead = 1 - on["service_qps"] / off["service_qps"] if off["service_qps"] else float("nan")
                # Each round's pair (one right after the other, the order alternating) shares that moment's
                # load; their median is the verdict, reported next to the pooled figure.
                paired = [1 - a / b for a, b in zip(on["per_round_qps"], off["per_round_qps"], strict=True) if b > 0]
                paired_median = statistics.median(paired) if paired else float("nan")
                # The event loop's CPU per request, round by round: it bounds single-query throughput wherever the
                # kernel is fast, and a shared machine's drift moves it less than it moves queries/s.
                loop_on = [r["loop_cpu_us_per_request"] for r in runs["default"]]
                loop_off = [r["loop_cpu_us_per_request"] for r in runs["quiet"]]
                loop_paired = [a - b for a, b in zip(loop_on, loop_off, strict=True) if b]  # b: 0 only in clock ticks
                loop_relative = [a / b - 1 for a, b in zip(loop_on, loop_off, strict=True) if b]
                overheads.append(
                    {
                        "vsa": vsa,
                        "scenario": scenario,
                        "queries_per_request": q,
                        "clients": clients,
                        "qps_on": on["service_qps"],
                        "qps_off": off["service_qps"],
                        "overhead": overhead,
                        "overhead_paired_median": paired_median,
                        "overhead_paired": paired,
                        "processes": pairs,
                        "loop_cpu_us_on": loop_on,
                        "loop_cpu_us_off": loop_off,
                        "loop_cpu_us_paired": loop_paired,
                        "loop_cpu_us_paired_median": statistics.median(loop_paired) if loop_paired else None,
                        "loop_cpu_overhead_paired_median": statistics.median(loop_relative) if loop_relative else None,
                        "p50_ms_on": on["p50_ms"],
                        "p50_ms_off": off["p50_ms"],
                        "ceiling": overhead_ceiling(q),
                        "meets_ceiling": (paired_median if paired else overhead) <= overhead_ceiling(q),
                    }
                )
            # The client's overhead: the same loads through AsyncClient and as raw aiohttp requests of pre-encoded
            # .npy bodies (the client's own transport for a query), alternating, on the default worker.
            q0 = cfg.batch_sizes[0]
            query_rows = {
                1: [dataset.queries[i : i + 1] for i in range(data.shape[0])],
                q0: [
                    dataset.queries[:q0],
                    Hypervectors(torch.roll(data, q0 // 2, 0)[:q0], dataset.memory.vsa, cfg.dimension),
                ],
            }
            for scenario, q, clients in (("single", 1, cfg.single_clients), (f"batched {q0}", q0, cfg.batch_clients)):
                items = {"client": query_rows[q], "raw": [query_body(r.data, "npy") for r in query_rows[q]]}
                paths: dict[str, list] = {"raw": [], "client": []}
                for round_index in range(cfg.rounds):
                    for via in client_order(round_index):
                        log(f"{vsa}: {scenario} x {clients} clients on default, {via}")
                        run = drive(
                            workers["default"],
                            dataset,
                            items[via],
                            q,
                            clients,
                            cfg,
                            via_client=via == "client",
                            body="npy",
                        )
                        paths[via].append(run)
                client_overheads.append(client_overhead(vsa, scenario, q, clients, paths))
            for q in cfg.batch_sizes:
                if f"batched {q}" in ab_rows:
                    rows.append(ab_rows[f"batched {q}"][0])
                    continue
                batch_runs, in_process_rounds = [], []
                for _ in range(cfg.rounds):
                    log(f"{vsa}: batched {q} x {cfg.batch_clients} clients on default")
                    batch_runs.append(drive(workers["default"], dataset, batch_bodies[q], q, cfg.batch_clients, cfg))
                    in_process_rounds.append(in_process_cost(dataset, q, cfg)[0])
                row = _row(
                    vsa,
                    f"batched {q}",
                    "default",
                    q,
                    cfg.batch_clients,
                    batch_runs,
                    baselines[q],
                    BATCHED_FLOOR if q >= 64 else None,
                )
                rows.append(_pair_with_baseline(row, in_process_rounds))
            single_on = ab_rows["single"][0]
            rows.append(single_on)
            log(f"{vsa}: single x {cfg.single_clients} clients on unbatched")
            run = drive(workers["unbatched"], dataset, single_bodies, 1, cfg.single_clients, cfg)
            single_off = _row(vsa, "single", "unbatched", 1, cfg.single_clients, [run], baselines[1], None)
            rows.append(single_off)
            # The in-process figures again, after the service runs, and with the workers' OpenMP wait policy:
            # the largest is the baseline (a busy moment on a shared machine must not flatter the service).
            measured = {q: [in_process_cost(dataset, q, cfg)] for q in baselines}
            if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
                passive = in_process_cost_passive(dataset, sorted(baselines), cfg, first, root)
                log(
                    f"{vsa}: in-process queries/s with OMP_WAIT_POLICY=PASSIVE "
                    + ", ".join(f"{q}/call {v[0]:,.0f}" for q, v in passive.items())
                )
                for q in baselines:
                    measured[q].append(passive[q])
            for q in baselines:  # the fastest and the cheapest in-process figures are the baselines
                baselines[q] = max([baselines[q]] + [qps for qps, _ in measured[q]])
                cpu_baselines[q] = min([cpu_baselines[q]] + [cpu for _, cpu in measured[q]])
            log(
                f"{vsa}: in-process queries/s (best of before/after/passive) "
                + ", ".join(f"{q}/call {v:,.0f}" for q, v in baselines.items())
            )
            best_batched = max(v for q, v in baselines.items() if q > 1)
            for row in rows + [single_off] + [pair[1] for pair in ab_rows.values()]:
                if row["vsa"] == vsa:
                    row["in_process_qps"] = baselines[row["queries_per_request"]]
                    row["ratio"] = row["service_qps"] / row["in_process_qps"]
                    if row["floor"] is not None:  # the verdict: the median of the back-to-back pairs when measured
                        decisive = row["paired_ratio"] if row.get("paired_ratio") is not None else row["ratio"]
                        row["meets_floor"] = decisive >= row["floor"]
                    row["in_process_cpu_us_per_query"] = cpu_baselines[row["queries_per_request"]]
                    row["cpu_ratio"] = (
                        row["in_process_cpu_us_per_query"] / row["cpu_us_per_query"]
                        if row["cpu_us_per_query"]
                        else None
                    )
                    if row["queries_per_request"] == 1:
                        row["batched_in_process_qps"] = best_batched
                        row["ratio_vs_batched"] = row["service_qps"] / best_batched
            single_on["batching_gain"] = (
                single_on["service_qps"] / single_off["service_qps"] if single_off["service_qps"] else None
            )
            for scenario in ab_rows:
                rows.append(ab_rows[scenario][1])
    finally:
        for worker in workers.values():
            worker.kill()
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    machine = machine_description(torch.device(cfg.device))
    machine["load_average"] = {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}
    machine["omp_wait_policy"] = {
        "in_process": os.environ.get("OMP_WAIT_POLICY", "best of unset (libgomp: spin, then sleep) and PASSIVE"),
        "workers": os.environ.get("OMP_WAIT_POLICY", "PASSIVE (the worker's default)"),
    }
    return {
        "machine": machine,
        "config": asdict(cfg),
        "checks": checks,
        "rows": rows,
        "overheads": overheads,
        "client_overheads": client_overheads,
        "floors": {
            "batched": BATCHED_FLOOR,
            "single": SINGLE_FLOOR,
            "observability_overhead_single": SINGLE_OVERHEAD_CEILING,
            "observability_overhead_batched": BATCHED_OVERHEAD_CEILING,
            "client_overhead_single": CLIENT_SINGLE_CEILING,
            "client_overhead_batched": CLIENT_BATCHED_CEILING,
        },
        "answers_correct": all(c["mismatches"] == 0 for c in checks),
    }
