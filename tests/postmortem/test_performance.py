"""Post-mortem (issue 14, items 12-13): markouts, return on equity, Sharpe, turnover, the
timeline's halts/kills/rebalances, the run's span, per market price charts, and
internalize's desk portfolio. Every expected number is worked out by hand in comments.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog

from adapters.recordings.replay import ReplaySpec
from config.settings import load_settings
from daemon.backtest.engine import Backtest
from daemon.core.model import (
    BalanceSnapshot,
    ClientFill,
    Decision,
    Fill,
    OrderAck,
    OrderIntent,
    OrderType,
    Side,
)
from daemon.core.vocabulary import OrderStatus
from daemon.postmortem.charts import run_figure
from daemon.postmortem.reader import LogFilter
from daemon.postmortem.report import build_report
from strategies.portfolio import Portfolio, write_results
from tests.postmortem.test_report import CHROMIUM, T0, S, internalize_records, write_log

VENUE, SYMBOL, MM = "binance_spot", "BTC/USDT", "inventory-mm"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("CRYPTOPIPE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    structlog.reset_defaults()


def seen(mid: float) -> dict[str, object]:
    """The market a decision saw: touch mid +- 0.5."""
    return {"venue": VENUE, "symbol": SYMBOL, "mid": mid, "market_bid": mid - 0.5,
            "market_ask": mid + 0.5}


def tiny_log() -> list[object]:
    """Starting equity 1000 USDT. Buy 1 @ 99 (t=1), sell 1 @ 101 (t=4), market sell 0.5
    @ 99 (t=65); mids 100 (t=0, 2), 102 (3), 101 (5), 104 (10), 106 (12), 98 (61), 99 (70);
    a portfolio rebalance (t=30), a kill (t=40), a halt (t=50, a verb the vocabulary may
    not have yet); one last record the next day (t=400)."""
    bid = OrderIntent(VENUE, SYMBOL, Side.BUY, OrderType.LIMIT, 1.0, 99.0, "c1", MM)
    ask = OrderIntent(VENUE, SYMBOL, Side.SELL, OrderType.LIMIT, 1.0, 101.0, "c2", MM)
    market = OrderIntent(VENUE, SYMBOL, Side.SELL, OrderType.MARKET, 0.5, None, "c3", MM)
    return [
        BalanceSnapshot(VENUE, T0, {"BTC": 0.0, "USDT": 1000.0}, MM),
        Decision(MM, T0, "quote", "both", seen(100.0), 0.0, [bid, ask]), bid, ask,
        OrderAck("c1", VENUE, SYMBOL, OrderStatus.NEW, T0),
        OrderAck("c2", VENUE, SYMBOL, OrderStatus.NEW, T0),
        Fill("c1", VENUE, SYMBOL, Side.BUY, 99.0, 1.0, 0.0, "USDT", "maker", T0 + S, MM),
        OrderAck("c1", VENUE, SYMBOL, OrderStatus.FILLED, T0 + S, filled_qty=1.0),
        Decision(MM, T0 + 2 * S, "hold", "", seen(100.0)),
        Decision(MM, T0 + 3 * S, "hold", "", seen(102.0)),
        Fill("c2", VENUE, SYMBOL, Side.SELL, 101.0, 1.0, 0.0, "USDT", "maker", T0 + 4 * S, MM),
        OrderAck("c2", VENUE, SYMBOL, OrderStatus.FILLED, T0 + 4 * S, filled_qty=1.0),
        Decision(MM, T0 + 5 * S, "hold", "", seen(101.0)),
        Decision(MM, T0 + 10 * S, "hold", "", seen(104.0)),
        Decision(MM, T0 + 12 * S, "hold", "", seen(106.0)),
        Decision(MM, T0 + 30 * S, "portfolio_rebalance", "weight drifted", {}),
        Decision(MM, T0 + 40 * S, "kill", "daily loss limit", {}),
        Decision(MM, T0 + 50 * S, "halt", "unwind failed: cooling down", {}),
        Decision(MM, T0 + 61 * S, "hold", "", seen(98.0)),
        Decision(MM, T0 + 65 * S, "flatten", "reduce", {"venue": VENUE, "symbol": SYMBOL},
                 0.0, [market]), market,
        Fill("c3", VENUE, SYMBOL, Side.SELL, 99.0, 0.5, 0.0, "USDT", "taker", T0 + 65 * S, MM),
        OrderAck("c3", VENUE, SYMBOL, OrderStatus.FILLED, T0 + 65 * S, filled_qty=0.5),
        Decision(MM, T0 + 70 * S, "hold", "", seen(99.0)),
        # 2024-08-09 00:00:53: the next day's file; no mid, so it marks nothing.
        Decision(MM, T0 + 400 * S, "skip", "stopping", {"venue": VENUE, "symbol": SYMBOL}),
    ]


def summary_of(data_dir: Path, log_filter: LogFilter | None = None) -> object:
    (summary,) = build_report(data_dir, log_filter or LogFilter(), charts=False).summaries
    return summary


def test_markouts_at_1_10_and_60_seconds_are_exact(tmp_path: Path) -> None:
    write_log(tmp_path, records=tiny_log())
    markouts = {m.horizon_s: m for m in summary_of(tmp_path).performance.markouts}
    assert sorted(markouts) == [1, 10, 60] and {m.kind for m in markouts.values()} == {"venue"}
    # 1 s: buy @ 99 -> mid 100 at t=2: +1; sell @ 101 -> 101 at t=5: 0; sell 0.5 @ 99 ->
    # t=66, last mid 98 (t=61): +0.5.
    one = markouts[1]
    assert (one.marked, one.unmarked) == (3, 0)
    assert one.markout == pytest.approx(1.5)
    assert one.notional == pytest.approx(99 + 101 + 49.5)
    assert one.markout_bps == pytest.approx(1.5 / 249.5 * 1e4)
    # 10 s: buy -> t=11, mid 104: +5; sell -> t=14, mid 106: -5; the t=65 fill's t=75 is
    # past the last mid (t=70): not marked.
    ten = markouts[10]
    assert (ten.marked, ten.unmarked) == (2, 1)
    assert ten.markout == pytest.approx(0.0) and ten.notional == pytest.approx(200.0)
    # 60 s: buy -> t=61, mid 98: -1; sell -> t=64, mid 98: +3.
    sixty = markouts[60]
    assert (sixty.marked, sixty.unmarked) == (2, 1)
    assert sixty.markout == pytest.approx(2.0)
    assert sixty.markout_bps == pytest.approx(2.0 / 200 * 1e4)


def test_return_on_equity_sharpe_per_day_and_turnover_are_exact(tmp_path: Path) -> None:
    write_log(tmp_path, records=tiny_log())
    summary = summary_of(tmp_path)
    # Round trip 99 -> 101 (+2); short 0.5 @ 99 marked at the last mid 99: total 2.
    assert summary.total_pnl == pytest.approx(2.0)
    p = summary.performance
    assert p.starting_equity == pytest.approx(1000.0)  # the first balance snapshot
    assert p.return_on_equity == pytest.approx(2.0 / 1000)
    assert p.turnover == pytest.approx((99 + 101 + 49.5) / 1000)
    # 400 s: 6 one-minute intervals are too few (10 needed), so one-second ones: 400.
    # P&L at t=0..400: 0, 0 (bought at 99, marked there), 1 (mid 100), 3 (102), 2 (sold
    # at 101: flat), 2 ... (the short from t=65 is marked at 99 = its price). Changes: 0,
    # 1, 2, -1 and 396 zeros.
    assert (p.sharpe_interval_s, p.sharpe_intervals) == (1, 400)
    n, mean = 400, 2 / 400
    std = math.sqrt((0 + 1 + 4 + 1 - n * mean**2) / (n - 1))
    assert p.sharpe_per_day == pytest.approx(mean / std * math.sqrt(86_400))
    assert p.sharpe_annualised == pytest.approx(p.sharpe_per_day * math.sqrt(365))


def test_halts_kills_and_rebalances_are_marked_on_the_timeline(tmp_path: Path) -> None:
    write_log(tmp_path, records=tiny_log())
    summary = summary_of(tmp_path)
    series = summary.series
    assert series.events_ts.tolist() == [T0 + 30 * S, T0 + 40 * S, T0 + 50 * S, T0 + 65 * S]
    assert series.events_kind.tolist() == ["rebalance: portfolio_rebalance", "kill: kill",
                                           "halt: halt", "kill: flatten"]
    figure = run_figure(summary)
    lines = [shape for shape in figure.layout.shapes if shape.yref == "paper"]
    assert len(lines) == 4  # one vertical line through every row per event
    (markers,) = [t for t in figure.data if t.name == "halts, kills, rebalances"]
    assert list(markers.hovertext) == [
        "rebalance: portfolio_rebalance: weight drifted", "kill: kill: daily loss limit",
        "halt: halt: unwind failed: cooling down", "kill: flatten: reduce"]


def test_from_and_to_are_the_runs_span_not_the_query_window(tmp_path: Path) -> None:
    write_log(tmp_path, records=tiny_log())
    # The window leaves out the next day's file altogether; the span still reaches it.
    window = LogFilter(since_ns=T0 + 3 * S, until_ns=T0 + 60 * S)
    summary = summary_of(tmp_path, window)
    assert (summary.start_ns, summary.end_ns) == (T0 + 3 * S, T0 + 50 * S)
    assert (summary.run_start_ns, summary.run_end_ns) == (T0, T0 + 400 * S)


def test_each_market_charts_its_touch_our_quotes_as_steps_and_our_fills(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, records=tiny_log())
    (market,) = summary_of(tmp_path).series.markets
    assert (market.venue, market.symbol) == (VENUE, SYMBOL)
    # The touch of the 8 decisions that carry one: mid +- 0.5.
    assert market.bid.tolist() == [99.5, 99.5, 101.5, 100.5, 103.5, 105.5, 97.5, 98.5]
    assert (market.ask - market.bid).tolist() == [1.0] * 8
    # Our bid rested from t=0 until filled at t=1, our ask until t=4; then none (NaN).
    buy_ts, buy_price = market.our_quotes["buy"]
    assert buy_ts.tolist() == [T0, T0 + S] and buy_price[0] == 99.0
    assert math.isnan(buy_price[1])
    sell_ts, sell_price = market.our_quotes["sell"]
    assert sell_ts.tolist() == [T0, T0 + 4 * S] and sell_price[0] == 101.0
    assert market.fills[("venue", "buy")][1].tolist() == [99.0]
    assert market.fills[("venue", "sell")][1].tolist() == [101.0, 99.0]
    assert market.fills[("venue", "sell")][2].tolist() == [1.0, 0.5]


def desk_export(data_dir: Path, run_id: str) -> Path:
    """The desk the internalize strategy exports: 100 ETH + 100,000 USDT; the client buys
    1 ETH @ 2001 at mid 2000, then a mark at 2001."""
    portfolio = Portfolio("ETH/USDT", {"ETH": 100.0, "USDT": 100_000.0}, horizon_s=1.0)
    fill = ClientFill(T0, "ETH/USDT", Side.BUY, 1.0, 2001.0, "client", "f1")
    portfolio.on_client_fill(fill, 2000.0, "warehouse", 0.0, 2000.0, 0.0)
    portfolio.mark(T0 + 2 * S, 2001.0, record=True)
    # Where the backtest and action modes write a run's strategy exports.
    _, rows = write_results(portfolio, data_dir / "reports" / run_id)
    return rows


def test_internalize_shows_the_desk_portfolio_not_the_venue_balances(tmp_path: Path) -> None:
    records = [BalanceSnapshot("binance_spot", T0, {"ETH": 0.0, "USDT": 1000.0},
                               "internalize"), *internalize_records()]
    write_log(tmp_path, "desk", records)
    desk_export(tmp_path, "desk")
    summary = summary_of(tmp_path)
    # Desk: 99 ETH and 102,001 USDT; at mid 2001: 300,100. It started as 100 ETH and
    # 100,000 USDT at the first mid, 2000: 300,000.
    assert summary.desk_portfolio_value == pytest.approx(99 * 2001 + 102_001)
    assert summary.performance.starting_equity == pytest.approx(300_000.0)
    # The strategy's P&L (2.8, see test_internalize_figures_are_exact) on the desk's equity.
    assert summary.performance.return_on_equity == pytest.approx(2.8 / 300_000)
    # Turnover: client fills 2001 + 3998 + 1001 and the hedge 1999.5, on the desk.
    assert summary.performance.turnover == pytest.approx(
        (2001 + 2 * 1999 + 0.5 * 2002 + 1999.5) / 300_000)
    figure = run_figure(summary)
    portfolio = {t.name: t for t in figure.data if t.yaxis == "y3"}
    desk = portfolio["desk portfolio (base + quote at mid)"]
    assert list(desk.y) == pytest.approx([300_001.0, 300_100.0])
    assert "venue balances incl. funds in transit" in portfolio


def test_markouts_of_the_desks_client_fills_use_the_hedge_venues_mid(tmp_path: Path) -> None:
    name = "internalize"

    def client(ts: int, side: str, price: float, mid: float) -> Decision:
        return Decision(name, ts, "warehouse", "hold", {
            "symbol": "ETH/USDT", "hedge_venue": "binance_spot", "bid": mid - 1,
            "ask": mid + 1, "mid": mid, "client_side": side, "client_qty": 2.0,
            "client_price": price, "hedge_cost": 1.0})

    # The client buys 2 @ 2001 (the desk sells); the mid is 1995 one second later and
    # 2003 ten seconds later: desk markouts -(1995 - 2001) x 2 = +12, -(2003 - 2001) x 2
    # = -4; nothing 60 s later.
    write_log(tmp_path, records=[client(T0, "buy", 2001.0, 2000.0),
                                 client(T0 + S, "sell", 1995.0, 1995.0),
                                 client(T0 + 10 * S, "sell", 2003.0, 2003.0)])
    markouts = {m.horizon_s: m for m in summary_of(tmp_path).performance.markouts
                if m.kind == "client"}
    first = markouts[1]
    # t=0 fill: +12; t=1 (desk buys @ 1995): mid at t=2 is 1995: 0; t=10: past the end.
    assert (first.marked, first.unmarked) == (2, 1)
    assert first.markout == pytest.approx(12.0)
    # 10 s: only the t=0 fill has a mid ten seconds on (t=10, 2003): -4.
    assert (markouts[10].marked, markouts[10].markout) == (1, pytest.approx(-4.0))
    assert markouts[60].marked == 0


def chromium_dom(page: Path, profile: Path) -> tuple[str, list[str]]:
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    shutil.rmtree(profile, ignore_errors=True)
    return result.stdout, [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="headless check needs Debian's chromium: apt-get install -y chromium")
async def test_report_of_a_backtest_on_the_shared_recording_renders_the_new_charts(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    recording = shared_file("binance_spot_btcusdt_20240808.gz")
    # Quotes inside the fees (opted out of the fee floor) so that this recording fills.
    settings = load_settings({"data_dir": tmp_path, "strategies": {
        "inventory_mm": {"allow_quotes_inside_fees": True}}}, env_file=None)
    await Backtest(settings, MM, [ReplaySpec(recording)], "shared").run()
    report = build_report(tmp_path, LogFilter(run_id="shared"))
    (summary,) = report.summaries
    assert summary.fills > 0 and summary.performance.markouts
    assert summary.run_start_ns < summary.run_end_ns
    dom, console = chromium_dom(report.exports["html"], tmp_path / "chromium-profile")
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    # The run, its one market (binance_spot BTC/USDT) and its markouts: three figures.
    assert dom.count('class="plot-container plotly"') == 3
    for legend in ("market bid", "market ask", "our bid", "our ask", "our buy", "our sell",
                   "venue balances incl. funds in transit"):
        assert f'data-unformatted="{legend}"' in dom, legend
    assert "Markouts: side x (mid after the horizon - fill price)" in dom
    assert "Sharpe annualised (x sqrt 365)" in dom
    # A bar per horizon, drawn.
    assert dom.count('class="point"') >= 3
    # The series the market chart was given reach the page's data as numbers.
    market = summary.series.markets[0]
    assert np.isfinite(market.bid).all() and len(market.our_quotes["buy"][0]) > 1


def test_downsampled_quote_steps_keep_their_extremes_and_gaps() -> None:
    from daemon.postmortem.charts import downsample_steps

    # 10,000 steps: our bid at 100 + i % 7, with no quote resting every 50th step.
    ts = np.arange(10_000, dtype=np.int64)
    price = 100.0 + (ts % 7)
    price[::50] = np.nan
    kept_ts, kept = downsample_steps(ts, price, max_points=600)
    assert len(kept) <= 600 and kept_ts[-1] == ts[-1]
    assert np.nanmin(kept) == 100.0 and np.nanmax(kept) == 106.0
    # Every bucket of ~50 steps holds a gap, and keeps it.
    assert np.isnan(kept).sum() >= 150
