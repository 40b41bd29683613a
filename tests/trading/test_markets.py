"""Market rules and paper balances for markets the settings leave out (issue 14)."""

from __future__ import annotations

import pytest

from config.settings import load_settings
from daemon.trading.markets import (
    FoundRules,
    apply_market_rules,
    decimal_step,
    decimals_of,
    missing_rules,
    wanted_markets,
)


@pytest.mark.parametrize(("value", "places"), [
    (3425.1, 1), (3425.0, 0), (3400.0, 0), (0.001, 3), (1e-05, 5), (0.00012, 5), (197.907, 3),
    (0.0, 0),
])
def test_decimals_as_written_on_the_wire(value: float, places: int) -> None:
    assert decimals_of(value) == places


def test_the_step_is_the_finest_power_of_ten_the_values_show() -> None:
    assert decimal_step([3424.98, 3425.0, 3424.9]) == 0.01
    assert decimal_step([5.051, 198.239, 0.4]) == 0.001
    assert decimal_step([61800.0, 61800.5]) == 0.1
    assert decimal_step([]) is None


def settings(**overrides: object):
    return load_settings({"metrics": {"enabled": False}, **overrides}, env_file=None)


def test_found_rules_fill_what_the_settings_leave_out_and_never_override_them() -> None:
    base = settings()
    found = {("binance_spot", "ETH/USDT"): FoundRules(0.01, 0.001, "recorded data", mid=3425.0),
             ("binance_spot", "BTC/USDT"): FoundRules(0.1, 0.01, "recorded data", mid=60000.0)}
    resolved = apply_market_rules(base, found)
    venue = resolved.venues["binance_spot"]
    assert venue.markets["ETH/USDT"] == {"tick": 0.01, "lot": 0.001}
    assert venue.markets["BTC/USDT"] == base.venues["binance_spot"].markets["BTC/USDT"]
    # Paper balances: the configured USDT and BTC stay; ETH worth half the USDT at the mid.
    assert venue.balances["USDT"] == 50_000.0 and venue.balances["BTC"] == 0.5
    assert venue.balances["ETH"] == pytest.approx(7.299)  # 25,000 / 3,425 down to the lot
    assert missing_rules(resolved, [("binance_spot", "ETH/USDT")]) == []


def test_a_perp_gets_a_quote_balance_only_and_a_non_usd_quote_a_warning(
        capsys: pytest.CaptureFixture[str]) -> None:
    base = settings(venues={"binance_usdm": {"enabled": True}})
    found = {("binance_usdm", "ETH/USDT:USDT"): FoundRules(0.01, 0.001, "recorded data",
                                                           mid=3425.0),
             ("binance_spot", "ETH/EUR"): FoundRules(0.01, 1e-4, "recorded data", mid=3000.0)}
    resolved = apply_market_rules(base, found)
    assert resolved.venues["binance_usdm"].balances == {"USDT": 50_000.0}
    assert "ETH" not in resolved.venues["binance_spot"].balances
    assert "EUR" not in resolved.venues["binance_spot"].balances
    captured = capsys.readouterr()  # stdout, or stderr once a test configured logging
    out = captured.out + captured.err
    assert "no paper balance of EUR on binance_spot" in out
    assert "no paper balance of ETH on binance_spot" in out


def test_live_runs_want_the_enabled_venues_symbols_and_the_strategys_own_market() -> None:
    base = settings(strategies={"inventory_mm": {"symbol": "ETH/USDT"}})
    assert wanted_markets(base, "inventory-mm") == [
        ("binance_spot", "BTC/USDT"), ("binance_spot", "ETH/USDT"), ("bybit_spot", "BTC/USDT")]
    assert missing_rules(base, wanted_markets(base, "inventory-mm")) == [
        ("binance_spot", "ETH/USDT")]
