"""deploy/monitoring and deploy/logging: configs the real tools accept, rendered rules and dashboards that are
current, secrets only by file, and log-shipping keys that match a real worker's JSON lines."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys

import pytest
import yaml
from monitoring_support import REPO, alertmanager_process, run_tool, tool, write_yaml
from worker_process import WorkerProcess

MONITORING = REPO / "deploy" / "monitoring"
LOGGING = REPO / "deploy" / "logging"


def test_promtool_accepts_prometheus_yml_and_its_rule_files():
    result = run_tool(tool("promtool"), "check", "config", "prometheus.yml", cwd=MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_prometheus_scrapes_the_worker_with_the_servicemonitor_labels():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "hdc-worker")
    labels = job["static_configs"][0]["labels"]
    assert set(labels) == {"namespace", "workload", "pod"}
    # the loaded rule file is the one generated for the workload these labels name
    assert config["rule_files"] == [f"alerts/{labels['workload']}.yml"]
    rules = yaml.safe_load((MONITORING / "alerts" / f"{labels['workload']}.yml").read_text())
    assert (
        f'namespace="{labels["namespace"]}", workload="{labels["workload"]}"' in rules["groups"][0]["rules"][0]["expr"]
    )


def test_rendered_rules_and_dashboards_are_current():
    result = subprocess.run([sys.executable, str(MONITORING / "render.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (MONITORING / "alerts").iterdir()) == sorted(
        f"{yaml.safe_load(p.read_text())['metadata']['name']}.yml"
        for p in (REPO / "deploy" / "examples").glob("*.yaml")
    )


@pytest.mark.parametrize("path", sorted((MONITORING / "alerts").glob("*.yml")), ids=lambda p: p.name)
def test_promtool_accepts_every_rendered_rule_file(path):
    result = run_tool(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_accepts_the_alertmanager_template():
    result = run_tool(tool("amtool"), "check-config", str(MONITORING / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 receivers" in result.stdout


def test_amtool_check_can_fail(tmp_path):
    config = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
    config["receivers"][0]["slack_configs"][0]["api_url_fil"] = "/x"
    result = run_tool(tool("amtool"), "check-config", str(write_yaml(tmp_path / "am.yml", config)))
    assert result.returncode != 0


def test_alertmanager_secrets_come_from_files_only():
    text = (MONITORING / "alertmanager.yml").read_text()
    config = yaml.safe_load(text)
    assert config["global"]["slack_api_url_file"].startswith("/etc/alertmanager/secrets/")
    assert config["global"]["smtp_auth_password_file"].startswith("/etc/alertmanager/secrets/")
    for key in ("api_url:", "auth_password:", "slack_api_url:", "smtp_auth_password:", "hooks.slack.com"):
        assert key not in text, key
    # grouped as in the seed: by alertname (and per workload), 10s/10s/1h
    route = config["route"]
    assert route["group_by"][0] == "alertname"
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("10s", "10s", "1h")
    receiver = next(r for r in config["receivers"] if r["name"] == route["receiver"])
    assert receiver["slack_configs"] and receiver["email_configs"]


def test_alertmanager_routes_by_severity(tmp_path):
    """amtool's route test on the real config: info goes to Slack only, the rest to Slack and email."""
    path = MONITORING / "alertmanager.yml"
    for labels, receiver in (
        (["alertname=HDC_LowGPUUtilization", "severity=info"], "hdc-slack"),
        (["alertname=HDC_HighErrorRate", "severity=critical"], "hdc-alerts"),
    ):
        result = run_tool(tool("amtool"), "config", "routes", "test", f"--config.file={path}", *labels)
        assert result.returncode == 0 and result.stdout.strip() == receiver, result.stdout + result.stderr


def test_a_real_alertmanager_starts_with_the_template(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "slack-webhook-url").write_text("http://127.0.0.1:9/slack")
    (secrets / "smtp-password").write_text("not-a-secret")
    config = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
    text = json.dumps(config).replace("/etc/alertmanager/secrets", str(secrets))
    am = alertmanager_process(tmp_path, json.loads(text)).start()
    try:
        import urllib.request

        with urllib.request.urlopen(f"{am.url}/api/v2/status", timeout=5) as resp:
            status = json.load(resp)
        assert "hdc-alerts" in status["config"]["original"]
    finally:
        am.stop()


def test_grafana_provisioning_matches_the_compose_mounts():
    compose = yaml.safe_load((MONITORING / "docker-compose-monitoring.yml").read_text())
    services = compose["services"]
    assert {"prometheus", "alertmanager", "grafana", "node-exporter", "jaeger", "hdc-worker"} <= set(services)
    for name, service in services.items():
        assert not service["image"].endswith(":latest") and ":" in service["image"], name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and not source.startswith("./secrets"):
                assert (MONITORING / source).exists(), f"{name} mounts missing {source}"
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("./"))
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/hdc.yml").read_text())["providers"][0]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    datasources = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    prom = next(d for d in datasources["datasources"] if d["type"] == "prometheus")
    assert prom["isDefault"] and prom["url"] == "http://prometheus:9090"
    dashboards = list((MONITORING / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        model = json.loads(path.read_text())
        assert [v["type"] for v in model["templating"]["list"]] == ["datasource"]
        assert model["templating"]["list"][0]["query"] == "prometheus"


# --- logs ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker_log_lines(tmp_path_factory) -> list[dict]:
    """JSON lines a real worker wrote to HDC_LOG_FILE: start-up, a served request and a failed one."""
    tmp = tmp_path_factory.mktemp("logs")
    worker = WorkerProcess(tmp, tmp / "state", HDC_LOG_FILE=str(tmp / "worker.log")).start()
    try:
        assert worker.request("POST", "/v1/ops/bind", {"a": [1.0, -1.0], "b": [1.0, 1.0], "vsa": "MAP"})[0] == 200
        assert worker.request("POST", "/v1/ops/bind", {"a": [1.0], "b": [1.0, 1.0], "vsa": "MAP"})[0] == 400
    finally:
        worker.stop()
    return [json.loads(line) for line in (tmp / "worker.log").read_text().splitlines() if line.strip()]


def _filebeat_parsers() -> list[dict]:
    config = yaml.safe_load((LOGGING / "filebeat.yml").read_text())
    return [p["ndjson"] for i in config["filebeat.inputs"] for p in i["parsers"] if "ndjson" in p]


def test_filebeat_message_key_is_in_every_worker_line(worker_log_lines):
    parsers = _filebeat_parsers()
    assert len(parsers) == 2
    for parser in parsers:
        assert parser["target"] == "hdc"
        assert all(parser["message_key"] in line for line in worker_log_lines)
    events = {line["event"] for line in worker_log_lines}
    assert {"worker_ready", "hypervector_operation_completed", "request_failed"} <= events


def test_filebeat_reads_the_file_the_compose_worker_writes():
    compose = yaml.safe_load((MONITORING / "docker-compose-monitoring.yml").read_text())
    log_file = compose["services"]["hdc-worker"]["environment"]["HDC_LOG_FILE"]
    config = yaml.safe_load((LOGGING / "filebeat.yml").read_text())
    paths = config["filebeat.inputs"][0]["paths"]
    assert any(re.fullmatch(p.replace(".", r"\.").replace("*", ".*"), log_file) for p in paths), (paths, log_file)


def test_logstash_fields_exist_in_real_worker_lines(worker_log_lines):
    conf = (LOGGING / "logstash.conf").read_text()
    referenced = set(re.findall(r"\[hdc\]\[([a-z_]+)\]", conf))
    assert {"event", "level", "logger", "timestamp", "trace_id", "span_id", "duration_ms"} <= referenced
    keys = set().union(*worker_log_lines)
    assert referenced <= keys, referenced - keys
    # every line has the fields mapped unconditionally; request lines carry the trace and correlation ids
    for line in worker_log_lines:
        assert {"event", "level", "logger", "timestamp"} <= set(line)
    request = next(line for line in worker_log_lines if line["event"] == "hypervector_operation_completed")
    assert {"trace_id", "span_id", "correlation_id", "operation", "duration_ms", "status"} <= set(request)
    assert isinstance(request["duration_ms"], (int, float))


def test_logstash_date_filter_matches_the_worker_timestamps(worker_log_lines):
    conf = (LOGGING / "logstash.conf").read_text()
    assert re.search(r'match\s*=>\s*\["\[hdc\]\[timestamp\]",\s*"ISO8601"\]', conf)
    for line in worker_log_lines:
        stamp = datetime.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        assert stamp.tzinfo is not None and stamp.utcoffset() == datetime.timedelta(0)


def test_logstash_conf_is_balanced():
    conf = re.sub(r'"(?:[^"\\]|\\.)*"', '""', re.sub(r"#.*", "", (LOGGING / "logstash.conf").read_text()))
    depth = 0
    for ch in conf:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert re.search(r"input\s*\{\s*beats\s*\{\s*port\s*=>\s*5044", conf)
    filebeat = yaml.safe_load((LOGGING / "filebeat.yml").read_text())
    assert filebeat["output.logstash"]["hosts"] == ["logstash:5044"]
