"""Inventory-mm: the seed market-making-rebalancing's controls (issue 14 item 3).

Direction flip after one-sided fills, max loss as a share of starting equity, rebalancing
to target weights over several assets, and positions.csv appended during the run. Hand
cases use the harness of test_inventory_mm.py (mid 60000.05, fee floor opted out); the
recorded cases run the shared recordings through the fakes' driver or the backtest engine.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.recordings.replay import ReplaySpec
from config.settings import InventoryMMSettings, VenueSettings, load_settings
from daemon.backtest.engine import Backtest
from daemon.core.model import Fill, OrderAck, OrderType, Quote, Side
from daemon.core.vocabulary import OrderStatus
from strategies.inventory_mm import POSITION_COLUMNS, InventoryMMStrategy, floor_to_step
from tests.helpers.strategy_fakes import FakeAccount, FakeClock, FakeMarket, load_binance_recording
from tests.strategies.test_inventory_mm import (
    LOT,
    MID,
    RECORDING,
    SIGMA_ABS,
    SYMBOL,
    TICK,
    VENUE,
    Harness,
    fill_bids_to_the_limit,
    mm_settings,
    run_recording,
    side_intent,
)

BTC_RECORDING = "binance_spot_btcusdt_20240808.gz"


class ListSink:
    """ExportSink that keeps what was appended."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def append(self, name: str, columns: Sequence[str],
               rows: Sequence[Sequence[object]]) -> None:
        assert name == "positions.csv"
        self.rows.extend(dict(zip(columns, row, strict=True)) for row in rows)


def fill_resting(h: Harness, side: Side, decision=None):
    """Ack what the last decision sent, then fill our resting order of `side` in full."""
    if decision is not None:
        h.ack_all(decision)
    order = next(o for o in h.strategy.orders.values()
                 if o.side is side and not o.cancelling and o.kind == "quote")
    return h.fill(order)


# --- direction flip ------------------------------------------------------------------------


def test_more_than_n_one_sided_fills_quote_only_the_side_that_reduces_inventory() -> None:
    h = Harness(one_sided_fills_limit=3, flip_release_inventory=0.25, max_inventory=0.01)
    decision = h.quote()
    for _ in range(3):  # 3 bids in a row: not more than 3, both sides still quoted
        decision = fill_resting(h, Side.BUY, decision)
        assert decision.inputs["quoting_sides"] == "both"
        assert side_intent(decision, Side.BUY) is not None
    assert decision.inputs["fill_streak"] == 3 and decision.inputs["fill_streak_side"] == "buy"
    flip = fill_resting(h, Side.BUY, decision)  # the 4th: more than 3
    q = h.strategy.inventory
    assert q > 0.25 * 0.01
    assert flip.reason.startswith("direction flip: 4 buy fills in a row, quoting only the ask "
                                  "until |inventory| <= 0.0025")
    assert flip.inputs["quoting_sides"] == "ask only" and flip.inputs["bid_qty"] == 0.0
    assert not flip.intents  # no new bid; the resting ask is kept
    # A timer tick during the flip: still no bid, the ask stays.
    h.clock.advance(1.0)
    hold = h.strategy.on_timer(h.clock())
    assert hold.inputs["quoting_sides"] == "ask only"
    assert not any(o.side is Side.BUY and not o.cancelling for o in h.strategy.orders.values())
    # The ask fills: |q| 0.00348 - 0.001 is within 0.0025, both sides again.
    release = fill_resting(h, Side.SELL)
    assert h.strategy.inventory == pytest.approx(q - 0.001)
    assert release.reason.startswith("direction flip over: |inventory| 0.00248 within 0.0025")
    assert release.inputs["quoting_sides"] == "both"
    assert side_intent(release, Side.BUY) is not None


def test_a_flip_cancels_the_resting_order_that_adds_and_unwinds_at_most_the_inventory() -> None:
    # Partial fills of one order count once; release only when flat (band 0).
    h = Harness(one_sided_fills_limit=1, flip_release_inventory=0.0, max_inventory=0.01)
    first = h.quote()
    h.ack_all(first)
    ask = side_intent(first, Side.SELL)
    for _ in range(2):  # two parts of one ask: one fill of the run
        decision = h.fill(ask, qty=0.0002)
    assert decision.inputs["fill_streak"] == 1 and decision.inputs["quoting_sides"] == "both"
    h.ack_all(decision)
    asks = [o for o in h.strategy.orders.values() if o.side is Side.SELL and not o.cancelling]
    flip = h.fill(asks[0], qty=0.0001)  # a second ask order: 2 fills in a row, more than 1
    assert flip.inputs["quoting_sides"] == "bid only"
    assert asks[0].client_order_id in flip.cancels  # the rest of the ask is pulled
    assert "no ask: direction flip" in flip.reason
    # The 0.001 bid could turn the 0.0005 short into a long: replaced by one of 0.0005
    # once its cancel has landed (reduce only).
    old_bid = side_intent(first, Side.BUY)
    assert old_bid.client_order_id in flip.cancels
    for client_order_id in flip.cancels:
        h.strategy.on_ack(OrderAck(client_order_id, VENUE, SYMBOL, OrderStatus.CANCELED,
                                   h.clock()))
    h.clock.advance(1.0)
    unwind = h.strategy.on_timer(h.clock())
    assert h.strategy.inventory == pytest.approx(-0.0005)
    assert side_intent(unwind, Side.BUY).qty == 0.0005 and side_intent(unwind, Side.SELL) is None


def test_a_run_of_fills_that_unwinds_the_inventory_is_no_reason_to_flip() -> None:
    h = Harness(one_sided_fills_limit=2, flip_release_inventory=0.0, max_inventory=0.01)
    h.strategy.inventory = h.strategy.position = 0.005  # long from before
    h.strategy.cash = -0.005 * MID
    decision = h.quote()
    for _ in range(3):  # 3 sells in a row (more than 2) that unwind: still long 0.002
        decision = fill_resting(h, Side.SELL, decision)
    assert h.strategy.inventory == pytest.approx(0.002)
    assert decision.inputs["fill_streak"] == 3 and decision.inputs["fill_streak_side"] == "sell"
    assert h.strategy.inventory > 0 and decision.inputs["quoting_sides"] == "both"


def test_one_sided_fills_limit_zero_turns_the_flip_off() -> None:
    h = Harness(one_sided_fills_limit=0, max_inventory=0.01)
    decision = h.quote()
    for _ in range(6):
        decision = fill_resting(h, Side.BUY, decision)
        assert decision.inputs["quoting_sides"] == "both"
        assert side_intent(decision, Side.BUY) is not None


def flip_violations(fills: list[Fill], limit: int, band: float) -> tuple[int, list[Fill]]:
    """The flip rule replayed over the fills: (flips, fills that added while flipped)."""
    q, streak, streak_side, last_order, flipped = 0.0, 0, None, "", None
    flips, violations = 0, []
    for fill in fills:
        if flipped is not None and fill.side is not flipped:
            violations.append(fill)
        q += fill.side.sign * fill.qty
        if fill.client_order_id != last_order:
            last_order = fill.client_order_id
            streak, streak_side = (streak + 1, streak_side) if fill.side is streak_side \
                else (1, fill.side)
        if flipped is not None and abs(q) <= band + LOT * 1e-6:
            flipped, streak = None, 0
        elif (flipped is None and streak > limit and abs(q) > band + LOT * 1e-6
              and (streak_side is Side.BUY) == (q > 0)):  # the run built the position
            flipped, flips = (Side.SELL if q > 0 else Side.BUY), flips + 1
    return flips, violations


def test_recorded_session_never_adds_to_inventory_while_the_direction_is_flipped() -> None:
    if not RECORDING.is_file():
        pytest.skip(f"../shared/data not present: {RECORDING} missing")
    events = load_binance_recording(RECORDING)
    off, _, _ = run_recording(events, one_sided_fills_limit=0, max_inventory=0.01)
    driver, _, _ = run_recording(events, one_sided_fills_limit=3, max_inventory=0.01)
    band = 0.25 * 0.01
    # Without the flip this session has a run of 26 buys or sells; with it, more than 3
    # in a row beyond the band switch to the reducing side every time.
    assert flip_violations(off.exchange.fills, 3, band)[0] > 0
    flips, violations = flip_violations(driver.exchange.fills, 3, band)
    assert flips >= 10 and violations == []
    starts = [d for d in driver.decisions if d.reason.startswith("direction flip:")]
    ends = [d for d in driver.decisions if d.reason.startswith("direction flip over")]
    assert len(starts) == flips and len(ends) >= flips - 1
    for decision in starts:  # visible in the decision, and no order on the adding side
        only = decision.inputs["quoting_sides"]
        adding = Side.BUY if only == "ask only" else Side.SELL
        assert only in ("ask only", "bid only") and side_intent(decision, adding) is None


# --- max loss as a share of starting equity -------------------------------------------------


def crash_after_buying_the_limit(h: Harness) -> object:
    """Long 0.003 BTC bought at 60000, then the mid falls to 57000.05: P&L -8.99985."""
    fill_bids_to_the_limit(h, h.quote(), price=60_000.0)
    return h.quote(57_000.0, 57_000.1, after_s=0.5)


def test_max_loss_pct_of_starting_equity_bites_before_the_absolute_max_loss() -> None:
    # Starting equity at the first mid: 1 BTC * 60000.05 + 100000 USDT = 160000.05;
    # 0.005 % of it is 8.0000025, less than max_loss 100: the percentage bites.
    h = Harness(max_loss=100.0, max_loss_pct=0.005)
    crash = crash_after_buying_the_limit(h)
    assert crash.action == "max_loss_exit"
    inputs = crash.inputs
    assert inputs["starting_equity"] == pytest.approx(160_000.05)
    assert inputs["loss_limit"] == pytest.approx(8.0000025)
    assert inputs["loss_limit_source"] == "max_loss_pct"
    assert inputs["pnl"] == pytest.approx(0.003 * (57_000.05 - 60_000.0))
    assert "max_loss_pct 0.005 % of 160000.05" in crash.reason
    (flatten,) = crash.intents
    assert (flatten.side, flatten.type, flatten.qty) == (Side.SELL, OrderType.MARKET, 0.003)


def test_the_absolute_max_loss_bites_when_it_is_the_smaller_loss() -> None:
    h = Harness(max_loss=5.0, max_loss_pct=1.0)  # 1 % of 160000.05 = 1600
    crash = crash_after_buying_the_limit(h)
    assert crash.action == "max_loss_exit"
    assert crash.inputs["loss_limit"] == 5.0 and crash.inputs["loss_limit_source"] == "max_loss"
    # Neither bites: P&L -9 against 10 and 1600.
    calm = crash_after_buying_the_limit(Harness(max_loss=10.0, max_loss_pct=1.0))
    assert calm.action != "max_loss_exit"


async def test_max_loss_pct_stops_the_strategy_on_the_btc_recording(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    """Quotes inside the fees lose on this recording; 0.001 % of the ~80.9 k starting
    equity (0.5 BTC + 50000 USDT at the first mid) is ~0.81 USDT, far below max_loss 100."""
    mm = {"allow_quotes_inside_fees": True, "max_loss_pct": 0.001}
    records = await decision_log(tmp_path, [ReplaySpec(shared_file(BTC_RECORDING))],
                                 strategies={"inventory_mm": mm})
    decisions = [r for r in records if r.get("type") == "decision"]
    (exit_decision,) = [r for r in decisions if r["action"] == "max_loss_exit"]
    inputs = exit_decision["inputs"]
    first_mid = next(r["inputs"]["mid"] for r in decisions if r["action"] == "quote")
    assert inputs["starting_equity"] == pytest.approx(0.5 * first_mid + 50_000.0, rel=1e-4)
    assert inputs["loss_limit"] == pytest.approx(inputs["starting_equity"] * 1e-5)
    assert inputs["loss_limit_source"] == "max_loss_pct" and inputs["max_loss"] == 100.0
    assert inputs["pnl"] < -inputs["loss_limit"]
    after = decisions[decisions.index(exit_decision) + 1:]
    assert all(d["action"] not in ("quote", "hold") for d in after)


# --- rebalancing to target weights over several assets --------------------------------------

ETH = "ETH/USDT"
ETH_BID, ETH_ASK = 2_600.00, 2_600.10
ETH_MID = (ETH_BID + ETH_ASK) / 2


class MultiHarness(Harness):
    """The harness with an ETH/USDT market on the venue beside BTC/USDT."""

    def __init__(self, balances: dict[str, float], markets: dict | None = None,
                 **overrides: object) -> None:
        self.clock = FakeClock()
        self.market = FakeMarket()
        self.market.sigma[(VENUE, SYMBOL)] = SIGMA_ABS / MID
        self.account = FakeAccount({VENUE: balances})
        venue = VenueSettings(stale_after_s=10.0, markets=markets or {
            SYMBOL: {"tick": TICK, "lot": LOT}, ETH: {"tick": 0.01, "lot": 0.0001}})
        self.strategy = InventoryMMStrategy(mm_settings(**overrides), venue)
        self.strategy.bind(self.market, self.account, self.clock)

    def eth_quote(self, bid: float = ETH_BID, ask: float = ETH_ASK) -> None:
        quote = Quote(VENUE, ETH, bid, 50.0, ask, 50.0, 0, self.clock())
        self.market.quotes[quote.key] = quote
        assert self.strategy.on_quote(quote) is None


def test_rebalances_the_asset_furthest_from_its_target_weight_in_its_own_market() -> None:
    # 0.5 BTC (30000.025) + 0 ETH + 70000 USDT = 100000.025; targets BTC 0.3, ETH 0.2:
    # BTC is on target, ETH is 0.2 short of it.
    h = MultiHarness({"BTC": 0.5, "ETH": 0.0, "USDT": 70_000.0},
                     target_weights={"BTC": 0.3, "ETH": 0.2}, rebalance_threshold=0.05)
    assert h.strategy.market_keys == {(VENUE, SYMBOL), (VENUE, ETH)}
    h.eth_quote()
    h.ack_all(h.quote())
    h.clock.advance(1.0)
    decision = h.strategy.on_timer(h.clock())
    assert decision.action == "portfolio_rebalance"
    (order,) = decision.intents
    assert (order.symbol, order.side, order.type, order.price) == (ETH, Side.BUY, OrderType.IOC,
                                                                   ETH_ASK)
    total = 30_000.025 + 70_000.0
    assert order.qty == floor_to_step(0.2 * total / ETH_MID, 0.0001) == 7.6921  # in one go
    inputs = decision.inputs
    assert (inputs["asset"], inputs["symbol"], inputs["target_weight"]) == ("ETH", ETH, 0.2)
    assert inputs["weight_BTC"] == pytest.approx(30_000.025 / total)
    assert inputs["weight_ETH"] == 0.0 and inputs["portfolio_value"] == pytest.approx(total)
    # The fill books in the ETH market: the quoted inventory is untouched and P&L marks
    # the ETH at its mid (bought 0.05 above it).
    h.account.by_venue[VENUE].update(ETH=7.6921, USDT=70_000.0 - 7.6921 * ETH_ASK)
    h.strategy.on_fill(Fill(order.client_order_id, VENUE, ETH, Side.BUY, ETH_ASK, 7.6921, 0.0,
                            "USDT", "taker", h.clock()))
    assert h.strategy.inventory == 0.0 and h.strategy.books[ETH].position == 7.6921
    assert h.strategy.pnl(MID) == pytest.approx(-7.6921 * 0.05)
    h.eth_quote(ETH_BID - 100.0, ETH_ASK - 100.0)  # ETH marks 100 lower: P&L follows
    assert h.strategy.pnl(MID) == pytest.approx(-7.6921 * 100.05)
    h.clock.advance(1.0)
    after = h.strategy.on_timer(h.clock())
    assert after is None or after.action != "portfolio_rebalance"  # within the threshold


def test_a_rebalance_bigger_than_the_order_notional_cap_trades_in_slices() -> None:
    h = MultiHarness({"BTC": 0.5, "ETH": 0.0, "USDT": 70_000.0},
                     target_weights={"BTC": 0.3, "ETH": 0.2}, rebalance_threshold=0.05)
    h.strategy.max_order_notional = 5_000.0  # the risk gate's default, from the registry
    h.eth_quote()
    h.ack_all(h.quote())
    h.clock.advance(1.0)
    (order,) = h.strategy.on_timer(h.clock()).intents
    assert order.qty == floor_to_step(5_000.0 / ETH_ASK, 0.0001) == 1.923


def test_target_base_weight_is_the_single_asset_case_of_target_weights() -> None:
    h = MultiHarness({"BTC": 0.5, "USDT": 70_000.0}, target_base_weight=0.5)
    assert h.strategy.target_weights == {"BTC": 0.5}
    assert h.strategy.market_keys == {(VENUE, SYMBOL)}
    with pytest.raises(ValueError, match="target_weights or target_base_weight"):
        InventoryMMSettings(target_base_weight=0.5, target_weights={"BTC": 0.5})
    with pytest.raises(ValueError, match=r"sum to 1\.2, more than 1"):
        InventoryMMSettings(target_weights={"BTC": 0.7, "ETH": 0.5})
    with pytest.raises(ValueError, match="must then sum to 1"):
        MultiHarness({}, target_weights={"BTC": 0.3, "USDT": 0.3})
    listed = MultiHarness({}, target_weights={"BTC": 0.3, "ETH": 0.3, "USDT": 0.4})
    assert listed.strategy.target_weights == {"BTC": 0.3, "ETH": 0.3}


def test_an_asset_without_a_market_is_reported_and_nothing_is_guessed() -> None:
    # XRP has no market rules on the venue, ETH no quote yet: no trade, one skip naming
    # both; the quotes are left alone; reported again only when the reason changes.
    h = MultiHarness({"BTC": 0.1, "ETH": 0.0, "XRP": 1000.0, "USDT": 70_000.0},
                     target_weights={"BTC": 0.3, "ETH": 0.1, "XRP": 0.1})
    first = h.quote()
    h.ack_all(first)
    h.clock.advance(1.0)
    report = h.strategy.on_timer(h.clock())
    assert report.action == "skip" and not report.intents and not report.cancels
    assert "XRP (no market rules: venues.binance_spot.markets['XRP/USDT'] needs a tick and " \
        "a lot)" in report.reason
    assert "ETH (no quote for ETH/USDT)" in report.reason
    assert report.inputs["unpriced_assets"].count("(") == 2
    assert not any(o.cancelling for o in h.strategy.orders.values())
    h.clock.advance(1.0)
    again = h.strategy.on_timer(h.clock())
    assert again is None or again.action == "hold"
    assert h.strategy.market_keys == {(VENUE, SYMBOL), (VENUE, ETH), (VENUE, "XRP/USDT")}


async def decision_log(data_dir: Path, specs: list[ReplaySpec], run_id: str = "controls",
                       **overrides: Any) -> list[dict]:
    settings = load_settings({"data_dir": data_dir, **overrides}, env_file=None)
    result = await Backtest(settings, "inventory-mm", specs, run_id).run()
    return [orjson.loads(line) for path in result.log_files
            for line in path.read_bytes().splitlines()]


async def test_rebalances_btc_and_eth_to_their_weights_on_recorded_prices(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    """The recorded Binance BTCUSDT and ETHUSDT books of the same eight minutes, traded as
    one spot venue's markets; the desk starts all in USDT and targets 30 % BTC, 30 % ETH.
    It quotes ETH/USDT and rebalances through both markets."""
    specs = [ReplaySpec(shared_file(f"binance_usdm_{name}usdt_2024071{day}.gz"),
                        "binance_spot", f"{name.upper()}/USDT")
             for name in ("eth", "btc") for day in (8, 9)]
    venue = {"balances": {"BTC": 0.0, "ETH": 0.0, "USDT": 100_000.0},
             "markets": {"ETH/USDT": {"tick": 0.01, "lot": 0.0001},
                         "BTC/USDT": {"tick": 0.1, "lot": 0.001}}}
    mm = {"symbol": "ETH/USDT", "order_qty": 0.01, "max_inventory": 0.1, "max_loss": 1e6,
          "target_weights": {"BTC": 0.3, "ETH": 0.3}, "rebalance_threshold": 0.05}
    records = await decision_log(tmp_path, specs, venues={"binance_spot": venue},
                                 strategies={"inventory_mm": mm})
    rebalances = [r for r in records
                  if r.get("type") == "decision" and r["action"] == "portfolio_rebalance"]
    assert {r["inputs"]["symbol"] for r in rebalances} == {"BTC/USDT", "ETH/USDT"}
    for record in rebalances:
        (intent,) = record["intents"]
        assert intent["symbol"] == record["inputs"]["symbol"]
        assert intent["symbol"].startswith(record["inputs"]["asset"] + "/")
        # In slices the risk gate takes (max_order_notional 5000 by default): none refused.
        assert intent["qty"] * intent["price"] <= 5_000.0
    assert not [r for r in records if r.get("type") == "decision" and r["action"] == "reject"]
    # At the end both weights are within the threshold of 0.3, from the paper balances
    # valued at the last mids.
    balances = [r for r in records if r.get("type") == "balance" and r["venue"] == VENUE][-1]
    last_mid = {}
    for record in records:
        if record.get("type") == "decision" and "mid" in record["inputs"]:
            symbol = record["inputs"].get("symbol", "ETH/USDT")
            last_mid[symbol] = record["inputs"]["mid"]
    held = balances["balances"]
    values = {"BTC": held["BTC"] * last_mid["BTC/USDT"], "ETH": held["ETH"] * last_mid["ETH/USDT"]}
    total = sum(values.values()) + held["USDT"]
    for asset, value in values.items():
        assert abs(value / total - 0.3) <= 0.05, (asset, value / total)
    fills = [r for r in records if r.get("type") == "fill"]
    assert {f["symbol"] for f in fills} >= {"BTC/USDT", "ETH/USDT"}


# --- positions.csv during the run -------------------------------------------------------------


def test_positions_rows_every_n_fills_and_every_s_seconds_and_at_the_end(tmp_path: Path) -> None:
    h = Harness(positions_every_fills=2, positions_every_s=10.0)
    sink = ListSink()
    h.strategy.attach_exports(sink)
    first = h.quote()
    h.clock.advance(1.0)
    h.strategy.on_timer(h.clock())  # the first snapshot once there is a quote
    assert [row["trigger"] for row in sink.rows] == ["start"]
    decision = fill_resting(h, Side.BUY, first)
    assert len(sink.rows) == 1  # 1 fill: not yet
    fill_resting(h, Side.SELL, decision)
    fills_row = sink.rows[-1]
    assert fills_row["trigger"] == "fills" and fills_row["fills"] == 2
    assert fills_row["position"] == pytest.approx(0.0, abs=1e-12)
    # Bought at the bid, sold at the ask (no fees here): P&L is the spread captured.
    bid, ask = side_intent(first, Side.BUY), side_intent(first, Side.SELL)
    assert fills_row["pnl"] == pytest.approx((ask.price - bid.price) * 0.001)
    assert fills_row["cash"] == pytest.approx(fills_row["pnl"])
    assert (fills_row["venue"], fills_row["symbol"], fills_row["mark"]) == (VENUE, SYMBOL, MID)
    h.clock.advance(9.0)
    h.strategy.on_timer(h.clock())
    assert sink.rows[-1]["trigger"] == "fills"  # 9 s since the last row
    h.clock.advance(1.0)
    h.strategy.on_timer(h.clock())
    assert sink.rows[-1]["trigger"] == "interval"
    assert h.strategy.write_exports(tmp_path) == []  # the sink is not a file here
    assert sink.rows[-1]["trigger"] == "end"
    assert set(sink.rows[0]) == set(POSITION_COLUMNS)


def test_positions_export_off_when_both_triggers_are_zero() -> None:
    h = Harness(positions_every_fills=0, positions_every_s=0.0)
    sink = ListSink()
    h.strategy.attach_exports(sink)
    h.quote()
    h.clock.advance(100.0)
    h.strategy.on_timer(h.clock())
    assert sink.rows == []


def read_positions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


async def test_positions_csv_is_appended_during_a_backtest_of_the_btc_recording(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    """346 s of data, a row every 60 s of feed time: written while the run goes (the
    engine alone never calls write_exports), in the run's report folder."""
    mm = {"allow_quotes_inside_fees": True, "positions_every_s": 60.0,
          "positions_every_fills": 0}
    records = await decision_log(tmp_path, [ReplaySpec(shared_file(BTC_RECORDING))],
                                 run_id="pos", strategies={"inventory_mm": mm})
    rows = read_positions(tmp_path / "reports" / "pos" / "positions.csv")
    assert [row["trigger"] for row in rows] == ["start"] + ["interval"] * 5
    assert list(rows[0]) == list(POSITION_COLUMNS)
    stamps = [int(row["ts_ns"]) for row in rows]
    assert all(60e9 <= b - a < 62e9 for a, b in itertools.pairwise(stamps))
    fills = [r for r in records if r.get("type") == "fill"]
    for row in rows:  # every row agrees with the fills logged up to it
        upto = [f for f in fills if f["ts_ns"] <= int(row["ts_ns"])]
        assert int(row["fills"]) == len(upto)
        position = sum((1 if f["side"] == "buy" else -1) * f["qty"] for f in upto)
        assert float(row["position"]) == pytest.approx(position, abs=1e-12)
        pnl = float(row["cash"]) + float(row["position"]) * float(row["mark"])
        assert float(row["pnl"]) == pytest.approx(pnl, abs=1e-9)
    assert int(rows[-1]["fills"]) > 10


def test_the_csv_appender_keeps_rows_across_a_restart_and_never_raises(tmp_path: Path) -> None:
    from daemon.postmortem.exports import CsvAppender

    columns = ("ts", "pnl")
    CsvAppender(tmp_path / "run").append("positions.csv", columns, [("a", 1.0), ("b", 2.0)])
    # A new process of the same run (a crash, a restart): appends after what is there.
    again = CsvAppender(tmp_path / "run")
    again.append("positions.csv", columns, [("c", math.pi)])
    rows = read_positions(tmp_path / "run" / "positions.csv")
    assert [(r["ts"], float(r["pnl"])) for r in rows] == [("a", 1.0), ("b", 2.0),
                                                           ("c", math.pi)]
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    broken = CsvAppender(blocked / "run")  # its folder cannot be created
    broken.append("positions.csv", columns, [("a", 1.0)])
    broken.append("positions.csv", columns, [("b", 1.0)])
    assert broken.errors == 2 and broken.rows_written == 0 and again.rows_written == 1
