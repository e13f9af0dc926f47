"""docs/crd-reference.md, generated from crds/hdcworkload.yaml (`hdcctl docs crd` or `python -m hdc_operator.crd_docs`).

A test regenerates it and fails when the committed file differs, so the reference never drifts from the schema.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping

from hdc_operator.spec import load_crd

HEADER = """<!-- Generated from crds/hdcworkload.yaml by `hdcctl docs crd > docs/crd-reference.md`; do not edit. -->
# HDCWorkload reference

"""


def _type(schema: Mapping[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        kind = "integer or string"
    elif schema.get("type") == "array":
        kind = f"array of {_type(schema.get('items', {}))}"
    elif schema.get("type") == "object" and isinstance(schema.get("additionalProperties"), dict):
        kind = f"map of {_type(schema['additionalProperties'])}"
    else:
        kind = schema.get("type", "any")
    if schema.get("nullable"):
        kind += ", nullable"
    return kind


def _constraints(schema: Mapping[str, Any]) -> str:
    parts = []
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    if "minimum" in schema:
        parts.append(f"{'>' if schema.get('exclusiveMinimum') else '≥'} {schema['minimum']}")
    if "maximum" in schema:
        parts.append(f"{'<' if schema.get('exclusiveMaximum') else '≤'} {schema['maximum']}")
    if "minLength" in schema:
        parts.append(f"length ≥ {schema['minLength']}")
    if "maxLength" in schema:
        parts.append(f"length ≤ {schema['maxLength']}")
    if "maxItems" in schema:
        parts.append(f"at most {schema['maxItems']} items")
    if "pattern" in schema:
        parts.append(f"matches `{schema['pattern']}`")
    if schema.get("x-kubernetes-list-type") == "map":
        parts.append("unique " + ", ".join(schema["x-kubernetes-list-map-keys"]))
    if "required" in schema:
        parts.append("requires " + ", ".join(f"`{k}`" for k in schema["required"]))
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        parts.append("passed through unchecked")
    return "; ".join(parts)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(schema: Mapping[str, Any]) -> str:
    if "default" not in schema:
        return ""
    value = schema["default"]
    if isinstance(value, (dict, list)) and value:
        return ""  # objects default to {} and are filled by their fields' defaults
    return f"`{json.dumps(value)}`"


def _rows(schema: Mapping[str, Any], path: str) -> list[str]:
    rows = [
        f"| `{path}` | {_type(schema)} | {_default(schema)} | {_cell(_constraints(schema))} | "
        f"{_cell(schema.get('description', ''))} |"
    ]
    for key, sub in schema.get("properties", {}).items():
        rows += _rows(sub, f"{path}.{key}")
    items = schema.get("items")
    if isinstance(items, Mapping) and "properties" in items:
        for key, sub in items["properties"].items():
            rows += _rows(sub, f"{path}[].{key}")
    return rows


def _rules(schema: Mapping[str, Any], path: str) -> list[str]:
    out = [
        f"- `{path or 'metadata.name'}`: {_cell(r['message'])}  \n  CEL: `{r['rule']}`"
        for r in schema.get("x-kubernetes-validations", ())
    ]
    for key, sub in schema.get("properties", {}).items():
        out += _rules(sub, f"{path}.{key}" if path else key)
    if isinstance(schema.get("items"), Mapping):
        out += _rules(schema["items"], f"{path}[]")
    return out


def render_crd_reference(crd: Mapping[str, Any] | None = None) -> str:
    crd = load_crd() if crd is None else crd
    spec = crd["spec"]
    (version,) = [v for v in spec["versions"] if v.get("storage")]
    root = version["schema"]["openAPIV3Schema"]
    names = spec["names"]
    scale = version["subresources"].get("scale", {})
    lines = [
        HEADER.rstrip("\n"),
        "",
        _cell(root.get("description", "")),
        "",
        f"- API: `{spec['group']}/{version['name']}`, kind `{names['kind']}`, plural `{names['plural']}`, "
        f"short name{'s' if len(names.get('shortNames', [])) > 1 else ''} "
        + ", ".join(f"`{n}`" for n in names.get("shortNames", []))
        + f"; {spec['scope'].lower()}.",
        "- Subresources: "
        + ", ".join(f"`{k}`" for k in version["subresources"])
        + (
            f" (scale: spec `{scale['specReplicasPath']}`, status `{scale['statusReplicasPath']}`, selector "
            f"`{scale['labelSelectorPath']}`: `kubectl scale hdcw/NAME --replicas=N` and an HPA can target it)"
            if scale
            else ""
        )
        + ".",
        "- Every spec field has a default; `spec: {}` is a complete workload. Unknown fields are rejected.",
        "",
        "## Printer columns (`kubectl get hdcw`)",
        "",
        "| Column | Type | From |",
        "|---|---|---|",
    ]
    lines += [f"| {c['name']} | {c['type']} | `{c['jsonPath']}` |" for c in version["additionalPrinterColumns"]]
    lines += ["", "## Spec", "", "| Field | Type | Default | Validation | Description |", "|---|---|---|---|---|"]
    for key, sub in root["properties"]["spec"]["properties"].items():
        lines += _rows(sub, f"spec.{key}")
    lines += [
        "",
        "## Cross-field and format rules (CEL)",
        "",
        "The API server rejects a workload that breaks one of these with the message shown; "
        "`hdcctl validate` and `hdcctl render` apply the same rules (hdc_operator.spec.CEL_MIRRORS).",
        "",
    ]
    lines += _rules(root, "")
    lines += ["", "## Status (written by the operator)", "", "| Field | Type | Description |", "|---|---|---|"]
    for key, sub in root["properties"]["status"]["properties"].items():
        lines.append(f"| `status.{key}` | {_type(sub)} | {_cell(sub.get('description', ''))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.stdout.write(render_crd_reference())


if __name__ == "__main__":
    main()
