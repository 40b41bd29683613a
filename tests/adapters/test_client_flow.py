"""Client-flow sources: file replay (native and Dune shapes), synthetic, WebSocket ingest."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from adapters.client_flow import (
    FileFlowSource,
    FlowError,
    FlowLimits,
    SyntheticFlowSource,
    WebSocketFlowSource,
    build_flow_source,
    parse_client_fill_message,
    parse_time_ns,
    run_flow,
)
from config.settings import ConfigError, Settings
from daemon.core.model import ClientFill, Side

SYMBOL = "ETH/USDT"
TOKEN = "s3cret-token"

NATIVE_CSV = """time,side,qty,price,client_id
2024-08-08T23:55:00Z,buy,1.5,2500.0,otc-a
1723161301000,SELL,0.25,2501.5,otc-b
1723161302000000000,hold,1,2500,otc-c
1723161303,sell,-1,2500,otc-d
"""

# The column shape of a Dune `dex.trades` export of 1inch Fusion fills (taker's view).
DUNE_CSV = (
    "block_time,token_bought_symbol,token_sold_symbol,token_bought_amount,token_sold_amount,"
    "taker,tx_hash,evt_index\n"
) + """2024-08-08 23:55:00.000 UTC,USDT,WETH,5000.0,2.0,0xclient1,0xaaa,3
2024-08-08 23:55:12.000 UTC,WETH,USDT,0.4,1001.0,0xclient2,0xbbb,7
2024-08-08 23:55:20.000 UTC,DAI,WBTC,60000,1,0xclient3,0xccc,1
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- file -----------------------------------------------------------------------------------


def test_file_source_reads_native_rows_and_skips_bad_ones(tmp_path: Path) -> None:
    source = FileFlowSource(write(tmp_path, "flow.csv", NATIVE_CSV), SYMBOL)
    fills = list(source)
    assert fills == [
        ClientFill(1723161300_000_000_000, SYMBOL, Side.BUY, 1.5, 2500.0, "otc-a", ""),
        ClientFill(1723161301_000_000_000, SYMBOL, Side.SELL, 0.25, 2501.5, "otc-b", ""),
    ]
    assert source.skipped == {"side": 1, "qty": 1}


def test_file_source_maps_a_dune_1inch_export_onto_the_symbol(tmp_path: Path) -> None:
    fills = list(FileFlowSource(write(tmp_path, "dune.csv", DUNE_CSV), SYMBOL))
    # Client sold 2 WETH for 5000 USDT: a client sell of 2 ETH at 2500.
    assert fills[0].side is Side.SELL and fills[0].qty == 2.0 and fills[0].price == 2500.0
    assert fills[0].client_id == "0xclient1" and fills[0].fill_id == "0xaaa:3"
    # Client sold 1001 USDT for 0.4 WETH: a client buy of 0.4 ETH at 2502.5.
    assert fills[1].side is Side.BUY and fills[1].qty == 0.4
    assert fills[1].price == pytest.approx(2502.5)
    assert len(fills) == 2  # the WBTC/DAI row is another pair


async def test_file_source_iterates_asynchronously_with_pacing(tmp_path: Path) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    source = FileFlowSource(write(tmp_path, "flow.csv", NATIVE_CSV), SYMBOL, speed=2.0,
                            sleep=fake_sleep)
    received: list[ClientFill] = []
    assert await run_flow(source, received.append) == 2
    assert slept == [0.5]  # one second between the fills, replayed at 2x


def test_time_parsing_units_and_errors() -> None:
    assert parse_time_ns("1723161254937085768") == 1723161254937085768
    assert parse_time_ns(1723161254937) == 1723161254937_000_000
    assert parse_time_ns("1723161254.5") == 1723161254_500_000_000
    assert parse_time_ns("2024-08-08 23:55:00.250 UTC") == 1723161300_250_000_000
    for bad in ("soon", "-3", "nan", ""):
        with pytest.raises(FlowError):
            parse_time_ns(bad)


# --- synthetic ------------------------------------------------------------------------------


def test_synthetic_flow_is_seeded_and_priced_around_the_mid() -> None:
    def flow(seed: int) -> list[ClientFill]:
        source = SyntheticFlowSource(SYMBOL, rate_hz=2.0, mean_qty=1.0, seed=seed,
                                     markup_bps=5.0)
        return list(source.generate(0, 600 * 10**9, lambda ts: 2500.0))

    first, again, other = flow(7), flow(7), flow(8)
    assert first == again and first != other
    assert 1000 < len(first) < 1400  # Poisson(1200)
    for fill in first:
        expected = 2500.0 * (1.0005 if fill.side is Side.BUY else 0.9995)
        assert fill.price == pytest.approx(expected) and fill.qty > 0
    assert all(a.ts_ns < b.ts_ns for a, b in itertools.pairwise(first))


async def test_synthetic_flow_async_waits_for_a_mid() -> None:
    mids = iter([None, 2500.0, 2501.0, 2502.0])

    async def no_sleep(seconds: float) -> None:
        assert seconds > 0

    source = SyntheticFlowSource(SYMBOL, 1.0, 1.0, seed=3, mid=lambda: next(mids),
                                 clock=lambda: 42, sleep=no_sleep)
    fills = []
    async for fill in source:
        fills.append(fill)
        if len(fills) == 3:
            break
    assert [f.fill_id for f in fills] == ["syn-3-1", "syn-3-2", "syn-3-3"]
    assert source.skipped == {"no_mid": 1}


# --- WebSocket ingest -----------------------------------------------------------------------


async def test_ingest_endpoint_authenticates_validates_and_keeps_serving() -> None:
    source = WebSocketFlowSource(SYMBOL, TOKEN, port=0, clock=lambda: 1_000)
    await source.start()
    url = f"ws://127.0.0.1:{source.port}/flow"
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as lost:
            async with connect(f"ws://127.0.0.1:{source.port}/other",
                               additional_headers={"Authorization": f"Bearer {TOKEN}"}):
                pass
        assert lost.value.response.status_code == 404

        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            replies = []
            for message in (
                '{"side": "buy", "qty": 2, "price": 2500, "fill_id": "f1"}',
                '{"side": "buy", "qty": 2,',
                '[1, 2]',
                '{"side": "sideways", "qty": 1, "price": 2500}',
                '{"side": "sell", "qty": 1}',
                '{"side": "sell", "qty": 1, "price": 2500, "symbol": "BTC/USDT"}',
                '{"side": "sell", "qty": 0.5, "price": 2499, "time": 1723161300000}',
            ):
                await ws.send(message)
                replies.append(orjson.loads(await ws.recv()))
        assert replies[0] == {"ok": True, "fill_id": "f1", "seq": 1}
        assert replies[1]["ok"] is False and "malformed JSON" in replies[1]["error"]
        assert replies[2] == {"ok": False, "error": "expected a JSON object, got list"}
        assert "side 'sideways'" in replies[3]["error"]
        assert replies[4] == {"ok": False, "error": "price is missing"}
        assert "symbol 'BTC/USDT'" in replies[5]["error"]
        assert replies[6]["ok"] is True and replies[6]["seq"] == 2
        assert source.rejected["unauthorized"] == 3
    finally:
        await source.stop()

    received = [fill async for fill in source]
    assert [(f.side, f.qty, f.price, f.ts_ns) for f in received] == [
        (Side.BUY, 2.0, 2500.0, 1_000),
        (Side.SELL, 0.5, 2499.0, 1723161300_000_000_000),
    ]


async def test_ingest_endpoint_pushes_fills_to_a_consumer_while_serving() -> None:
    async with WebSocketFlowSource(SYMBOL, TOKEN, port=0) as source:
        received: list[ClientFill] = []
        consumer = asyncio.create_task(run_flow(source, received.append))
        url = f"ws://127.0.0.1:{source.port}/flow"
        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            for index in range(5):
                await ws.send(orjson.dumps({"side": "buy", "qty": 1 + index, "price": 2500}))
                assert orjson.loads(await ws.recv())["ok"] is True
    # stop() queues an end marker behind the accepted fills: the consumer drains them all.
    assert await asyncio.wait_for(consumer, 5) == 5
    assert [fill.qty for fill in received] == [1, 2, 3, 4, 5]


def test_parse_message_defaults_time_and_id() -> None:
    fill = parse_client_fill_message(b'{"Side": "SELL", "Qty": "1.5", "Price": "2500"}',
                                     SYMBOL, received_ns=77)
    assert (fill.ts_ns, fill.side, fill.qty, fill.fill_id) == (77, Side.SELL, 1.5, "ws-77")


# --- wiring ---------------------------------------------------------------------------------


def test_build_flow_source_follows_the_settings(tmp_path: Path) -> None:
    base = Settings(_env_file=None)
    assert isinstance(build_flow_source(base, mid=lambda: 1.0), SyntheticFlowSource)
    as_file = Settings(_env_file=None, strategies={"internalize": {
        "source": "file", "file": str(write(tmp_path, "f.csv", NATIVE_CSV))}})
    assert isinstance(build_flow_source(as_file), FileFlowSource)
    with pytest.raises(ConfigError, match="ingest_token"):
        build_flow_source(Settings(_env_file=None,
                                   strategies={"internalize": {"source": "websocket"}}))
    with pytest.raises(ConfigError, match="needs a CSV path"):
        build_flow_source(Settings(_env_file=None,
                                   strategies={"internalize": {"source": "file"}}))
    socket = Settings(_env_file=None, strategies={"internalize": {
        "source": "websocket", "ingest_token": TOKEN, "ingest_port": 0}})
    assert isinstance(build_flow_source(socket), WebSocketFlowSource)


# --- issue 13 item 3: a bad client fill is refused at the edge, never booked ---------------

NOW_NS = 1723161300_000_000_000  # the feed clock of the edge tests: 2024-08-08 23:55 UTC


@pytest.mark.parametrize("bad", [1e300, "1e300", 10**300, "9999-12-31T00:00:00Z",
                                 "1970-01-01T00:00:01Z", float("inf"), "1e-300"])
def test_time_out_of_any_sane_range_is_refused(bad: object) -> None:
    with pytest.raises(FlowError, match="time"):
        parse_time_ns(bad)


async def test_ingest_refuses_absurd_fills_with_an_error_and_keeps_booking() -> None:
    """`"time": 1e300` was acked ok and then killed the flow task: now refused, counted."""
    source = WebSocketFlowSource(SYMBOL, TOKEN, port=0, clock=lambda: NOW_NS,
                                 limits=FlowLimits(max_qty=100.0, time_window_s=300.0))
    await source.start()
    received: list[ClientFill] = []
    consumer = asyncio.create_task(run_flow(source, received.append))
    bad_messages = [
        {"side": "buy", "qty": 1, "price": 2500, "time": 1e300},
        {"side": "buy", "qty": 1, "price": 2500, "time": "1e300"},
        {"side": "buy", "qty": 1, "price": 2500, "time": (NOW_NS // 10**6) + 3_600_000},
        {"side": "buy", "qty": 1, "price": 2500, "time": "2024-08-08T20:00:00Z"},
        {"side": "buy", "qty": 1e308, "price": 2500},
        {"side": "buy", "qty": 100.5, "price": 2500},
        {"side": "buy", "qty": 2, "price": 1e308},
        {"side": "buy", "qty": 1, "price": "nan"},
        {"side": "buy", "qty": 1, "price": 0},
    ]
    try:
        url = f"ws://127.0.0.1:{source.port}/flow"
        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            for message in bad_messages:
                await ws.send(orjson.dumps(message))
                reply = orjson.loads(await ws.recv())
                assert reply["ok"] is False and reply["error"], (message, reply)
            for qty in (1.0, 2.0):
                await ws.send(orjson.dumps({"side": "sell", "qty": qty, "price": 2500,
                                            "time": (NOW_NS // 10**6) - 60_000}))
                assert orjson.loads(await ws.recv())["ok"] is True
    finally:
        await source.stop()
    assert await asyncio.wait_for(consumer, 5) == 2
    assert [fill.qty for fill in received] == [1.0, 2.0]
    assert sum(source.rejected.values()) == len(bad_messages) and source.accepted == 2


BAD_ROWS_CSV = (
    b"time,side,qty,price,client_id\n"
    b"2024-08-08T23:55:00Z,buy,1.5,2500.0,otc-a\n"
    b"2024-08-08T23:55:01Z,buy,1,2500.0,caf\xe9-latin1\n"
    b"2024-08-08T23:55:02Z,buy,1e308,2500.0,huge\n"
    b"1e300,sell,1,2500.0,far-future\n"
    b"2024-08-08T23:55:03Z,sell,1,2500\x00.0,nul-in-price\n"
    b"2024-08-08T23:55:04Z,sell,0.25,2501.5,otc-b\n"
)


def test_file_source_skips_and_counts_rows_that_cannot_be_used(tmp_path: Path) -> None:
    path = tmp_path / "flow.csv"
    path.write_bytes(BAD_ROWS_CSV)
    source = FileFlowSource(path, SYMBOL, limits=FlowLimits(max_qty=1_000.0))
    fills = list(source)
    assert [f.client_id for f in fills] == ["otc-a", "otc-b"]
    assert sum(source.skipped.values()) == 4
    assert source.skipped["encoding"] == 1 and source.skipped["qty"] == 1


def test_build_flow_source_takes_the_limits_from_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "flow.csv"
    path.write_bytes(BAD_ROWS_CSV)
    settings = Settings(_env_file=None, strategies={"internalize": {
        "source": "file", "file": str(path), "max_client_qty": 1.0}})
    source = build_flow_source(settings)
    assert [f.client_id for f in source] == ["otc-b"]  # type: ignore[union-attr]
    assert source.skipped["qty"] == 2  # 1.5 > 1 and 1e308  # type: ignore[union-attr]
