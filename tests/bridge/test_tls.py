"""TLS to the NATS server against a real nats-server with throwaway certificates
(tests/helpers/tls_certs.py): a verified server, refusals that name the address, mutual
TLS, and never a token in clear when TLS is configured."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from config.settings import NatsSettings
from daemon.bridge.connection import NatsUnavailable, connect
from tests.helpers.nats_server import NatsServer
from tests.helpers.tls_certs import TlsFiles, make_tls_files


@pytest.fixture
def certs(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "certs")


@pytest.fixture
def other_certs(tmp_path: Path) -> TlsFiles:
    """A second CA and its certificates: trusted by nobody in these tests."""
    return make_tls_files(tmp_path / "certs", name="other")


@pytest.fixture
def tls_server(tmp_path: Path, certs: TlsFiles):
    with NatsServer(tmp_path / "nats", tls=certs) as server:
        yield server


def tls_url(server: NatsServer) -> str:
    return server.url.replace("nats://", "tls://")


async def round_trip(settings: NatsSettings) -> bytes:
    client = await connect(settings, name="tls-test")
    try:
        inbox = await client.subscribe("md.>")
        await client.publish("md.binance_spot.BTCUSDT.quote", b"over tls")
        return (await inbox.next_msg(timeout=5)).data
    finally:
        await client.close()


async def refusal(settings: NatsSettings, url: str | None = None) -> str:
    with pytest.raises(NatsUnavailable) as refused:
        await asyncio.wait_for(connect(settings, url=url, name="tls-test"), timeout=30)
    reason = str(refused.value)
    assert "\n" not in reason
    return reason


@pytest.mark.parametrize("scheme", ["nats", "tls"])
async def test_with_the_ca_file_a_publish_reaches_a_subscriber_over_tls(tls_server, certs,
                                                                        scheme):
    # The server requires TLS: nats:// upgrades when its INFO asks for it, tls:// the same.
    url = tls_server.url if scheme == "nats" else tls_url(tls_server)
    assert await round_trip(NatsSettings(url=url, tls_ca_file=certs.ca_file)) == b"over tls"


async def test_a_tls_connection_comes_back_when_the_server_does(tls_server, certs):
    settings = NatsSettings(url=tls_server.url, tls_ca_file=certs.ca_file,
                            reconnect_wait_s=0.1)
    client = await connect(settings, name="tls-test")
    try:
        tls_server.stop()
        await asyncio.sleep(0.3)
        tls_server.start()
        inbox = await client.subscribe("hb.>")
        await client.publish("hb.tls-test", b"alive")
        assert (await inbox.next_msg(timeout=10)).data == b"alive"
    finally:
        await client.close()


@pytest.mark.parametrize("scheme", ["nats", "tls"])
async def test_without_the_ca_the_server_certificate_is_refused(tls_server, scheme):
    # No CA file: the system's CAs, which never signed a throwaway CA's certificate.
    url = tls_server.url if scheme == "nats" else tls_url(tls_server)
    reason = await refusal(NatsSettings(url=url))
    assert reason.startswith(f"cannot connect to NATS at {url}: ")
    assert "certificate verify failed" in reason


async def test_a_certificate_from_another_ca_is_refused(tls_server, other_certs):
    reason = await refusal(NatsSettings(url=tls_server.url, tls_ca_file=other_certs.ca_file))
    assert reason.startswith(f"cannot connect to NATS at {tls_server.url}: ")
    assert "certificate verify failed" in reason


async def test_a_server_certificate_not_made_for_the_address_is_refused(tmp_path):
    # Signed by the trusted CA but for another name: the address is verified too.
    elsewhere = make_tls_files(tmp_path / "certs", name="elsewhere", server_ips=(),
                               server_dns=("nats.example",))
    with NatsServer(tmp_path / "nats", tls=elsewhere) as server:
        reason = await refusal(NatsSettings(url=server.url, tls_ca_file=elsewhere.ca_file))
    assert reason.startswith(f"cannot connect to NATS at {server.url}: ")
    assert "not valid for '127.0.0.1'" in reason


async def test_mutual_tls_takes_the_client_certificate_and_key(tmp_path, certs, other_certs):
    with NatsServer(tmp_path / "nats", tls=certs, verify_clients=True) as server:
        with_cert = NatsSettings(url=server.url, tls_ca_file=certs.ca_file,
                                 tls_cert_file=certs.client_cert, tls_key_file=certs.client_key)
        assert await round_trip(with_cert) == b"over tls"
        without = await refusal(NatsSettings(url=server.url, tls_ca_file=certs.ca_file))
        assert without.startswith(f"cannot connect to NATS at {server.url}: ")
        foreign = await refusal(NatsSettings(
            url=server.url, tls_ca_file=certs.ca_file,
            tls_cert_file=other_certs.client_cert, tls_key_file=other_certs.client_key))
        assert foreign.startswith(f"cannot connect to NATS at {server.url}: ")


def test_settings_refuse_a_client_certificate_without_its_key(certs):
    with pytest.raises(ValidationError, match="tls_cert_file and tls_key_file go together"):
        NatsSettings(tls_ca_file=certs.ca_file, tls_cert_file=certs.client_cert)
    with pytest.raises(ValidationError, match="tls_cert_file and tls_key_file go together"):
        NatsSettings(tls_ca_file=certs.ca_file, tls_key_file=certs.client_key)


@pytest.mark.parametrize("how", ["tls url", "ca file", "tls url on the command line"])
async def test_tls_configured_never_falls_back_to_clear_text(tmp_path, certs, capsys, how):
    # A server without TLS (or a man in the middle that strips `tls_required` from its
    # INFO): nats-py would carry on in clear and send the token with CONNECT. Configured
    # TLS means TLS or no connection, and the token never leaves the process.
    with NatsServer(tmp_path / "nats", token="s3cret-token", extra_args=("-V",)) as server:
        url = server.url if how == "ca file" else tls_url(server)
        if how == "tls url on the command line":  # --feed / --bus-publish tls://...
            reason = await refusal(NatsSettings(token="s3cret-token"), url=url)
        else:
            reason = await refusal(NatsSettings(
                url=url, token="s3cret-token",
                tls_ca_file=certs.ca_file if how == "ca file" else None))
    assert reason.startswith(f"cannot connect to NATS at {url}: ")
    assert "TLS" in reason
    assert "s3cret-token" not in reason + capsys.readouterr().out
    assert b"CONNECT" not in server.log_file.read_bytes()  # the server's protocol trace
