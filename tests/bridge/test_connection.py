"""Reaching the NATS server: credentials from settings, clear refusals, no secret leaks."""

from __future__ import annotations

import asyncio
import re

import pytest
from pydantic import ValidationError

from config.settings import NatsSettings
from daemon.bridge.connection import NatsUnavailable, connect, flush_all, redact_url
from tests.helpers.nats_server import NatsServer, free_port


async def test_a_publish_reaches_a_subscriber_through_the_real_server(nats_server):
    client = await connect(NatsSettings(url=nats_server.url), name="test")
    try:
        inbox = await client.subscribe("md.>")
        await client.publish("md.binance_spot.BTCUSDT.quote", b"x")
        message = await inbox.next_msg(timeout=5)
        assert (message.subject, message.data) == ("md.binance_spot.BTCUSDT.quote", b"x")
    finally:
        await client.close()


async def test_a_connection_comes_back_when_the_server_does(nats_server):
    client = await connect(NatsSettings(url=nats_server.url, reconnect_wait_s=0.1), name="t")
    try:
        nats_server.stop()
        await asyncio.sleep(0.3)
        nats_server.start()
        inbox = await client.subscribe("hb.>")
        await client.publish("hb.t", b"alive")
        assert (await inbox.next_msg(timeout=10)).data == b"alive"
    finally:
        await client.close()


async def test_the_token_from_settings_is_presented_and_never_shown(tmp_path, capsys):
    with NatsServer(tmp_path / "nats", token="s3cret-token") as server:
        client = await connect(NatsSettings(url=server.url, token="s3cret-token"), name="t")
        await client.close()
        with pytest.raises(NatsUnavailable) as refused:
            await connect(NatsSettings(url=server.url, token="wrong-token"), name="t")
    assert "cannot connect to NATS at " + server.url in str(refused.value)
    assert "wrong-token" not in str(refused.value)
    assert "wrong-token" not in capsys.readouterr().out


async def test_user_and_password_from_settings(tmp_path):
    with NatsServer(tmp_path / "nats", user="desk", password="pa55") as server:
        client = await connect(NatsSettings(url=server.url, user="desk", password="pa55"),
                               name="t")
        await client.close()
        with pytest.raises(NatsUnavailable):
            await connect(NatsSettings(url=server.url), name="t")


async def test_no_server_is_a_clear_error_not_a_hang():
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(NatsUnavailable, match=f"cannot connect to NATS at {url}"):
        await asyncio.wait_for(connect(NatsSettings(url=url, connect_timeout_s=0.5), name="t"),
                               timeout=30)


def test_settings_refuse_half_credentials_and_odd_urls():
    with pytest.raises(ValidationError, match="user and password go together"):
        NatsSettings(user="desk")
    with pytest.raises(ValidationError, match="not both"):
        NatsSettings(token="t", user="u", password="p")
    with pytest.raises(ValidationError, match="nats://HOST:PORT"):
        NatsSettings(url="http://127.0.0.1:4222")


def test_credentials_in_a_url_are_not_logged():
    assert redact_url("nats://desk:pa55@127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def test_an_outage_logs_its_first_error_then_one_line_per_interval(capsys):
    from daemon.bridge.connection import ERROR_LOG_EVERY_S, _ErrorLog

    def logged() -> str:  # an earlier test may have sent the log to stdout or stderr
        captured = capsys.readouterr()
        return captured.out + captured.err

    now = [0.0]
    errors = _ErrorLog("nats://127.0.0.1:1", clock=lambda: now[0])
    for _ in range(50):  # five seconds of attempts every 0.1 s
        errors.seen(ConnectionRefusedError("refused"))
        now[0] += 0.1
    assert logged().count("nats_error") == 1
    now[0] += ERROR_LOG_EVERY_S
    errors.seen(ConnectionRefusedError("refused"))
    text = logged()
    assert text.count("nats_error") == 1 and re.search(r"repeated\W+49\b", text), text
    errors.reset()  # reconnected: the next outage's first error is logged at once
    errors.seen(ConnectionRefusedError("refused"))
    assert logged().count("nats_error") == 1


async def test_flush_all_returns_once_the_server_has_a_subscription_just_made(tmp_path):
    # nats-py's flush() writes its PING ahead of a SUB still queued for its flusher task:
    # the server's trace showed PING, PONG, a PUB, then the SUB (the message lost); with a
    # bare flush() here the SUB came after the last PONG in 2 of 3 runs. The late joiner
    # (daemon/bridge/market_in.py) needs its subscriptions live before it reads the
    # stream's latest quotes.
    with NatsServer(tmp_path / "nats", extra_args=("-DV",)) as server:
        client = await connect(NatsSettings(url=server.url), name="c")
        try:
            await client.subscribe("probe.subject")
            await flush_all(client)
            trace = server.log_file.read_text()
        finally:
            await client.close()
    assert trace.index("<<- [SUB probe.subject") < trace.rindex("->> [PONG]")
