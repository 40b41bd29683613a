"""The test helper's nats-server survives a port taken between choosing it and binding it
(parallel test workers pick free ports at the same time)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import nats_server
from tests.helpers.nats_server import NatsServer


def test_a_port_taken_before_the_bind_is_replaced_by_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports: Iterator[int] = iter([taken])
        real_free_port = nats_server.free_port
        monkeypatch.setattr(nats_server, "free_port", lambda: next(ports, None) or real_free_port())
        with NatsServer(tmp_path / "nats") as server:
            assert server.port != taken
            with socket.create_connection(("127.0.0.1", server.port), timeout=5):
                pass  # it listens where it says
        assert server.pid is None  # stopped
