"""Shared fixtures: the recorded market data in ../shared/data (real exchange frames)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

#: ../shared/data relative to the repository root.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data (may be absent: tests needing it skip, see `shared_file`)."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_file(shared_data: Path) -> Callable[[str], Path]:
    """`shared_file("name.gz")` -> its path, or skips the test when it is not present."""

    def lookup(name: str) -> Path:
        path = shared_data / name
        if not path.is_file():
            pytest.skip(f"../shared/data not present: {path} missing")
        return path

    return lookup


@pytest.fixture
def nats_server(tmp_path: Path):
    """A real nats-server with JetStream on 127.0.0.1 (tests/helpers/nats_server.py),
    stopped by its PID after the test."""
    from tests.helpers.nats_server import NatsServer

    with NatsServer(tmp_path / "nats") as server:
        yield server
