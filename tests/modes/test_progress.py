"""A backtest's progress: a bar with the time left on a terminal, plain lines elsewhere."""

from __future__ import annotations

from structlog.testing import capture_logs

from daemon.modes.progress import RunProgress

SECOND_NS = 1_000_000_000


def test_progress_lines_appear_every_few_seconds_off_a_terminal() -> None:
    """Issue 18 item 2: off a terminal (a log file, CI) a long backtest says how far it
    is, how fast and how long it has left, every `every_s` seconds of wall time."""
    now = [100.0]
    total: list[int | None] = [None]
    progress = RunProgress("backtest", lambda: total[0], terminal=False, every_s=10.0,
                           clock=lambda: now[0])
    with capture_logs() as logs, progress as update:
        total[0] = 4_000_000  # known once the events are loaded
        for seconds, events in ((1.0, 100_000), (10.0, 1_000_000), (15.0, 1_500_000),
                                (20.5, 2_050_000)):
            now[0] = 100.0 + seconds
            update(events, 1_723_161_254 * SECOND_NS)
    lines = [entry for entry in logs if entry["event"] == "backtest_progress"]
    assert [(line["events"], line["total"]) for line in lines] == [
        (1_000_000, 4_000_000), (2_050_000, 4_000_000)]
    first = lines[0]
    assert first["events_per_s"] == 100_000 and first["eta_s"] == 30.0
    assert first["percent"] == 25.0 and first["feed_time"] == "2024-08-08 23:54:14"


def test_without_a_total_the_lines_have_no_eta() -> None:
    now = [0.0]
    progress = RunProgress("backtest", lambda: None, terminal=False, every_s=0.0,
                           clock=lambda: now[0])
    with capture_logs() as logs, progress as update:
        now[0] = 2.0
        update(10, 0)
    (line,) = [entry for entry in logs if entry["event"] == "backtest_progress"]
    assert line["total"] is None and line["eta_s"] is None and line["events_per_s"] == 5
