"""Per-run exports that strategies keep in memory, written by whichever mode ran them."""

from __future__ import annotations

from pathlib import Path

from daemon.core.logs import get_logger
from strategies.base import Strategy

log = get_logger("exports")


def write_strategy_exports(strategy: Strategy, data_dir: Path, run_id: str) -> None:
    """What the strategy keeps for after the run (internalize: its desk portfolio), beside
    the post-mortem reports under `<data_dir>/reports/<run_id>/`."""
    paths = strategy.write_exports(data_dir / "reports" / run_id)
    if paths:
        log.info("strategy_exported", files=[str(path) for path in paths])
