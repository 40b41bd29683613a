"""The progress bar of the modes that count work done against a total (evaluate, train)."""

from __future__ import annotations

from typing import Any


def counted_bar(label: str, *fields: str, transient: bool) -> Any:
    """A started rich bar on stderr: `label`, the bar, done/total, one text column per
    format string in `fields` (e.g. "runs {task.fields[last]}"), elapsed and remaining."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                   *(TextColumn(field) for field in fields), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=transient)
    bar.start()
    return bar
