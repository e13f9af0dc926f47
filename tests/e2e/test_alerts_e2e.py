"""End to end: a real Prometheus scrapes a real worker under load, evaluates the generated rules, and a real
Alertmanager delivers HDC_HighLatency and HDC_HighErrorRate to a webhook served here - firing while a fault is
injected (PUT /admin/faults), resolved after it is removed. docs/testing.md describes the harness."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from monitoring_support import alertmanager_process, prometheus_process, spec_with, write_yaml
from worker_process import WorkerProcess, free_port

from hdc_operator.alerts import build_rule_groups, rule_file

NAMESPACE, WORKLOAD, POD = "hdc-test", "e2e", "e2e-worker-0"
FOR = "10s"
WATCHED = ("HDC_HighLatency", "HDC_HighErrorRate")
FAULT = {"latency_ms": 200, "error_ratio": 0.1, "operations": ["bind"]}


class Webhook:
    """Alertmanager's webhook receiver: every notification, with the time it arrived."""

    def __init__(self):
        self.notifications: list[tuple[float, dict]] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def receive(request: web.Request) -> web.Response:
            self.notifications.append((time.monotonic(), await request.json()))
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/alerts", receive)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def alerts(self, status: str) -> dict[str, tuple[float, dict]]:
        """alertname -> (arrival, alert) of the first notification carrying it with `status`."""
        out: dict[str, tuple[float, dict]] = {}
        for arrived, payload in self.notifications:
            for alert in payload["alerts"]:
                if alert["status"] == status and alert["labels"]["alertname"] not in out:
                    out[alert["labels"]["alertname"]] = (arrived, alert)
        return out


async def load(worker: WorkerProcess, stop: asyncio.Event, counts: dict[int, int]) -> None:
    """One client loop: bind requests back to back (a few ms each; 200 ms more while the fault is on)."""
    body = {"a": [[1.0, -1.0, 1.0, -1.0]] * 4, "b": [[1.0, 1.0, -1.0, -1.0]] * 4, "vsa": "MAP"}
    url = f"http://127.0.0.1:{worker.port}/v1/ops/bind"
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            async with session.post(url, json=body) as resp:
                await resp.read()
                counts[resp.status] = counts.get(resp.status, 0) + 1
            await asyncio.sleep(0.005)


async def wait_for(condition, timeout: float, what: str, diagnose) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{await diagnose()}")
        await asyncio.sleep(0.5)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_injected_fault_fires_and_resolves_alerts_through_alertmanager(tmp_path):
    spec = spec_with(
        **{
            "resources.gpus": 0,
            "alerts.highLatency": {"p95ThresholdMs": 100, "for": FOR},
            "alerts.highErrorRate": {"thresholdPercent": 1, "for": FOR},
        }
    )
    write_yaml(tmp_path / "rules.yml", rule_file(build_rule_groups(WORKLOAD, NAMESPACE, spec)))

    hook = Webhook()
    await hook.start()
    worker = WorkerProcess(tmp_path, tmp_path / "state", HDC_ADMIN_FAULTS="true", HDC_DIMENSION="4")
    await asyncio.to_thread(worker.start)
    am = alertmanager_process(
        tmp_path,
        {
            "route": {
                "receiver": "test",
                "group_by": ["alertname"],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "test",
                    "webhook_configs": [{"url": f"http://127.0.0.1:{hook.port}/alerts", "send_resolved": True}],
                }
            ],
        },
    )
    prometheus = None
    stop, counts = asyncio.Event(), {}
    loaders: list[asyncio.Task] = []
    try:
        await asyncio.to_thread(am.start)
        # The scrape job labels every series like the ServiceMonitor's relabelling does in a cluster.
        prometheus = prometheus_process(
            tmp_path,
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(tmp_path / "rules.yml")],
                "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am.port}"]}]}]},
                "scrape_configs": [
                    {
                        "job_name": "hdc-worker",
                        "static_configs": [
                            {
                                "targets": [f"127.0.0.1:{worker.port}"],
                                "labels": {"namespace": NAMESPACE, "workload": WORKLOAD, "pod": POD},
                            }
                        ],
                    }
                ],
            },
        )
        await asyncio.to_thread(prometheus.start)

        async with aiohttp.ClientSession() as session:

            async def query(promql: str) -> list:
                async with session.get(f"{prometheus.url}/api/v1/query", params={"query": promql}) as resp:
                    return (await resp.json())["data"]["result"]

            async def prom_alerts() -> list:
                async with session.get(f"{prometheus.url}/api/v1/alerts") as resp:
                    return (await resp.json())["data"]["alerts"]

            async def diagnose() -> str:
                p95 = await query('hdc_latency_percentiles{quantile="0.95"}')
                return (
                    f"requests by status: {counts}\nprometheus alerts: {await prom_alerts()}\n"
                    f"webhook: {hook.notifications}\n"
                    f"p95: {p95}\n"
                    f"prometheus log: {prometheus.log_path.read_text()[-1500:]}\n"
                    f"alertmanager log: {am.log_path.read_text()[-1500:]}"
                )

            loaders = [asyncio.create_task(load(worker, stop, counts)) for _ in range(3)]
            # Healthy: the target is up, traffic is measured, and neither alert is even pending.
            await wait_for(lambda: counts.get(200, 0) > 200, 60, "healthy traffic", diagnose)
            up_query = f'up{{namespace="{NAMESPACE}", workload="{WORKLOAD}", pod="{POD}"}} == 1'
            deadline = time.monotonic() + 30
            while not await query(up_query):
                assert time.monotonic() < deadline, f"the worker target never came up\n{await diagnose()}"
                await asyncio.sleep(0.5)
            await asyncio.sleep(5)
            assert not [a for a in await prom_alerts() if a["labels"]["alertname"] in WATCHED]
            assert not hook.alerts("firing")

            async with session.put(f"http://127.0.0.1:{worker.port}/admin/faults", json=FAULT) as resp:
                assert resp.status == 200
            injected = time.monotonic()
            await wait_for(
                lambda: set(WATCHED) <= set(hook.alerts("firing")), 120, "both alerts firing at the webhook", diagnose
            )
            firing = hook.alerts("firing")
            for name in WATCHED:
                arrived, alert = firing[name]
                assert arrived - injected >= 10, f"{name} fired before its for: {FOR}"
                assert alert["labels"]["namespace"] == NAMESPACE and alert["labels"]["workload"] == WORKLOAD
                assert alert["annotations"]["runbook_url"].endswith(f"/docs/runbooks/{name}.md")
            assert firing["HDC_HighLatency"][1]["labels"]["operation"] == "bind"
            assert firing["HDC_HighLatency"][1]["labels"]["severity"] == "warning"
            assert firing["HDC_HighLatency"][1]["annotations"]["description"].startswith(
                f"95th percentile latency of bind on {POD} is "
            )
            assert firing["HDC_HighErrorRate"][1]["labels"]["severity"] == "critical"
            assert "% (threshold 1%)" in firing["HDC_HighErrorRate"][1]["annotations"]["description"]
            assert counts.get(500, 0) > 0

            async with session.delete(f"http://127.0.0.1:{worker.port}/admin/faults") as resp:
                assert resp.status == 200
            removed = time.monotonic()
            await wait_for(
                lambda: set(WATCHED) <= set(hook.alerts("resolved")),
                240,
                "both alerts resolved at the webhook",
                diagnose,
            )
            resolved = hook.alerts("resolved")
            print(
                "\nfiring after the fault: "
                + ", ".join(f"{n} {firing[n][0] - injected:.1f}s" for n in WATCHED)
                + "; resolved after its removal: "
                + ", ".join(f"{n} {resolved[n][0] - removed:.1f}s" for n in WATCHED)
                + f"; requests {counts}"
            )
    finally:
        stop.set()
        await asyncio.gather(*loaders, return_exceptions=True)
        if prometheus is not None:
            prometheus.stop()
        am.stop()
        worker.stop()
        if hook.runner is not None:
            await hook.runner.cleanup()
