"""Per-run exports that strategies keep in memory, written by whichever mode ran them."""

from __future__ import annotations

from pathlib import Path

from daemon.core.logs import get_logger
from strategies.base import Strategy

log = get_logger("exports")

#: Under the data directory: the post-mortem's reports and the strategies' exports.
REPORTS_DIR = "reports"


def exports_dir(data_dir: Path, run_id: str) -> Path:
    """Where a run's strategy exports live (the post-mortem reads them from there too)."""
    return data_dir / REPORTS_DIR / run_id


def write_strategy_exports(strategy: Strategy, data_dir: Path, run_id: str) -> None:
    """What the strategy keeps for after the run (internalize: its desk portfolio), beside
    the post-mortem reports under `<data_dir>/reports/<run_id>/`."""
    paths = strategy.write_exports(exports_dir(data_dir, run_id))
    if paths:
        log.info("strategy_exported", files=[str(path) for path in paths])
