"""README.md: the settings reference matches the model, and its command lines still parse."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from config.reference import END_MARKER, START_MARKER, readme_section, render, rows
from config.settings import load_settings
from daemon.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

QUICKSTART = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && "
    ".venv/bin/python main.py --mode watch --feed sample --duration 30",
    "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/python -m pytest",
)


def test_settings_reference_is_current() -> None:
    assert START_MARKER in README and END_MARKER in README
    assert readme_section(README) == render(), (
        "README's settings reference is out of date: "
        "run `python -m config.reference --update README.md`"
    )


def test_every_setting_is_described() -> None:
    undocumented = [row.path for row in rows() if not row.description]
    assert not undocumented, f"add a `#:` comment above these fields: {undocumented}"


def test_every_reference_path_is_a_real_setting() -> None:
    settings = load_settings(env_file=None)
    for row in rows():
        node: object = settings
        for part in row.path.split("."):
            node = node["binance_spot"] if part == "<venue>" else getattr(node, part)  # type: ignore[index]


def test_reference_env_names_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {row.env for row in rows()}
    nested = "CRYPTOPIPE_VENUES__<VENUE>__STALE_AFTER_S"
    assert {"CRYPTOPIPE_METRICS__PORT", "CRYPTOPIPE_BOOK_SOCKET__TOKEN", nested} <= names
    monkeypatch.setenv("CRYPTOPIPE_METRICS__PORT", "9200")
    monkeypatch.setenv(nested.replace("<VENUE>", "BINANCE_SPOT"), "3s")
    settings = load_settings(env_file=None)
    assert settings.metrics.port == 9200
    assert settings.venues["binance_spot"].stale_after_s == 3.0


def test_quickstart_commands_are_intact() -> None:
    for command in QUICKSTART:
        assert command in README
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ".venv/bin/python -m pytest" in ci  # the README's test command, as CI runs it


def command_lines() -> list[str]:
    """Each shell command of the README's bash blocks, continuation lines joined."""
    commands, in_bash, pending = [], False, ""
    for line in README.splitlines():
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        if not in_bash or line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\")
        if not line.rstrip().endswith("\\"):
            commands.append(pending)
            pending = ""
    return commands


def daemon_arguments(command: str) -> list[str] | None:
    """The arguments given to main.py (directly or via `docker run IMAGE`), else None."""
    words = shlex.split(command)
    for index, word in enumerate(words):
        direct = word.endswith("main.py")
        image = (word == "cryptopipe" and words[:2] == ["docker", "run"]
                 and words[index - 1] not in ("--name", "-t"))
        if direct or image:
            rest = words[index + 1:]
            for stop in ("&&", "|", ";"):
                if stop in rest:
                    rest = rest[:rest.index(stop)]
            return rest
    return None


def test_every_readme_command_line_parses() -> None:
    checked = 0
    for command in command_lines():
        arguments = daemon_arguments(command)
        if arguments is None:
            continue
        try:
            build_parser().parse_args(arguments)
        except SystemExit:
            pytest.fail(f"README command does not parse: {command}")
        checked += 1
    assert checked >= 10  # every mode has an example
