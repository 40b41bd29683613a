"""`--mode calibrate --data RECORDING.gz`: the slippage coefficient against recorded depth.

The comparison goes to stdout (rich tables on a terminal, plain text when piped), with the
fitted coefficient and the setting line that applies it; the CSV goes under the run's
report folder, `<data_dir>/reports/<run_id>/` (as the post-mortem's and a backtest's
exports do).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from config.settings import ConfigError
from daemon.backtest.calibrate import run_calibration
from daemon.postmortem.report import REPORTS_DIR

if TYPE_CHECKING:
    from daemon.app import App


async def run_calibrate(app: App) -> int:
    """`--mode calibrate --data RECORDING.gz`: compare and fit the slippage coefficient."""
    from rich.console import Console

    recordings = app.args.data or []
    if len(recordings) != 1:
        raise ConfigError("invalid setting --data: calibrate needs exactly one recording "
                          "with depth (Binance depth diffs or Bybit orderbook.50+, e.g. "
                          "../shared/data/binance_spot_btcusdt_20240808.gz, or your own "
                          "from --mode record with CRYPTOPIPE_RECORD__DEPTH=true)")
    directory = app.settings.data_dir / REPORTS_DIR / app.run_id
    # The replay is CPU-bound: a worker thread keeps Ctrl-C and --duration responsive.
    await asyncio.to_thread(run_calibration, app.settings, Path(recordings[0]), Console(),
                            directory)
    return 0
