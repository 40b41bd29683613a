"""The Monte Carlo baseline: seeded random inventory targets, reached at the touch, with
inventory-mm's loss exit (issue 14, item 4; seed inventory-management-research).

Hand numbers: max_inventory 0.003 BTC on a 0.00001 lot is +-300 lots; numpy's generator
seeded 7 draws 267, 75, 111, 239 lots from [-300, 300], so the first target is 0.00267
BTC (long) and the second 0.00075. target_tolerance 0.05 of 0.003 is 0.00015 BTC.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from config.settings import InventoryMMSettings, RandomInventorySettings, VenueSettings
from daemon.core.model import Fill, OrderAck, OrderType, Quote, Side
from daemon.core.vocabulary import OrderStatus
from strategies.inventory_mm import InventoryMMStrategy
from strategies.random_inventory import RandomInventoryStrategy
from tests.helpers.strategy_fakes import (
    NS,
    Driver,
    FakeAccount,
    FakeClock,
    FakeExchange,
    FakeMarket,
    load_binance_recording,
)

VENUE, SYMBOL = "binance_spot", "BTC/USDT"
TICK, LOT = 0.01, 0.00001
BID, ASK = 60_000.00, 60_000.10


def ri_settings(**overrides: object) -> RandomInventorySettings:
    values: dict[str, object] = dict(venue=VENUE, symbol=SYMBOL, seed=7, max_inventory=0.003,
                                     retarget_interval_s=30.0, max_loss=100.0)
    values.update(overrides)
    return RandomInventorySettings(**values)


def venue_settings() -> VenueSettings:
    return VenueSettings(markets={SYMBOL: {"tick": TICK, "lot": LOT}}, stale_after_s=10.0)


class Harness:
    def __init__(self, **overrides: object) -> None:
        self.clock = FakeClock()
        self.market = FakeMarket()
        self.account = FakeAccount({VENUE: {"BTC": 1.0, "USDT": 100_000.0}})
        self.strategy = RandomInventoryStrategy(ri_settings(**overrides), venue_settings())
        self.strategy.bind(self.market, self.account, self.clock)

    def quote(self, bid: float = BID, ask: float = ASK, after_s: float = 0.0):
        self.clock.advance(after_s)
        quote = Quote(VENUE, SYMBOL, bid, 5.0, ask, 5.0, 0, self.clock())
        self.market.quotes[quote.key] = quote
        return self.strategy.on_quote(quote)

    def fill(self, intent, qty: float | None = None, price: float | None = None):
        self.strategy.on_ack(OrderAck(intent.client_order_id, VENUE, SYMBOL, OrderStatus.NEW,
                                      self.clock()))
        return self.strategy.on_fill(Fill(intent.client_order_id, VENUE, SYMBOL, intent.side,
                                          price or intent.price, qty or intent.qty, 0.0,
                                          "USDT", "maker", self.clock()))


def test_targets_are_the_seeded_draws_and_each_gap_rests_at_the_touch() -> None:
    h = Harness()
    first = h.quote()
    assert first.action == "quote" and first.reason.startswith("new target 0.00267 (draw 1)")
    assert (first.inputs["target"], first.inputs["gap"], first.inputs["seed"]) == \
        (0.00267, 0.00267, 7)
    (bid,) = first.intents  # the whole gap, at the best bid, post-only: the follow limit
    assert (bid.side, bid.type, bid.price, bid.qty) == (Side.BUY, OrderType.POST_ONLY, BID,
                                                         0.00267)
    # Filled: the target is reached, nothing rests and nothing new is drawn before 30 s.
    assert h.fill(bid) is None and not h.strategy.orders
    hold = h.strategy.on_timer(h.clock.advance(1.0))
    assert (hold.action, hold.reason) == ("hold", "target reached")
    assert h.quote(after_s=20.0) is None or h.strategy.target == 0.00267
    second = h.quote(after_s=10.0)  # 31 s after the first draw
    assert second.reason.startswith("new target 0.00075 (draw 2)")
    (ask,) = second.intents  # 0.00267 down to 0.00075: sell 0.00192 at the best ask
    assert (ask.side, ask.price, ask.qty) == (Side.SELL, ASK, pytest.approx(0.00192))
    assert [target for _, target in h.strategy.targets] == [0.00267, 0.00075]


def test_the_order_follows_the_touch_and_stops_within_the_tolerance() -> None:
    h = Harness()
    (bid,) = h.quote().intents
    moved = h.quote(BID + 20.0, ASK + 20.0, after_s=1.0)  # 3.3 bps away: re-placed there
    assert moved.cancels == [bid.client_order_id]
    (follow,) = moved.intents
    assert follow.price == BID + 20.0
    # Filled but 0.0001 short of the target: inside the 0.00015 tolerance, nothing rests.
    h.fill(follow, qty=0.00257, price=BID + 20.0)
    assert h.strategy.on_timer(h.clock.advance(1.0)).reason == "target reached"
    assert all(o.cancelling for o in h.strategy.orders.values())


def test_max_loss_exit_on_a_hand_computed_crash() -> None:
    """Long 0.00267 BTC bought at 60000.00; max_loss 10 $: at a mid of 57000.05 the P&L is
    0.00267 * -2999.95 = -8.01 (kept), at 56000.05 it is 0.00267 * -3999.95 = -10.68."""
    h = Harness(max_loss=10.0)
    (bid,) = h.quote().intents
    h.fill(bid)
    assert h.quote(57_000.0, 57_000.1, after_s=1.0) is None  # at target: nothing to do
    assert h.strategy.stopped_reason is None
    crash = h.quote(56_000.0, 56_000.1, after_s=1.0)
    assert crash.action == "max_loss_exit" and crash.strategy == "random-inventory"
    assert crash.inputs["pnl"] == pytest.approx(-10.6798665)
    (flatten,) = crash.intents
    assert (flatten.side, flatten.type, flatten.qty) == (Side.SELL, OrderType.MARKET, 0.00267)
    assert h.quote(after_s=40.0) is None and h.strategy.on_timer(h.clock()) is None


def test_max_loss_pct_of_starting_equity_is_the_same_exit_as_inventory_mm_s() -> None:
    """Starting equity 100,000 USDT + 1 BTC at the first mid 60,000.05 = 160,000.05;
    0.005 % of it is 8.0000025 $, smaller than max_loss 100: the -8.01 at 57,000.05 bites."""
    h = Harness(max_loss=100.0, max_loss_pct=0.005)
    assert h.strategy.settings.max_loss_pct == 0.005  # carried across to inventory-mm's
    (bid,) = h.quote().intents
    h.fill(bid)
    crash = h.quote(57_000.0, 57_000.1, after_s=1.0)
    assert crash.action == "max_loss_exit"
    assert crash.inputs["loss_limit_source"] == "max_loss_pct"
    assert crash.inputs["starting_equity"] == pytest.approx(160_000.05)
    assert crash.inputs["loss_limit"] == pytest.approx(8.0000025)


def test_settings_map_onto_inventory_mm_s_and_the_registry_builds_it() -> None:
    from config.settings import Settings
    from daemon.cli import build_parser
    from strategies import build

    settings = ri_settings(max_loss=12.0, delta_price_bps=0.5)
    mm = settings.inventory_mm()
    assert isinstance(mm, InventoryMMSettings)
    assert (mm.venue, mm.symbol, mm.max_inventory, mm.max_loss, mm.delta_price_bps) == \
        (VENUE, SYMBOL, 0.003, 12.0, 0.5)
    # Every setting is either the baseline's own or one of inventory-mm's.
    assert set(RandomInventorySettings.model_fields) - RandomInventorySettings.OWN <= \
        set(InventoryMMSettings.model_fields)
    strategy = build("random-inventory", Settings())
    assert isinstance(strategy, RandomInventoryStrategy)
    assert isinstance(strategy, InventoryMMStrategy)  # the loss exit is inventory-mm's code
    assert not strategy.reads_trades
    args = build_parser().parse_args(["--strategy", "random-inventory", "--mode", "backtest"])
    assert args.strategy == "random-inventory"


def test_seed_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from config.settings import load_settings

    monkeypatch.setenv("CRYPTOPIPE_STRATEGIES__RANDOM_INVENTORY__SEED", "11")
    monkeypatch.setenv("CRYPTOPIPE_STRATEGIES__RANDOM_INVENTORY__RETARGET_INTERVAL_S", "2m")
    settings = load_settings(env_file=None).strategies.random_inventory
    assert (settings.seed, settings.retarget_interval_s) == (11, 120.0)


# --- the recorded session ----------------------------------------------------------------


@pytest.fixture(scope="module")
def recording(shared_file) -> list:
    return load_binance_recording(shared_file("binance_spot_btcusdt_20240808.gz"))


def run_recording(events: list, **overrides: object) -> tuple[Driver, RandomInventoryStrategy,
                                                                 list[float]]:
    clock = FakeClock(events[0].local_ts_ns)
    account = FakeAccount({VENUE: {"BTC": 0.5, "USDT": 50_000.0}})
    strategy = RandomInventoryStrategy(ri_settings(**overrides), venue_settings())
    driver = Driver(strategy, FakeExchange(account), FakeMarket(), account, clock)
    inventories: list[float] = []
    driver.after_event = lambda: inventories.append(strategy.inventory)
    driver.feed(events)
    return driver, strategy, inventories


def decision_log(driver: Driver) -> list[tuple]:
    return [(d.ts_ns, d.action, d.reason, d.inputs, d.intents, d.cancels)
            for d in driver.decisions]


def test_same_seed_same_decisions_other_seeds_other_targets(recording: list) -> None:
    one, strategy, _ = run_recording(recording, seed=3)
    two, again, _ = run_recording(recording, seed=3)
    assert decision_log(one) == decision_log(two)
    assert strategy.targets == again.targets
    others = [run_recording(recording, seed=seed)[1].targets for seed in (4, 5)]
    draws = [[target for _, target in targets] for targets in (strategy.targets, *others)]
    assert draws[0] != draws[1] and draws[0] != draws[2] and draws[1] != draws[2]


def test_recorded_session_reaches_its_targets_within_the_limit(recording: list) -> None:
    driver, strategy, inventories = run_recording(recording)
    span_s = (recording[-1].local_ts_ns - recording[0].local_ts_ns) / NS  # ~346 s
    assert len(strategy.targets) == pytest.approx(span_s / 30.0, abs=1.0)
    times = [ts for ts, _ in strategy.targets]
    assert all(later - earlier >= 30 * NS for earlier, later in itertools.pairwise(times))
    assert all(abs(target) <= 0.003 for _, target in strategy.targets)
    assert max(abs(q) for q in inventories) <= 0.003 + 1e-12
    fills = driver.exchange.fills
    assert {f.side for f in fills} == {Side.BUY, Side.SELL}
    # Quoting at the touch reaches most targets before the next one is drawn.
    reached = sum(1 for d in driver.actions("hold") if d.reason == "target reached")
    assert reached > len(driver.actions("hold")) / 2
    assert driver.actions("max_loss_exit") == []
    assert strategy.inventory == pytest.approx(
        driver.exchange.balances(VENUE)["BTC"] - 0.5, abs=1e-12)
    last = next(e for e in reversed(recording) if isinstance(e, Quote))
    assert np.isfinite(strategy.pnl(last.mid))
