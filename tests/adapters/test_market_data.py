"""run_live: every enabled venue at once, settings-driven; `--mode watch` on live adapters."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest

from adapters.binance.session import BinanceAdapter
from adapters.ccxt.feed import CcxtFeed
from adapters.common.stats import reset_registry
from adapters.market_data import build_adapters, run_live
from config.settings import ConfigError, load_settings
from daemon.market.bus import Bus
from tests.helpers.venue_servers import (
    BinanceServer,
    BybitServer,
    binance_tape,
    bybit_events_from_binance,
)

SPOT_FILE = "binance_spot_btcusdt_20240808.gz"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tape(request: pytest.FixtureRequest) -> list:
    return binance_tape(request.getfixturevalue("shared_file")(SPOT_FILE))[0][:6_000]


def settings_for(**venues: dict) -> object:
    everything_off = {v: {"enabled": False} for v in
                      ("binance_spot", "binance_usdm", "bybit_spot", "bybit_linear")}
    return load_settings({"venues": {**everything_off, **venues}, "symbols": "BTC/USDT"},
                         env_file=None)


def test_feed_setting_picks_the_adapter() -> None:
    settings = settings_for(binance_spot={"enabled": True},
                            bybit_spot={"enabled": True, "feed": "ccxt"},
                            okx={"enabled": True},
                            binance_usdm={"enabled": True})  # no linear symbol: skipped
    adapters = build_adapters(settings, Bus())
    kinds = {a.venue: type(a) for a in adapters}
    assert kinds == {"binance_spot": BinanceAdapter, "bybit_spot": CcxtFeed, "okx": CcxtFeed}


async def test_two_venues_stream_together(tape) -> None:
    reset_registry()
    async with BinanceServer(tape) as binance, \
            BybitServer(bybit_events_from_binance(tape)) as bybit:
        settings = settings_for(binance_spot={"enabled": True, "ws_url": binance.ws_url},
                                bybit_spot={"enabled": True, "ws_url": bybit.ws_url})
        bus = Bus()
        feed = asyncio.create_task(run_live(settings, bus))
        await asyncio.wait_for(asyncio.gather(binance.finished.wait(), bybit.finished.wait()), 30)
        await asyncio.sleep(0.05)
        feed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await feed
    quotes = bus.view.quotes("BTC/USDT")
    assert set(quotes) == {"binance_spot", "bybit_spot"}
    assert bus.published_trades > 0
    from adapters.common.stats import registry

    assert registry()["binance_spot"].frames > 1_000 and registry()["bybit_spot"].frames > 1_000


async def test_a_rejected_topic_stops_the_feed_with_a_config_error(tape) -> None:
    events = bybit_events_from_binance(tape[:100])
    async with BybitServer(events, reject_topics={"publicTrade.BTCUSDT"}) as bybit:
        settings = settings_for(bybit_spot={"enabled": True, "ws_url": bybit.ws_url})
        with pytest.raises(ConfigError, match=r"bybit_spot.*publicTrade\.BTCUSDT"):
            await asyncio.wait_for(run_live(settings, Bus()), 10)


async def test_nothing_to_run_is_a_config_error() -> None:
    settings = settings_for(binance_usdm={"enabled": True})  # only a spot symbol given
    with pytest.raises(ConfigError, match="no enabled venue has symbols"):
        await run_live(settings, Bus())


async def test_watch_mode_shows_the_live_market_from_local_servers(tape, tmp_path: Path) -> None:
    """`main.py --mode watch` with live adapters by default, URLs from the environment."""
    async with BinanceServer(tape, rate_hz=3_000) as binance, \
            BybitServer(bybit_events_from_binance(tape), rate_hz=3_000) as bybit:
        env = dict(os.environ,
                   CRYPTOPIPE_VENUES__BINANCE_SPOT__WS_URL=binance.ws_url,
                   CRYPTOPIPE_VENUES__BYBIT_SPOT__WS_URL=bybit.ws_url,
                   CRYPTOPIPE_DATA_DIR=str(tmp_path),
                   CRYPTOPIPE_METRICS__ENABLED="false")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "main.py", "--mode", "watch", "--format", "json",
            "--venues", "binance_spot,bybit_spot", "--symbols", "BTC/USDT", "--duration", "2",
            cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    views = [orjson.loads(line) for line in out.splitlines()]
    assert views, err.decode()[-2000:]
    assert any({"binance_spot", "bybit_spot"} <= set(view) for view in views)
    last = views[-1]
    assert last["binance_spot"]["symbol"] == "BTC/USDT"
    assert float(last["binance_spot"]["top_bid"]) < float(last["binance_spot"]["top_ask"])
