"""The engine as a user installs it: the source distribution, the wheel built from it, and that wheel alone in a
clean virtual environment.

The sdist is built (`python -m build --sdist`, no network: this environment's setuptools) from the repository's
files, and the wheel from the unpacked sdist, so a file missing from MANIFEST.in fails here. The wheel must hold
the compiled kernels and declare only torch (a range, not a pin) and numpy outside its extras. It is then
installed with --no-deps into a fresh venv that sees nothing of this one except torch, numpy and what they
require (linked in through a .pth file, no download), and the engine's public API runs there: the smoke test of
[tool.cibuildwheel] (random, bind, bundle, similarity, ItemMemory search), with nothing of the service, the
operator or their third-party requirements importable or imported.
"""

from __future__ import annotations

import email.parser
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import paths
import pytest
from packaging.requirements import Requirement
from test_dockerfiles import linked_site_packages

REPO = paths.REPO
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
ENGINE_REQUIREMENTS = {"torch", "numpy"}
# Third-party modules of the worker and operator extras: none may be importable in the clean venv, so importing
# hd_compute there proves the engine does without them.
EXTRA_MODULES = ("aiohttp", "kopf", "kubernetes", "prometheus_client", "structlog", "typer", "yaml", "sqlalchemy")

pytestmark = pytest.mark.slow


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{argv}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """(sdist, wheel built from that sdist), from a copy of the checkout's files (nothing is written into it)."""
    work = tmp_path_factory.mktemp("dist")
    listed = run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard", "-z"]).stdout
    source = work / "source"
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(work / "sdist"), str(source)])
    sdist = next((work / "sdist").glob("*.tar.gz"))
    wheel_args = ["--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(work / "wheel"), str(sdist)]
    run([sys.executable, "-m", "pip", "wheel", *wheel_args])
    return sdist, next((work / "wheel").glob("*.whl"))


def test_the_sdist_holds_the_sources_and_nothing_built(built):
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("pyproject.toml", "setup.py", "README.md", "worker/hd_compute/kernels/cpu_kernels.c"):
        assert needed in names, f"the sdist lacks {needed}"
    assert "operator/hdc_operator/main.py" in names and "worker/hd_compute/functional.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyc"))], "built files in the sdist"


def wheel_metadata(wheel: pathlib.Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(archive.read(name).decode(), headersonly=True)


def test_the_wheel_requires_only_torch_and_numpy_outside_its_extras(built):
    _, wheel = built
    metadata = wheel_metadata(wheel)
    requirements = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    base = [r for r in requirements if not (r.marker and "extra" in str(r.marker))]
    assert {r.name.lower() for r in base} == ENGINE_REQUIREMENTS, [str(r) for r in base]
    torch = next(r for r in base if r.name == "torch")
    assert not any(s.operator == "==" for s in torch.specifier), f"torch is pinned: {torch}"
    assert torch.specifier.contains("2.13.0") and not torch.specifier.contains("3.0.0"), torch
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"worker", "operator"} <= extras, extras
    worker = {r.name.lower() for r in requirements if r.marker and r.marker.evaluate({"extra": "worker"})}
    assert {"aiohttp", "prometheus-client"} <= worker and "kopf" not in worker


def test_the_wheel_holds_the_compiled_kernels(built):
    _, wheel = built
    assert "-linux_" in wheel.name or "manylinux" in wheel.name, f"not a platform wheel: {wheel.name}"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert any(n.startswith("hd_compute/kernels/_cpu") and n.endswith(".so") for n in names), names[:20]
    assert "hd_compute/functional.py" in names and "hdc_operator/main.py" in names


@pytest.fixture(scope="module")
def clean_venv(built, tmp_path_factory) -> pathlib.Path:
    """A venv (no system site-packages) with the wheel installed alone, torch and numpy linked from this one."""
    _, wheel = built
    root = tmp_path_factory.mktemp("venv")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = pathlib.Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    )
    linked = linked_site_packages(sorted(ENGINE_REQUIREMENTS), root / "engine-requirements")
    (site / "engine-requirements.pth").write_text(str(linked) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)])
    return python


def test_the_engine_runs_from_the_wheel_in_a_clean_venv(clean_venv):
    command = PYPROJECT["tool"]["cibuildwheel"]["test-command"]
    env = {"PATH": f"{clean_venv.parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run(command, shell=True, cwd=clean_venv.parent, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.strip() == f"hd_compute {PYPROJECT['project']['version']} ok"


def test_the_clean_venv_has_the_wheel_and_not_this_checkout(clean_venv):
    """The engine there is the installed wheel's, and the extras' modules are absent: nothing leaks in."""
    probe = (
        "import importlib.util, json, sys, hd_compute, hd_compute.kernels._cpu as cpu; "
        f"print(json.dumps([hd_compute.__file__, cpu.__file__, [m for m in {EXTRA_MODULES!r} "
        "if importlib.util.find_spec(m)], sorted(m for m in sys.modules if m.startswith(('hd_compute.service', "
        "'hdc_operator', 'aiohttp')))]))"
    )
    result = run([str(clean_venv), "-c", probe], cwd=clean_venv.parent, env={"PATH": "/usr/bin:/bin"})
    engine, kernels, importable, imported = json.loads(result.stdout)
    venv = str(clean_venv.parent.parent)
    assert engine.startswith(venv) and kernels.startswith(venv), (engine, kernels)
    assert importable == [], f"the extras' modules leak into the clean venv: {importable}"
    assert imported == []
    service = subprocess.run(
        [str(clean_venv), "-c", "import hd_compute.service.worker"], capture_output=True, text=True, timeout=120
    )
    assert service.returncode != 0 and "ModuleNotFoundError" in service.stderr, "the service imported without extras"
