"""Per-run exports of strategies, written by whichever mode ran them, under
`<data_dir>/reports/<run_id>/` beside the post-mortem reports: what a strategy keeps in
memory for after the run (`write_strategy_exports`), and what it appends while the run
goes (`attach_strategy_exports`: e.g. inventory-mm's positions.csv)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from daemon.core.logs import get_logger
from strategies.base import Strategy

log = get_logger("exports")

#: Under the data directory: the post-mortem's reports and the strategies' exports.
REPORTS_DIR = "reports"


def exports_dir(data_dir: Path, run_id: str) -> Path:
    """Where a run's strategy exports live (the post-mortem reads them from there too)."""
    return data_dir / REPORTS_DIR / run_id


def attach_strategy_exports(strategy: Strategy, data_dir: Path, run_id: str) -> None:
    """Before the run: the strategy may append its exports to the run's report folder."""
    strategy.attach_exports(CsvAppender(exports_dir(data_dir, run_id)))


def write_strategy_exports(strategy: Strategy, data_dir: Path, run_id: str) -> None:
    """What the strategy keeps for after the run (internalize: its desk portfolio), beside
    the post-mortem reports under `<data_dir>/reports/<run_id>/`."""
    paths = strategy.write_exports(exports_dir(data_dir, run_id))
    if paths:
        log.info("strategy_exported", files=[str(path) for path in paths])


class CsvAppender:
    """Appends rows to CSV files in one folder, as a run goes.

    Each call opens the file in append mode, writes the rows as one write and closes it:
    what was appended is with the OS at once, so a crash (or a restart of the same run)
    loses none of it and later rows follow it; a new or empty file gets the header first.
    A write the disk refuses is logged and counted (`errors`), never raised: an export
    must not stop trading. Called at most every few fills or seconds, never per event.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.errors = 0
        self.rows_written = 0

    def append(self, name: str, columns: Sequence[str],
               rows: Sequence[Sequence[object]]) -> None:
        path = self.directory / name
        text = io.StringIO()
        writer = csv.writer(text)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not path.is_file() or path.stat().st_size == 0:
                writer.writerow(columns)
            writer.writerows(rows)
            with open(path, "a", newline="", encoding="utf-8") as handle:
                handle.write(text.getvalue())
        except OSError as exc:
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:  # not a line per snapshot
                log.warning("export_write_failed", path=str(path), errors=self.errors,
                            error=f"{type(exc).__name__}: {exc.strerror or exc}")
            return
        self.rows_written += len(rows)
