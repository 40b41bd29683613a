"""Command line: parse flags, load settings, hand over to the chosen mode.

Exit status: 0 on a clean finish (including Ctrl-C, SIGTERM and `--duration`), 2 for a
command line or setting that cannot be used (one readable line on stderr, no traceback),
1 for a runtime failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from config.settings import ConfigError, known_ccxt_exchanges, load_settings
from daemon.core.model import NATIVE_VENUES
from strategies import STRATEGIES as STRATEGY_FACTORIES

#: The registry's names (its factories import their strategy modules only when called).
STRATEGIES = tuple(STRATEGY_FACTORIES)
MODES = ("action", "post-mortem", "backtest", "watch", "record", "calibrate", "train",
         "evaluate", "sweep", "feed", "archive")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for bad settings
        self.exit(EXIT_USAGE, f"cryptopipe: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cryptopipe",
        description="Async crypto trading daemon: Binance/Bybit top-of-book bus, arbitrage, "
        "inventory market making, internalize-or-hedge, post-mortem.",
    )
    parser.add_argument("--strategy", choices=STRATEGIES, default=None,
                        help="strategy to run (action, backtest) or report on (post-mortem)")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="what to do (default: action with a strategy, watch without)")
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML settings layered over the shipped config/default.toml")
    parser.add_argument("--venues", default=None,
                        help="comma-separated venue ids to run, e.g. binance_spot,bybit_linear")
    parser.add_argument("--symbols", default=None,
                        help="comma-separated ccxt symbols, e.g. BTC/USDT,BTC/USDT:USDT")
    parser.add_argument("--duration", type=_positive_seconds, default=None,
                        help="stop cleanly after this many seconds")
    parser.add_argument("--feed", default="live",
                        help="market data: live (default), sample, "
                        "replay:FILE[@VENUE:SYMBOL][,FILE...], or nats://HOST:PORT (from "
                        "a --mode feed process)")
    parser.add_argument("--bus-publish", default=None, metavar="nats://HOST:PORT",
                        help="publish this process's market data (and decision log) on NATS")
    parser.add_argument("--speed", type=_speed, default=1.0,
                        help="replay pace: 1 = real time (default), N = N x, max = no pacing")
    parser.add_argument("--format", choices=("table", "json"), default=None,
                        help="output: a live table (default on a terminal) or JSON lines")
    parser.add_argument("--data", nargs="+", type=Path, default=None,
                        help="recorded files for --mode backtest")
    parser.add_argument("--seeds", type=_seed_count, default=None,
                        help="backtest: also run the random-inventory baseline with this "
                        "many seeds on the same data and print the strategy's percentile; "
                        "evaluate: the number of client-flow seeds (default 30)")
    parser.add_argument("--model", type=Path, default=None,
                        help="rl-internalize: the model folder to decide with (backtest, "
                        "action, evaluate), as written by --mode train")
    parser.add_argument("--steps", type=_seed_count, default=None,
                        help="train: environment steps to train for")
    _add_sweep_flags(parser)
    parser.add_argument("--run-id", default=None, help="name of this run (default: generated)")
    parser.add_argument("--run", default=None, help="post-mortem: report on this run id only; "
                        "watch: show only this run's strategy state")
    parser.add_argument("--since", default=None, help="post-mortem: from this time (ISO 8601)")
    parser.add_argument("--until", default=None, help="post-mortem: until this time (ISO 8601)")
    parser.add_argument("--live", action="store_true",
                        help="trade for real (needs API keys); without it orders go to paper")
    return parser


def _add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    """`--mode sweep` (daemon/modes/sweep.py): the grid, where it runs, walk-forward."""
    parser.add_argument("--grid", action="append", default=None, metavar="NAME=V1,V2,...",
                        help="sweep: a setting and its values (repeatable); NAME is the "
                        "strategy's own setting, or a dotted path such as "
                        "execution.submit_latency_ms")
    parser.add_argument("--grid-file", type=Path, default=None,
                        help="sweep: a TOML table of name = [values]")
    parser.add_argument("--workers", type=_seed_count, default=None,
                        help="sweep: local worker processes (default: the number of cores)")
    parser.add_argument("--cluster", default=None, metavar="ADDRESS",
                        help="sweep: run on this Dask distributed scheduler, e.g. "
                        "tcp://10.0.0.5:8786, instead of local processes")
    parser.add_argument("--train", default=None, metavar="FROM..TO",
                        help="sweep: run the grid on the data received in [FROM, TO) "
                        "(ISO 8601, UTC) and pick the best")
    parser.add_argument("--test", default=None, metavar="FROM..TO",
                        help="sweep: run the chosen settings on this span (needs --train)")
    parser.add_argument("--select", choices=("pnl", "sharpe"), default=None,
                        help="sweep: what --train picks the best by (default: pnl)")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _seed_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _speed(text: str) -> float | None:
    if text.lower() in ("max", "inf", "0"):
        return None
    try:
        value = float(text.rstrip("xX"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a factor or 'max', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive or 'max': {text!r}")
    return value


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that are settings, as init values (the highest-precedence source)."""
    overrides: dict[str, Any] = {}
    if args.venues is not None:
        chosen = [v.strip() for v in args.venues.split(",") if v.strip()]
        if not chosen:
            raise ConfigError("invalid setting venues: --venues is empty")
        unknown = [v for v in chosen if v not in NATIVE_VENUES and v not in known_ccxt_exchanges()]
        if unknown:
            raise ConfigError(
                f"invalid setting venues: unknown venue {unknown[0]!r} "
                f"(known: {', '.join(NATIVE_VENUES)} or any ccxt exchange id)"
            )
        venues = {v: {"enabled": v in chosen} for v in NATIVE_VENUES}
        venues.update({v: {"enabled": True} for v in chosen})
        overrides["venues"] = venues
    if args.symbols is not None:
        overrides["symbols"] = args.symbols
    if args.live:
        overrides["execution"] = {"mode": "live"}
    if getattr(args, "model", None) is not None:
        overrides["strategies"] = {"rl_internalize": {"model": args.model}}
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode is None:
        args.mode = "action" if args.strategy else "watch"
    if args.mode in ("action", "backtest", "sweep") and args.strategy is None:
        args.strategy = "arbitrage"
    try:
        settings = load_settings(settings_overrides(args), config_file=args.config)
    except ConfigError as exc:
        print(f"cryptopipe: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from daemon.run import run_mode

    return run_mode(settings, args)
