"""The sweep's parts (issue 18, items 3 and 4): grid names and values checked by the settings
model, the TOML grid, ranking, the time span a walk-forward backtest runs on.
The sweep mode end to end (3 x 3 grid, Dask cluster, resume): tests/modes/test_sweep.py."""

from __future__ import annotations

import asyncio
import math
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from adapters.recordings.replay import parse_spec
from config.settings import ConfigError, load_settings
from daemon.backtest.cache import load
from daemon.backtest.engine import Backtest, NoMarketData
from daemon.backtest.span import Span, parse_span, span_rows, within
from daemon.backtest.sweep import (
    RunFigures,
    build_grid,
    combination_settings,
    combinations,
    parse_grid_flag,
    ranking,
    read_grid_file,
    task_settings,
)
from daemon.feeds import resolve_markets
from tests.backtest.test_engine import records

RECORDING = "binance_usdm_btcusdt_20240718.gz"  # 2024-07-18 23:57:00 .. 24:00:00 UTC


def test_grid_names_are_the_strategy_s_settings_or_dotted_paths_and_values_are_converted(
) -> None:
    settings = load_settings()
    axes = build_grid(settings, "inventory-mm", {
        "gamma": ["0.05", "0.1"], "execution.submit_latency_ms": ["5", "20"],
        "k_bps": ["auto", "1.5"]})
    assert [(axis.name, axis.path, axis.values) for axis in axes] == [
        ("gamma", ("strategies", "inventory_mm", "gamma"), (0.05, 0.1)),
        ("execution.submit_latency_ms", ("execution", "submit_latency_ms"), (5.0, 20.0)),
        ("k_bps", ("strategies", "inventory_mm", "k_bps"), ("auto", 1.5))]
    combos = combinations(axes)
    assert len(combos) == 8 and combos[1] == (0.05, 5.0, 1.5)  # the last axis fastest
    chosen = combination_settings(settings, axes, combos[-1])
    assert chosen.strategies.inventory_mm.gamma == 0.1
    assert chosen.execution.submit_latency_ms == 20.0
    assert chosen.strategies.inventory_mm.k_bps == 1.5
    assert chosen.strategies.arbitrage == settings.strategies.arbitrage  # the rest unchanged


@pytest.mark.parametrize(("raw", "message"), [
    ({"gama": ["0.1"]}, "--grid gama: no setting strategies.inventory_mm.gama "
                        "(strategies.inventory_mm has: "),
    ({"gamma": ["0.1", "-1"]}, "--grid gamma=-1: invalid setting "
                               "strategies.inventory_mm.gamma: Input should be greater than 0"),
    ({"gamma": ["0.1", "x"]}, "--grid gamma=x: invalid setting strategies.inventory_mm.gamma"),
    ({"execution.latency_ms": ["1"]}, "--grid execution.latency_ms: no setting "
                                      "execution.latency_ms (execution has: cancel_latency_ms"),
    ({"execution": ["1"]}, "--grid execution: execution is a section, not a setting"),
    ({"k": ["1.5"]}, "--grid k=1.5: invalid setting strategies.inventory_mm: "
                     "strategies.inventory_mm.k = '1.5' is no longer read: k is now k_bps"),
    ({"gamma": ["0.1", "0.10"]}, "--grid gamma: a value is given twice"),
    ({}, "--mode sweep needs a grid"),
])
def test_a_bad_grid_name_or_value_is_one_clear_line(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_grid(load_settings(), "inventory-mm", raw)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("text", ["gamma", "=1", "gamma=", "gamma=1,,2"])
def test_a_grid_flag_is_name_equals_values(text: str) -> None:
    with pytest.raises(ConfigError, match="expected NAME=VALUE"):
        parse_grid_flag(text)
    assert parse_grid_flag(" gamma = 0.1, 0.2 ") == ("gamma", ["0.1", "0.2"])


def test_a_grid_file_is_a_toml_table_of_values(tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text('gamma = [0.05, 0.1]\nk_bps = "auto"\n'
                    "[execution]\nsubmit_latency_ms = [5, 50]\n")
    raw = read_grid_file(grid)
    assert raw == {"gamma": [0.05, 0.1], "k_bps": ["auto"],
                   "execution.submit_latency_ms": [5, 50]}
    assert [axis.values for axis in build_grid(load_settings(), "inventory-mm", raw)] == [
        (0.05, 0.1), ("auto",), (5.0, 50.0)]
    grid.write_text("gamma = [0.05,")
    with pytest.raises(ConfigError, match="malformed TOML"):
        read_grid_file(grid)
    with pytest.raises(ConfigError, match="not found"):
        read_grid_file(tmp_path / "none.toml")


def test_ranking_is_best_first_with_unfinished_and_nan_runs_last() -> None:
    runs = [RunFigures("a", True, pnl=1.0, sharpe=0.5), RunFigures("b", True, pnl=3.0),
            RunFigures("c", False, pnl=9.0), RunFigures("d", True, pnl=3.0, sharpe=2.0),
            RunFigures("e", True, pnl=-1.0, sharpe=1.0)]
    assert [runs[i].run_id for i in ranking(runs, "pnl")] == ["b", "d", "a", "e", "c"]
    assert [runs[i].run_id for i in ranking(runs, "sharpe")] == ["d", "e", "a", "b", "c"]


def test_a_span_is_from_to_in_iso_times_utc() -> None:
    span = parse_span("2024-07-18T23:58..2024-07-19")
    assert span == Span(1_721_347_080 * 10**9, 1_721_347_200 * 10**9)
    assert str(span) == "2024-07-18T23:58:00..2024-07-19T00:00:00"
    for bad in ("2024-07-18", "2024-07-19..2024-07-18", "x..2024-07-18", "..2024-07-18"):
        with pytest.raises(ValueError):
            parse_span(bad)


def test_the_cached_events_are_cut_to_the_span_s_receive_times(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    specs = [parse_spec(str(shared_file(RECORDING)))]
    data, _ = asyncio.run(load(specs, tmp_path))
    assert data is not None and data.depth is not None
    span = parse_span("2024-07-18T23:58..2024-07-18T23:59")
    first, stop = span_rows(data, span)
    cut = within(data, span)
    assert 0 < first < stop < len(data) and len(cut) == stop - first
    running_max = np.maximum.accumulate(data.local_ts_ns)
    assert running_max[first - 1] < span.start_ns <= running_max[first]
    assert running_max[stop - 1] < span.end_ns <= running_max[stop]
    assert cut.local_ts_ns.tolist() == data.local_ts_ns[first:stop].tolist()
    assert cut.trade_id.to_pylist() == data.trade_id[first:stop].to_pylist()
    assert cut.all_events() == data.all_events()[first:stop]
    # Depth changes before the span are in the books at its first row.
    assert (cut.depth.pos == np.maximum(data.depth.pos - first, 0)).all()


def test_a_backtest_on_a_span_runs_only_the_events_received_in_it(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    specs = [parse_spec(str(shared_file(RECORDING)))]
    settings = load_settings({"data_dir": tmp_path, "strategies": {"inventory_mm": {
        "venue": "binance_usdm", "symbol": "BTC/USDT:USDT"}}})
    settings = asyncio.run(resolve_markets(settings, specs=specs))  # the recording's tick, lot
    span = parse_span("2024-07-18T23:58..2024-07-18T23:59")
    data, _ = asyncio.run(load(specs, tmp_path))
    assert data is not None
    first, stop = span_rows(data, span)
    result = asyncio.run(Backtest(settings, "inventory-mm", specs, "in-span", span=span).run())
    assert result.events == stop - first
    times = [r["ts_ns"] for r in records(tmp_path, "in-span") if r["type"] == "decision"]
    # (the end of the data's closing cancels land one cancel latency after it)
    assert times and span.start_ns <= min(times) and max(times) < span.end_ns + 10**9
    assert max(t for t in times if t < span.end_ns) > span.end_ns - 10**9  # up to its end
    empty = Span(1_000 * 10**9, 2_000 * 10**9)
    with pytest.raises(NoMarketData, match="no events received in 1970"):
        asyncio.run(Backtest(settings, "inventory-mm", specs, "empty", span=empty).run())
    uncached = load_settings({"data_dir": tmp_path, "backtest": {"cache": False}})
    with pytest.raises(NoMarketData, match="needs the event cache"):
        asyncio.run(Backtest(uncached, "inventory-mm", specs, "frames", span=span).run())
    assert not math.isnan(result.wall_seconds)


def test_a_task_carries_no_secret_and_an_absolute_data_dir() -> None:
    settings = load_settings({
        "venues": {"binance_spot": {"api_key": "key-1", "api_secret": "secret-1"},
                   "bybit_spot": {"enabled": False}},
        "execution": {"mode": "live"}, "data_dir": "data"})
    task = task_settings(settings)
    assert task.venues["binance_spot"].api_key is None
    assert task.venues["binance_spot"].api_secret is None
    assert task.execution.mode == "paper" and task.data_dir.is_absolute()
    assert "key-1" not in repr(pickle.dumps(task)) and "secret-1" not in repr(pickle.dumps(task))
    assert task.strategies == settings.strategies
