"""A process joins the NATS bus when given an address, and exits 2 when it cannot."""

from __future__ import annotations

import argparse
from pathlib import Path

from config.settings import Settings
from daemon.bridge.process import bridge_url, process_name
from tests.helpers.nats_server import free_port
from tests.modes.test_action import run_main


def _args(**values: object) -> argparse.Namespace:
    defaults = {"mode": "action", "feed": "live", "bus_publish": None, "strategy": None}
    return argparse.Namespace(**{**defaults, **values})


def test_a_process_joins_the_bus_only_when_given_an_address():
    settings = Settings()
    assert bridge_url(_args(), settings) is None
    assert bridge_url(_args(feed="replay:x.gz"), settings) is None
    assert bridge_url(_args(bus_publish="nats://127.0.0.1:1"), settings) == "nats://127.0.0.1:1"
    assert bridge_url(_args(feed="nats://127.0.0.1:2"), settings) == "nats://127.0.0.1:2"
    assert bridge_url(_args(mode="archive"), settings) == settings.nats.url


def test_the_process_name_says_what_runs_here_unless_set():
    args = _args(strategy="inventory-mm")
    app = argparse.Namespace(settings=Settings(), args=args, run_id="r")
    assert process_name(app).startswith("action-inventory-mm-")
    named = Settings(nats={"process_name": "desk-1"})
    assert process_name(argparse.Namespace(settings=named, args=args, run_id="r")) == "desk-1"


def test_an_unreachable_server_exits_2_with_one_line(tmp_path: Path):
    url = f"nats://127.0.0.1:{free_port()}"
    done = run_main(["--mode", "watch", "--feed", "sample", "--speed", "max", "--format", "json",
                     "--bus-publish", url, "--duration", "5"], tmp_path / "data",
                    CRYPTOPIPE_NATS__CONNECT_TIMEOUT_S="0.5",
                    CRYPTOPIPE_NATS__TOKEN="tok-secret")
    assert done.returncode == 2, done.stderr
    assert f"cryptopipe: cannot connect to NATS at {url}" in done.stderr
    assert "tok-secret" not in done.stderr + done.stdout


def test_a_process_given_an_address_connects_and_stops_cleanly(tmp_path: Path, nats_server):
    done = run_main(["--mode", "watch", "--feed", "sample", "--speed", "max", "--format", "json",
                     "--bus-publish", nats_server.url, "--duration", "3"], tmp_path / "data")
    assert done.returncode == 0, done.stderr
    assert "nats_connected" in done.stdout + done.stderr
