"""hdcctl render / validate / docs crd, the generated CRD reference, and the deploy/examples.

The console script is run as a real subprocess where it matters (stdin, exit codes); typer's CliRunner
elsewhere (same code, no interpreter start-up per case).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import paths
import pytest
import yaml
from typer.testing import CliRunner

from hdc_operator.builders import Capabilities, build_children
from hdc_operator.cli import CliError, app, load_command_modules, parse_capabilities
from hdc_operator.crd_docs import render_crd_reference
from hdc_operator.spec import parse_workload

REPO = paths.REPO
EXAMPLES = sorted((REPO / "deploy" / "examples").glob("*.yaml"))
runner = CliRunner()


def hdcctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    script = pathlib.Path(sys.executable).parent / "hdcctl"
    return subprocess.run([str(script), *args], input=stdin, capture_output=True, text=True, timeout=60)


def workload_yaml(name="w", spec=None, **metadata) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "hdcompute.io/v1alpha1",
            "kind": "HDCWorkload",
            "metadata": {"name": name, **metadata},
            "spec": spec or {},
        }
    )


def test_committed_crd_reference_is_current():
    committed = (REPO / "docs" / "crd-reference.md").read_text()
    assert committed == render_crd_reference(), (
        "docs/crd-reference.md is stale: run `hdcctl docs crd > docs/crd-reference.md`"
    )


def test_crd_reference_lists_every_spec_field_and_rule():
    doc = render_crd_reference()
    for path in (
        "spec.hdc.dimension",
        "spec.autoscaling.behavior.scaleUp.policies",
        "spec.baselines[].maxMemoryMb",
        "spec.alerts.slo.latencyTargetPercent",
        "status.conditions",
    ):
        assert f"`{path}`" in doc, path
    assert "spec.autoscaling.minReplicas must be <= spec.autoscaling.maxReplicas" in doc


def test_examples_are_the_five_promised_and_valid():
    assert [p.name for p in EXAMPLES] == [
        "cpu-only.yaml",
        "gpu-autoscaled.yaml",
        "minimal.yaml",
        "with-baselines.yaml",
        "with-postgres.yaml",
    ]
    for path in EXAMPLES:
        proc = hdcctl("validate", "-f", str(path))
        assert proc.returncode == 0, proc.stderr
        assert "valid HDCWorkload" in proc.stdout


def test_with_baselines_holds_the_seeds_three_baselines():
    w = parse_workload(yaml.safe_load((REPO / "deploy" / "examples" / "with-baselines.yaml").read_text()))
    assert w.baselines == [
        {"name": "bundle_10k_vectors", "operation": "bundle", "maxLatencyMs": 50, "minThroughputOpsPerSec": 1000},
        {"name": "bind_32k_dimension", "operation": "bind", "maxLatencyMs": 10, "maxMemoryMb": 256},
        {
            "name": "similarity_batch_1000",
            "operation": "similarity",
            "maxLatencyMs": 100,
            "minThroughputOpsPerSec": 500,
        },
    ]


def test_examples_cover_cpu_only_and_hpa():
    cpu = parse_workload(yaml.safe_load((REPO / "deploy/examples/cpu-only.yaml").read_text()))
    assert (cpu.gpus, cpu.device) == (0, "cpu")
    gpu = parse_workload(yaml.safe_load((REPO / "deploy/examples/gpu-autoscaled.yaml").read_text()))
    assert (gpu.autoscaling_mode, gpu.gpus) == ("hpa", 1)


def test_render_prints_exactly_build_children_from_stdin():
    text = workload_yaml("demo", {"autoscaling": {"mode": "hpa"}}, namespace="ml", uid="u-42")
    proc = hdcctl("render", "-f", "-", stdin=text)
    assert proc.returncode == 0, proc.stderr
    rendered = list(yaml.safe_load_all(proc.stdout))
    expected = build_children(parse_workload(yaml.safe_load(text)), Capabilities.all())
    assert rendered == expected
    assert "ownerReferences" in rendered[0]["metadata"] and "note" not in proc.stderr


def test_render_multiple_documents_and_capabilities():
    text = workload_yaml("a") + "---\n" + workload_yaml("b", {"hdc": {"vsa": "HRR"}})
    result = runner.invoke(app, ["render", "-f", "-", "--capabilities", "none", "-n", "team"], input=text)
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} >= {("Deployment", "a"), ("Deployment", "b")}
    assert not {d["kind"] for d in docs} & {"ServiceMonitor", "PrometheusRule"}
    assert {d["metadata"]["namespace"] for d in docs} == {"team"}
    only_sm = runner.invoke(app, ["render", "-f", "-", "-c", "servicemonitor"], input=workload_yaml("a"))
    kinds = {d["kind"] for d in yaml.safe_load_all(only_sm.stdout) if d}
    assert "ServiceMonitor" in kinds and "PrometheusRule" not in kinds


def test_render_uid_option_adds_owner_references():
    result = runner.invoke(app, ["render", "-f", "-", "--uid", "u-7"], input=workload_yaml("a"))
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert all(d["metadata"]["ownerReferences"][0]["uid"] == "u-7" for d in docs)


def test_render_rejects_a_bad_workload_naming_document_and_field():
    text = workload_yaml("good") + "---\n" + workload_yaml("bad", {"autoscaling": {"minReplicas": 4, "maxReplicas": 2}})
    proc = hdcctl("render", "-f", "-", stdin=text)
    assert proc.returncode == 1
    assert proc.stdout == ""  # nothing half-rendered
    assert "document 2 (bad)" in proc.stderr and "spec.autoscaling.minReplicas" in proc.stderr


def test_validate_lists_every_error_and_fails():
    proc = hdcctl("validate", "-f", "-", stdin=workload_yaml("x", {"hdc": {"dimension": 1, "vsa": "NOPE"}}))
    assert proc.returncode == 1
    assert "spec.hdc.dimension" in proc.stderr and "spec.hdc.vsa" in proc.stderr


@pytest.mark.parametrize(
    "args,stdin,message",
    [
        (["render", "-f", "/nonexistent/file.yaml"], None, "cannot read /nonexistent/file.yaml"),
        (["render", "-f", "-"], "a: [unclosed", "not valid YAML"),
        (["render", "-f", "-"], "", "no YAML documents"),
        (
            ["validate", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "kind: must be HDCWorkload",
        ),
        (["render", "-f", "-", "-c", "grafana"], "{}", "--capabilities: unknown grafana"),
    ],
)
def test_user_errors_are_one_clear_line(args, stdin, message):
    proc = hdcctl(*args, stdin=stdin)
    assert proc.returncode in (1, 2)
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_parse_capabilities():
    assert parse_capabilities("all") == Capabilities.all()
    assert parse_capabilities("none") == Capabilities.none()
    assert parse_capabilities("PrometheusRule") == Capabilities(service_monitor=False, prometheus_rule=True)
    with pytest.raises(CliError):
        parse_capabilities("servicemonitor,bogus")


def test_docs_crd_command_prints_the_reference():
    result = runner.invoke(app, ["docs", "crd"])
    assert result.exit_code == 0 and result.stdout == render_crd_reference()


def test_a_module_in_commands_adds_a_subcommand(tmp_path, monkeypatch):
    """Another area's subcommand is a file in hdc_operator/commands with register(app); cli.py is not edited."""
    import typer

    from hdc_operator import commands

    (tmp_path / "zz_hello.py").write_text(
        "def register(app):\n"
        "    @app.command('hello')\n"
        "    def hello(name: str = 'hdc'):\n"
        "        print(f'hello {name}')\n"
    )
    (tmp_path / "zz_helper.py").write_text("VALUE = 1  # no register(): not a command module\n")
    monkeypatch.setattr(commands, "__path__", [*commands.__path__, str(tmp_path)])
    target = typer.Typer()
    target.command("noop")(lambda: None)  # a typer app with one command would run it without a name
    loaded = load_command_modules(target)
    assert "zz_hello" in loaded and "zz_helper" not in loaded
    result = runner.invoke(target, ["hello", "--name", "world"])
    assert result.exit_code == 0 and result.stdout == "hello world\n"
    for name in ("zz_hello", "zz_helper"):
        sys.modules.pop(f"hdc_operator.commands.{name}", None)


def test_hdcctl_help_lists_the_commands():
    proc = hdcctl("--help")
    assert proc.returncode == 0
    for command in ("render", "validate", "docs"):
        assert command in proc.stdout
