"""The README and docs/ say only what exists: make targets, relative links (and their anchors), the commands of
hdcctl / hdc-worker / hdc-bench / hdc-operator with their subcommands and options, the metric names of
docs/monitoring.md, and the README's HDCWorkload example."""

from __future__ import annotations

import pathlib
import re
import shlex

import pytest
import typer
import yaml
from typer.testing import CliRunner

REPO = pathlib.Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").rglob("*.md"))
PAGES = [README, *DOCS]
FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")


def rel(path: pathlib.Path) -> str:
    return str(path.relative_to(REPO))


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced block."""
    return [(m.group(0).split("\n", 1)[0].strip("`~ ").strip(), m.group(2)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text without its fenced blocks (lines kept, so headings stay headings)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def code_lines(text: str) -> list[str]:
    """Every line of every fenced block, and every inline code span of the prose."""
    lines = [line for _, body in code_blocks(text) for line in body.splitlines()]
    return lines + INLINE.findall(prose(text))


# --- (a) make targets --------------------------------------------------------------------------------------------


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.M))
    for phony in re.findall(r"^\.PHONY:(.*)$", text, re.M):
        targets |= set(phony.split())
    return targets


MAKE = re.compile(r"(?:^|[\s;&|(`])make\s+([a-z][\w-]*)")


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_make_target_named_exists(page):
    targets = makefile_targets()
    named = {t for line in code_lines(page.read_text()) for t in MAKE.findall(line)}
    missing = sorted(named - targets)
    assert not missing, f"{rel(page)} names make targets the Makefile lacks: {missing}"


def test_the_readme_names_the_two_quickstart_commands():
    text = README.read_text()
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    first_block = code_blocks(quickstart)[0][1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]


# --- (b) links --------------------------------------------------------------------------------------------------


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    text = re.sub(r"<[^>]+>", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(page.read_text()), re.M)}


def links(page: pathlib.Path) -> list[str]:
    return [a or b for a, b in LINK.findall(INLINE.sub("", prose(page.read_text())))]


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page):
    bad = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading with anchor #{anchor} in {rel(dest)}")
    assert not bad, f"{rel(page)}:\n" + "\n".join(bad)


def test_the_link_checker_sees_links_and_anchors():
    assert "docs/install.md#prometheus-adapter-for-autoscalingmode-hpa" in links(README)
    assert slug("prometheus-adapter (for `autoscaling.mode: hpa`)") == "prometheus-adapter-for-autoscalingmode-hpa"
    assert "numbers" in anchors(REPO / "docs" / "testing.md")


# --- (c) commands -------------------------------------------------------------------------------------------------


def typer_apps() -> dict[str, typer.Typer]:
    from hd_compute.bench.cli import app as bench_app
    from hd_compute.service.cli import app as worker_app
    from hdc_operator.cli import app as hdcctl_app
    from hdc_operator.main import app as operator_app

    return {"hdcctl": hdcctl_app, "hdc-worker": worker_app, "hdc-bench": bench_app, "hdc-operator": operator_app}


def programs() -> dict:
    """program -> its click command (typer's), to walk subcommands and options."""
    return {name: typer.main.get_command(app) for name, app in typer_apps().items()}


COMMAND = re.compile(
    r"(?:^|&&|;|\|\s|\$\(|`)\s*(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:\S*/bin/)?"
    r"(hdcctl|hdc-worker|hdc-bench|hdc-operator)(?![\w.-])(.*)$"
)
STOP = {"|", "||", "&&", ";", ">", ">>", "2>", "<", "\\"}


def mentioned_commands() -> list[tuple[str, str, list[str]]]:
    """(page, program, argument tokens) of every command shown in a code block or inline code span."""
    found = []
    for page in PAGES:
        for line in code_lines(page.read_text()):
            for m in COMMAND.finditer(line):
                try:
                    tokens = shlex.split(m.group(2), comments=True)
                except ValueError:  # an unbalanced quote in prose: split on spaces
                    tokens = m.group(2).split()
                args = []
                for token in tokens:
                    if token in STOP or token.startswith(("#", ">", "`")):
                        break
                    args.append(token)
                found.append((rel(page), m.group(1), args))
    return found


def resolve(program: str, args: list[str], cmds: dict) -> tuple[list[str], object, list[str]]:
    """(subcommand path, the command, the option names used); AssertionError naming an unknown subcommand/option."""
    cmd, path, options = cmds[program], [], []
    for raw in args:
        for token in filter(None, re.split(r"[\[\]|(){}]", raw)):
            if token.startswith("-") and len(token) > 1:
                options.append(token.split("=", 1)[0])
            elif hasattr(cmd, "commands") and not options:
                choice = token.split("|")[0]
                assert choice in cmd.commands, f"{program} {' '.join(path)}: no subcommand {choice!r}"
                cmd, path = cmd.commands[choice], [*path, choice]
            break  # one token per shell word; the rest of a bracket group is alternatives
    if program == "hdcctl" and path == ["bench"]:  # a passthrough: its options are hdc-bench's
        cmd = cmds["hdc-bench"]
    known = {"--help"} | {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    unknown = [o for o in options if o not in known]
    assert not unknown, f"{program} {' '.join(path)}: no option {unknown}"
    return path, cmd, options


def test_commands_in_readme_and_docs_exist_and_parse():
    cmds = programs()
    apps = typer_apps()
    shown = mentioned_commands()
    programs_seen = {program for _, program, _ in shown}
    assert programs_seen == set(apps), programs_seen  # the scan finds all four
    errors, paths = [], set()
    for page, program, args in shown:
        try:
            path, _, _ = resolve(program, args, cmds)
        except AssertionError as exc:
            errors.append(f"{page}: `{program} {' '.join(args)}`: {exc}")
            continue
        paths.add((program, tuple(path)))
    assert not errors, "\n".join(errors)
    runner = CliRunner()
    for program, path in sorted(paths):
        if program == "hdcctl" and path == ("bench",):
            program, path = "hdc-bench", ()
        result = runner.invoke(apps[program], [*path, "--help"], prog_name=program)
        assert result.exit_code == 0, f"{program} {' '.join(path)} --help: {result.output}"
        assert "Usage:" in result.output


def test_the_command_checker_rejects_what_does_not_exist():
    cmds = programs()
    assert resolve("hdcctl", ["status", "[-n", "NS", "|", "-A]", "--prometheus", "URL"], cmds)[0] == ["status"]
    assert resolve("hdcctl", ["dev", "cluster", "up|down"], cmds)[0] == ["dev", "cluster", "up"]
    with pytest.raises(AssertionError, match="no subcommand 'frobnicate'"):
        resolve("hdcctl", ["frobnicate"], cmds)
    with pytest.raises(AssertionError, match="no option"):
        resolve("hdc-worker", ["serve", "--no-such-flag"], cmds)
    assert ("README.md", "hdcctl", ["status", "-A"]) in mentioned_commands()


# --- (d) metric names ------------------------------------------------------------------------------------------


def exported_metric_names() -> set[str]:
    """Every series name the worker's MetricsCollector and the operator's OperatorMetrics can expose."""
    from hd_compute.monitoring.metrics import MetricsCollector
    from hdc_operator.metrics import OperatorMetrics

    worker = MetricsCollector()
    worker.state()  # the state store's families, which a worker registers when it opens its store
    names = set()
    for registry in (worker.registry, OperatorMetrics().registry):
        for family in registry.collect():
            suffixes = {
                "counter": ["_total"],
                "histogram": ["", "_bucket", "_count", "_sum"],
                "summary": ["", "_count", "_sum"],
            }.get(family.type, [""])
            names |= {family.name + s for s in suffixes}
    return names


def test_metric_names_in_monitoring_doc_exist():
    text = (REPO / "docs" / "monitoring.md").read_text()
    mentioned = {
        m for m in re.findall(r"(?<![\w.:])(hdc_[a-z0-9_]+)(?![\w.(/])", text) if not m.endswith("_")
    }  # `hdc_<operation>_operation` is a span name pattern
    mentioned.discard("hdc_operator")  # the Python package (hdc_operator.alerts, ...)
    assert len(mentioned) >= 15, mentioned
    missing = sorted(mentioned - exported_metric_names())
    assert not missing, f"docs/monitoring.md names metrics nobody exports: {missing}"


# --- the README's example -----------------------------------------------------------------------------------------


def test_readme_hdcworkload_examples_are_valid():
    from hdc_operator.spec import parse_workload

    examples = [
        doc
        for info, body in code_blocks(README.read_text())
        if info == "yaml"
        for doc in yaml.safe_load_all(body)
        if isinstance(doc, dict) and doc.get("kind") == "HDCWorkload"
    ]
    assert examples
    for doc in examples:
        parse_workload(doc)


def _architecture_layers() -> dict[str, int]:
    """Module -> layer number, from the worker's layer table of docs/architecture.md (`| 3 | `a.py`, `b/` | ...`)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    layers: dict[str, int] = {}
    for number, modules in re.findall(r"^\| (\d) \| ([^|]+) \|", text, re.M):
        for name in re.findall(r"`([a-z_]+)(?:\.py|/)`", modules):
            layers[f"hd_compute.{name}"] = int(number)
    return layers


def test_the_architecture_doc_lists_the_worker_layers_the_import_contract_enforces():
    """make lint's import contract holds the import graph to its layers; this holds docs/architecture.md to the
    contract: every module of a layer is in the doc's table, and no module sits above one of a higher layer."""
    import tomllib

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (worker,) = [c for c in contracts if c["id"] == "worker-layers"]
    doc = _architecture_layers()
    contract = [re.split(r"\s*[|:]\s*", layer) for layer in worker["layers"]]  # highest first
    missing = sorted(m for layer in contract for m in layer if m not in doc)
    assert not missing, f"docs/architecture.md's layer table lacks {missing}"
    for higher, lower in zip(contract, contract[1:], strict=False):  # consecutive pairs
        for h in higher:
            for lo in lower:
                assert doc[h] >= doc[lo], f"{h} is in a lower layer than {lo} in docs/architecture.md"
    modules = {
        p.stem if p.is_file() else p.name
        for p in (REPO / "worker" / "hd_compute").iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").exists()) and not p.name.startswith("_")
    }
    placed = {m.removeprefix("hd_compute.") for layer in contract for m in layer}
    assert modules <= placed, f"modules in no layer of the import contract: {sorted(modules - placed)}"
