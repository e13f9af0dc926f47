"""`hdc-bench --service` in a tiny configuration: real worker processes answer like the in-process search, and
the report has every row the issue asks for. No timing assertions (the machine is shared)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hd_compute.bench.cli import app
from hd_compute.bench.service import ServiceConfig, run_service_bench
from hd_compute.bench.service_report import service_markdown


def test_observability_pairs_alternate_which_worker_goes_first():
    from hd_compute.bench.service import ab_order

    assert [ab_order(i) for i in range(4)] == [("default", "quiet"), ("quiet", "default")] * 2


def test_observability_rounds_take_turns_on_several_processes_per_setting():
    from hd_compute.bench.service import WORKERS, ab_process, worker_processes

    assert [ab_process("quiet", i, 3) for i in range(4)] == ["quiet", "quiet-2", "quiet-3", "quiet"]
    assert [ab_process("default", i, 1) for i in range(3)] == ["default"] * 3
    processes = worker_processes(3)
    assert set(processes) == {"default", "unbatched", "quiet", "default-2", "quiet-2", "default-3", "quiet-3"}
    assert processes["quiet-3"] == WORKERS["quiet"] == {"HDC_OBSERVABILITY": "false"}
    assert processes["default-2"] == WORKERS["default"] and worker_processes(1) == WORKERS


@pytest.mark.slow
def test_service_bench_tiny_run_reports_every_row_and_correct_answers(tmp_path):
    cfg = ServiceConfig(
        vsas=["MAP", "BSC"],
        items=300,
        dimension=1000,
        batch_sizes=[64, 96],
        batch_clients=2,
        single_clients=4,
        seconds=0.2,
        max_requests=30,
        rounds=2,
        ab_workers=2,
        threads=1,
        repeats=1,
    )
    report = run_service_bench(cfg, log=lambda *_: None, work_dir=tmp_path)

    assert report["answers_correct"] is True
    # every worker (batching on/off, observability on/off) answered batched and concurrent single queries
    assert {(c["vsa"], c["worker"]) for c in report["checks"]} == {
        (v, w) for v in ("MAP", "BSC") for w in ("default", "unbatched", "quiet", "default-2", "quiet-2")
    }
    for check in report["checks"]:
        assert check["checked"] == 96 + 16 and check["mismatches"] == 0 and check["in_process_equals_targets"]

    rows = report["rows"]
    for vsa in ("MAP", "BSC"):
        mine = [r for r in rows if r["vsa"] == vsa]
        loads = {(r["queries_per_request"], r["batching"], r["observability"]) for r in mine}
        assert loads == {
            (64, True, True),
            (96, True, True),
            (1, True, True),
            (1, False, True),
            (1, True, False),
            (64, True, False),
        }
        for r in mine:
            assert 0 < r["requests"] <= (60 if r["worker"] in ("default", "quiet") else 30)
            assert r["service_qps"] > 0 and r["in_process_qps"] > 0 and r["ratio"] > 0
            assert 0 < r["p50_ms"] <= r["p99_ms"]
            assert r["kernel_calls"] > 0 and r["mean_batch_rows"] >= 1
            # CPU time per query (the worker's is counted in clock ticks: it can round to 0 on such short runs)
            assert r["cpu_us_per_query"] >= r["worker_cpu_us_per_query"] >= 0 and r["in_process_cpu_us_per_query"] > 0
            if r["cpu_us_per_query"]:
                assert r["cpu_ratio"] == pytest.approx(r["in_process_cpu_us_per_query"] / r["cpu_us_per_query"])
        unbatched = next(r for r in mine if not r["batching"])
        assert unbatched["mean_batch_rows"] == 1.0  # HDC_BATCH_MAX_SIZE=1: one kernel call per request
        single = next(r for r in mine if r["queries_per_request"] == 1 and r["batching"] and r["observability"])
        assert single["floor"] == 0.5 and single["batching_gain"] > 0
        # single queries: the floor's ratio is against one-query search calls; the batched comparison is reported too
        assert (
            single["in_process_qps"]
            == next(r for r in mine if r["queries_per_request"] == 1 and not r["batching"])["in_process_qps"]
        )
        best_batched = max(r["in_process_qps"] for r in mine if r["queries_per_request"] > 1)
        for r in mine:
            if r["queries_per_request"] == 1:
                assert r["batched_in_process_qps"] == best_batched
                assert r["ratio_vs_batched"] == pytest.approx(r["service_qps"] / best_batched)
            else:
                assert r["ratio_vs_batched"] is None
        assert next(r for r in mine if r["queries_per_request"] == 64 and r["observability"])["floor"] == 0.7
        # rows with a floor are paired round by round with an in-process measurement taken right after them,
        # and the verdict is on the median of those ratios
        for r in mine:
            if r["floor"] is None:
                assert r.get("paired_ratio") is None
                continue
            assert len(r["in_process_qps_rounds"]) == len(r["per_round_qps"]) == 2
            ratios = [a / b for a, b in zip(r["per_round_qps"], r["in_process_qps_rounds"], strict=True)]
            assert r["paired_ratio"] == pytest.approx(sum(ratios) / 2)
            assert r["meets_floor"] == (r["paired_ratio"] >= r["floor"])
    assert {(o["vsa"], o["queries_per_request"]) for o in report["overheads"]} == {
        (v, q) for v in ("MAP", "BSC") for q in (1, 64)
    }
    for o in report["overheads"]:
        assert (
            o["qps_on"] > 0 and o["qps_off"] > 0 and o["ceiling"] == (0.15 if o["queries_per_request"] == 1 else 0.05)
        )
        assert len(o["overhead_paired"]) == 2
        assert o["overhead_paired_median"] == pytest.approx(sum(o["overhead_paired"]) / 2)
        assert o["meets_ceiling"] == (o["overhead_paired_median"] <= o["ceiling"])
        # the second round ran on the second process of each setting, in the other order
        assert o["processes"] == [
            {"default": "default", "quiet": "quiet"},
            {"quiet": "quiet-2", "default": "default-2"},
        ]
        assert list(o["processes"][1]) == ["quiet", "default"]
        # the event loop's CPU per request, round by round (the scheduler's ns run time: never 0 for a request)
        assert len(o["loop_cpu_us_on"]) == len(o["loop_cpu_us_off"]) == 2
        assert all(x > 0 for x in o["loop_cpu_us_on"] + o["loop_cpu_us_off"])
        assert o["loop_cpu_us_paired"] == [
            a - b for a, b in zip(o["loop_cpu_us_on"], o["loop_cpu_us_off"], strict=True) if b
        ]

    # the client's overhead against raw aiohttp requests, single queries and the first batched load, per VSA
    assert [(o["vsa"], o["queries_per_request"]) for o in report["client_overheads"]] == [
        (v, q) for v in ("MAP", "BSC") for q in (1, 64)
    ]
    for o in report["client_overheads"]:
        assert o["qps_raw"] > 0 and o["qps_client"] > 0 and len(o["overhead_paired"]) == 2
        assert o["ratio"] == pytest.approx(o["qps_client"] / o["qps_raw"])
        assert o["ceiling"] == (0.10 if o["queries_per_request"] == 1 else 0.03)
        assert o["meets_ceiling"] == (o["overhead_paired_median"] <= o["ceiling"])
        assert o["client_cpu_us_raw"] > 0 and o["client_cpu_us_client"] > 0

    assert len(report["machine"]["load_average"]["start"]) == 3 and "in_process" in report["machine"]["omp_wait_policy"]
    text = service_markdown(report)
    assert "| MAP | single query | batching off, observability on |" in text and "overhead" in text
    assert "vs batched in-process" in text and "Load average" in text and "CPU µs/query" in text
    assert "paired ratio: median (rounds)" in text and "event-loop CPU µs/request on / off (paired)" in text
    assert "2 worker processes per setting" in text
    assert "| MAP | single | 4 |" in text and "client CPU µs/request raw / client" in text
    json.dumps(report)  # --json writes it as is


@pytest.mark.slow
def test_service_flag_on_the_bench_command(tmp_path):
    out, md = tmp_path / "service.json", tmp_path / "service.md"
    result = CliRunner().invoke(
        app,
        [
            "--service",
            "--vsa",
            "BSC",
            "--service-items",
            "200",
            "--service-dimension",
            "640",
            "--service-seconds",
            "0.1",
            "--service-max-requests",
            "10",
            "--service-clients",
            "3",
            "--service-batch",
            "64",
            "--service-rounds",
            "1",
            "--service-threads",
            "1",
            "--repeats",
            "1",
            "--json",
            str(out),
            "--markdown",
            str(md),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())["service"]
    assert report["answers_correct"] and report["config"]["threads"] == 1
    assert {r["vsa"] for r in report["rows"]} == {"BSC"}
    assert "hdc-bench --service" in result.output and "overhead" in md.read_text()
    assert "hd_compute.client (AsyncClient) vs raw aiohttp" in result.output
