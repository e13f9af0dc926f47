"""A small reader of the Dockerfile instructions deploy/*.Dockerfile use, and the image they describe.

The Dockerfiles are the one description of each image: `make images` (hack/images/build_images.py) takes from them the
Debian packages of each stage, what pip installs, what the final stage copies and owns, and the image config
(ENV, USER, WORKDIR, ENTRYPOINT, CMD, EXPOSE, LABEL); tests/deploy/test_dockerfiles.py checks them against the
package with the same reader. Only the instructions and shell forms these files use are understood; anything
else fails loudly rather than being guessed.
"""

from __future__ import annotations

import json
import pathlib
import re
import shlex
from dataclasses import dataclass, field

# The environment of the Debian base image (debian:<suite>-slim sets only PATH), which `ENV PATH=...:$PATH` extends.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def read_instructions(path: pathlib.Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        keyword, _, rest = pending.strip().partition(" ")
        result.append((keyword.upper(), rest.strip()))
        pending = ""
    if pending:
        raise ValueError(f"{path.name}: the last line ends with a continuation")
    return result


def substitute(text: str, values: dict[str, str]) -> str:
    """$NAME and ${NAME} replaced from values (unknown names become empty, as Docker does)."""
    return VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), ""), text)


def read_stages(path: pathlib.Path) -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in read_instructions(path):
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = substitute(words[0], args)
            stages.append(Stage(base, words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif not stages:
            raise ValueError(f"{path.name}: {keyword} before the first FROM")
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


def final_image(stages: list[Stage]) -> list[tuple[str, str]]:
    """The instructions that make up the last stage, its ancestor stages' included (oldest first)."""
    by_name = {s.name: s for s in stages if s.name}
    chain, stage = [], stages[-1]
    while True:
        chain.insert(0, stage)
        if stage.base not in by_name:
            return [i for s in chain for i in s.instructions]
        stage = by_name[stage.base]


def stage_chain(stages: list[Stage], name: str) -> list[tuple[str, str]]:
    """The instructions of the named stage, its ancestors' included (oldest first)."""
    index = next(i for i, s in enumerate(stages) if s.name == name)
    return final_image(stages[: index + 1])


def exec_form(rest: str, what: str) -> list[str]:
    if not rest.startswith("["):
        raise ValueError(f'{what} must use the exec form ["prog", "arg"], got {rest!r}')
    argv = json.loads(rest)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"{what} must be a JSON list of strings")
    return argv


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell-form RUN, split at && || ; | (leading VAR=value assignments dropped)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = []
    current: list[str] = []
    for token in lexer:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    for command in commands:
        while command and re.fullmatch(r"[A-Za-z_]\w*=.*", command[0]):
            command.pop(0)
    if not all(commands):
        raise ValueError(f"empty command in {script!r}")
    return commands


def run_commands(instructions: list[tuple[str, str]]) -> list[list[str]]:
    """argv of every RUN among instructions, shell forms split into their simple commands."""
    commands = []
    for keyword, rest in instructions:
        if keyword == "RUN":
            commands += [exec_form(rest, "RUN")] if rest.startswith("[") else shell_commands(rest)
    return commands


def apt_packages(instructions: list[tuple[str, str]]) -> list[str]:
    """The Debian packages `apt-get install` installs among instructions, in order."""
    packages = []
    for argv in run_commands(instructions):
        if argv[:2] == ["apt-get", "install"]:
            packages += [a for a in argv[2:] if not a.startswith("-")]
    return packages


def env_of(instructions: list[tuple[str, str]], args: dict[str, str] | None = None) -> dict[str, str]:
    """The environment after instructions: BASE_ENV, then each ENV with $NAME expanded (ARGs and earlier ENVs)."""
    env = dict(BASE_ENV)
    for keyword, rest in instructions:
        if keyword == "ENV":
            values = {**(args or {}), **env}
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                env[key] = substitute(value, values)
    return env


def stage_args(instructions: list[tuple[str, str]], overrides: dict[str, str]) -> dict[str, str]:
    """The ARGs declared among instructions: their defaults, replaced by overrides (like --build-arg)."""
    args = {}
    for keyword, rest in instructions:
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = overrides.get(name, default)
    return args


def labels_of(instructions: list[tuple[str, str]], args: dict[str, str]) -> dict[str, str]:
    labels = {}
    for keyword, rest in instructions:
        if keyword == "LABEL":
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                labels[key] = substitute(value, args)
    return labels


def last(instructions: list[tuple[str, str]], keyword: str) -> str | None:
    values = [rest for k, rest in instructions if k == keyword]
    return values[-1] if values else None


def image_config(path: pathlib.Path, build_args: dict[str, str]) -> dict[str, object]:
    """The OCI image config ("config" member) that `docker build` would give the final stage of path."""
    final = final_image(read_stages(path))
    args = stage_args(final, build_args)
    config: dict[str, object] = {
        "Env": [f"{k}={v}" for k, v in env_of(final, args).items()],
        "WorkingDir": last(final, "WORKDIR") or "/",
        "Labels": labels_of(final, args),
    }
    user = last(final, "USER")
    if user:
        config["User"] = user
    for keyword, key in (("ENTRYPOINT", "Entrypoint"), ("CMD", "Cmd")):
        value = last(final, keyword)
        if value is not None:
            config[key] = exec_form(value, keyword)
    ports = [p for k, rest in final if k == "EXPOSE" for p in rest.split()]
    if ports:
        config["ExposedPorts"] = {(p if "/" in p else p + "/tcp"): {} for p in ports}
    return config
