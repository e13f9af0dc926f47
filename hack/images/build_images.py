#!/usr/bin/env python3
"""`make images`: the worker and operator images as OCI image archives, built without a container daemon.

    hack/images/build_images.py [--only worker|operator] [--no-cache]

What each image is comes from its Dockerfile (deploy/<name>.Dockerfile, read by dockerfile.py): the Debian
packages of its base and build stages, the group/user commands of its base stage, what its build stage's
`pip install` lines install, what its final stage copies and chowns, and its config (ENV, USER, WORKDIR,
ENTRYPOINT, CMD, EXPOSE, LABEL). The names, tags and archive paths come from images.env. The build:

1. a Debian rootfs per package set (mmdebstrap, as root), cached by what determines it;
2. the dependency layer: a venv at the Dockerfile's path, built in a chroot of the build rootfs (compiler and
   python3-dev included) from wheels that `pip wheel` fetched once and that are cached by the requirement set,
   then installed with --no-index, so a rebuild installs the very same distributions;
3. the project layer: our wheel built from exactly the files the Dockerfile copies, installed with --no-deps
   under a separate root (the compiler stays in the build rootfs, out of the image);
4. three layers (Debian base, dependencies, project) packed reproducibly by oci_layout.py, a config, a manifest and
   the archive.

The chroot runs under `env -i` (the host's PIP_* and proxy variables must not leak into the image) with
SOURCE_DATE_EPOCH set, so pip's .pyc files are hash-based and the same on every build; the host's CA bundle is
copied in only for the step that downloads wheels and never reaches a layer. Layer mtimes are clamped to the
commit time of a commit that describes the layer: the Dockerfiles' last commit for the base and dependency layers
(so they stay cached across code and pyproject changes: an epoch need only be a function of the checkout, and
their cache keys already hold what they contain), HEAD's commit time for the project layer.
SOURCE_DATE_EPOCH in the environment overrides both.

Needs root (mmdebstrap's root mode and chroot). The cache lives in $HDC_IMAGES_CACHE (default
~/.cache/hd-compute/images); out/images/images.json reports each image's reference, archive, digest and size.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import hashlib
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import dockerfile  # noqa: E402
import oci_layout as oci  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
IMAGES_ENV = HERE / "images.env"
PYPROJECT_PATH = REPO / "pyproject.toml"
CACHE = pathlib.Path(os.environ.get("HDC_IMAGES_CACHE", "~/.cache/hd-compute/images")).expanduser()
IMAGE_NAMES = ("worker", "operator")

SUITE = "bookworm"
SOURCES = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
# What debian:<suite>-slim leaves out (its /etc/dpkg/dpkg.cfg.d/docker): documentation but the copyright files,
# manuals, info pages and translations.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
# Directories whose contents never belong in a layer: the runtime mounts or creates them, or they are caches
# and logs of the build.
BASE_EXCLUDED = ("dev", "proc", "sys", "run", "tmp", "var/tmp", "var/cache/apt", "var/lib/apt/lists", "var/log")
# Part of every cache key: raise it when the way layers are made changes.
LAYER_FORMAT = 1
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PIP_NO_CACHE_DIR": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_DEFAULT_TIMEOUT": "180",
}
HOST_CA_BUNDLE = pathlib.Path("/etc/ssl/certs/ca-certificates.crt")
# What an image build leaves out of the copied sources: files an editable install or Python wrote in place.
IGNORED_PATTERNS = ("__pycache__", "*.so", "*.pyc", "*.egg-info")
SOURCE_IGNORED = shutil.ignore_patterns(*IGNORED_PATTERNS)


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def die(message: str) -> None:
    print(f"images: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def key_of(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def read_env_file(path: pathlib.Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def commit_time(*paths: str) -> int:
    """SOURCE_DATE_EPOCH if set, else the commit time of the last commit touching paths (all of HEAD if none)."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    return int(git("log", "-1", "--format=%ct", "HEAD", "--", *paths) or git("log", "-1", "--format=%ct"))


def revision() -> str:
    sha = git("rev-parse", "HEAD")
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD"]).returncode != 0
    return sha + ("-dirty" if dirty else "")


# --- what the Dockerfile asks for -------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One image, as its Dockerfile describes it."""

    name: str
    dockerfile: pathlib.Path
    reference: str
    archive: pathlib.Path
    base_packages: tuple[str, ...]
    build_packages: tuple[str, ...]
    base_commands: tuple[tuple[str, ...], ...]  # groupadd/useradd of the base stage
    venv: str
    requirements: tuple[str, ...]  # what the dependency layer installs
    sources: tuple[str, ...]  # what the build stage copies into its WORKDIR (the project)
    copies: tuple[tuple[str, str], ...]  # final stage: COPY <repo path> <image path>
    owned: tuple[tuple[str, str], ...]  # final stage: chown <uid:gid> <path>


def project_requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """[project] dependencies plus each extra's, a self-reference (hd-compute-toolkit[x]) expanded."""
    project = pyproject["project"]
    requirements, todo, seen = list(project["dependencies"]), list(extras), set()
    prefix = project["name"] + "["
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in project["optional-dependencies"][extra]:
            if requirement.startswith(prefix):
                todo += requirement[len(prefix) :].partition("]")[0].split(",")
            else:
                requirements.append(requirement)
    return list(dict.fromkeys(requirements))


def install_requirements(pyproject: dict, argv: list[str]) -> list[str]:
    """The third-party requirements of one `pip install ...` of the build stage (the project itself excluded)."""
    args = argv[2:]
    if "--group" in args:
        return list(pyproject["dependency-groups"][args[args.index("--group") + 1]])
    positional = [a for a in args if not a.startswith("-")]
    if "--no-deps" in args:
        if positional != ["."]:
            die(f"unexpected install without dependencies: {argv}")
        return []
    if "--upgrade" in args:
        return positional
    if len(positional) != 1 or not positional[0].startswith("."):
        die(f"unexpected pip install: {argv}")
    extras = positional[0][1:].strip("[]")
    return project_requirements(pyproject, [e for e in extras.split(",") if e])


def read_plan(name: str) -> Plan:
    names = read_env_file(IMAGES_ENV)
    path = REPO / "deploy" / f"{name}.Dockerfile"
    stages = dockerfile.read_stages(path)
    base, build = stages[0], next(s for s in stages if s.name == "build")
    final = stages[-1].instructions
    pyproject = tomllib.loads(PYPROJECT_PATH.read_text())
    base_runs = dockerfile.run_commands(base.instructions)
    venvs = [argv[-1] for argv in base_runs if argv[1:3] == ["-m", "venv"]]
    requirements: list[str] = []
    for argv in dockerfile.run_commands(build.instructions):
        if argv[:2] == ["pip", "install"]:
            requirements += install_requirements(pyproject, argv)
    sources = []
    for keyword, rest in build.instructions:
        if keyword == "COPY" and "--from" not in rest:
            sources += shlex.split(rest)[:-1]
    copies, owned = [], []
    for keyword, rest in final:
        words = shlex.split(rest)
        if keyword == "COPY" and not words[0].startswith("--from"):
            copies += [(source, words[-1]) for source in words[:-1]]
    for argv in dockerfile.run_commands(final):
        if argv[0] == "chown":
            owned += [(argv[1], p) for p in argv[2:]]
    return Plan(
        name=name,
        dockerfile=path,
        reference=names[f"HDC_{name.upper()}_IMAGE"],
        archive=REPO / names[f"HDC_{name.upper()}_ARCHIVE"],
        base_packages=tuple(dockerfile.apt_packages(base.instructions)),
        build_packages=tuple(dockerfile.apt_packages(build.instructions)),
        base_commands=tuple(tuple(a) for a in base_runs if a[0] in ("groupadd", "useradd")),
        venv=venvs[0],
        requirements=tuple(dict.fromkeys(requirements)),
        sources=tuple(sources),
        copies=tuple(copies),
        owned=tuple(owned),
    )


# --- the build steps ------------------------------------------------------------------------------------


def run(argv: list[str], **kwargs: object) -> None:
    subprocess.run(argv, check=True, **kwargs)  # type: ignore[call-overload]


def in_chroot(root: pathlib.Path, script: str, epoch: int, extra_env: dict[str, str] | None = None) -> None:
    env = {**CHROOT_ENV, "SOURCE_DATE_EPOCH": str(epoch), **(extra_env or {})}
    argv = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), "chroot", str(root), "/bin/sh", "-ec", script]
    run(argv)


def rootfs(packages: tuple[str, ...], commands: tuple[tuple[str, ...], ...]) -> tuple[pathlib.Path, str]:
    """A Debian rootfs directory with packages installed and commands run, cached by exactly those inputs."""
    version = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True).stdout.strip()
    key = key_of("rootfs", SOURCES, sorted(packages), commands, DPKG_OPTIONS, version)
    directory, done = CACHE / "rootfs" / key, CACHE / "rootfs" / f"{key}.done"
    if done.exists():
        return directory, key
    if shutil.which("mmdebstrap") is None:
        die("mmdebstrap is missing: run hack/system-packages.sh (make tools)")
    shutil.rmtree(directory, ignore_errors=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    log(f"mmdebstrap {SUITE} with {' '.join(packages)} -> {directory}")
    hooks = [f'--customize-hook=chroot "$1" {shlex.join(c)}' for c in commands]
    run(
        [
            "mmdebstrap",
            "--mode=root",
            "--variant=apt",
            "--quiet",
            f"--include={','.join(packages)}",
            *(f"--dpkgopt={o}" for o in DPKG_OPTIONS),
            *hooks,
            SUITE,
            str(directory),
            *SOURCES,
        ]
    )
    done.touch()
    return directory, key


def work_copy(source: pathlib.Path, name: str) -> pathlib.Path:
    """A scratch copy of a cached rootfs to build in (the cache itself is never written to)."""
    work = CACHE / "work" / name
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", str(source), str(work)])
    return work


def link_tree(source: pathlib.Path, target: pathlib.Path) -> None:
    """Hard links of source's files at target (the wheels are read, never written, in the chroot)."""
    run(["cp", "-al", str(source), str(target)])


def cached_layer(key: str, make: object) -> oci.Layer:
    record = CACHE / "layers" / f"{key}.json"
    if record.exists():
        layer = oci.Layer.from_json(json.loads(record.read_text()))
        if oci.blob_path(CACHE / "blobs", layer.blob.digest).exists():
            return layer
    assert callable(make)
    layer = make()
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(layer.to_json()))
    return layer


def wheels(build_root: pathlib.Path, build_key: str, requirements: list[str], epoch: int) -> pathlib.Path:
    """A directory of wheels for requirements (`pip wheel` in the build rootfs: downloads, builds sdists),
    cached by the build rootfs and the requirement set; later installs use it with --no-index."""
    directory = CACHE / "wheels" / key_of("wheels", build_key, sorted(requirements))
    if directory.is_dir():
        return directory
    work = work_copy(build_root, "wheels")
    shutil.copy(HOST_CA_BUNDLE, work / "build-ca.crt")
    (work / "etc/resolv.conf").unlink(missing_ok=True)
    shutil.copy("/etc/resolv.conf", work / "etc/resolv.conf")
    (work / "requirements.txt").write_text("\n".join(requirements) + "\n")
    log(f"pip wheel: {len(requirements)} requirements (downloads)")
    in_chroot(
        work,
        "python3 -m venv /opt/wheel-build "
        "&& /opt/wheel-build/bin/pip wheel -q --wheel-dir /wheels -r /requirements.txt",
        epoch,
        {"PIP_CERT": "/build-ca.crt"},
    )
    directory.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work / "wheels", directory)
    shutil.rmtree(work)
    return directory


def dependency_layer(plan: Plan, build_root: pathlib.Path, build_key: str, epoch: int) -> oci.Layer:
    pyproject = tomllib.loads(PYPROJECT_PATH.read_text())
    build_requires = list(pyproject["build-system"]["requires"])
    wheel_dir = wheels(build_root, build_key, [*plan.requirements, *build_requires], epoch)
    key = key_of("deps", LAYER_FORMAT, build_key, wheel_dir.name, plan.requirements, plan.venv, epoch)

    def make() -> oci.Layer:
        work = work_copy(build_root, f"{plan.name}-deps")
        link_tree(wheel_dir, work / "wheels")
        (work / "requirements.txt").write_text("\n".join(plan.requirements) + "\n")
        log(f"{plan.name}: pip install {len(plan.requirements)} requirements into {plan.venv}")
        in_chroot(
            work,
            f"python3 -m venv {plan.venv} && {plan.venv}/bin/pip install -q --no-index --find-links /wheels "
            "-r /requirements.txt",
            epoch,
        )
        log(f"{plan.name}: packing the dependency layer")
        layer = oci.write_layer(work, [plan.venv.lstrip("/")], CACHE / "blobs", epoch)
        shutil.rmtree(work)
        return layer

    return cached_layer(key, make)


def source_digest(paths: list[str]) -> str:
    """The content of the files a COPY of paths takes (what an image build sees), as one hash."""
    digest = hashlib.sha256()
    for top in paths:
        root = REPO / top
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            relative = path.relative_to(REPO)
            if any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in IGNORED_PATTERNS):
                continue
            digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def copy_sources(paths: list[str], target: pathlib.Path) -> None:
    for source in paths:
        destination = target / source.rstrip("/")
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, destination, ignore=SOURCE_IGNORED)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / source, destination)


def project_layer(
    plan: Plan, build_root: pathlib.Path, build_key: str, wheel_dir: pathlib.Path, epoch: int
) -> oci.Layer:
    inputs = [*plan.sources, *(source for source, _ in plan.copies)]
    key = key_of("project", LAYER_FORMAT, build_key, source_digest(inputs), plan.copies, plan.owned, plan.venv, epoch)

    def make() -> oci.Layer:
        work = work_copy(build_root, f"{plan.name}-project")
        link_tree(wheel_dir, work / "wheels")
        copy_sources(list(plan.sources), work / "src")
        log(f"{plan.name}: building the project wheel")
        venv = plan.venv
        in_chroot(
            work,
            f"python3 -m venv {venv} && cd /src "
            f"&& {venv}/bin/pip wheel -q --no-deps --no-index --find-links /wheels --wheel-dir /dist . "
            f"&& {venv}/bin/pip install -q --no-deps --no-index --root /layer /dist/*.whl",
            epoch,
        )
        layer_root = work / "layer"
        for source, destination in plan.copies:
            copy_sources([source], work / "copied")
            shutil.copytree(work / "copied" / source.rstrip("/"), layer_root / destination.strip("/"))
        tops = [destination.strip("/") for _, destination in plan.copies]
        for owner, path in plan.owned:
            directory = layer_root / path.strip("/")
            directory.mkdir(parents=True, exist_ok=True)
            uid, _, gid = owner.partition(":")
            os.chown(directory, int(uid), int(gid or uid))
            tops.append(path.strip("/"))
        tops.append(venv.strip("/"))
        layer = oci.write_layer(layer_root, tops, CACHE / "blobs", epoch)
        shutil.rmtree(work)
        return layer

    return cached_layer(key, make)


def base_layer(base_root: pathlib.Path, base_key: str, epoch: int) -> oci.Layer:
    key = key_of("base", LAYER_FORMAT, base_key, epoch)
    return cached_layer(
        key, lambda: oci.write_layer(base_root, sorted(os.listdir(base_root)), CACHE / "blobs", epoch, BASE_EXCLUDED)
    )


def archive_digest(path: pathlib.Path) -> str | None:
    """The manifest digest an existing archive holds (None if there is none)."""
    import tarfile

    try:
        with tarfile.open(path) as tar:
            member = tar.extractfile("index.json")
            assert member is not None
            return str(json.load(member)["manifests"][0]["digest"])
    except (OSError, KeyError, tarfile.TarError):
        return None


def build(plan: Plan) -> dict[str, object]:
    deps_epoch = commit_time("deploy/worker.Dockerfile", "deploy/operator.Dockerfile")
    project_epoch = commit_time()
    started = time.monotonic()
    base_root, base_key = rootfs(plan.base_packages, plan.base_commands)
    build_root, build_key = rootfs(plan.base_packages + plan.build_packages, plan.base_commands)
    base = base_layer(base_root, base_key, deps_epoch)
    deps = dependency_layer(plan, build_root, build_key, deps_epoch)
    pyproject = tomllib.loads(PYPROJECT_PATH.read_text())
    wheel_dir = wheels(build_root, build_key, [*plan.requirements, *pyproject["build-system"]["requires"]], deps_epoch)
    project = project_layer(plan, build_root, build_key, wheel_dir, project_epoch)
    layers = [base, deps, project]
    build_args = {"VERSION": pyproject["project"]["version"], "REVISION": revision()}
    config = dockerfile.image_config(plan.dockerfile, build_args)
    created = datetime.datetime.fromtimestamp(project_epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    architecture = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    history = [
        f"debian {SUITE} (mmdebstrap --variant=apt): {' '.join(plan.base_packages)}; {plan.base_commands}",
        f"python3 -m venv {plan.venv} && pip install {' '.join(plan.requirements)}",
        f"pip install --no-deps . ({plan.dockerfile.name}); COPY {plan.copies}; chown {plan.owned}",
    ]
    config_json, manifest_json = oci.image_documents(config, layers, history, created, architecture)
    digest = "sha256:" + hashlib.sha256(manifest_json).hexdigest()
    if archive_digest(plan.archive) != digest:
        log(f"{plan.name}: writing {plan.archive}")
        blobs = CACHE / "blobs"
        oci.write_archive(plan.archive, plan.reference, config_json, manifest_json, layers, blobs, project_epoch)
    return {
        "image": plan.reference,
        "archive": str(plan.archive.relative_to(REPO) if plan.archive.is_relative_to(REPO) else plan.archive),
        "digest": digest,
        "archive_bytes": plan.archive.stat().st_size,
        "compressed_bytes": sum(layer.blob.size for layer in layers),
        "uncompressed_bytes": sum(layer.uncompressed_size for layer in layers),
        "layers": [layer.to_json() for layer in layers],
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=IMAGE_NAMES, action="append", help="build only this image (repeatable)")
    parser.add_argument(
        "--output-dir", type=pathlib.Path, help="write the archives and images.json here instead of images.env's"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        die("needs root (mmdebstrap --mode=root and chroot); run it as root or in a root container")
    names = read_env_file(IMAGES_ENV)
    output = (args.output_dir or REPO / names["HDC_IMAGES_DIR"]).resolve()
    report_path = output / "images.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    for name in args.only or IMAGE_NAMES:
        plan = read_plan(name)
        report[name] = build(dataclasses.replace(plan, archive=output / plan.archive.name))
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    for name, entry in sorted(report.items()):
        print(
            f"{name:9} {entry['image']}@{entry['digest']}  archive {entry['archive_bytes'] / 2**20:.0f} MiB, "
            f"unpacked {entry['uncompressed_bytes'] / 2**20:.0f} MiB  ({entry['archive']})"
        )


if __name__ == "__main__":
    main()
