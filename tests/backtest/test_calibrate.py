"""Slippage calibration: formula vs walking the real recorded Binance depth book."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from rich.console import Console

from config.settings import ConfigError, Settings
from daemon.backtest.calibrate import (
    SLIPPAGE_CSV,
    calibrate_slippage,
    calibration_fills,
    fit_through_origin,
    recorded_mids,
    run_calibration,
)
from daemon.cli import main
from daemon.core.model import ClientFill, Side

REPO = Path(__file__).resolve().parents[2]
#: ~75 s of the real Binance spot recording (REST snapshot + depth diffs), always shipped.
SAMPLE = REPO / "adapters" / "recordings" / "samples" / "binance_spot_btcusdt_20240808_sample.gz"
SHARED = REPO.parent / "shared" / "data" / "binance_spot_btcusdt_20240808.gz"
SYMBOL = "BTC/USDT"
COEFFICIENT = 0.0005


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("CRYPTOPIPE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def settings(tmp_path: Path, **internalize: object) -> Settings:
    own = {"symbol": SYMBOL, "synthetic_mean_qty": 0.5, **internalize}
    return Settings(_env_file=None, data_dir=str(tmp_path / "data"),
                    strategies={"internalize": own})


def test_fit_through_origin_recovers_a_slope() -> None:
    slope, r_squared = fit_through_origin([1.0, 2.0, 4.0], [0.5e-4, 1e-4, 2e-4])
    assert slope == pytest.approx(0.5e-4) and r_squared == pytest.approx(1.0)
    slope, _ = fit_through_origin([1.0, 2.0], [1.0, 1.0])
    assert slope == pytest.approx((1 + 2) / (1 + 4))  # sum(q*s) / sum(q^2)


def test_synthetic_fills_walk_the_recorded_book(tmp_path: Path) -> None:
    fills = calibration_fills(settings(tmp_path), SAMPLE)
    times, _ = recorded_mids(SAMPLE, SYMBOL)
    assert fills and all(times[0] < f.ts_ns <= times[-1] for f in fills)
    result = calibrate_slippage(SAMPLE, fills, SYMBOL, COEFFICIENT)
    assert len(result.rows) + result.outside_recording == len(fills)
    assert result.rows, "the depth book synced from the recorded REST snapshot"
    for row in result.rows:
        assert row.formula_slippage == pytest.approx(COEFFICIENT * row.qty)
        assert row.walked_slippage >= -1e-12  # walking never beats the touch
        if row.side == "buy":
            assert row.walked_price >= row.touch - 1e-6
        else:
            assert row.walked_price <= row.touch + 1e-6
    used = result.fitted_rows
    expected = (sum(r.qty * r.walked_slippage for r in used) / sum(r.qty**2 for r in used))
    assert result.fitted_coefficient == pytest.approx(expected)


def test_file_fills_outside_the_recording_or_beyond_the_book_are_reported(
        tmp_path: Path) -> None:
    times, mids = recorded_mids(SAMPLE, SYMBOL)
    middle = times[len(times) // 2]
    rows = [
        "time,side,qty,price",
        f"{times[0] - 10**12},buy,0.1,{mids[0]}",  # 1000 s before the recording
        f"{middle},buy,0.00001,{mids[len(times) // 2]}",  # well inside the touch
        f"{middle + 10**9},sell,0.8,{mids[len(times) // 2]}",
        f"{middle + 2 * 10**9},buy,100000,{mids[len(times) // 2]}",  # more than the book
    ]
    path = tmp_path / "fills.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    fills = calibration_fills(settings(tmp_path, source="file", file=str(path)), SAMPLE)
    assert len(fills) == 4
    result = calibrate_slippage(SAMPLE, fills, SYMBOL, COEFFICIENT)
    assert result.outside_recording == 1
    tiny, sell, huge = result.rows
    assert tiny.walked_slippage == 0.0 and tiny.walked_price == tiny.touch
    assert sell.side == "sell" and sell.walked_slippage >= 0.0
    assert huge.beyond_book and result.beyond_book == 1
    assert len(result.fitted_rows) == 2


def test_calibration_needs_the_recorded_symbol(tmp_path: Path) -> None:
    fills = [ClientFill(1, "ETH/USDT", Side.BUY, 1.0, 2500.0)]
    with pytest.raises(ConfigError, match="no depth book for ETH/USDT"):
        calibrate_slippage(SAMPLE, fills, "ETH/USDT", COEFFICIENT)
    with pytest.raises(ConfigError, match="no quotes for ETH/USDT"):
        calibration_fills(settings(tmp_path, symbol="ETH/USDT"), SAMPLE)
    with pytest.raises(ConfigError, match="not a live ingest"):
        calibration_fills(settings(tmp_path, source="websocket"), SAMPLE)


@pytest.mark.skipif(not SHARED.is_file(), reason=f"shared recording absent: {SHARED}")
def test_full_recording_calibration_prints_and_writes_the_csv(tmp_path: Path) -> None:
    console = Console(record=True, width=160)
    result = run_calibration(settings(tmp_path), SHARED, console)
    assert len(result.fitted_rows) > 100  # ~0.5 fills/s over ~346 s
    text = console.export_text()
    assert "fitted coefficient" in text and "Slippage: formula vs recorded depth" in text
    # And the recording's taker arrivals as quoted-flow settings (issue 15, item 1).
    assert 'quoted_arrivals = "hawkes", quoted_hawkes_branching = 0.' in text
    with open(tmp_path / "data" / SLIPPAGE_CSV, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == len(result.rows)
    assert set(written[0]) >= {"ts_ns", "side", "qty", "touch", "walked_price",
                               "walked_slippage", "formula_slippage", "difference"}


def test_calibrate_mode_from_the_command_line(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Piped (not a terminal): plain text, the fitted coefficient with the line that applies
    it, and the CSV under the run's report folder (issue 14 item 15; it was under data_dir,
    in a rich table whose columns were cut to 80 characters)."""
    monkeypatch.setenv("CRYPTOPIPE_DATA_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYMBOL", SYMBOL)
    monkeypatch.setenv("CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYNTHETIC_MEAN_QTY", "0.3")
    monkeypatch.setenv("CRYPTOPIPE_METRICS__ENABLED", "false")
    assert main(["--mode", "calibrate", "--data", str(SAMPLE), "--run-id", "cal"]) == 0
    csv_path = tmp_path / "out" / "reports" / "cal" / SLIPPAGE_CSV
    assert csv_path.is_file()
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    walked = [r for r in rows if r["walked_price"] != "nan"]
    qty = [float(r["qty"]) for r in walked]
    fitted = (sum(q * float(r["walked_slippage"]) for q, r in zip(qty, walked, strict=True))
              / sum(q * q for q in qty))
    out = capsys.readouterr().out
    assert "\x1b[" not in out and not set(out) & set("┃━│─┏┗╇")  # no ANSI, no box drawing
    lines = out.splitlines()
    fit_line = next(line for line in lines if line.startswith("fitted coefficient"))
    assert float(fit_line.split()[-1]) == pytest.approx(fitted, rel=1e-5)
    assert f"apply it: CRYPTOPIPE_STRATEGIES__INTERNALIZE__SLIPPAGE_COEFFICIENT={fitted:.6g}" in (
        lines)
    assert f"wrote {csv_path}" in lines
    first_row = next(line for line in lines if line.startswith("2024-08-08 "))
    assert len(first_row.split()) == 9 and "…" not in out  # whole cells, none cut
    assert main(["--mode", "calibrate"]) == 2
    assert "calibrate needs exactly one recording" in capsys.readouterr().err
