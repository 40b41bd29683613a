"""`--mode record`: raw frames of the chosen venues to `data_dir/recordings`, replayable.

    python main.py --mode record --venues binance_spot,bybit_spot --symbols BTC/USDT

Runs the live adapters with the recorder tapping every frame (see adapters/recordings/recorder.py
for the file format) until Ctrl-C, SIGTERM or `--duration`; the last second of frames is
flushed on the way out. The bus is fed as in any live mode, so the ring buffer and the
staleness flags work as usual; a line of per-venue counters is logged every minute.

`record.depth = true` records order-book depth too (`RECORD_BOOK_DEPTH` levels at least):
Binance's `<symbol>@depth@100ms` diffs and the REST snapshot each sync starts from (the
recorder keeps it as a frame), Bybit's `orderbook.50`; `--mode calibrate` walks those books.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from config.settings import ConfigError, Settings
from daemon.core.logs import get_logger
from daemon.core.tasks import spawn

if TYPE_CHECKING:
    from adapters.recordings.recorder import Recorder
    from daemon.app import App

log = get_logger("record")

PROGRESS_INTERVAL_S = 60.0
#: Book levels asked for with `record.depth` (Bybit orderbook.50; Binance: any depth > 1
#: subscribes its full diff stream).
RECORD_BOOK_DEPTH = 50


def with_recorded_depth(settings: Settings) -> Settings:
    """`settings` with every venue's `book_depth` at least `RECORD_BOOK_DEPTH` when
    `record.depth` is on (the adapters then subscribe the depth streams)."""
    if not settings.record.depth:
        return settings
    venues = {venue_id: venue.model_copy(
                  update={"book_depth": max(venue.book_depth, RECORD_BOOK_DEPTH)})
              for venue_id, venue in settings.venues.items()}
    return settings.model_copy(update={"venues": venues})


async def run_record(app: App) -> int:
    from adapters.market_data import run_live
    from adapters.recordings.recorder import Recorder

    if app.args.feed != "live":
        raise ConfigError(f"invalid setting feed: --mode record records live venues, "
                          f"not {app.args.feed!r}")
    settings = with_recorded_depth(app.settings)
    directory = settings.data_dir / "recordings"
    recorder = Recorder(directory, run_id=app.run_id)
    log.info("recording", directory=str(directory), venues=settings.enabled_venues(),
             symbols=settings.symbols, depth=settings.record.depth)
    flusher = spawn(recorder.run(), name="recorder")
    progress = spawn(_report(recorder), name="record-progress")
    try:
        await run_live(settings, app.bus, recorder=recorder)
    finally:
        progress.cancel()
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        log.info("recorded", files=[str(p) for p in recorder.paths()],
                 bytes=recorder.bytes_written)
    return 0


async def _report(recorder: Recorder) -> None:
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        log.info("recording_progress", bytes=recorder.bytes_written,
                 frames={venue: r.frames for venue, r in recorder.recordings.items()})
