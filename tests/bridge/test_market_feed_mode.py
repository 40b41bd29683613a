"""`--mode feed` as a process: publishes with the credentials from settings (never shown),
refuses what it cannot use with exit 2."""

from __future__ import annotations

from pathlib import Path

from config.settings import NatsSettings
from daemon.bridge.connection import connect
from tests.helpers.nats_server import NatsServer
from tests.modes.test_action import run_main

FEED = ["--mode", "feed", "--feed", "sample", "--speed", "max"]


async def test_a_feed_process_publishes_with_the_token_from_settings_never_shown(tmp_path: Path):
    with NatsServer(tmp_path / "nats", token="feed-s3cret") as server:
        done = run_main([*FEED, "--bus-publish", server.url], tmp_path / "data",
                        CRYPTOPIPE_NATS__TOKEN="feed-s3cret")
        assert done.returncode == 0, done.stderr[-3000:]
        client = await connect(NatsSettings(url=server.url, token="feed-s3cret"), name="t")
        try:
            kept = (await client.jetstream().stream_info("MD")).state.messages
        finally:
            await client.close()
        refused = run_main([*FEED, "--bus-publish", server.url], tmp_path / "data2",
                           CRYPTOPIPE_NATS__TOKEN="wrong-s3cret",
                           CRYPTOPIPE_NATS__CONNECT_TIMEOUT_S="1")
    assert kept > 1000  # the sample's quotes and trades, kept for replay
    assert "feed-s3cret" not in done.stdout + done.stderr
    assert refused.returncode == 2
    assert f"cryptopipe: cannot connect to NATS at {server.url}" in refused.stderr
    assert "wrong-s3cret" not in refused.stdout + refused.stderr


def test_a_feed_process_does_not_take_its_data_from_nats(tmp_path: Path, nats_server):
    done = run_main(["--mode", "feed", "--feed", nats_server.url], tmp_path / "data")
    assert done.returncode == 2
    assert "--mode feed publishes venues or recordings" in done.stderr
