"""`--mode train`: learn rl-internalize's policy on recorded data, write its model folder.

    python main.py --strategy rl-internalize --mode train --steps 30000 \\
        --data ../shared/data/binance_usdm_ethusdt_20240718.gz [FILE...]

Trains stable-baselines3's DQN on the Gymnasium environment that steps the backtest
engine (daemon/rl/: env.py, train.py) and writes `data_dir/models/rl-internalize/<run-id>/`
(policy.zip, q_network.npz, model.json, training_curve.csv), then prints where it is and
how to backtest it: `--mode backtest --model FOLDER` decides with numpy only.

`--steps` is the number of environment steps, one decision each (default
`DEFAULT_STEPS`). A progress bar on a terminal (rich), a line every `LINE_EVERY_S` seconds
otherwise. Refused with one line and exit 2: another strategy than rl-internalize, no
`--data` (or a missing file), a run id whose folder exists, and the `[rl]` extra not
installed (`pip install -e '.[rl]'`; torch, stable-baselines3 and gymnasium are imported
only once those checks pass, so the other modes never need them).

Training runs in a worker thread so Ctrl-C and `--duration` are heard: they stop it after
the step under way, and the model trained so far is written (model.json says
`stopped_early`). The thousands of episodes' own info lines (a backtest's rings, its
cache) would bury the progress: "info" is raised to "warning" while training ("debug"
keeps everything).
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from adapters.recordings.replay import ReplaySpec
from config.settings import ConfigError
from daemon.core.logs import configure_logging, get_logger
from daemon.feeds import resolve_markets
from daemon.modes.data import data_specs
from daemon.modes.progress import counted_bar
from daemon.rl import RLExtraMissing, model_folder, require_rl_extra

if TYPE_CHECKING:
    from daemon.app import App
    from daemon.rl.train import TrainingProgress, TrainingRun

log = get_logger("train")

STRATEGY = "rl-internalize"
#: Environment steps when --steps is not given.
DEFAULT_STEPS = 10_000
#: Off a terminal, a progress line this often (wall seconds).
LINE_EVERY_S = 10.0


async def run_train(app: App) -> int:
    """Mode entry point: check the inputs, train in a worker thread, report the folder."""
    settings, args = app.settings, app.args
    if args.strategy != STRATEGY:
        raise ConfigError(f"--mode train trains {STRATEGY}: pass --strategy {STRATEGY}")
    specs = data_specs(args.data, "train")
    folder = model_folder(settings.data_dir, app.run_id)
    if folder.exists():
        raise ConfigError(f"model folder {folder} exists already; choose another --run-id "
                          "or remove it")
    try:
        require_rl_extra()
    except RLExtraMissing as exc:
        raise ConfigError(str(exc)) from None
    from daemon.rl.env import load_data
    from daemon.rl.train import train

    steps = args.steps or DEFAULT_STEPS
    settings = app.settings = await resolve_markets(settings, specs=specs)
    data = await load_data(settings, specs)
    app.warm_up_kernels()
    log.info("training", strategy=STRATEGY, steps=steps, folder=str(folder),
             files=[str(spec) for spec in specs])
    if settings.logging.level == "info":
        configure_logging(app.run_id, "warning", settings.logging.format)
    stop = threading.Event()
    with _Display(enabled=sys.stderr.isatty()) as display:
        work = asyncio.ensure_future(asyncio.to_thread(
            train, settings, specs, data, steps, folder, run_id=app.run_id,
            report=display.update, stop=stop))
        try:
            run = await asyncio.shield(work)
        except asyncio.CancelledError:  # Ctrl-C, SIGTERM, --duration: keep what was learned
            stop.set()
            run = await work
            _print_result(run, specs)
            raise
    _print_result(run, specs)
    return 0




def _print_result(run: TrainingRun, specs: list[ReplaySpec]) -> None:
    recent = run.episodes_seen[-20:]
    mean = (lambda values: sum(values) / len(values)) if recent else (lambda _: math.nan)
    stopped = " (stopped early)" if run.stopped else ""
    print(f"trained rl-internalize{stopped}: {run.steps:,} steps, {run.episodes:,} episodes "
          f"in {run.wall_seconds:,.1f} s ({run.steps_per_second:,.0f} steps/s)")
    if recent:
        print(f"last {len(recent)} episodes: mean reward {mean([r for r, _ in recent]):+,.2f}, "
              f"mean P&L {mean([p for _, p in recent]):+,.2f}")
    print(f"model folder: {run.folder}")
    files = " ".join(str(spec) for spec in specs)
    print(f"backtest it: python main.py --strategy rl-internalize --mode backtest "
          f"--model {run.folder} --data {files}")


class _Display:
    """A rich progress bar on a terminal; otherwise a line on stderr every LINE_EVERY_S."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None
        self._lock = threading.Lock()
        self._next_line = 0.0
        self._next_refresh = 0.0

    def __enter__(self) -> _Display:
        if self.enabled:
            self._progress = counted_bar(
                "train", "{task.fields[rate]:>6,.0f} steps/s",
                "{task.fields[episodes]:>6,} episodes",
                "last reward {task.fields[reward]}, P&L {task.fields[pnl]}", transient=False)
            self._task = self._progress.add_task("train", total=None, rate=0.0, episodes=0,
                                                 reward="-", pnl="-")
        self._next_line = time.monotonic() + LINE_EVERY_S
        return self

    def update(self, progress: TrainingProgress) -> None:
        """Called from the training thread after every step: cheap unless due."""
        now = time.monotonic()
        if self._progress is not None:
            if now < self._next_refresh and progress.steps < progress.total:
                return
            self._next_refresh = now + 0.2
            with self._lock:
                self._progress.update(
                    self._task, completed=progress.steps, total=progress.total,
                    rate=progress.steps_per_second, episodes=progress.episodes,
                    reward=f"{progress.last_reward:+,.2f}", pnl=f"{progress.last_pnl:+,.2f}")
        elif now >= self._next_line or progress.steps == progress.total:
            self._next_line = now + LINE_EVERY_S
            print(line(progress), file=sys.stderr, flush=True)

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def line(progress: TrainingProgress) -> str:
    """The progress line printed off a terminal."""
    share = progress.steps / progress.total if progress.total else 0.0
    return (f"train: {progress.steps:,}/{progress.total:,} steps ({share:.0%}), "
            f"{progress.steps_per_second:,.0f} steps/s, {progress.episodes:,} episodes, "
            f"last episode reward {progress.last_reward:+,.2f}, P&L {progress.last_pnl:+,.2f}")
