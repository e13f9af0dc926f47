"""The container images cannot be built here, so their Dockerfiles are checked against the package instead.

Every deploy/*.Dockerfile: each command its RUN, ENTRYPOINT/CMD and HEALTHCHECK lines run exists (our console
scripts are declared in pyproject.toml and answer `--help` with the same arguments; `python -m` modules of ours
can be found; other programs come from the base image or from a declared dependency), the image runs as a
numeric non-root USER, ENTRYPOINT/CMD use the exec form (so signals reach the process), what it COPYs exists,
and no secret is baked in; both build on the same plain Debian base stage (`make images` builds it once). The
worker's image additionally: HEALTHCHECK
`python -m hd_compute.health`, writes only under /tmp and HDC_STATE_DIR, and `pip install .` of exactly the
files it copies builds a wheel holding the service.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile

import paths
import pytest

REPO = paths.REPO
sys.path.insert(0, str(REPO / "hack" / "images"))
from dockerfile import Stage, env_of, exec_form, final_image, read_stages, shell_commands  # noqa: E402

DOCKERFILES = sorted((REPO / "deploy").glob("*.Dockerfile"))
WORKER = REPO / "deploy" / "worker.Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]  # console script -> "module:function"
OUR_PACKAGES = {"hd_compute": REPO / "worker", "hdc_operator": REPO / "operator"}
PACKAGE_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in OUR_PACKAGES.values())}

# Programs the base images provide. Anything else must be one of our console scripts or belong to a
# dependency declared in pyproject.toml (program -> distribution).
SYSTEM_COMMANDS = {"apt-get", "rm", "mkdir", "chown", "chmod", "groupadd", "useradd", "python", "python3", "pip"}
DEPENDENCY_COMMANDS = {"kopf": "kopf"}
PYTHON_TOOL_MODULES = {"venv", "pip", "compileall"}
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|CREDENTIAL|PRIVATE_?KEY", re.I)
WRITABLE_VARIABLES = (
    "HOME",
    "XDG_CACHE_HOME",
    "TRITON_CACHE_DIR",
    "TORCHINDUCTOR_CACHE_DIR",
    "HDC_LOG_FILE",
    "HDC_BENCHMARK_DATABASE_URL",
)


def commands_of(stages: list[Stage]) -> list[tuple[str, list[str]]]:
    """(where, argv) of every command the image runs: at build time, as its process, as its health check."""
    commands = []
    for stage in stages:
        for keyword, rest in stage.instructions:
            if keyword == "RUN":
                argvs = [exec_form(rest, "RUN")] if rest.startswith("[") else shell_commands(rest)
                commands += [("RUN", argv) for argv in argvs]
    final = final_image(stages)
    entrypoint = [exec_form(r, "ENTRYPOINT") for k, r in final if k == "ENTRYPOINT"][-1:] or [[]]
    cmd = [exec_form(r, "CMD") for k, r in final if k == "CMD"][-1:] or [[]]
    assert entrypoint[0] + cmd[0], "the image runs nothing: no ENTRYPOINT or CMD"
    commands.append(("ENTRYPOINT+CMD", entrypoint[0] + cmd[0]))
    for keyword, rest in final:
        if keyword == "HEALTHCHECK" and rest.strip().upper() != "NONE":
            _, _, command = rest.partition(" CMD ")
            commands.append(("HEALTHCHECK", exec_form(command.strip(), "HEALTHCHECK CMD")))
    return commands


# --- what exists in the package ---------------------------------------------------------------------------


def declared_distributions() -> set[str]:
    requirements = list(PYPROJECT["project"].get("dependencies", []))
    for extra in PYPROJECT["project"].get("optional-dependencies", {}).values():
        requirements += extra
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def module_exists(module: str) -> bool:
    top = module.split(".")[0]
    if top in OUR_PACKAGES:
        relative = pathlib.Path(*module.split("."))
        root = OUR_PACKAGES[top]
        return (root / relative).with_suffix(".py").is_file() or (root / relative / "__init__.py").is_file()
    return module in PYTHON_TOOL_MODULES and importlib.util.find_spec(module) is not None


def check_command(where: str, argv: list[str]) -> list[list[str]]:
    """Asserts that argv's program (and the modules it names) exist; returns our console-script calls."""
    program = argv[0]
    modules = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"]
    for module in modules:
        assert module_exists(module), f"{where}: {' '.join(argv)!r} runs module {module}, which does not exist"
    if program in SCRIPTS:
        target = SCRIPTS[program].split(":")[0]
        assert module_exists(target), f"{where}: console script {program} points at missing module {target}"
        return [argv]
    if program in DEPENDENCY_COMMANDS:
        assert DEPENDENCY_COMMANDS[program] in declared_distributions(), (
            f"{where}: {program} is run but {DEPENDENCY_COMMANDS[program]} is not a dependency in pyproject.toml"
        )
        return []
    assert program in SYSTEM_COMMANDS, (
        f"{where}: {program!r} is neither a console script in pyproject [project.scripts] nor a known base-image "
        f"program ({', '.join(sorted(SYSTEM_COMMANDS))})"
    )
    if program in ("python", "python3"):
        assert modules, f"{where}: {' '.join(argv)!r}: run Python code through `-m module` so it can be checked"
    return []


def run_script_help(argv: list[str]) -> None:
    """Runs our console script with the Dockerfile's arguments plus --help: the (sub)commands must exist."""
    module, function = SCRIPTS[argv[0]].split(":")
    args = argv[1:] if "--help" in argv else [*argv[1:], "--help"]
    code = f"import sys; from {module} import {function}; sys.argv[0] = {argv[0]!r}; sys.exit({function}())"
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=PACKAGE_ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"`{' '.join(argv)}` fails:\n{result.stdout}\n{result.stderr[-3000:]}"
    assert "Usage" in result.stdout, f"`{' '.join([*argv[:1], *args])}` printed no usage:\n{result.stdout}"


# --- every Dockerfile ---------------------------------------------------------------------------------------------


def test_the_worker_dockerfile_exists():
    assert WORKER in DOCKERFILES


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_command_exists_in_the_package(path):
    script_calls = []
    for where, argv in commands_of(read_stages(path)):
        script_calls += check_command(where, argv)
    for argv in {tuple(a) for a in script_calls}:
        run_script_help(list(argv))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_numeric_non_root_user(path):
    final = final_image(read_stages(path))
    users = [(i, rest) for i, (keyword, rest) in enumerate(final) if keyword == "USER"]
    assert users, f"{path.name}: no USER; the image would run as root"
    index, user = users[-1]
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    assert match, f"{path.name}: USER {user!r} must be numeric (uid or uid:gid) so runAsNonRoot can verify it"
    assert int(match.group(1)) != 0 and match.group(2) != "0", f"{path.name}: USER {user} is root"
    starts = [i for i, (keyword, _) in enumerate(final) if keyword in ("ENTRYPOINT", "CMD")]
    assert all(i > index for i in starts), f"{path.name}: USER must come before ENTRYPOINT/CMD"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copies_what_exists_and_bakes_in_no_secrets(path):
    text = path.read_text()
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"{path.name}: a URL with a password"
    for stage in read_stages(path):
        for keyword, rest in stage.instructions:
            if keyword in ("ENV", "ARG"):
                for word in shlex.split(rest):
                    assert not SECRET_NAME.search(word.partition("=")[0]), (
                        f"{path.name}: {keyword} {word} looks like a secret"
                    )
            if keyword in ("COPY", "ADD"):
                words = shlex.split(rest)
                if any(w.startswith("--from") for w in words):
                    continue
                sources = [w for w in words if not w.startswith("--")][:-1]
                for source in sources:
                    assert not re.match(r"https?://", source), f"{path.name}: {keyword} from the network"
                    assert (REPO / source).exists(), f"{path.name}: {keyword} {source}: not in the repository"


def test_both_images_share_one_plain_debian_base_stage():
    """The same base stage (Debian slim, python3, the user 10001:10001): `make images` builds that layer once, and
    a GPU needs nothing from the base (torch's wheels carry CUDA; the node's NVIDIA toolkit adds the driver)."""
    bases = [read_stages(path)[0] for path in DOCKERFILES]
    assert all(re.fullmatch(r"debian:[a-z]+-slim", b.base) for b in bases), [b.base for b in bases]
    assert all(b.base == bases[0].base and b.instructions == bases[0].instructions for b in bases)
    users = [argv for k, r in bases[0].instructions if k == "RUN" for argv in shell_commands(r) if "useradd" in argv]
    assert users and ["--uid", "10001"] == users[0][1:3] and ["--gid", "10001"] == users[0][3:5], users


# --- the worker image ------------------------------------------------------------------------------------------


def test_worker_image_shape():
    stages = read_stages(WORKER)
    final = final_image(stages)
    assert final_image(stages)[0] == stages[0].instructions[0]  # the final image is built on that base
    health = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert health, "the worker image has no HEALTHCHECK"
    assert exec_form(health[-1].partition(" CMD ")[2].strip(), "HEALTHCHECK") == ["python", "-m", "hd_compute.health"]
    assert commands_of(stages)[-2] == ("ENTRYPOINT+CMD", ["hdc-worker", "serve"])
    # and the health check runs here: JSON, exit 0 (healthy/degraded) or 1 (unhealthy)
    result = subprocess.run(
        [sys.executable, "-m", "hd_compute.health"], env=PACKAGE_ENV, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip().startswith("{"), (
        f"python -m hd_compute.health printed no JSON:\n{result.stderr[-3000:]}"
    )
    report = json.loads(result.stdout)
    assert result.returncode == (1 if report["status"] == "unhealthy" else 0), result.stdout + result.stderr


def test_worker_writes_only_under_tmp_and_the_state_dir():
    final = final_image(read_stages(WORKER))
    env = env_of(final)
    state = env.get("HDC_STATE_DIR", "")
    assert state.startswith("/") and state != "/", "HDC_STATE_DIR must be set to an absolute directory"
    writable = ("/tmp", state)

    def inside(path: str) -> bool:
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in writable)

    for name in WRITABLE_VARIABLES:
        value = env.get(name)
        if value is None:
            continue
        path = value.removeprefix("sqlite:///") if name == "HDC_BENCHMARK_DATABASE_URL" else value
        if path.startswith("/"):
            assert inside(path), f"{name}={value} is outside /tmp and {state}"
    assert "HOME" in env and inside(env["HOME"]), "HOME must be under /tmp (caches land there)"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "Python would try to write .pyc files next to the code"
    uid = [rest for keyword, rest in final if keyword == "USER"][-1].split(":")[0]
    chowned = [
        argv
        for keyword, rest in final
        if keyword == "RUN"
        for argv in shell_commands(rest)
        if argv[0] == "chown" and state in argv
    ]
    assert chowned and chowned[0][1].split(":")[0] == uid, f"{state} must belong to the image's user {uid}"


def test_worker_package_builds_from_the_copied_files(tmp_path):
    """`pip install .` in the image sees only what it COPYs: build the wheel from exactly those files."""
    build = read_stages(WORKER)[1]
    context = tmp_path / "context"
    context.mkdir()
    for keyword, rest in build.instructions:
        if keyword == "COPY" and "--from" not in rest:
            for source in shlex.split(rest)[:-1]:
                target = context / source
                if (REPO / source).is_dir():
                    shutil.copytree(
                        REPO / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info")
                    )
                else:
                    shutil.copy2(REPO / source, target)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for module in ("hd_compute/health.py", "hd_compute/service/cli.py", "hd_compute/monitoring/benchmark.py"):
        assert module in names, f"the wheel lacks {module}"
    assert any(n.startswith("hd_compute/kernels/_cpu") for n in names), "the CPU kernels were not compiled"
    assert "hdc-worker = hd_compute.service.cli:main" in entry_points


# --- the operator image ----------------------------------------------------------------------------------------

OPERATOR = REPO / "deploy" / "operator.Dockerfile"
OPERATOR_GROUP: list[str] = PYPROJECT.get("dependency-groups", {}).get("operator", [])


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_operator_image_shape():
    stages = read_stages(OPERATOR)
    final = final_image(stages)
    assert final[0] == stages[0].instructions[0], "the final image must be built on the Debian base stage"
    assert commands_of(stages)[-1] == ("ENTRYPOINT+CMD", ["hdc-operator"])
    # The package goes in without its dependencies (torch), the runtime requirements from pyproject's group.
    build_runs = [
        argv for s in stages if s.name == "build" for k, r in s.instructions if k == "RUN" for argv in shell_commands(r)
    ]
    installs = [argv for argv in build_runs if argv[:2] == ["pip", "install"]]
    assert ["pip", "install", "--group", "operator"] in installs, installs
    assert ["pip", "install", "--no-deps", "."] in installs, installs
    assert all(
        a == ["pip", "install", "--group", "operator"] or "--no-deps" in a or "--upgrade" in a for a in installs
    ), f"an install that could pull in other dependencies: {installs}"
    upgrade = next(a for a in installs if "--upgrade" in a)
    assert upgrade[-1] in ("pip>=25.1", '"pip>=25.1"'), "pip reads --group from 25.1 on"


def test_operator_image_ships_the_crd_where_hdc_crd_path_points():
    final = final_image(read_stages(OPERATOR))
    env = env_of(final)
    crd_path = env.get("HDC_CRD_PATH", "")
    copies = [shlex.split(r) for k, r in final if k == "COPY" and "--from" not in r]
    crd_copy = [words for words in copies if words[0].rstrip("/") == "crds"]
    assert crd_copy, "the image must COPY crds/"
    destination = crd_copy[0][-1].rstrip("/")
    assert crd_path.startswith(destination + "/"), f"HDC_CRD_PATH={crd_path} is not under {destination}"
    source = REPO / "crds" / crd_path.removeprefix(destination + "/")
    assert source.is_file(), f"HDC_CRD_PATH names {source.relative_to(REPO)}, which does not exist"
    # and hdc_operator.spec really reads it from there: a copy elsewhere, found only through HDC_CRD_PATH
    probe = (
        "import sys; from hdc_operator.spec import load_crd, CRD_PATH; "
        "print(CRD_PATH); print(load_crd()['metadata']['name'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**PACKAGE_ENV, "HDC_CRD_PATH": str(source)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(source), "hdcworkloads.hdcompute.io"]


def test_operator_image_suits_a_read_only_root_filesystem():
    final = final_image(read_stages(OPERATOR))
    env = env_of(final)
    assert env.get("HOME", "").startswith("/tmp"), "HOME must be under /tmp (the chart mounts an emptyDir there)"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "Python would try to write .pyc files next to the code"
    assert [r for k, r in final if k == "WORKDIR"][-1] == "/tmp"


def test_operator_requirements_are_declared_dependencies_in_one_place():
    """The image's requirements live in pyproject's [dependency-groups] operator, the same list as the `operator`
    extra, spelled the same (so the two cannot drift apart), and torch is not among them."""
    assert OPERATOR_GROUP, "pyproject.toml has no [dependency-groups] operator"
    assert sorted(OPERATOR_GROUP) == sorted(PYPROJECT["project"]["optional-dependencies"]["operator"])
    assert "torch" not in {_requirement_name(r) for r in OPERATOR_GROUP}


def linked_site_packages(requirements: list[str], target: pathlib.Path) -> pathlib.Path:
    """A site-packages holding only requirements and everything they require (markers evaluated, no extras),
    linked from this environment's (tests/deploy/test_wheel.py gives a clean venv torch and numpy this way)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    target.mkdir()
    seen, todo = set(), list(requirements)
    while todo:
        requirement = Requirement(todo.pop())
        name = requirement.name.lower().replace("_", "-")
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        distribution = md.distribution(requirement.name)
        todo += distribution.requires or []
        root = pathlib.Path(distribution.locate_file(""))
        for top in {pathlib.PurePath(f).parts[0] for f in distribution.files or ()}:
            if top not in ("..", "__pycache__") and (root / top).exists() and not (target / top).exists():
                (target / top).symlink_to(root / top)
    return target


IMPORT_PROBE = r"""
import json, sys
from hdc_operator import main, handlers, reconcile, apply, status, metrics, scaling, metrics_source  # noqa: F401
from hd_compute.monitoring.logging import configure_logging  # what main.run_operator imports
import kopf, structlog  # noqa: F401
from hdc_operator.builders import Capabilities, build_children
from hdc_operator.spec import parse_workload

configure_logging("INFO", "json")
workload = parse_workload({"apiVersion": "hdcompute.io/v1alpha1", "kind": "HDCWorkload",
                           "metadata": {"name": "w", "namespace": "ns", "uid": "u"},
                           "spec": {"autoscaling": {"mode": "hpa"},
                                    "state": {"backend": "postgres", "postgres": {"cluster": {}}}}})
children = build_children(workload, Capabilities.all())
print(json.dumps({"children": sorted(c["kind"] for c in children), "torch": "torch" in sys.modules}))
"""


def run_in_image_environment(code: str, site: pathlib.Path) -> subprocess.CompletedProcess:
    """`python -S` (no site-packages of this environment) with only the image's distributions and our code."""
    env = {**PACKAGE_ENV, "PYTHONPATH": os.pathsep.join([str(p) for p in OUR_PACKAGES.values()] + [str(site)])}
    return subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def image_site(tmp_path_factory):
    """A site-packages holding only what the operator image installs: the operator group's closure."""
    return linked_site_packages(OPERATOR_GROUP, tmp_path_factory.mktemp("image") / "site-packages")


def test_the_operator_runs_with_only_its_image_requirements_and_never_imports_torch(image_site):
    """Everything the operator runs (its handlers, reconciler, builders with alerts and dashboards, the logging
    set-up it shares with the worker) works with only the distributions of [dependency-groups] operator, as in
    the image. Guarded optional imports (opentelemetry in the logging module) fall back; anything else fails."""
    assert not (image_site / "torch").exists()
    result = run_in_image_environment(IMPORT_PROBE, image_site)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch"] is False, "the operator imported torch"
    assert {"Deployment", "Service", "PrometheusRule", "ServiceMonitor", "ConfigMap"} <= set(report["children"])
    help_text = run_in_image_environment(
        "import sys; from hdc_operator.main import cli; sys.argv = ['hdc-operator', '--help']; cli()", image_site
    )
    assert help_text.returncode == 0 and "Usage" in help_text.stdout, help_text.stderr[-3000:]


def test_the_operator_leaves_torch_unimported_even_where_it_is_installed():
    """In this environment torch is installed: the operator's modules, its builders and the logging set-up still
    do not load it (a guarded `import torch` would pass the image check above but fail here)."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], env=PACKAGE_ENV, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["torch"] is False, "the operator imported torch"
    assert importlib.util.find_spec("torch") is not None  # the check means something only where torch exists


def test_the_image_environment_would_catch_torch(image_site):
    """The check is real: the worker's kernels (which need torch) cannot be imported there."""
    result = run_in_image_environment("import hd_compute.functional", image_site)
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr, result.stderr[-2000:]
