"""Generates the chart's README.md from Chart.yaml and the `# --` comments of values.yaml (helm-docs style).

    python charts/hdc-operator/readme.py            # rewrites README.md
    python charts/hdc-operator/readme.py --check    # exit 1 when README.md is stale or a value is undocumented

A `# -- text` comment (continued by the `#` lines right after it) describes the key on the next line; the key's
default is read from the parsed values.yaml. A described key's children are not listed on their own. Every value
must be described, by its own comment or by an ancestor's (tests/deploy/test_chart.py checks both).
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

import yaml

CHART = pathlib.Path(__file__).resolve().parent
KEY = re.compile(r"^(\s*)([A-Za-z_][\w-]*):(.*)$")
GENERATED = "<!-- Generated from values.yaml and Chart.yaml by `python charts/hdc-operator/readme.py`; do not edit. -->"


def described_keys(text: str) -> list[tuple[tuple[str, ...], str]]:
    """(key path, description) for each key with a `# --` comment, in file order."""
    out: list[tuple[tuple[str, ...], str]] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    skip_deeper_than: int | None = None
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        if not stripped:
            pending = None
            continue
        if skip_deeper_than is not None:
            if indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        match = KEY.match(line)
        if not match:  # a list item or a continued value
            pending = None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = tuple(k for _, k in stack) + (match.group(2),)
        stack.append((indent, match.group(2)))
        if pending is not None:
            out.append((path, " ".join(p for p in pending if p)))
            skip_deeper_than = indent
        pending = None
    return out


def leaf_paths(value, path=()) -> list[tuple[str, ...]]:
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in leaf_paths(v, path + (k,))]
    return [path]


def undocumented(values: dict, described: list[tuple[tuple[str, ...], str]]) -> list[str]:
    """Values without a description of their own or of an ancestor."""
    documented = {p for p, _ in described}
    return [".".join(p) for p in leaf_paths(values) if not any(p[:n] in documented for n in range(1, len(p) + 1))]


def _type(value) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _lookup(values: dict, path: tuple[str, ...]):
    for key in path:
        values = values[key]
    return values


def render() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    rows = []
    for path, description in described_keys(text):
        default = json.dumps(_lookup(values, path), separators=(", ", ": "))
        rows.append(
            f"| `{'.'.join(path)}` | {_type(_lookup(values, path))} | `{default}` | "
            f"{description.replace('|', chr(92) + '|')} |"
        )
    return "\n".join(
        [
            GENERATED,
            f"# {chart['name']}",
            "",
            f"{chart['description']}.",
            "",
            f"Chart version {chart['version']}, operator version {chart['appVersion']}. "
            "Installing, scopes, HA, metrics,",
            "prometheus-adapter, upgrading the CRDs and uninstalling: [docs/install.md](../../docs/install.md).",
            "",
            "```sh",
            "helm install hdc-operator charts/hdc-operator --namespace hdc-system --create-namespace",
            "```",
            "",
            "The CRDs in `crds/` (HDCWorkload and kopf's peering resources) are installed on first install only.",
            "`values.schema.json` rejects unknown or malformed values with the path of the offending field.",
            "",
            "## Values",
            "",
            "| Key | Type | Default | Description |",
            "|-----|------|---------|-------------|",
            *rows,
            "",
        ]
    )


def main(argv: list[str]) -> int:
    values_text = (CHART / "values.yaml").read_text()
    missing = undocumented(yaml.safe_load(values_text), described_keys(values_text))
    if missing:
        print(f"values without a `# --` description: {', '.join(missing)}", file=sys.stderr)
        return 1
    readme = CHART / "README.md"
    if "--check" in argv:
        if not readme.exists() or readme.read_text() != render():
            print(
                f"{readme} is stale: run python {pathlib.Path(__file__).relative_to(CHART.parent.parent)}",
                file=sys.stderr,
            )
            return 1
        return 0
    readme.write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
