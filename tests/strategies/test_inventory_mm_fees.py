"""Inventory-mm on the shared BTCUSDT spot recording through the backtest engine, with
default settings: fee-aware quotes (issue 14 item 1) and a spread filter that does not
churn (item 2)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.recordings.replay import ReplaySpec
from config.settings import load_settings
from daemon.backtest.engine import Backtest

RECORDING = "binance_spot_btcusdt_20240808.gz"


async def decision_log(data_dir: Path, recording: Path, **overrides: Any) -> list[dict]:
    """Every record of an in-process backtest of inventory-mm over `recording`."""
    settings = load_settings({"data_dir": data_dir, **overrides}, env_file=None)
    result = await Backtest(settings, "inventory-mm", [ReplaySpec(recording)], "fees").run()
    return [orjson.loads(line) for path in result.log_files
            for line in path.read_bytes().splitlines()]


async def test_every_quote_clears_maker_fee_plus_min_edge_on_the_btc_recording(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    records = await decision_log(tmp_path, shared_file(RECORDING))
    settings = load_settings({"data_dir": tmp_path}, env_file=None)
    mm = settings.strategies.inventory_mm
    floor_bps = settings.venues[mm.venue].maker_fee_bps + mm.min_edge_bps
    assert floor_bps > 10.0  # 10 bps maker fee on Binance spot, plus the edge
    quotes = [r for r in records if r.get("type") == "decision" and r["action"] == "quote"]
    intents = [(q["inputs"]["mid"], i) for q in quotes for i in q["intents"]]
    assert len(intents) > 20, "the default strategy should quote this recording"
    for mid, intent in intents:
        distance_bps = abs(intent["price"] - mid) / mid * 1e4
        assert distance_bps >= floor_bps - 1e-9, (intent, mid)
        # On the right side of the mid: a bid below it, an ask above it.
        assert (intent["price"] < mid) == (intent["side"] == "buy")
    # The decision says why: the floor it applied.
    assert all(q["inputs"]["min_half_spread_bps"] == pytest.approx(floor_bps) for q in quotes)


def quote_skip_flips(records: list[dict]) -> int:
    """How often the strategy went from quoting to skipping or back."""
    flips, state = 0, None
    for record in records:
        if record.get("type") != "decision" or record["action"] not in ("quote", "hold",
                                                                        "skip"):
            continue
        now = "skip" if record["action"] == "skip" else "quote"
        flips += state is not None and now != state
        state = now
    return flips


def rate_rejects(records: list[dict]) -> int:
    return sum(1 for r in records if r.get("type") == "ack" and r["status"] == "rejected"
               and "rate" in r["reason"])


async def test_spread_filter_hysteresis_stops_the_churn_on_the_btc_recording(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    """The spread sits at one or two ticks (0.0016 / 0.0032 bps): a 0.002 bps minimum
    flips quote/skip on almost every tick without hysteresis."""
    recording = shared_file(RECORDING)
    filter_only = {"min_market_spread_bps": 0.002, "min_market_spread_margin_bps": 0.0}
    before = await decision_log(tmp_path / "before", recording,
                                strategies={"inventory_mm": filter_only})
    after = await decision_log(tmp_path / "after", recording,
                               strategies={"inventory_mm": {"min_market_spread_bps": 0.002}})
    assert quote_skip_flips(before) > 1_000 and rate_rejects(before) > 10
    # Default margin 0.5 bps / hold 5 s: it quotes again after 5 s at the minimum at most.
    assert quote_skip_flips(after) < 200 and rate_rejects(after) == 0
    skips = [r for r in after if r.get("type") == "decision" and r["action"] == "skip"]
    assert skips and all("quoting again at 0.502 bps, or after 5 s" in r["reason"]
                         for r in skips)
