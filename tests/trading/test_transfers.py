"""Paper transfers (delay, fee, feed clock) and the live withdrawal whitelist."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.ccxt.transfers import LiveTransfers
from config.settings import ExecutionSettings, VenueSettings
from daemon.trading.errors import TransferRefused
from daemon.trading.paper import PaperExecutor
from daemon.trading.transfers import PaperTransfers, Transfer

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
