"""`--mode post-mortem`: the report of daemon/postmortem/report.py, as tables or JSON."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import orjson
from rich.console import Console

from config.settings import ConfigError
from daemon.postmortem.reader import LogFilter, parse_time
from daemon.postmortem.report import ReportNotWritten, build_report, print_report

if TYPE_CHECKING:
    from daemon.app import App


async def run_postmortem(app: App) -> int:
    """Mode entry point; the DuckDB work runs in a thread so signals stay responsive."""
    args = app.args
    try:
        log_filter = LogFilter(
            strategy=args.strategy,
            run_id=args.run,
            since_ns=parse_time(args.since) if args.since else None,
            until_ns=parse_time(args.until) if args.until else None,
        )
    except ValueError as exc:
        raise ConfigError(f"post-mortem: {exc}") from None
    try:
        report = await asyncio.to_thread(build_report, app.settings.data_dir, log_filter)
    except ReportNotWritten as exc:  # a full disk or a read-only directory: one line, exit 2
        print(f"cryptopipe: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        sys.stdout.buffer.write(orjson.dumps(report.figures(), option=orjson.OPT_INDENT_2))
        sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
    else:
        # Off a terminal rich would wrap at 80 columns; the tables need more.
        print_report(report, Console(width=None if sys.stdout.isatty() else 200))
    return 0
