"""`--mode backtest --data FILE...`: one strategy over recorded data, then its figures.

    python main.py --strategy inventory-mm --mode backtest --run-id mm-0808 \\
        --data ../shared/data/binance_spot_btcusdt_20240808.gz [FILE@VENUE:SYMBOL ...]

The engine is daemon/backtest/engine.py; this entry checks the inputs, shows a progress bar
with the time left on a terminal (a log line every 10 s elsewhere) and prints the result
(or JSON with `--format json`). What the replay lost
(corrupt lines, dropped frames, a file cut short) is printed on stderr; files that gave
not one quote or trade exit 2 with one line saying so, as a missing file does, and so does
a strategy none of whose markets is in the data (a warning if only some are missing).

`--seeds N` then runs the Monte Carlo baseline (`random-inventory`) N times on the same
data and prints where the strategy's P&L falls among them (daemon/backtest/monte_carlo.py).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from adapters.quoted_flow import flow_tally
from adapters.recordings.replay import ReplayError
from config.settings import ConfigError
from daemon.backtest.engine import Backtest, BacktestResult, NoMarketData, existing_logs
from daemon.backtest.monte_carlo import against_chance, seed_range, seed_run_id
from daemon.core.logs import get_logger
from daemon.feeds import resolve_markets
from daemon.modes.data import data_specs
from daemon.modes.progress import RunProgress
from daemon.modes.summary import RunSummary, print_summary, strategy_notes
from daemon.postmortem.exports import write_strategy_exports

if TYPE_CHECKING:
    from daemon.app import App

log = get_logger("backtest")


async def run_backtest(app: App) -> int:
    """Mode entry point: check the inputs, run with a progress bar on a terminal, report."""
    settings, args = app.settings, app.args
    specs = data_specs(args.data, "backtest")
    seeds = getattr(args, "seeds", None) or 0  # absent from hand-built namespaces
    run_ids = [app.run_id] + [seed_run_id(app.run_id, seed)
                              for seed in seed_range(settings, seeds)]
    for run_id in run_ids:
        previous = existing_logs(settings.data_dir, run_id)
        if previous:
            raise ConfigError(f"backtest run {run_id!r} already has a decision log "
                              f"({previous[0]}); choose another --run-id or remove it")
    # Tick, lot and paper balances of recorded markets the settings leave out.
    settings = app.settings = await resolve_markets(settings, specs=specs)
    backtest = Backtest(settings, args.strategy, specs, app.run_id, bus=app.bus)
    app.warm_up_kernels()  # outside the timed run: its events/s is the engine's own
    log.info("backtest_started", strategy=backtest.strategy.name, files=[str(s) for s in specs])
    # The total is the cache's row count (known once the events are loaded).
    with RunProgress("backtest", lambda: backtest.total,
                     terminal=sys.stderr.isatty()) as progress:
        backtest._progress = progress
        try:
            result = await backtest.run()
        # Random bytes, a text file, a gzip cut at once; or a symbol or venue the
        # recording does not carry; or a file refused as a whole (Binance COIN-M).
        except (ReplayError, NoMarketData) as exc:  # NothingUsable is a ReplayError
            raise ConfigError(f"--data: {exc}") from None
    if backtest.missing_note is not None:
        print(f"cryptopipe: warning: --data: {backtest.missing_note}", file=sys.stderr)
    if result.damage is not None:
        print(f"cryptopipe: replay damage: {result.damage}", file=sys.stderr)
    write_strategy_exports(backtest.strategy, settings.data_dir, app.run_id)
    summary = _summary(result)
    summary.strategy_notes = strategy_notes(backtest.strategy)
    figures = result.figures()
    tally = flow_tally(backtest.flow)
    if tally is not None:  # quoted clients: who declined, who had no market
        summary.client_fills_declined = figures["client_fills_declined"] = tally.declined
        summary.client_fills_no_market = figures["client_fills_no_market"] = tally.no_mid
    chance = None
    if seeds:
        chance = await against_chance(settings, specs, backtest.strategy.name,
                                      backtest.executor.gate.pnl(), app.run_id, seeds)
        figures["against_chance"] = chance.figures()
    print_summary(summary, figures, args.format)
    if chance is not None and args.format != "json":
        print("\n".join(chance.lines()))
    return 0




def _summary(result: BacktestResult) -> RunSummary:
    return RunSummary(
        mode="backtest", run_id=result.run_id, strategy=result.strategy,
        events=result.events, quotes=result.quotes, trades=result.trades,
        first_ts_ns=result.first_ts_ns, last_ts_ns=result.last_ts_ns,
        wall_seconds=result.wall_seconds, records=result.records, log_files=result.log_files,
        decisions=result.decisions, orders=result.orders, fills=result.fills,
        client_fills=result.client_fills, client_fills_unpriced=result.client_fills_unpriced,
        client_fills_skipped=result.client_fills_skipped,
        events_note=(f"cache {result.cache}; {result.processed:,} through the strategy "
                     f"path, {result.quiet:,} checked in bulk (quiet), {result.skipped:,} "
                     "skipped (they change nothing)"),
    )
