"""`--mode record`: raw frames of the chosen venues to `data_dir/recordings`, replayable.

    python main.py --mode record --venues binance_spot,bybit_spot --symbols BTC/USDT

Runs the live adapters with the recorder tapping every frame (see adapters/recordings/recorder.py
for the file format) until Ctrl-C, SIGTERM or `--duration`; the last second of frames is
flushed on the way out. The bus is fed as in any live mode, so the ring buffer and the
staleness flags work as usual; a line of per-venue counters is logged every minute.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from config.settings import ConfigError
from daemon.core.logs import get_logger
from daemon.core.tasks import spawn

if TYPE_CHECKING:
    from adapters.recordings.recorder import Recorder
    from daemon.app import App

log = get_logger("record")

PROGRESS_INTERVAL_S = 60.0


async def run_record(app: App) -> int:
    from adapters.market_data import run_live
    from adapters.recordings.recorder import Recorder

    if app.args.feed != "live":
        raise ConfigError(f"invalid setting feed: --mode record records live venues, "
                          f"not {app.args.feed!r}")
    directory = app.settings.data_dir / "recordings"
    recorder = Recorder(directory, run_id=app.run_id)
    log.info("recording", directory=str(directory), venues=app.settings.enabled_venues(),
             symbols=app.settings.symbols)
    flusher = spawn(recorder.run(), name="recorder")
    progress = spawn(_report(recorder), name="record-progress")
    try:
        await run_live(app.settings, app.bus, recorder=recorder)
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
