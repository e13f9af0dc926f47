"""hdcctl: render and validate HDCWorkloads offline, with the operator's own parser and builders.

    hdcctl render -f workload.yaml [--capabilities all|none|servicemonitor,prometheusrule] [-n NS] [--uid UID]
    hdcctl validate -f workload.yaml          # the API server's checks, each error naming its field
    hdcctl docs crd                           # docs/crd-reference.md, from the CRD schema

`-f -` reads standard input; a file may hold several YAML documents. More subcommands are added by modules in
hdc_operator/commands/ (each with a `register(app)` function), so this file needs no edit for them.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Any, Iterable, Optional

import typer
import yaml

from hdc_operator.builders import Capabilities, build_children
from hdc_operator.spec import InvalidSpec, parse_workload

app = typer.Typer(
    name="hdcctl",
    help="HD-Compute-Toolkit: render, validate and inspect HDCWorkloads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
docs_app = typer.Typer(help="Generated documentation.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")

CAPABILITY_NAMES = {"servicemonitor": "service_monitor", "prometheusrule": "prometheus_rule"}


class CliError(Exception):
    """A user error: printed as `hdcctl: error: ...`, exit status 1 (2 for usage errors)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def parse_capabilities(text: str) -> Capabilities:
    """ "all", "none", or a comma-separated list of servicemonitor, prometheusrule."""
    value = text.strip().lower()
    if value == "all":
        return Capabilities.all()
    if value in ("none", ""):
        return Capabilities.none()
    chosen = {part.strip() for part in value.split(",") if part.strip()}
    unknown = chosen - set(CAPABILITY_NAMES)
    if unknown:
        raise CliError(
            f"--capabilities: unknown {', '.join(sorted(unknown))}; expected all, none or a "
            f"comma-separated list of {', '.join(CAPABILITY_NAMES)}",
            code=2,
        )
    return Capabilities(**{field: name in chosen for name, field in CAPABILITY_NAMES.items()})


def read_documents(path: str) -> list[tuple[str, Any]]:
    """(label, document) for every non-empty YAML document of the file ("-": standard input)."""
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    source = "<stdin>" if path == "-" else path
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise CliError(f"{source}: not valid YAML: {exc}") from None
    if not docs:
        raise CliError(f"{source}: no YAML documents")
    out = []
    for i, doc in enumerate(docs, 1):
        name = (
            doc.get("metadata", {}).get("name")
            if isinstance(doc, dict) and isinstance(doc.get("metadata"), dict)
            else None
        )
        out.append((f"{source}: document {i}" + (f" ({name})" if name else ""), doc))
    return out


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None  # PromQL and dashboard JSON stay readable
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml_stream(objects: Iterable[dict]) -> str:
    return "".join("---\n" + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120) for obj in objects)


def render_documents(
    path: str, capabilities: Capabilities, namespace: Optional[str] = None, uid: Optional[str] = None
) -> list[dict]:
    """Every child of every HDCWorkload in the file, as the operator would apply them; InvalidSpec naming the
    document and the field for the first bad one."""
    out: list[dict] = []
    for label, doc in read_documents(path):
        if uid and isinstance(doc, dict):
            doc = {**doc, "metadata": {**(doc.get("metadata") or {}), "uid": uid}}
        try:
            workload = parse_workload(doc, namespace=namespace)
        except InvalidSpec as exc:
            raise CliError(f"{label}: {exc}") from None
        out += build_children(workload, capabilities)
    return out


def _fail(exc: CliError) -> None:
    typer.echo(f"hdcctl: error: {exc}", err=True)
    raise typer.Exit(exc.code)


@app.command()
def render(
    file: str = typer.Option(..., "-f", "--filename", help="HDCWorkload YAML file; - for standard input."),
    capabilities: str = typer.Option(
        "all",
        "--capabilities",
        "-c",
        help="Optional CRDs the cluster has: all, none, or a comma-separated list of servicemonitor, prometheusrule.",
    ),
    namespace: Optional[str] = typer.Option(
        None, "-n", "--namespace", help="Namespace for workloads whose metadata has none (default: default)."
    ),
    uid: Optional[str] = typer.Option(
        None,
        "--uid",
        help="The HDCWorkload's uid, for ownerReferences (the operator knows it; a local file usually does not).",
    ),
) -> None:
    """Print the children the operator would apply for each HDCWorkload, as a YAML stream."""
    try:
        caps = parse_capabilities(capabilities)
        children = render_documents(file, caps, namespace, uid)
    except CliError as exc:
        _fail(exc)
    sys.stdout.write(dump_yaml_stream(children))
    if children and not any("ownerReferences" in c["metadata"] for c in children):
        typer.echo(
            "hdcctl: note: no metadata.uid, so no ownerReferences (the operator sets them; --uid to add)", err=True
        )


@app.command()
def validate(
    file: str = typer.Option(..., "-f", "--filename", help="HDCWorkload YAML file; - for standard input."),
) -> None:
    """Check each HDCWorkload as the API server would (schema and CEL rules); list every error by field."""
    try:
        documents = read_documents(file)
    except CliError as exc:
        _fail(exc)
    bad = 0
    for label, doc in documents:
        try:
            workload = parse_workload(doc)
        except InvalidSpec as exc:
            bad += 1
            for field, message in exc.errors:
                text = message if message.startswith(field) else f"{field}: {message}"
                typer.echo(f"{label}: {text}", err=True)
            continue
        typer.echo(f"{label}: valid HDCWorkload {workload.namespace}/{workload.name}")
    if bad:
        raise typer.Exit(1)


@docs_app.command("crd")
def docs_crd() -> None:
    """Print docs/crd-reference.md, generated from crds/hdcworkload.yaml."""
    from hdc_operator.crd_docs import render_crd_reference

    sys.stdout.write(render_crd_reference())


def load_command_modules(target: typer.Typer = app) -> list[str]:
    """Imports every hdc_operator.commands module with a `register(app)` and calls it; their names."""
    from hdc_operator import commands

    loaded = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(target)
            loaded.append(info.name)
    return loaded


load_command_modules()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
