"""`--mode calibrate --data RECORDING.gz`: the slippage coefficient against recorded depth."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from config.settings import ConfigError
from daemon.backtest.calibrate import run_calibration

if TYPE_CHECKING:
    from daemon.app import App


async def run_calibrate(app: App) -> int:
    """`--mode calibrate --data RECORDING.gz`: compare and fit the slippage coefficient."""
    from rich.console import Console

    recordings = app.args.data or []
    if len(recordings) != 1:
        raise ConfigError("invalid setting --data: calibrate needs exactly one Binance "
                          "recording with depth (e.g. ../shared/data/"
                          "binance_spot_btcusdt_20240808.gz)")
    # The replay is CPU-bound: a worker thread keeps Ctrl-C and --duration responsive.
    await asyncio.to_thread(run_calibration, app.settings, Path(recordings[0]), Console())
    return 0
