"""Per-run exports that strategies keep in memory, written by whichever mode ran them."""

from __future__ import annotations

from pathlib import Path

from daemon.core.logs import get_logger

log = get_logger("exports")


def write_strategy_exports(strategy: object, data_dir: Path, run_id: str) -> None:
    """Strategies that keep a desk portfolio (internalize) export it per run, beside the
    post-mortem reports: flow_internalization_results.csv, portfolio_tracking_results.csv."""
    portfolio = getattr(strategy, "portfolio", None)
    if portfolio is None:
        return
    from strategies.portfolio import write_results

    paths = write_results(portfolio, data_dir / "reports" / run_id)
    log.info("portfolio_exported", files=[str(path) for path in paths])
