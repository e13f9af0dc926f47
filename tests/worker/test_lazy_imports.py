"""hd_compute's public names load on first use, so torch-free parts (the structlog set-up the operator shares)
import without torch, while `from hd_compute import ...` and `import *` still give every public name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_logging_module_imports_without_torch():
    assert (
        run_python("import sys, hd_compute.monitoring.logging, hd_compute.monitoring; print('torch' in sys.modules)")
        == "False"
    )


def test_every_public_name_resolves_and_star_import_works():
    import hd_compute
    import hd_compute.monitoring

    for package in (hd_compute, hd_compute.monitoring):
        for name in package.__all__:
            assert getattr(package, name) is not None, name
    names = run_python(
        "from hd_compute import *; from hd_compute.monitoring import *; "
        "print(sorted(k for k in dir() if not k.startswith('_')))"
    )
    assert "MAP" in names and "multiset" in names and "MetricsCollector" in names


def test_unknown_name_is_an_attribute_error_naming_it():
    import hd_compute

    with pytest.raises(AttributeError, match="'nope'"):
        hd_compute.nope  # noqa: B018


def test_engine_needs_only_torch_and_numpy():
    """The engine (layers 1-3) adds no third-party import beyond what torch and numpy load themselves."""
    code = (
        "import sys; import torch, numpy; before = set(sys.modules); "
        "import hd_compute, hd_compute.functional, hd_compute.structures, hd_compute.models, hd_compute.encoders; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(m for m in new if m not in sys.stdlib_module_names and m != 'hd_compute'))"
    )
    assert run_python(code) == "[]"


def test_kernels_import_nothing_from_the_layers_above():
    """Layer 1 (kernels) stands alone: the bit layout lives with it, and vsa/ imports kernels, not the reverse."""
    code = (
        "import sys; import hd_compute.kernels.dispatch, hd_compute.kernels.cpu, hd_compute.kernels.bits; "
        "print(sorted(m for m in sys.modules if m.startswith('hd_compute.')"
        " and not m.startswith('hd_compute.kernels') and m != 'hd_compute._lazy'))"
    )
    assert run_python(code) == "[]"


def test_the_engine_loads_nothing_of_the_service_or_the_operator():
    """`import hd_compute` and the engine's whole public API (the wheel's base install: torch and numpy only)
    leave the service, the monitoring/state layers, the operator and their libraries unloaded."""
    code = (
        "import json, sys; import hd_compute as hdc; from hd_compute import *; "
        "from hd_compute.structures import ItemMemory; "
        "x = hdc.random(8, 256, 'MAP'); m = ItemMemory(256); m.add(x); m.search(hdc.bundle(x[0], x[1])); "
        "print(json.dumps(sorted({m.split('.')[0] if not m.startswith('hd_compute.') else '.'.join(m.split('.')[:2]) "
        "for m in sys.modules})))"
    )
    loaded = set(json.loads(run_python(code)))
    forbidden = {
        "hd_compute.service",
        "hd_compute.client",
        "hd_compute.monitoring",
        "hd_compute.state",
        "hd_compute.bench",
        "hd_compute.health",
        "hdc_operator",
        "aiohttp",
        "kopf",
        "kubernetes",
        "prometheus_client",
        "structlog",
        "opentelemetry",
        "sqlalchemy",
        "typer",
        "yaml",
    }
    assert "hd_compute.structures" in loaded and "torch" in loaded  # the probe did load the engine
    assert loaded & forbidden == set(), sorted(loaded & forbidden)
