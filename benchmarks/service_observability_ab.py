"""Observability on vs off on the single-query load, alone: the bench's workers (hd_compute.bench.service),
32 single-query clients, alternating rounds, the median of the paired throughput ratios and the worker's CPU per
request (docs/benchmarks.md). ITEMS=10 takes the kernel out, so the event loop is the bottleneck.

Run: ITEMS=10 ROUNDS=6 SECS=3 PYTHONPATH=worker .venv/bin/python benchmarks/service_observability_ab.py
(VSA=MAP|BSC; EXTRA_ON=NAME=VALUE,... adds environment to the observability-on worker). Against another
version: PYTHONPATH=<its worker/ directory>.
"""

import os
import pathlib
import shutil
import statistics
import tempfile

import torch

from hd_compute.bench.service import ServiceConfig, ServiceWorker, drive, make_dataset, npz_body
from hd_compute.service.state import MemoryEntry, StateStore

items = int(os.environ.get("ITEMS", "10000"))
rounds = int(os.environ.get("ROUNDS", "4"))
secs = float(os.environ.get("SECS", "4"))
vsa = os.environ.get("VSA", "MAP")
extra = dict(x.split("=", 1) for x in os.environ.get("EXTRA_ON", "").split(",") if x)
cfg = ServiceConfig(vsas=[vsa], items=items, seconds=secs, max_requests=10**9, threads=2)
torch.set_num_threads(2)
root = pathlib.Path(tempfile.mkdtemp())
ds = make_dataset(vsa, cfg, 256)
workers = {}
for name, env in {"on": extra, "off": {"HDC_OBSERVABILITY": "false"}}.items():
    sd = root / f"state-{name}"
    StateStore(str(sd)).save_memory(ds.name, MemoryEntry(ds.memory))
    workers[name] = ServiceWorker(name, sd, root / f"{name}.log", env)
    workers[name].launch(2, "cpu")
for w in workers.values():
    w.wait_ready()
bodies = [npz_body(ds.queries.data[i : i + 1]) for i in range(256)]
res = {"on": [], "off": []}
try:
    for r in range(rounds):
        for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
            out = drive(workers[name], ds, bodies, 1, 32, cfg)
            qps = out["queries"] / out["seconds"]
            cpu = out["worker_cpu_s"] / out["requests"] * 1e6
            res[name].append((qps, cpu, out["kernel_rows"] / max(out["kernel_calls"], 1)))
            print(
                f"round {r} {name}: {qps:8.0f} q/s  worker CPU {cpu:6.0f} us/req  rows/call {res[name][-1][2]:.1f}",
                flush=True,
            )
    pairs = [(off[0] / on[0] - 1) * 100 for on, off in zip(res["on"], res["off"], strict=True)]
    print("overhead per round %:", [round(p, 1) for p in pairs], "median", round(statistics.median(pairs), 1))
    print(
        "cpu on/off median us:",
        round(statistics.median(c for _, c, _ in res["on"])),
        round(statistics.median(c for _, c, _ in res["off"])),
    )
finally:
    for w in workers.values():
        w.kill()
    shutil.rmtree(root, ignore_errors=True)
