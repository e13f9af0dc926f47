"""The image archives of `make images` (hack/images/build_images.py), checked as a container runtime would see them.

For each image: the OCI layout is whole (index -> manifest -> config -> layers, every digest and size checked,
each layer's uncompressed digest against the config's diff_ids); the config says what the Dockerfile says
(ENTRYPOINT, CMD, ENV, USER, WORKDIR, EXPOSE, labels with this commit); the installed distributions are exactly
the closure of what pyproject.toml declares for that Dockerfile's `pip install` (no more, none missing, each
version inside the declared range); no file is setuid/setgid and every file belongs to root or 10001; no
compiler or build-time CA bundle is left. The unpacked layers then run as a container would run them: in a
chroot as 10001:10001 with the root filesystem read-only, /tmp a tmpfs and every shell replaced by an empty
file: `import hd_compute` and the entrypoint's `--help` work. Finally a rebuild of the operator image from the
same Debian rootfs and wheels, every layer made anew, gives the same digest.

Run by `make test-images` (which runs `make images` first), not by `make test`; if the archives are missing or
stale, the module fixture runs the build itself (a warm cache makes that a few seconds; a cold one downloads
Debian packages and wheels for many minutes). Building and chrooting need root: without it, the module is
skipped with that reason.
"""

from __future__ import annotations

import email.parser
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field

import paths
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = paths.REPO
IMAGES = REPO / "hack" / "images"
sys.path.insert(0, str(IMAGES))
import build_images  # noqa: E402
from dockerfile import env_of, exec_form, final_image, read_stages  # noqa: E402

NAMES = ("worker", "operator")
ENV = build_images.read_env_file(IMAGES / "images.env")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
USER = "10001:10001"
# The venv's own installers (python3 -m venv puts them there, the operator's Dockerfile upgrades pip).
VENV_TOOLS = {"pip", "setuptools"}
BUILD_TIMEOUT = 3600

pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(os.geteuid() != 0, reason="building and chrooting into the images needs root"),
    pytest.mark.slow,
    pytest.mark.timeout(BUILD_TIMEOUT),
]


def run_build(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, str(IMAGES / "build_images.py"), *args], capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]


@pytest.fixture(scope="module")
def report() -> dict:
    """images.json after `make images` (run here: a no-op when the archives are current)."""
    run_build()
    return json.loads((REPO / ENV["HDC_IMAGES_DIR"] / "images.json").read_text())


# --- reading an archive ---------------------------------------------------------------------------------------


class HashingReader:
    def __init__(self, source) -> None:
        self.source = source
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.sha256.update(data)
        return data


@dataclass
class Unpacked:
    """One archive, checked and unpacked: its documents, every layer entry's metadata, the merged rootfs."""

    reference: str
    manifest_digest: str
    config: dict
    root: pathlib.Path
    entries: dict[str, tarfile.TarInfo] = field(default_factory=dict)


def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def blob(layout: pathlib.Path, descriptor: dict) -> pathlib.Path:
    path = layout / "blobs" / descriptor["digest"].replace(":", "/")
    assert path.is_file(), f"blob {descriptor['digest']} is missing"
    assert path.stat().st_size == descriptor["size"], f"blob {descriptor['digest']}: size differs from its descriptor"
    assert sha256_file(path) == descriptor["digest"], f"blob {descriptor['digest']}: content differs from its digest"
    return path


def unpack(archive: pathlib.Path, target: pathlib.Path) -> Unpacked:
    layout, root = target / "layout", target / "rootfs"
    layout.mkdir()
    root.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="data")
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2 and len(index["manifests"]) == 1
    descriptor = index["manifests"][0]
    assert descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    manifest = json.loads(blob(layout, descriptor).read_text())
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    config = json.loads(blob(layout, manifest["config"]).read_text())
    assert config["os"] == "linux" and config["rootfs"]["type"] == "layers"
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"]) == len(config["history"])
    unpacked = Unpacked(descriptor["annotations"]["io.containerd.image.name"], descriptor["digest"], config, root)
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        with gzip.open(blob(layout, layer)) as stream:
            reader = HashingReader(stream)
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for member in tar:
                    assert ".wh." not in member.name, f"unexpected whiteout {member.name}"
                    unpacked.entries[member.name] = member
                    tar.extract(member, root, numeric_owner=True, filter="fully_trusted")
            while reader.read(1 << 20):
                pass
        assert "sha256:" + reader.sha256.hexdigest() == diff_id, f"layer {layer['digest']}: diff_id differs"
    shutil.rmtree(layout)
    return unpacked


@pytest.fixture(scope="module", params=NAMES)
def image(request, report, tmp_path_factory) -> Iterator[tuple[str, Unpacked]]:
    name = request.param
    target = tmp_path_factory.mktemp(name)
    unpacked = unpack(REPO / ENV[f"HDC_{name.upper()}_ARCHIVE"], target)
    yield name, unpacked
    shutil.rmtree(target)


# --- names, layout and config ------------------------------------------------------------------------------


def test_names_are_the_ones_the_chart_and_the_crd_use():
    """images.env is the one place for the names: the chart's operator image, the CRD's default worker image
    and the package version (the tag) agree with it."""
    import yaml

    version = PYPROJECT["project"]["version"]
    values = yaml.safe_load((REPO / "charts/hdc-operator/values.yaml").read_text())
    chart = yaml.safe_load((REPO / "charts/hdc-operator/Chart.yaml").read_text())
    operator_tag = values["image"]["tag"] or chart["appVersion"]
    assert f"{values['image']['repository']}:{operator_tag}" == ENV["HDC_OPERATOR_IMAGE"]
    crd = (REPO / "crds/hdcworkload.yaml").read_text()
    assert f"default: {ENV['HDC_WORKER_IMAGE']}" in crd
    for name in NAMES:
        assert ENV[f"HDC_{name.upper()}_IMAGE"].endswith(":" + version)
        assert ENV[f"HDC_{name.upper()}_ARCHIVE"].startswith(ENV["HDC_IMAGES_DIR"] + "/")


def test_report_names_each_archive_with_its_digest(report):
    for name in NAMES:
        entry = report[name]
        archive = REPO / ENV[f"HDC_{name.upper()}_ARCHIVE"]
        assert entry["image"] == ENV[f"HDC_{name.upper()}_IMAGE"] and entry["archive"] == str(archive.relative_to(REPO))
        assert entry["archive_bytes"] == archive.stat().st_size
        assert build_images.archive_digest(archive) == entry["digest"]


def test_config_says_what_the_dockerfile_says(image):
    name, unpacked = image
    final = final_image(read_stages(REPO / "deploy" / f"{name}.Dockerfile"))
    config = unpacked.config["config"]
    assert unpacked.reference == ENV[f"HDC_{name.upper()}_IMAGE"]
    assert config["User"] == USER
    assert config["Entrypoint"] == exec_form([r for k, r in final if k == "ENTRYPOINT"][-1], "ENTRYPOINT")
    cmd = [exec_form(r, "CMD") for k, r in final if k == "CMD"]
    assert config.get("Cmd") == (cmd[-1] if cmd else None)
    assert config["WorkingDir"] == [r for k, r in final if k == "WORKDIR"][-1]
    ports = {p if "/" in p else f"{p}/tcp" for k, r in final if k == "EXPOSE" for p in r.split()}
    assert set(config["ExposedPorts"]) == ports
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env == env_of(final, {})
    assert env["PATH"].startswith("/opt/hdc/bin:")
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == PYPROJECT["project"]["version"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert labels["org.opencontainers.image.revision"].removesuffix("-dirty") == head.strip()
    assert labels["org.opencontainers.image.source"].startswith("https://")


# --- files ------------------------------------------------------------------------------------------------


def test_no_setuid_and_only_root_or_the_image_user_own_files(image):
    _, unpacked = image
    setuid = [n for n, m in unpacked.entries.items() if m.isfile() and m.mode & 0o6000]
    assert not setuid, f"setuid/setgid files: {setuid[:10]}"
    owners = {(m.uid, m.gid) for m in unpacked.entries.values()}
    foreign = {n: (m.uid, m.gid) for n, m in unpacked.entries.items() if m.uid not in (0, 10001)}
    assert not foreign, f"files owned by other users: {list(foreign.items())[:10]}"
    assert all(gid in (0, 10001) or uid == 0 for uid, gid in owners)
    passwd = (unpacked.root / "etc/passwd").read_text()
    group = (unpacked.root / "etc/group").read_text()
    assert any(line.split(":")[2:4] == ["10001", "10001"] for line in passwd.splitlines())
    assert any(line.split(":")[2] == "10001" for line in group.splitlines())


def test_the_build_stage_left_nothing_behind(image):
    """No compiler, no Python headers, no build-time CA bundle, no apt lists, no sources of the build."""
    _, unpacked = image
    for path in ("usr/bin/gcc", "usr/include/python3.11/Python.h", "build-ca.crt", "src", "wheels", "dist"):
        assert not (unpacked.root / path).exists(), f"{path} is in the image"
    assert not any((unpacked.root / "var/lib/apt/lists").iterdir())
    # object files of a compile in the image (the wheels' own .c sources, ours and numpy's, are package data)
    assert not list((unpacked.root / "opt/hdc").rglob("*.o"))


def test_the_worker_state_directory_belongs_to_the_image_user(image):
    name, unpacked = image
    if name != "worker":
        assert "var/lib/hdc" not in unpacked.entries
        return
    entry = unpacked.entries["var/lib/hdc"]
    assert entry.isdir() and (entry.uid, entry.gid) == (10001, 10001)


def installed(root: pathlib.Path) -> dict[str, tuple[Version, list[str]]]:
    """name -> (version, Requires-Dist) of every distribution in the image's venv."""
    found = {}
    for metadata in root.glob("opt/hdc/lib/python3*/site-packages/*.dist-info/METADATA"):
        message = email.parser.Parser().parsestr(metadata.read_text(errors="replace"), headersonly=True)
        found[canonicalize_name(message["Name"])] = (
            Version(message["Version"]),
            message.get_all("Requires-Dist") or [],
        )
    return found


def closure(roots: list[str], dists: dict[str, tuple[Version, list[str]]], python: str) -> set[str]:
    """The distributions pip installs for roots: each requirement whose marker holds (with the extras asked
    for), followed through the installed distributions' own requirements. A missing one fails."""
    environment = {**default_environment(), "python_version": python, "python_full_version": python + ".0"}
    seen: set[tuple[str, str]] = set()
    todo = [(Requirement(r), "") for r in roots]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({**environment, "extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in dists, f"{requirement} is required but not installed"
        version, requires = dists[name]
        assert requirement.specifier.contains(version, prereleases=True), f"{name} {version} is not {requirement}"
        for wanted in ("", *sorted(requirement.extras)):
            if (name, wanted) not in seen:
                seen.add((name, wanted))
                todo += [(Requirement(r), wanted) for r in requires]
    return {name for name, _ in seen}


def test_installed_distributions_are_what_pyproject_declares(image):
    """What `pip install` in the Dockerfile installs: the worker `.[worker]` (the engine's requirements and the
    worker extra), the operator its dependency group; both then the package itself without dependencies."""
    name, unpacked = image
    project = PYPROJECT["project"]
    roots = (
        project["dependencies"] + project["optional-dependencies"]["worker"]
        if name == "worker"
        else PYPROJECT["dependency-groups"]["operator"]
    )
    dists = installed(unpacked.root)
    python = (unpacked.root / "opt/hdc/pyvenv.cfg").read_text().split("version = ")[1].split()[0]
    expected = closure(roots, dists, ".".join(python.split(".")[:2]))
    # pip and setuptools are the venv's own (setuptools is also a requirement of torch): not judged here
    assert set(dists) - VENV_TOOLS == (expected | {canonicalize_name(project["name"])}) - VENV_TOOLS
    assert dists[canonicalize_name(project["name"])][0] == Version(project["version"])
    assert ("torch" in dists) == (name == "worker")


# --- running it ---------------------------------------------------------------------------------------------

SHELLS = ("usr/bin/dash", "usr/bin/bash")


def in_container(unpacked: Unpacked, argv: list[str]) -> subprocess.CompletedProcess:
    """argv in the unpacked rootfs as a container runtime would run it: its own mount namespace, the rootfs
    bound read-only, /proc, /dev and a tmpfs /tmp, the image's Env and WorkingDir, uid:gid 10001:10001, and
    every shell of the image replaced by an empty file (nothing may need one at run time)."""
    root = str(unpacked.root)
    config = unpacked.config["config"]
    empty = unpacked.root.parent / "empty-shell"
    empty.touch()
    hide_shells = " && ".join(f"mount --bind {empty} {root}/{shell}" for shell in SHELLS)
    setup = (
        f"mount --bind {root} {root} && mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev "
        f"&& mount -t tmpfs tmpfs {root}/tmp && {hide_shells} && mount -o remount,bind,ro {root} "
        '&& exec env -i "$@"'
    )
    env_args = [*config["Env"], "chroot", f"--userspec={config['User']}", root]
    workdir = ["/usr/bin/env", "--chdir", config["WorkingDir"]]
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", setup, "sh", *env_args, *workdir, *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )


ENGINE_PROBE = """
import os, sys
import hd_compute as hdc
assert os.getuid() == 10001 and os.getgid() == 10001
hv = hdc.random(4, 1000, "MAP")
print(float(hdc.cosine_similarity(hdc.bind(hv[0], hv[1]), hv).abs().max()) < 0.2, "aiohttp" in sys.modules)
try:
    open("/opt/hdc/probe", "w")
except OSError as exc:
    print(type(exc).__name__)
"""


def test_runs_as_the_image_user_on_a_read_only_root_without_a_shell(image):
    name, unpacked = image
    entrypoint = unpacked.config["config"]["Entrypoint"]
    help_text = in_container(unpacked, [*entrypoint, "--help"])
    assert help_text.returncode == 0 and "Usage" in help_text.stdout, help_text.stdout + help_text.stderr[-3000:]
    shell = in_container(unpacked, ["/bin/sh", "-c", "true"])
    assert shell.returncode != 0, "a shell ran: the check that none is needed means nothing"
    if name == "worker":
        probe = in_container(unpacked, ["python", "-c", ENGINE_PROBE])
        assert probe.returncode == 0, probe.stderr[-3000:]
        assert probe.stdout.split() == ["True", "False", "OSError"], probe.stdout
        health = in_container(unpacked, ["python", "-m", "hd_compute.health"])
        report = json.loads(health.stdout)
        assert health.returncode == (1 if report["status"] == "unhealthy" else 0), health.stdout + health.stderr
    else:
        probe = in_container(unpacked, ["python", "-c", "import sys, hdc_operator.main; print('torch' in sys.modules)"])
        assert probe.returncode == 0 and probe.stdout.strip() == "False", probe.stderr[-3000:]
        crd = in_container(unpacked, ["python", "-c", "from hdc_operator.spec import load_crd; load_crd()"])
        assert crd.returncode == 0, crd.stderr[-3000:]


# --- reproducible --------------------------------------------------------------------------------------------


def test_rebuilding_gives_the_same_digest(report, tmp_path):
    """The operator image again, from the same Debian rootfs and wheels, every layer packed anew in an empty
    layer cache: the same manifest digest (same bytes in every layer, config and manifest)."""
    cache = pathlib.Path(os.environ.get("HDC_IMAGES_CACHE", "~/.cache/hd-compute/images")).expanduser()
    fresh = tmp_path / "cache"
    fresh.mkdir()
    for part in ("rootfs", "wheels"):
        subprocess.run(["cp", "-al", str(cache / part), str(fresh / part)], check=True)
    result = subprocess.run(
        [sys.executable, str(IMAGES / "build_images.py"), "--only", "operator", "--output-dir", str(tmp_path / "out")],
        env={**os.environ, "HDC_IMAGES_CACHE": str(fresh)},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert len(list((fresh / "layers").glob("*.json"))) == 3, "every layer is made anew"
    rebuilt = json.loads((tmp_path / "out" / "images.json").read_text())["operator"]
    assert rebuilt["layers"] == report["operator"]["layers"]
    assert rebuilt["digest"] == report["operator"]["digest"]
    shutil.rmtree(fresh)
