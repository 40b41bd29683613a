"""Paper transfers (delay, fee, feed clock) and the live withdrawal whitelist."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from adapters.ccxt.transfers import LiveTransfers
from config.settings import ExecutionSettings, VenueSettings, load_settings
from daemon.core.model import Decision, Quote, TransferIntent
from daemon.core.vocabulary import Action
from daemon.postmortem.reader import LogFilter
from daemon.postmortem.report import build_report
from daemon.postmortem.writer import DecisionLogWriter
from daemon.trading.errors import TransferRefused
from daemon.trading.paper import PaperExecutor
from daemon.trading.session import open_session
from daemon.trading.transfers import PaperTransfers, Transfer
from strategies.base import StrategyBase
from tests.helpers.strategy_fakes import FakeClock, FakeMarket

S = 1_000_000_000
T0 = 1_723_161_254 * S


def setup(**execution: object) -> tuple[PaperExecutor, PaperTransfers, list[Transfer]]:
    settings = ExecutionSettings(**execution)  # type: ignore[arg-type]
    venues = {
        "binance_spot": VenueSettings(enabled=True, balances={"BTC": 1.0, "USDT": 1_000.0}),
        "bybit_spot": VenueSettings(enabled=True, balances={"USDT": 500.0}),
    }
    paper = PaperExecutor(venues, settings)
    arrived: list[Transfer] = []
    return paper, PaperTransfers(paper, settings, on_arrival=arrived.append), arrived


def test_btc_is_debited_at_once_and_credited_net_of_fee_after_the_delay() -> None:
    paper, transfers, arrived = setup()  # defaults: BTC 6 min, fee 0.0001
    paper.advance(T0)
    sent = transfers.transfer("BTC", 0.5, "binance_spot", "bybit_spot", T0)
    assert sent.arrives_ns == T0 + 360 * S
    assert paper.balances("binance_spot")["BTC"] == pytest.approx(0.5)
    assert paper.balances("bybit_spot").get("BTC", 0.0) == 0.0
    assert transfers.in_flight_amount("BTC", "bybit_spot") == pytest.approx(0.4999)
    paper.advance(T0 + 359 * S)
    assert arrived == [] and paper.balances("bybit_spot").get("BTC", 0.0) == 0.0
    paper.advance(T0 + 360 * S)
    assert arrived == [sent] and sent.status == "arrived"
    assert paper.balances("bybit_spot")["BTC"] == pytest.approx(0.4999, abs=1e-12)
    assert transfers.in_flight() == []


def test_delay_and_fee_come_from_the_settings() -> None:
    paper, transfers, _ = setup(transfer_delay_s={"USDT": "2m"}, transfer_fee={"USDT": 1.0})
    sent = transfers.transfer("USDT", 100.0, "binance_spot", "bybit_spot", T0)
    assert sent.arrives_ns - sent.sent_ns == 120 * S
    paper.advance(T0 + 120 * S)
    assert paper.balances("binance_spot")["USDT"] == pytest.approx(900.0)
    assert paper.balances("bybit_spot")["USDT"] == pytest.approx(599.0)


@pytest.mark.parametrize(
    ("asset", "amount", "destination", "reason"),
    [
        ("BTC", 2.0, "bybit_spot", "has 1 free"),
        ("BTC", 0.0001, "bybit_spot", "not more than the fee"),
        ("DOGE", 1.0, "bybit_spot", "no transfer_delay_s"),
        ("BTC", 0.1, "binance_spot", "source and destination"),
    ],
)
def test_impossible_transfers_are_refused(asset: str, amount: float, destination: str,
                                          reason: str) -> None:
    paper, transfers, _ = setup()
    with pytest.raises(TransferRefused, match=reason):
        transfers.transfer(asset, amount, "binance_spot", destination, T0)
    assert paper.balances("binance_spot")["BTC"] == 1.0


def test_balance_locked_by_open_orders_cannot_be_sent() -> None:
    from daemon.core.model import OrderIntent, OrderType, Quote, Side

    paper, transfers, _ = setup(submit_latency_ms=0.0)
    paper.on_quote(Quote("binance_spot", "BTC/USDT", 100.0, 1.0, 101.0, 1.0, T0, T0))
    paper.submit(OrderIntent("binance_spot", "BTC/USDT", Side.SELL, OrderType.LIMIT, 0.8, 105.0),
                 T0)
    paper.advance(T0)
    with pytest.raises(TransferRefused, match=r"has 0\.2 free"):
        transfers.transfer("BTC", 0.5, "binance_spot", "bybit_spot", T0)


class FakeExchange:
    """Stands in for a ccxt exchange: records withdrawals, answers deposit addresses."""

    def __init__(self, deposit_address: str = "bc1q-destination") -> None:
        self.deposit_address = deposit_address
        self.withdrawals: list[tuple[Any, ...]] = []

    async def fetch_deposit_address(self, code: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"currency": code, "address": self.deposit_address, "tag": None}

    async def withdraw(self, code: str, amount: float, address: str, tag: str | None,
                       params: dict[str, Any]) -> dict[str, Any]:
        self.withdrawals.append((code, amount, address, tag, params))
        return {"id": "w-1", "status": "pending"}


async def test_live_withdrawal_is_refused_unless_the_address_is_whitelisted() -> None:
    source, destination = FakeExchange(), FakeExchange("bc1q-destination")
    exchanges = {"binance_spot": source, "bybit_spot": destination}
    refusing = LiveTransfers(exchanges, ExecutionSettings(withdrawal_whitelist=["bc1q-other"]))
    with pytest.raises(TransferRefused, match=r"not in execution\.withdrawal_whitelist"):
        await refusing.withdraw("binance_spot", "BTC", 0.1, "bc1q-attacker")
    with pytest.raises(TransferRefused, match="bc1q-destination"):
        await refusing.transfer("BTC", 0.1, "binance_spot", "bybit_spot")
    assert source.withdrawals == []

    allowed = LiveTransfers(exchanges,
                            ExecutionSettings(withdrawal_whitelist=["bc1q-destination"]))
    result = await allowed.transfer("BTC", 0.1, "binance_spot", "bybit_spot", network="BTC")
    assert result["id"] == "w-1"
    assert source.withdrawals == [("BTC", 0.1, "bc1q-destination", None, {"network": "BTC"})]


# --- funds in transit are still ours (issue 14, item 8) -------------------------------------


def test_in_transit_is_what_transfers_in_flight_will_credit_each_venue() -> None:
    paper, transfers, _ = setup(transfer_delay_s={"BTC": "6m", "USDT": "1m"},
                                transfer_fee={"BTC": 0.0001, "USDT": 1.0})
    transfers.transfer("BTC", 0.5, "binance_spot", "bybit_spot", T0)
    transfers.transfer("USDT", 100.0, "bybit_spot", "binance_spot", T0)
    assert transfers.in_transit("bybit_spot", T0) == {"BTC": pytest.approx(0.4999)}
    assert transfers.in_transit("binance_spot", T0) == {"USDT": pytest.approx(99.0)}
    paper.advance(T0 + 60 * S)  # the USDT lands
    assert transfers.in_transit("binance_spot", T0 + 60 * S) == {}
    assert paper.balances("binance_spot")["USDT"] == pytest.approx(1_099.0)


async def test_a_live_withdrawal_is_in_transit_for_the_configured_delay() -> None:
    from daemon.core.records import MemorySink
    from daemon.trading.transfers import BackgroundTransfers

    class Accepting:
        async def transfer(self, *args: object) -> dict[str, str]:
            return {"id": "w-1"}

    execution = ExecutionSettings(transfer_delay_s={"BTC": "6m"}, transfer_fee={"BTC": 0.0001})
    live = BackgroundTransfers(Accepting(), MemorySink(), execution)
    live.transfer("BTC", 0.5, "binance_spot", "bybit_spot", T0)
    live.transfer("ETH", 1.0, "binance_spot", "bybit_spot", T0)  # no delay known: not guessed
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert live.in_transit("bybit_spot", T0 + 359 * S) == {"BTC": pytest.approx(0.4999)}
    assert live.in_transit("bybit_spot", T0 + 360 * S) == {}


class _MovesHalf(StrategyBase):
    """Asks for one transfer of 0.5 BTC on its first quote; every quote's mid is a mark."""

    name = "arbitrage"

    def __init__(self) -> None:
        self.sent = False

    def on_quote(self, quote: Quote) -> Decision | None:
        inputs: dict[str, object] = {"symbol": "BTC/USDT", "mid": quote.mid}
        if self.sent:
            return Decision(self.name, quote.local_ts_ns, Action.SKIP, "mark", inputs)
        self.sent = True
        inputs.update(TransferIntent("BTC", "binance_spot", "bybit_spot", 0.5).as_inputs())
        return Decision(self.name, quote.local_ts_ns, Action.REBALANCE, "move", inputs)


def test_portfolio_value_stays_continuous_across_a_transfer_less_its_fee(tmp_path: Path) -> None:
    """Hand maths, mid 60,000 throughout. Before: 1 BTC + 1,000 USDT on Binance, 500 USDT
    on Bybit = 61,500. 0.5 BTC goes to Bybit (fee 0.0001 BTC, 6 min): while it travels,
    0.5 BTC on Binance + 0.4999 in transit + 1,500 USDT = 61,494 (the fee, 6 USDT, is all
    that is gone), and the same once it lands. Before the fix the snapshots in between
    said 31,500: the 0.5 BTC in flight was in no venue's balance."""
    settings = load_settings({
        "data_dir": tmp_path,
        "venues": {"binance_spot": {"enabled": True, "balances": {"BTC": 1.0, "USDT": 1000.0}},
                   "bybit_spot": {"enabled": True, "balances": {"BTC": 0.0, "USDT": 500.0}}},
        "execution": {"transfer_delay_s": {"BTC": "6m"}, "transfer_fee": {"BTC": 0.0001}},
        "postmortem": {"balance_snapshot_interval_s": 60.0},
    }, env_file=None)
    clock = FakeClock(T0)
    with DecisionLogWriter(tmp_path, "transit", synchronous=True) as writer:
        session = open_session(settings, _MovesHalf(), PaperExecutor.from_settings(
            settings, "transit"), sink=writer, market=FakeMarket(), clock=clock, writer=writer)
        for second in range(0, 500, 10):
            clock.now_ns = T0 + second * S
            session.runner.on_quote(Quote("binance_spot", "BTC/USDT", 59_999.0, 1.0,
                                          60_001.0, 1.0, 0, clock.now_ns))
            session.snapshots.maybe_record(clock.now_ns)
        writer.end_run("stopped")
    summary = build_report(tmp_path, LogFilter(run_id="transit"), charts=False).summaries[0]
    series = summary.series
    assert series is not None
    values = dict(zip(((series.portfolio_ts - T0) // S).tolist(),
                      series.portfolio_value.tolist(), strict=True))
    assert values[0] == pytest.approx(61_494.0)  # the first snapshot follows the transfer
    assert values[60] == pytest.approx(61_494.0)  # 0.4999 BTC in flight, valued at the mid
    assert values[360] == pytest.approx(61_494.0)  # landed: the same money
    assert values[480] == pytest.approx(61_494.0)
    assert summary.portfolio_value == pytest.approx(61_494.0)
