"""Issue 18: quiet rows, checked in bulk, give exactly the log of the per-event path.

A run of cached rows that changes nothing but the clocks and each market's latest quote
(inventory-mm's "no requote due" check passes, no paper order is crossed or traded
through, the risk gate's loss check passes, nothing is due by time) is checked over the
columns without building events; only the last quote of each market is replayed. Every
case here runs the same data four times (`quiet` on and off, the exact skip on and off)
and asks for the same decision log, byte for byte, and the same exports; each case's
settings make the strategy act a lot through one of the branches the quiet check must
respect, and the reference log is counted to show that it did (a case that never fills,
never exits, never breaches would prove nothing about them).
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

import daemon.backtest.cache as cache_module
import strategies
from adapters.recordings.replay import SAMPLE_FILES, ReplaySpec
from config.settings import Settings, load_settings
from daemon.backtest.cache import QUOTE, BacktestData
from daemon.backtest.engine import Backtest, BacktestResult, window_rows
from daemon.backtest.span import Span
from daemon.core.model import Decision, Quote
from daemon.market.bus import Bus
from daemon.postmortem.exports import exports_dir
from daemon.trading.paper import PaperExecutor
from strategies.inventory_mm import InventoryMMStrategy
from tests.helpers.caches import Caches

SPOT_SAMPLE, USDM_SAMPLE = SAMPLE_FILES  # 75 s of both recordings, in the repository
SPOT = "binance_spot_btcusdt_20240808.gz"  # ~6 minutes (../shared/data)
USDM = "binance_usdm_btcusdt_20240808.gz"
SECOND = 1_000_000_000
RUN = "quiet"  # every run has its own data directory and this run id: logs compare as bytes

#: Quotes at the touch, re-evaluated often: many quotes, cancels, fills of both kinds (a
#: resting order crossed by the touch, a print through it), direction flips, and balance
#: snapshots and positions rows often due by time.
BUSY: dict[str, Any] = {
    "strategies": {"inventory_mm": {
        "allow_quotes_inside_fees": True, "gamma": 0.01, "k_bps": 50.0,
        "requote_interval_s": 0.2, "delta_price_bps": 0.1, "order_qty": 0.01,
        "max_inventory": 0.05, "one_sided_fills_limit": 2, "flip_release_inventory": 0.2,
        "positions_every_s": 5.0, "positions_every_fills": 7}},
    "postmortem": {"balance_snapshot_interval_s": 1.0},
}


def merged(base: dict[str, Any], **changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with each section's fields updated (one level deep below `strategies`)."""
    out = orjson.loads(orjson.dumps(base))
    for section, fields in changes.items():
        target = out.setdefault(section, {})
        for name, value in fields.items():
            if isinstance(value, dict) and isinstance(target.get(name), dict):
                target[name] = {**target[name], **value}
            else:
                target[name] = value
    return out


def busy(**mm: Any) -> dict[str, Any]:
    """BUSY with inventory-mm's settings changed."""
    return merged(BUSY, strategies={"inventory_mm": mm})


#: BUSY without fees and five times the size: P&L moves with the mid more than with each
#: fill, so the loss limits are crossed by a quote (the per-quote checks), not by a fill.
LOSSY = merged(busy(order_qty=0.05, max_inventory=0.2, max_loss=2.5),
               venues={"binance_spot": {"maker_fee_bps": 0.0}})
#: LOSSY stopped by the risk gate's daily loss limit (the kill switch) instead.
DAILY_LOSS = merged(LOSSY, strategies={"inventory_mm": {"max_loss": 1e6}},
                    risk={"daily_loss_limit": 2.5})


#: A second market on the venue (the USD-M sample relabelled ETH/USDT, real prices of
#: another book), both assets rebalanced to target weights in slices; its taker fees
#: bring the max-loss exit a third of the way in.
TWO_MARKETS_SPECS = [ReplaySpec(SPOT_SAMPLE),
                     ReplaySpec(USDM_SAMPLE, "binance_spot", "ETH/USDT")]
TWO_MARKETS = merged(
    busy(target_weights={"BTC": 0.35, "ETH": 0.2}, rebalance_threshold=0.02, max_loss=70.0),
    venues={"binance_spot": {"balances": {"BTC": 0.5, "ETH": 1.0, "USDT": 50_000.0},
                             "markets": {"BTC/USDT": {"tick": 0.01, "lot": 1e-5},
                                         "ETH/USDT": {"tick": 0.1, "lot": 0.001}}}},
    risk={"max_order_notional": 3_000.0})


@dataclass
class Run:
    result: BacktestResult
    log: bytes
    exports: dict[str, bytes]

    def records(self) -> Iterator[dict[str, Any]]:
        for line in self.log.splitlines():
            yield orjson.loads(line)

    def counts(self) -> Counter[str]:
        """Records by type, decisions by action ("decision:quote"), acks by status, and
        the decisions that start or end a direction flip ("flip")."""
        counts: Counter[str] = Counter()
        for record in self.records():
            kind = record["type"]
            counts[kind] += 1
            if kind == "decision":
                counts[f"decision:{record['action']}"] += 1
                counts["flip"] += "direction flip" in record["reason"]
            elif kind == "ack":
                counts[f"ack:{record['status']}"] += 1
        return counts


def settings_for(data_dir: Path, overrides: dict[str, Any]) -> Settings:
    return load_settings({"data_dir": data_dir, **overrides}, env_file=None)


def finished(result: BacktestResult, data_dir: Path) -> Run:
    exports = exports_dir(data_dir, RUN)
    files = sorted(exports.iterdir()) if exports.is_dir() else []
    return Run(result, b"".join(path.read_bytes() for path in result.log_files),
               {path.name: path.read_bytes() for path in files})


async def backtest(caches: Caches, data_dir: Path, specs: list[ReplaySpec],
                   overrides: dict[str, Any], *, quiet: bool | None, skip: bool = True,
                   strategy: str = "inventory-mm", span: Span | None = None,
                   bus: Bus | None = None) -> Run:
    await caches.load(specs, data_dir)
    settings = settings_for(data_dir, overrides)
    options: dict[str, Any] = {} if quiet is None else {"quiet": quiet}
    engine = Backtest(settings, strategy, specs, RUN, skip=skip, span=span, bus=bus,
                      **options)
    return finished(await engine.run(), data_dir)


class Branches:
    """Paper fills by how they came (a resting order crossed by the opposite touch, or a
    print through it), counted in the reference run only: the log does not tell them
    apart, and a case meant to exercise both must show that it did."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fills: Counter[str] = Counter()
        self.counting = False
        for name in ("_cross_resting", "_trade_through"):
            monkeypatch.setattr(PaperExecutor, name, self._counted(name))

    def _counted(self, name: str) -> Callable[..., None]:
        original = getattr(PaperExecutor, name)

        def counted(paper: PaperExecutor, *args: Any) -> None:
            before = paper._fill_seq
            original(paper, *args)
            if self.counting:
                self.fills[name] += paper._fill_seq - before

        return counted


async def assert_quiet_is_exact(caches: Caches, root: Path, specs: list[ReplaySpec],
                                overrides: dict[str, Any],
                                branches: Branches | None = None,
                                span: Span | None = None, strategy: str = "inventory-mm",
                                ) -> dict[tuple[bool, bool], Run]:
    """quiet on and off, skip on and off: one decision log, one set of exports, the same
    figures; the quiet runs checked rows in bulk and ran fewer through the per-event
    path. Returns the runs by (skip, quiet); (False, False) is the reference (every row
    built and dispatched)."""
    runs: dict[tuple[bool, bool], Run] = {}
    for skip in (False, True):
        for quiet in (False, True):
            counting = branches is not None and not skip and not quiet
            if branches is not None:
                branches.counting = counting
            runs[skip, quiet] = await backtest(
                caches, root / f"skip-{skip}-quiet-{quiet}", specs, overrides, quiet=quiet,
                skip=skip, span=span, strategy=strategy)
    if branches is not None:
        branches.counting = False
    reference = runs[False, False]
    assert reference.log, "no decision log"
    assert reference.result.processed == reference.result.events
    for (skip, quiet), run in runs.items():
        where = f"skip={skip} quiet={quiet}"
        assert run.log == reference.log, f"{where}: {first_difference(run.log, reference.log)}"
        assert run.exports == reference.exports, where
        for figure in ("events", "quotes", "trades", "records", "decisions", "orders",
                       "fills", "first_ts_ns", "last_ts_ns"):
            assert getattr(run.result, figure) == getattr(reference.result, figure), (
                where, figure)
        if quiet:
            assert run.result.quiet > 0, f"{where}: no row was checked in bulk"
            assert run.result.processed < runs[skip, False].result.processed, where
            assert run.result.processed + run.result.quiet <= run.result.events, where
        else:
            assert run.result.quiet == 0, where
    return runs


def first_difference(got: bytes, want: bytes) -> str:
    """The first record that differs, both versions (a failure says where at once)."""
    got_lines, want_lines = got.splitlines(), want.splitlines()
    for index, (line, expected) in enumerate(zip(got_lines, want_lines, strict=False)):
        if line != expected:
            return (f"record {index} differs:\n quiet run: {line.decode()[:1500]}\n"
                    f" reference: {expected.decode()[:1500]}")
    return f"{len(got_lines)} records against {len(want_lines)}"


# -- the matrix: every branch of the quiet check, on the repository's samples ------------

#: name -> (overrides, minimum counts in the reference log). Each minimum says what the
#: case is for: it fails if the data and settings stop producing it.
CASES: dict[str, tuple[dict[str, Any], dict[str, int]]] = {
    # The defaults: quotes well away from the touch, holds on every timer, no fills.
    "defaults": ({}, {"decision:hold": 50, "decision:quote": 20}),
    # Many requotes and fills of both kinds, direction flips, snapshots due every second.
    "busy": (BUSY, {"decision:quote": 100, "fill": 50, "balance": 60, "flip": 4}),
    # The max-loss exit (the strategy's own check, on a quote's mid) a third of the way
    # in, and the risk gate's daily loss limit firing the kill switch there: no fees, and
    # five times the size, so that P&L moves with the mid rather than with each fill.
    "max-loss": (LOSSY, {"decision:max_loss_exit": 1, "fill": 30}),
    "max-loss-pct": (merged(LOSSY, strategies={"inventory_mm": {"max_loss": 100.0,
                                                                "max_loss_pct": 0.003}}),
                     {"decision:max_loss_exit": 1, "fill": 30}),
    "daily-loss": (DAILY_LOSS, {"decision:kill": 1, "fill": 30}),
    # The spread filter with its hysteresis: narrow most of the time (1 tick), wide now
    # and then; released by the margin or by the hold time.
    "spread-filter": (busy(min_market_spread_bps=0.002, min_market_spread_margin_bps=0.05,
                           min_market_spread_hold_s=0.3),
                      {"decision:skip": 20, "decision:quote": 20}),
    # The minimum at the very spread (in bps, as Quote.spread_bps computes it) of 410 of
    # the sample's spot quotes, one tick wide at one mid: those are not narrow, a tick at
    # a higher mid is. The filter flips at almost every quote.
    "spread-at-the-minimum": (busy(min_market_spread_bps=0.0016173835088888191,
                                   min_market_spread_margin_bps=1e-6,
                                   min_market_spread_hold_s=0.05),
                              {"decision:skip": 50, "decision:quote": 50}),
    # No recorded books (fills at the touch), no latency: an order lands at the very time
    # of the quote that caused it.
    "no-depth-no-latency": (merged(BUSY, execution={"walk_depth": False,
                                                    "submit_latency_ms": 0.0,
                                                    "cancel_latency_ms": 0.0}),
                            {"decision:quote": 100, "fill": 40}),
    # Quotes stale after 50 ms: timers find the last quote old, the strategy skips.
    "stale": (merged(BUSY, venues={"binance_spot": {"stale_after_s": 0.05}}),
              {"decision:skip": 10, "fill": 10}),
    # A portfolio rebalance of the base asset (IOCs in the quoted market).
    "rebalance": (busy(target_base_weight=0.6, rebalance_threshold=0.05),
                  {"decision:portfolio_rebalance": 2}),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_quiet_rows_give_the_per_event_log(
    caches: Caches, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str,
) -> None:
    overrides, minimums = CASES[case]
    branches = Branches(monkeypatch)
    runs = await assert_quiet_is_exact(caches, tmp_path, [ReplaySpec(SPOT_SAMPLE),
                                                          ReplaySpec(USDM_SAMPLE)],
                                       overrides, branches)
    counts = runs[False, False].counts()
    for kind, least in minimums.items():
        assert counts[kind] >= least, (case, kind, counts)
    if case == "busy":  # both ways a resting order fills, many times each
        assert branches.fills["_cross_resting"] > 20, branches.fills
        assert branches.fills["_trade_through"] > 10, branches.fills
    if case in ("max-loss", "max-loss-pct", "daily-loss"):
        assert 0.2 < stopped_by_a_quote(runs[False, False]) < 0.6


def stopped_by_a_quote(run: Run) -> float:
    """The one max-loss exit or kill of the run, at a quote (not at the time of the record
    before it: a fill), as the fraction of the data's time span run before it."""
    records = list(run.records())
    stops = [at for at, record in enumerate(records)
             if record.get("action") in ("max_loss_exit", "kill")]
    assert len(stops) == 1, stops
    at = stops[0]
    assert records[at - 1]["ts_ns"] < records[at]["ts_ns"], records[at - 1]
    first, last = run.result.first_ts_ns, run.result.last_ts_ns
    return (records[at]["ts_ns"] - first) / (last - first)


async def test_quiet_rows_across_tiny_chunks(
    caches: Caches, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunks of 997 rows (a prime: boundaries fall anywhere): a quiet run never crosses
    one unnoticed, and the state carried over is the per-event path's."""
    monkeypatch.setattr(cache_module, "CHUNK_ROWS", 997, raising=False)
    specs = [ReplaySpec(SPOT_SAMPLE), ReplaySpec(USDM_SAMPLE)]
    runs = await assert_quiet_is_exact(caches, tmp_path, specs, BUSY)
    assert runs[False, False].counts()["fill"] > 40


async def test_quiet_rows_in_a_second_market_the_strategy_rebalances_in(
    caches: Caches, tmp_path: Path,
) -> None:
    """Portfolio rebalancing across two markets: the other market's quotes move the mark
    of the strategy's trades there, which its loss check counts at the next quote of its
    own market; the exit comes at such a quote."""
    runs = await assert_quiet_is_exact(caches, tmp_path, TWO_MARKETS_SPECS, TWO_MARKETS)
    records = list(runs[False, False].records())
    rebalanced = Counter(record["inputs"]["symbol"] for record in records
                         if record.get("action") == "portfolio_rebalance")
    assert rebalanced["ETH/USDT"] > 5 and rebalanced["BTC/USDT"] > 5, rebalanced
    assert 0.2 < stopped_by_a_quote(runs[False, False]) < 0.6


async def test_quiet_rows_quoting_the_perpetual(caches: Caches, tmp_path: Path) -> None:
    """inventory-mm on the USD-M perpetual (margin, no base asset), the spot market the
    one it does not trade: its rows are the other market's."""
    overrides = merged(
        BUSY,
        venues={"binance_usdm": {"enabled": True, "balances": {"USDT": 100_000.0},
                                 "markets": {"BTC/USDT:USDT": {"tick": 0.1, "lot": 0.001}}}},
        strategies={"inventory_mm": {"venue": "binance_usdm", "symbol": "BTC/USDT:USDT",
                                     "k_bps": 5.0}})
    runs = await assert_quiet_is_exact(caches, tmp_path, [ReplaySpec(SPOT_SAMPLE),
                                                          ReplaySpec(USDM_SAMPLE)], overrides)
    counts = runs[False, False].counts()
    assert counts["decision:quote"] > 100 and counts["fill"] > 20, counts


@pytest.mark.parametrize("stale_after_s", [10.0, 0.02])
async def test_quiet_rows_with_receive_times_that_step_back(caches: Caches, tmp_path: Path,
                                                             stale_after_s: float) -> None:
    """Two connections writing one file stamp a few frames early: a quiet run's clock is
    the newest time seen, never a row's own earlier one, and an order due in between
    still lands where it did. With quotes stale after 20 ms, each one stamped 30 ms early
    is stale by the clock when it comes (not by its own time)."""
    lines = gzip.decompress(SPOT_SAMPLE.read_bytes()).splitlines(keepends=True)
    for index in range(0, len(lines), 7):
        stamp, _, frame = lines[index].partition(b" ")
        lines[index] = b"%d %s" % (int(stamp) - 30_000_000, frame)  # 30 ms back
    skewed = tmp_path / "recordings" / "binance_spot_btcusdt_20240808_skewed.gz"
    skewed.parent.mkdir()
    skewed.write_bytes(gzip.compress(b"".join(lines)))
    overrides = merged(BUSY, venues={"binance_spot": {"stale_after_s": stale_after_s}})
    runs = await assert_quiet_is_exact(caches, tmp_path / "runs",
                                       [ReplaySpec(skewed), ReplaySpec(USDM_SAMPLE)], overrides)
    assert runs[False, False].counts()["fill"] > 25
    stale_skips = sum(record.get("reason") == "stale quote"
                      for record in runs[False, False].records())
    assert (stale_skips > 100) is (stale_after_s < 0.03), stale_skips


async def test_quiet_rows_among_stale_and_crossed_quotes(caches: Caches,
                                                         tmp_path: Path) -> None:
    """Quotes the feed flagged stale (after a gap) and crossed quotes, which recordings
    rarely hold: every 37th spot quote flagged, every 101st with its sides swapped, as
    many others locked (the bid raised to the ask) (the columns in memory, run as a
    stepped run over all rows). The strategy skips on them,
    the gate and the paper executor leave them alone: none of them is a quiet row's."""
    specs = [ReplaySpec(SPOT_SAMPLE), ReplaySpec(USDM_SAMPLE)]
    data = (await caches.load(specs)).in_memory()
    spot_quotes = np.flatnonzero((data.kind == QUOTE) & (data.key == 0))
    stale = data.stale.copy()
    stale[spot_quotes[::37]] = True
    bid, bid_qty, ask, ask_qty = (data.price.copy(), data.qty.copy(), data.ask.copy(),
                                  data.ask_qty.copy())
    crossed = spot_quotes[5::101]
    bid[crossed], ask[crossed] = data.ask[crossed], data.price[crossed]
    bid_qty[crossed], ask_qty[crossed] = data.ask_qty[crossed], data.qty[crossed]
    locked = spot_quotes[55::101]  # bid == ask: crossed too (Quote.crossed is bid >= ask)
    bid[locked] = data.ask[locked]
    flagged = dataclasses.replace(data, stale=stale, price=bid, qty=bid_qty, ask=ask,
                                  ask_qty=ask_qty)
    logs: dict[tuple[bool, bool], bytes] = {}
    counts: Counter[str] = Counter()
    for skip in (False, True):
        for quiet in (False, True):
            data_dir = tmp_path / f"skip-{skip}-quiet-{quiet}"
            engine = Backtest(settings_for(data_dir, BUSY), "inventory-mm", specs, RUN,
                              skip=skip, quiet=quiet)
            engine.open(flagged)
            assert not engine.run_until(None)
            run = finished(engine.finish(), data_dir)
            assert (run.result.quiet > 0) is quiet
            logs[skip, quiet] = run.log
            if not (skip or quiet):
                counts = run.counts()
                reasons = Counter(record["reason"] for record in run.records()
                                  if record.get("action") == "skip")
    for key, log in logs.items():
        assert log == logs[False, False], f"{key}: {first_difference(log, logs[False, False])}"
    assert reasons["stale quote"] > 20 and reasons["crossed quote"] > 40, reasons
    assert counts["fill"] > 40, counts


def drawn_settings(draw: random.Random) -> dict[str, Any]:
    """inventory-mm, the gate, paper and the venue with settings drawn at random (seeded):
    interactions no hand-picked case thought of."""
    mm = {name: draw.choice(values) for name, values in {
        "allow_quotes_inside_fees": [True, True, False],
        "gamma": [0.001, 0.01, 0.1, 1.0], "k_bps": [0.5, 5.0, 50.0, 500.0, "auto"],
        "requote_interval_s": [0.05, 0.2, 1.0, 3.0], "delta_price_bps": [0.0, 0.05, 1.0],
        "delta_size": [0.0, 0.2, 1.0], "order_qty": [0.001, 0.01, 0.05],
        "one_sided_fills_limit": [0, 1, 2, 10], "max_loss": [1.0, 3.0, 10.0, 100.0],
        "min_market_spread_bps": [0.0, 0.0, 0.0017, 0.002, 0.01],
        "min_market_spread_margin_bps": [0.0, 0.001, 0.5],
        "min_market_spread_hold_s": [0.001, 0.1, 5.0], "horizon_s": [1.0, 60.0],
        "volatility_window_s": [5.0, 60.0, 360.0], "k_auto_min_trades": [2, 5, 30],
        "k_auto_floor_bps": [0.05, 5.0, 50.0], "positions_every_s": [0.0, 1.0, 60.0],
        "positions_every_fills": [0, 1, 10]}.items()}
    mm["max_inventory"] = mm["order_qty"] * draw.choice([1, 4, 10])
    return {
        "strategies": {"inventory_mm": mm},
        "postmortem": {"balance_snapshot_interval_s": draw.choice([0.5, 1.0, 60.0])},
        "execution": {"walk_depth": draw.random() < 0.5,
                      "submit_latency_ms": draw.choice([0.0, 1.0, 20.0]),
                      "cancel_latency_ms": draw.choice([0.0, 5.0, 20.0])},
        "risk": {"daily_loss_limit": draw.choice([1.0, 5.0, 1000.0]),
                 "max_orders_per_s": draw.choice([5.0, 20.0]),
                 "max_open_orders": draw.choice([2, 20])},
        "venues": {"binance_spot": {"maker_fee_bps": draw.choice([0.0, 1.0, 10.0]),
                                    "stale_after_s": draw.choice([0.02, 0.5, 10.0]),
                                    "max_orders_per_s": draw.choice([2.0, 10.0])}},
    }


@pytest.mark.parametrize("seed", range(6))
async def test_quiet_rows_under_settings_drawn_at_random(
    caches: Caches, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int,
) -> None:
    draw = random.Random(seed)
    overrides = drawn_settings(draw)
    skip = draw.random() < 0.5
    monkeypatch.setattr(cache_module, "CHUNK_ROWS", draw.choice([65_536, 997, 5_003]),
                        raising=False)
    specs = [ReplaySpec(SPOT_SAMPLE), ReplaySpec(USDM_SAMPLE)]
    runs = {quiet: await backtest(caches, tmp_path / str(quiet), specs, overrides,
                                  quiet=quiet, skip=skip) for quiet in (False, True)}
    # k fitted from trades takes the per-event path (its trades are all events).
    assert (runs[True].result.quiet > 0) is (overrides["strategies"]["inventory_mm"]["k_bps"]
                                             != "auto"), overrides
    assert runs[True].log == runs[False].log, (
        f"{overrides} skip={skip}: {first_difference(runs[True].log, runs[False].log)}")
    assert runs[True].exports == runs[False].exports, overrides


# -- exact boundaries: the quiet check must compute what the per-event path computes -----

#: name -> (specs, overrides, the decision that stops the strategy). Each is run once per
#: event to find the exact P&L at which its loss limit fired (a quote's); then the limit
#: is set to that P&L, and to the next float past it: at one the limit fires at that very
#: quote, at the other it does not. A quiet check that marks P&L with other arithmetic
#: (one rounding apart) or compares with < for <= takes the wrong one.
LIMITS: dict[str, tuple[str, dict[str, Any], str]] = {
    "max-loss": ("samples", LOSSY, "max_loss_exit"),
    "max-loss-two-markets": ("two markets", TWO_MARKETS, "max_loss_exit"),
    "daily-loss": ("samples", DAILY_LOSS, "kill"),
    # The gate's day rolls over at the first quote of the new day, midnight UTC (its P&L
    # then is the new day's start): the breach after it is against it.
    "daily-loss-across-midnight": ("across midnight", merged(
        DAILY_LOSS, risk={"daily_loss_limit": 2.0}), "kill"),
}
#: Midnight UTC 21.46 s into the samples (received from 23:54:13.9): exactly at a spot
#: quote (the day's end is exclusive), whose mid the next one, 3 ms later, changes: the
#: gate's new day starts at that quote's mark, not the next one's.
TO_MIDNIGHT_NS = 324_452_299_411


def shifted(path: Path, into: Path, by_ns: int) -> Path:
    """The recording with every receive time `by_ns` later (exchange times as they were)."""
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    for index, line in enumerate(lines):
        stamp, _, frame = line.partition(b" ")
        lines[index] = b"%d %s" % (int(stamp) + by_ns, frame)
    into.mkdir(parents=True, exist_ok=True)
    moved = into / path.name
    moved.write_bytes(gzip.compress(b"".join(lines)))
    return moved


def spec_set(name: str, root: Path) -> list[ReplaySpec]:
    if name == "two markets":
        return TWO_MARKETS_SPECS
    if name == "across midnight":
        return [ReplaySpec(shifted(path, root / "midnight", TO_MIDNIGHT_NS))
                for path in (SPOT_SAMPLE, USDM_SAMPLE)]
    return [ReplaySpec(SPOT_SAMPLE), ReplaySpec(USDM_SAMPLE)]


async def pnl_at_the_stop(caches: Caches, data_dir: Path, specs: list[ReplaySpec],
                          overrides: dict[str, Any], action: str) -> tuple[float, int]:
    """(P&L the limit was checked against, time) where the strategy stopped, per event:
    the strategy's own from its exit's inputs; the risk gate's day P&L when the kill
    switch fired."""
    await caches.load(specs, data_dir)
    engine = Backtest(settings_for(data_dir, overrides), "inventory-mm", specs, RUN,
                      skip=False, quiet=False)
    executor = engine.executor
    fired: list[float] = []
    executor.kill_switch.on_fire(  # type: ignore[attr-defined]
        lambda _reason, at: fired.append(executor.gate.daily_pnl(at)))  # type: ignore[attr-defined]
    run = finished(await engine.run(), data_dir)
    stop = next(record for record in run.records() if record.get("action") == action)
    if action == "kill":
        assert len(fired) == 1
        return fired[0], stop["ts_ns"]
    return stop["inputs"]["pnl"], stop["ts_ns"]


@pytest.mark.parametrize("case", list(LIMITS))
async def test_a_loss_limit_at_the_exact_pnl_of_a_quote(caches: Caches, tmp_path: Path,
                                                         case: str) -> None:
    specs_name, overrides, action = LIMITS[case]
    specs = spec_set(specs_name, tmp_path)
    pnl, stopped_at = await pnl_at_the_stop(caches, tmp_path / "found", specs, overrides,
                                            action)
    assert pnl < 0.0
    if specs_name == "across midnight":  # after the day rolled over; two days' logs
        assert stopped_at % (86_400 * SECOND) > 5 * SECOND
    # max_loss: exits when P&L < -max_loss; the daily limit: fires when P&L <= -limit.
    if action == "max_loss_exit":
        section, name, fires = "strategies", "max_loss", {
            -pnl: False, math.nextafter(-pnl, 0.0): True}
    else:
        section, name, fires = "risk", "daily_loss_limit", {
            -pnl: True, math.nextafter(-pnl, math.inf): False}
    for limit, there in fires.items():
        change = {"inventory_mm": {name: limit}} if section == "strategies" else {name: limit}
        runs = await assert_quiet_is_exact(caches, tmp_path / repr(limit), specs,
                                           merged(overrides, **{section: change}))
        stops = [record["ts_ns"] for record in runs[False, False].records()
                 if record.get("action") == action]
        assert (stops[:1] == [stopped_at]) is there, (limit, stops, stopped_at)
        assert len(runs[True, True].result.log_files) == 1 + (specs_name == "across midnight")


def on_the_millisecond(path: Path, into: Path) -> Path:
    """The recording with every receive time cut to its millisecond (a few rows share
    one), so timers, order latencies and snapshots fall due at the very time of a row."""
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    for index, line in enumerate(lines):
        stamp, _, frame = line.partition(b" ")
        lines[index] = b"%d %s" % (int(stamp) // 1_000_000 * 1_000_000, frame)
    into.mkdir(parents=True, exist_ok=True)
    cut = into / path.name
    cut.write_bytes(gzip.compress(b"".join(lines)))
    return cut


async def test_quiet_rows_when_something_falls_due_at_the_very_time_of_a_row(
    caches: Caches, tmp_path: Path,
) -> None:
    """Receive times on the millisecond: the 200 ms timer, the 20 ms latencies and the
    1 s balance snapshots fall due exactly at a row's time, often, and several rows share
    a time. What is due at a row's time runs at that row, before its quote, as it does
    per event: a quiet run ends before it."""
    specs = [ReplaySpec(on_the_millisecond(path, tmp_path / "recordings"))
             for path in (SPOT_SAMPLE, USDM_SAMPLE)]
    runs = await assert_quiet_is_exact(caches, tmp_path / "runs", specs, BUSY)
    # Records one latency, one timer interval or one snapshot interval after another:
    # something fell due at the very time of a row and ran there.
    times = {record["ts_ns"] for record in runs[False, False].records()}
    on_time = Counter(after for time in times for after in (20, 200, 1000)
                      if time + after * 1_000_000 in times)
    assert on_time[20] > 60 and on_time[200] > 30 and on_time[1000] > 5, on_time
    assert runs[False, False].counts()["fill"] > 40


# -- stepped runs and spans ---------------------------------------------------------------


async def test_a_span_runs_its_rows_alike_with_quiet_rows(caches: Caches,
                                                            tmp_path: Path) -> None:
    specs = [ReplaySpec(SPOT_SAMPLE), ReplaySpec(USDM_SAMPLE)]
    data = await caches.load(specs)
    first = int(data.local_ts_ns[0])
    span = Span(first + 20 * SECOND, first + 55 * SECOND)
    runs = await assert_quiet_is_exact(caches, tmp_path, specs, BUSY, span=span)
    result = runs[False, False].result
    assert 0 < result.events < len(data) and result.fills > 20


def step_through(engine: Backtest, data: BacktestData, every_ns: int,
                 window: tuple[int, int] | None = None) -> tuple[BacktestResult, int]:
    """open, run_until every `every_ns` of data time until the data runs out, finish."""
    engine.open(data, window)
    until = int(data.local_ts_ns[window[0] if window else 0]) + every_ns
    steps = 0
    while engine.run_until(until):
        steps += 1
        assert engine.clock.now_ns >= until
        until += every_ns
    return engine.finish(), steps


@pytest.mark.parametrize(("every_s", "windowed"), [(0.25, False), (1.0, True)])
async def test_a_stepped_run_with_quiet_rows_writes_the_plain_runs_log(
    caches: Caches, tmp_path: Path, every_s: float, windowed: bool,
) -> None:
    """A pause on time comes right after the row that brings the clock there: a quiet
    run must stop short of it, so the steps land where the per-event path's land."""
    specs = [ReplaySpec(SPOT_SAMPLE), ReplaySpec(USDM_SAMPLE)]
    data = await caches.load(specs)
    window = None
    if windowed:
        first = int(data.local_ts_ns[0])
        window = window_rows(data, first + 10 * SECOND, first + 60 * SECOND)
    logs: dict[tuple[str, bool], bytes] = {}
    for how in ("stepped", "plain"):
        for quiet in (False, True):
            data_dir = tmp_path / f"{how}-{quiet}"
            settings = settings_for(data_dir, BUSY)
            if how == "plain":
                await caches.load(specs, data_dir)
            engine = Backtest(settings, "inventory-mm", specs, RUN, quiet=quiet)
            if how == "stepped":
                result, steps = step_through(engine, data, int(every_s * SECOND), window)
                assert steps > 40
            elif window is None:
                result = await engine.run()
            else:  # the plain run of a window is a stepped run without pauses
                engine.open(data, window)
                assert not engine.run_until(None)
                result = engine.finish()
            assert (result.quiet > 0) is quiet, (how, quiet, result.quiet)
            logs[how, quiet] = finished(result, data_dir).log
    reference = logs["plain", False]
    assert reference.count(b'"type":"fill"') > 20
    for key, log in logs.items():
        assert log == reference, f"{key}: {first_difference(log, reference)}"


# -- the full recordings ------------------------------------------------------------------


async def test_quiet_rows_over_the_full_recordings(
    caches: Caches, tmp_path: Path, shared_file: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """~6 minutes of both recordings (125k events), in chunks of 20,011 rows, quoting
    busily until the risk gate's daily loss limit fires the kill switch half-way; quiet
    from there on."""
    monkeypatch.setattr(cache_module, "CHUNK_ROWS", 20_011, raising=False)
    specs = [ReplaySpec(shared_file(SPOT)), ReplaySpec(shared_file(USDM))]
    overrides = merged(DAILY_LOSS, risk={"daily_loss_limit": 20.0})
    runs = await assert_quiet_is_exact(caches, tmp_path, specs, overrides)
    counts = runs[False, False].counts()
    assert counts["fill"] > 50 and counts["decision:quote"] > 100, counts
    assert 0.3 < stopped_by_a_quote(runs[False, False]) < 0.7


# -- where quiet rows do not apply: the old path, silently --------------------------------

#: Runs the quiet check cannot speak for: they take the per-event path with the exact skip,
#: as before quiet rows (the same rows run, not merely the same log).
INELIGIBLE: dict[str, dict[str, Any]] = {
    # Every quote and print may move a paper order's queue position.
    "probabilistic queue": merged(BUSY, execution={"queue_model": "probabilistic"}),
    # The gate polls the flag file at every event.
    "kill switch flag file": merged(BUSY, risk={
        "kill_switch_file": "/nonexistent/cryptopipe-quiet-kill"}),
    # k fitted from the trades: every trade of its market is an event for the strategy,
    # stretches would be a few rows long (not worth it, 2baba5f).
    "k auto": busy(k_bps="auto", k_auto_min_trades=5, k_auto_floor_bps=20.0,
                   volatility_window_s=20.0),
    # The synthetic market's quotes are published from every quote of its legs.
    "synthetic cross": merged(BUSY, synthetic={"crosses": [
        {"symbol": "BTC/BTC", "base_leg": "binance_spot:BTC/USDT",
         "quote_leg": "binance_usdm:BTC/USDT:USDT"}]}),
}


@pytest.mark.parametrize("case", list(INELIGIBLE))
async def test_an_ineligible_run_takes_the_per_event_path(caches: Caches, tmp_path: Path,
                                                            case: str) -> None:
    specs = [ReplaySpec(SPOT_SAMPLE), ReplaySpec(USDM_SAMPLE)]
    runs = {quiet: await backtest(caches, tmp_path / str(quiet), specs, INELIGIBLE[case],
                                  quiet=quiet) for quiet in (False, True)}
    assert runs[True].result.quiet == 0
    assert runs[True].result.processed == runs[False].result.processed  # the skip kept
    assert runs[True].result.processed < runs[True].result.events
    assert runs[True].log == runs[False].log and runs[True].result.records > 50


class SeesEveryQuote(InventoryMMStrategy):
    """inventory-mm with an `on_quote` of its own (it notes every quote it is given): the
    quiet check, which mirrors inventory-mm's, cannot speak for it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[int] = []

    def on_quote(self, quote: Quote) -> Decision | None:
        self.seen.append(quote.local_ts_ns)
        return super().on_quote(quote)


async def test_a_strategy_overriding_on_quote_sees_every_quote(
    caches: Caches, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[SeesEveryQuote] = []

    def build(settings: Settings) -> SeesEveryQuote:
        mm = settings.strategies.inventory_mm
        built.append(SeesEveryQuote(mm, settings.venues[mm.venue]))
        return built[-1]

    monkeypatch.setitem(strategies.STRATEGIES, "inventory-mm", build)
    specs = [ReplaySpec(SPOT_SAMPLE), ReplaySpec(USDM_SAMPLE)]
    runs = {quiet: await backtest(caches, tmp_path / str(quiet), specs, BUSY, quiet=quiet)
            for quiet in (False, True)}
    assert runs[True].result.quiet == 0
    # Every spot quote (6,299), and the USD-M quotes run because something was due.
    assert built[0].seen == built[1].seen and len(built[1].seen) > 6_299
    assert runs[True].log == runs[False].log


async def test_random_inventory_quiet_rows_give_the_per_event_log(caches: Caches,
                                                                   tmp_path: Path) -> None:
    """The Monte Carlo baseline is inventory-mm with its own targets (its `_requote`), the
    same callbacks: quiet rows apply, and exactly."""
    overrides = {"strategies": {"random_inventory": {"retarget_interval_s": 5.0,
                                                     "requote_interval_s": 0.2}}}
    runs = await assert_quiet_is_exact(caches, tmp_path, [ReplaySpec(SPOT_SAMPLE),
                                                          ReplaySpec(USDM_SAMPLE)], overrides,
                                       strategy="random-inventory")
    assert runs[False, False].counts()["fill"] > 20


async def test_a_bus_subscriber_sees_every_quote_quiet_or_not(caches: Caches,
                                                              tmp_path: Path) -> None:
    """Something else listening on the backtest's bus (a sink, as a recorder or a watch
    view would be) gets every quote: no row of its markets is left out in bulk."""
    specs = [ReplaySpec(SPOT_SAMPLE), ReplaySpec(USDM_SAMPLE)]
    seen: dict[bool, list[tuple[str, int]]] = {}
    logs: dict[bool, bytes] = {}
    for quiet in (False, True):
        bus = Bus()
        quotes: list[tuple[str, int]] = []
        bus.add_sink(on_quote=lambda quote, quotes=quotes: quotes.append(
            (quote.exchange, quote.local_ts_ns)))
        run = await backtest(caches, tmp_path / str(quiet), specs, BUSY, quiet=quiet,
                             skip=False, bus=bus)
        seen[quiet], logs[quiet] = quotes, run.log
        assert len(quotes) == run.result.quotes
    assert seen[True] == seen[False] and len(seen[False]) > 20_000
    assert logs[True] == logs[False]


async def test_the_setting_turns_quiet_rows_off_and_is_on_by_default(
    caches: Caches, tmp_path: Path,
) -> None:
    specs = [ReplaySpec(SPOT_SAMPLE), ReplaySpec(USDM_SAMPLE)]
    default = await backtest(caches, tmp_path / "default", specs, BUSY, quiet=None)
    off = await backtest(caches, tmp_path / "off",
                         specs, merged(BUSY, backtest={"quiet_rows": False}), quiet=None)
    assert default.result.quiet > 0 and off.result.quiet == 0
    assert default.log == off.log


async def test_a_run_without_a_decision_log_counts_the_same_with_quiet_rows(
    caches: Caches, tmp_path: Path,
) -> None:
    """Training and sweeps may run with the null log: the counts it keeps are the logged
    run's, quiet rows or not."""
    specs = [ReplaySpec(SPOT_SAMPLE), ReplaySpec(USDM_SAMPLE)]
    results = []
    for quiet in (False, True):
        data_dir = tmp_path / str(quiet)
        await caches.load(specs, data_dir)
        engine = Backtest(settings_for(data_dir, BUSY), "inventory-mm", specs, RUN,
                          quiet=quiet, decision_log=False)
        results.append(await engine.run())
    figures = ("records", "decisions", "orders", "fills", "events")
    assert [getattr(results[0], name) for name in figures] == [
        getattr(results[1], name) for name in figures]
    assert results[1].quiet > 0 and results[1].fills > 40 and not results[1].log_files
