"""Structured logging: JSON lines for machines, a readable console for people.

Every line carries `run_id` (bound once at start) and `component` (bound by each module's
logger). Logs go to stderr so stdout stays clean for data (`--mode watch --format json`).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(
    run_id: str,
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
) -> None:
    """Configure structlog once per process. "auto" means JSON unless stdout is a terminal."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(run_id=run_id)


class _CurrentStderr:
    """Whatever `sys.stderr` is when a line is written (it is swapped by test capture and
    by daemonising wrappers; holding on to the object from configuration time would write
    to a closed file)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _orjson_dumps(obj: object, **_: object) -> str:
    import orjson

    return orjson.dumps(obj, default=str).decode()


def get_logger(component: str) -> structlog.typing.FilteringBoundLogger:
    """A logger whose every line names the component it comes from.

    Lazy: modules create their logger at import time, before `configure_logging` runs, and
    the configuration in force when a line is written is the one that applies.
    """
    return structlog.get_logger(component=component)
