"""The state store on loopback PostgreSQL (issue 21's speed targets): `make bench-state`.

1. Write to visible: one writer adds single items at a steady pace while 3 follower processes (background
   thread, LISTEN wake-ups) apply them; per write, the time from the start of the write call until the last of
   the 3 has applied its version (p50, p99), and the write's own acknowledgement latency.
2. Catch-up of a new follower for a memory of N BSC items at dimension D (compacted into segments), as a ratio
   to reading the same segment bytes from PostgreSQL with psycopg in the same run (alternated, medians).
3. Add throughput of a growing memory: M single adds, each followed by the writer's own follower applying it
   (and the compaction its background thread would run every `compact_every` entries); adds per second over
   the first 10 % against the last 10 %.

PostgreSQL: --database-url, else a throwaway server (tests/postgres_support.py; fsync off unless --fsync).
Results: a table on stdout and --json. Reduce --items / --adds on a small machine; the report names the sizes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from typing import Any

import psycopg

import hd_compute as hd
from hd_compute.service.server import GC_YOUNG_THRESHOLD
from hd_compute.state import Follower, StateStore

REPO = pathlib.Path(__file__).resolve().parents[2]
FOLLOWERS = 3


def like_a_ready_worker() -> None:
    """The garbage collector as a worker sets it once ready (service/server.py): everything alive frozen out of
    its sight, a larger young generation. Without it, the three follower processes, allocating alike, run their
    full collections at the same moment and every write then waits for the slowest."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    gc.freeze()


# -- 1. write to visible ---------------------------------------------------------------------------------------
def follower_process(url: str) -> None:
    """A follower in its own process: prints "ready", then on stdin's end one JSON line {version: seconds},
    the time.monotonic() (system-wide on Linux) at which each version became visible here."""
    store = StateStore.open(database_url=url)
    follower = Follower(store)
    follower.catch_up()
    like_a_ready_worker()
    visible: dict[int, float] = {}

    def applied(previous: int, version: int) -> None:
        now = time.monotonic()
        for v in range(previous + 1, version + 1):
            visible[v] = now

    follower.add_apply_hook(applied)
    follower.start()
    print("ready", flush=True)
    sys.stdin.read()
    follower.stop()
    print(json.dumps(visible), flush=True)
    store.close()


def write_to_visible(url: str, writes: int, interval: float, dim: int) -> dict[str, Any]:
    store = StateStore.open(database_url=url)
    store.create_memory("visible", dim, "BSC")
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--follower", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(FOLLOWERS)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    items = hd.random(writes, dim, "BSC", seed=1)
    started, acked = {}, []
    for i in range(writes):
        t0 = time.monotonic()
        written = store.add_items("visible", items[i : i + 1])
        acked.append(time.monotonic() - t0)
        started[written.version] = t0
        time.sleep(interval)
    time.sleep(2.0)  # the followers apply the last writes (their poll interval bounds this)
    seen: list[dict[int, float]] = []
    for proc in procs:
        out, _ = proc.communicate(input="", timeout=120)
        seen.append({int(v): t for v, t in json.loads(out.strip().splitlines()[-1]).items()})
    store.close()
    delays = [max(s[v] for s in seen) - t0 for v, t0 in started.items()]
    return {
        "writes": writes,
        "interval_s": interval,
        "followers": FOLLOWERS,
        "visible_p50_ms": 1e3 * percentile(delays, 50),
        "visible_p99_ms": 1e3 * percentile(delays, 99),
        "ack_p50_ms": 1e3 * percentile(acked, 50),
        "ack_p99_ms": 1e3 * percentile(acked, 99),
    }


# -- 2. catch-up -------------------------------------------------------------------------------------------------
def catch_up(url: str, items: int, dim: int, batch: int, repeats: int) -> dict[str, Any]:
    store = StateStore.open(database_url=url)
    store.create_memory("catchup", dim, "BSC")
    for start in range(0, items, batch):
        store.add_items("catchup", hd.random(min(batch, items - start), dim, "BSC", seed=start))
    store.compact_all()
    conninfo = store.database.listen_conninfo
    assert conninfo is not None
    query = "SELECT payload FROM hdc_state_segments WHERE kind = 'memory' AND name = %s ORDER BY first_id"
    reads, follows = [], []
    total_bytes = 0
    for _ in range(repeats):
        t0 = time.monotonic()
        with psycopg.connect(conninfo) as conn:
            total_bytes = sum(len(row[0]) for row in conn.execute(query, ("catchup",)))
        reads.append(time.monotonic() - t0)
        t0 = time.monotonic()
        follower = Follower(store)
        follower.catch_up()
        follows.append(time.monotonic() - t0)
        assert len(follower.memory("catchup").memory) == items
        del follower
    store.close()
    read, follow = statistics.median(reads), statistics.median(follows)
    return {
        "items": items,
        "dim": dim,
        "bytes": total_bytes,
        "read_s": read,
        "catch_up_s": follow,
        "ratio": follow / read,
        "repeats": repeats,
    }


# -- 3. add throughput -----------------------------------------------------------------------------------------
def add_throughput(url: str, adds: int, dim: int) -> dict[str, Any]:
    store = StateStore.open(database_url=url)
    store.create_memory("adds", dim, "BSC")
    follower = Follower(store)
    follower.catch_up()
    items = hd.random(adds, dim, "BSC", seed=2)
    stamps = []
    for i in range(adds):
        store.add_items("adds", items[i : i + 1])
        follower.catch_up()
        if (i + 1) % store.compact_every == 0:
            store.compact_due()  # what the follower's background thread does after catching up
        stamps.append(time.monotonic())
    assert len(follower.memory("adds").memory) == adds
    store.close()
    tenth = adds // 10
    first = tenth / (stamps[tenth - 1] - stamps[0]) if tenth > 1 else float("nan")
    last = tenth / (stamps[-1] - stamps[-tenth - 1])
    return {"adds": adds, "dim": dim, "first_10pct_per_s": first, "last_10pct_per_s": last, "ratio": last / first}


# -- running -------------------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="PostgreSQL to use (default: a throwaway server)")
    parser.add_argument("--fsync", action="store_true", help="the throwaway server with fsync on")
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between writes (part 1)")
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=2_000, help="items per add while filling (part 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adds", type=int, default=100_000)
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["write_to_visible", "catch_up", "add_throughput"],
        choices=["write_to_visible", "catch_up", "add_throughput"],
    )
    parser.add_argument("--follower", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.follower:
        follower_process(args.follower)
        return
    with ExitStack() as stack:
        if args.database_url:
            urls = [args.database_url] * 3  # one database: each part has a memory of its own name
        else:
            sys.path.insert(0, str(REPO / "tests"))
            from postgres_support import PostgresServer

            server = stack.enter_context(PostgresServer.started(fsync=args.fsync))
            urls = [server.create_database(f"bench_{part}") for part in ("visible", "catchup", "adds")]
        report: dict[str, Any] = {
            "machine": machine(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "loadavg_before": os.getloadavg(),
            "postgres": "external" if args.database_url else f"throwaway, fsync={args.fsync}",
        }
        parts = {
            "write_to_visible": lambda: write_to_visible(urls[0], args.writes, args.interval, args.dim),
            "catch_up": lambda: catch_up(urls[1], args.items, args.dim, args.batch, args.repeats),
            "add_throughput": lambda: add_throughput(urls[2], args.adds, args.dim),
        }
        for name, part in parts.items():
            if name not in args.parts:
                continue
            started = time.monotonic()
            report[name] = {**part(), "seconds": time.monotonic() - started, "loadavg_after": os.getloadavg()}
            print(json.dumps({name: report[name]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
