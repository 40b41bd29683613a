"""`InternalizeEnv`: a Gymnasium environment that steps the real backtest engine.

Each episode is a `daemon.backtest.engine.Backtest` of "rl-internalize" (the internalize
desk of strategies/rl_internalize.py, with the configured client flow: `quoted`, clients
who see the desk's shaded quote) over a window of recorded data, run synchronously with
the engine's stepping API: `open(data, window)`, `run_until()`, `request_pause()`,
`finish()`. The events come from the event cache (daemon/backtest/cache.py), opened once
per environment and read as any backtest reads it: an episode's window is a row range of
the cache (`window_rows`: the chunk index finds it), whose chunks the engine reads as it
reaches them, building only the events it runs (issue 18: memory does not grow with the
days of data; the environment keeps one pass's summary of them, `DataSurvey`). Every row
goes through the bus, the strategy runner, the risk gate and kill switch and the paper
executor as in any backtest. No second simulator, no thread: the environment's `step` is
the engine's loop, resumed.

**How the engine pauses.** The strategy's policy is replaced by a callable that, at every
decision (the strategy timer, every `decision_interval_s` of feed time), returns None (so
the strategy keeps the observation in `strategy.awaiting` and decides nothing) and calls
`backtest.request_pause()`: the engine stops right after that runner call. `step(action)`
then hands the action to `strategy.act(...)` through `backtest.runner.call(...)` -- the
decision, and its hedge order, go through the runner, the gate and the executor exactly
where the strategy would have returned them -- and runs to the next decision. So a fixed
policy stepped here writes the same decision log as a plain `Backtest.run()` with that
policy (tests/rl/test_env.py, byte for byte), also when the timer fires as time moves to
a client fill's (the engine pauses before that fill is taken).

**Spaces.** Observation: `Box(float32, (len(FEATURES),))`, the strategy's `FEATURES`
(inventory vs limit, current shade, venue spread, volatility, expected net client flow,
recent return, time in episode, hedge in flight; see strategies/rl_internalize.py),
unbounded (inventory may pass the limit before the limit's hedge lands; volatility has
no ceiling). Action: `Discrete(grid.size)`, an index into the `ActionGrid` of
`shades_bps` x `hedge_fractions`.

**Reward** per step (decision to decision): the change in the desk's marked-to-market
P&L (`strategy.mark_to_market()`, quote currency, at the mid) minus `inventory_penalty *
(inventory / max_inventory)^2`, the inventory as it stands at the next decision. A mark
without a mid (no fresh quote) counts as unchanged.

**Episodes.** `reset()` draws, from the environment's seeded RNG (`reset(seed=...)`), a
window of `episode_s` feed seconds of the data (the whole data when it is shorter) and a
fresh client-flow seed (`strategies.internalize.seed` of that episode). With
`mirror_prices` every window is played twice: as recorded, then, the next episode, its
mirrored price path (daemon/rl/mirror.py: p0^2/p, bid and ask swapped, p0 the window's
first mid; each chunk mirrored as the engine reads it, `MirroredEvents`) with a fresh flow
seed of its own. An episode ends (`terminated`, never `truncated`: time in episode is
observed, the horizon is part of the problem) when the window's data runs out; the
engine then `finish()`es as a backtest ends (open orders cancelled, the cancels let
through: a few milliseconds of feed time, balances snapshotted), and the last step's
reward counts that too. The engine cannot pause inside that settling, so a decision
whose timer falls due there is not a step: `end_policy` answers it (default: keep the
shade, hedge nothing; a fixed policy replayed here passes itself, so its log is the plain
backtest's). Training episodes write no decision log
(`decision_log=False`, the engine's null sink) and run without internalize's
always-hedge twin (nobody compares with it there); `decision_log=True` writes the log
under `run_id` and keeps the twin, as a backtest of the same settings would.

`reset(options=...)` overrides the draws: `window` ("all", or (start_ns, end_ns) of feed
time), `flow_seed` (int), `mirror` (bool), `run_id` (str, the episode's run id; by
default `<run_id>-<episode>`, or `run_id` itself for `window="all"`).

`info` carries the episode's P&L so far (`pnl`), the inventory, the feed time, and at the
end the engine's `BacktestResult` (`result`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces

from adapters.recordings.replay import ReplaySpec
from config.settings import Settings
from daemon.backtest.cache import BacktestData, EventSource, load
from daemon.backtest.engine import Backtest, BacktestResult, window_rows
from daemon.core.clock import NS_PER_SECOND
from daemon.rl.mirror import Key, MirroredEvents, first_mids, last_quote_rows
from strategies.rl_internalize import (
    FEATURES,
    ActionGrid,
    DeskAction,
    DeskState,
    Policy,
    RLInternalizeStrategy,
)

STRATEGY = "rl-internalize"
#: Windows tried before giving up on drawing one with a decision in it.
_WINDOW_TRIES = 20


async def load_data(settings: Settings, specs: Sequence[ReplaySpec]) -> EventSource:
    """The recordings' decoded events: the backtest cache, opened (decoded once, then read a
    chunk at a time; in memory only when the cache cannot be saved)."""
    data, _ = await load(list(specs), settings.data_dir, settings.backtest.cache_max_mb * 1e6,
                         depth=settings.execution.walk_depth)
    if data is None:
        raise ValueError("these recordings cannot be held as event columns (see the log): "
                         "the environment steps the engine over the backtest cache")
    return data


@dataclass(frozen=True, slots=True)
class DataSurvey:
    """What the environment keeps of its data, from one pass over the chunks: the span of
    receive times the windows are drawn from, and each market's last quote row (where
    looking for a mirrored window's first mid can stop)."""

    first_ns: int
    last_ns: int
    last_quotes: dict[Key, int]

    @classmethod
    def of(cls, chunks: Iterable[tuple[int, BacktestData]]) -> DataSurvey:
        first_ns = last_ns = None
        last_quotes: dict[Key, int] = {}
        for first, chunk in chunks:
            if not len(chunk):
                continue
            low, high = int(chunk.local_ts_ns.min()), int(chunk.local_ts_ns.max())
            first_ns = low if first_ns is None else min(first_ns, low)
            last_ns = high if last_ns is None else max(last_ns, high)
            last_quotes.update(last_quote_rows([(first, chunk)]))
        if first_ns is None or last_ns is None:
            raise ValueError("no events in the data: nothing to run an episode on")
        return cls(first_ns, last_ns, last_quotes)


def episode_settings(settings: Settings, *, flow_seed: int, twin: bool) -> Settings:
    """The settings of one episode: its flow seed, a formula policy to build the desk
    with (the environment's agent replaces it) and the twin on or off."""
    strategies = settings.strategies
    internalize = strategies.internalize.model_copy(
        update={"seed": flow_seed, "always_hedge_baseline": twin})
    rl = strategies.rl_internalize.model_copy(update={"policy": "never-hedge", "model": None})
    return settings.model_copy(update={"strategies": strategies.model_copy(
        update={"internalize": internalize, "rl_internalize": rl})})


class _PausingPolicy:
    """The policy an outside agent answers: pause the engine at each decision."""

    def __init__(self, backtest: Backtest) -> None:
        self.backtest = backtest
        self.now_ns = 0

    def __call__(self, observation: np.ndarray, state: DeskState) -> DeskAction | None:
        self.now_ns = state.now_ns
        self.backtest.request_pause()
        return None


@dataclass(frozen=True, slots=True)
class _HoldPolicy:
    """The default end policy: keep the shade, hedge nothing (the limit still binds)."""

    strategy: RLInternalizeStrategy

    def __call__(self, observation: np.ndarray, state: DeskState) -> DeskAction:
        return DeskAction(self.strategy.shade_bps, 0.0)


class InternalizeEnv(gymnasium.Env[np.ndarray, np.int64]):
    """rl-internalize on recorded data, one decision per step (see the module docstring).

    `data`: the recordings' events already opened (`await load_data(...)`: a cache file,
    read a chunk at a time); None opens them here (outside a running event loop). `grid`:
    the action grid (default: the settings'; a trained model's grid when replaying one).
    `end_policy`: see the module docstring (the end of an episode).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, settings: Settings, specs: Sequence[ReplaySpec], *,
                 data: EventSource | None = None, decision_log: bool = False,
                 run_id: str = "train", grid: ActionGrid | None = None,
                 end_policy: Policy | None = None) -> None:
        super().__init__()
        #: Who answers a decision falling due while the engine ends the run (after the
        #: episode's last step; the engine cannot pause there); None: hold the shade.
        self.end_policy = end_policy
        self.settings = settings
        self.specs = list(specs)
        self.data = data if data is not None else asyncio.run(load_data(settings, specs))
        self.decision_log = decision_log
        self.run_id = run_id
        own = settings.strategies.rl_internalize
        self.grid = grid or ActionGrid.from_settings(own)
        self.episode_ns = int(own.episode_s * NS_PER_SECOND)
        self.mirror_prices = own.mirror_prices
        self.inventory_penalty = own.inventory_penalty
        self.observation_space = spaces.Box(-np.inf, np.inf, (len(FEATURES),), np.float32)
        self.action_space = spaces.Discrete(self.grid.size)
        self.survey = DataSurvey.of(self.data.chunks())
        self._first_ns, self._last_ns = self.survey.first_ns, self.survey.last_ns
        self._ticks = {(venue, symbol): float(rules.get("tick", 0.0))
                       for venue, config in settings.venues.items()
                       for symbol, rules in config.markets.items()}
        #: Episodes started (the default run id's suffix).
        self.episodes = 0
        self.backtest: Backtest | None = None
        self.strategy: RLInternalizeStrategy | None = None
        self.result: BacktestResult | None = None
        self._agent: _PausingPolicy | None = None
        self._observation: np.ndarray | None = None
        self._mark = 0.0
        self._replay_mirrored: tuple[int, int] | None = None  # the window to play mirrored

    # -- the Gymnasium API -------------------------------------------------------------

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        self._abandon()
        for _ in range(_WINDOW_TRIES):
            window, mirrored = self._draw_window(options.get("window"), options.get("mirror"))
            flow_seed = options.get("flow_seed")
            if flow_seed is None:
                flow_seed = int(self.np_random.integers(2**31 - 1))
            run_id = options.get("run_id") or (
                self.run_id if options.get("window") == "all"
                else f"{self.run_id}-{self.episodes:06d}")
            if self._start(window, mirrored, int(flow_seed), run_id):
                return self._observation_now(), self._info()
            if options.get("window") is not None:
                break
        raise ValueError("no decision in the episode's window: the data is shorter than "
                         "strategies.rl_internalize.decision_interval_s")

    def step(self, action: int | np.integer) -> tuple[np.ndarray, float, bool, bool,
                                                      dict[str, Any]]:
        backtest, strategy, agent = self.backtest, self.strategy, self._agent
        if backtest is None or strategy is None or agent is None or self._observation is None:
            raise RuntimeError("step() needs reset() first (and a new one after the end)")
        chosen = self.grid.action(int(action))
        observation, now = self._observation, agent.now_ns
        backtest.runner.call(lambda: strategy.act(chosen, now, observation))
        if backtest.run_until(None):
            reward = self._reward(strategy)
            self._observation = strategy.awaiting
            return self._observation_now(), reward, False, False, self._info()
        # The data ran out: the engine ends the run (open orders cancelled, the cancels
        # let through), where a decision may still fall due; the end policy answers it.
        strategy.agent = self.end_policy or _HoldPolicy(strategy)
        self.result = backtest.finish()
        reward = self._reward(strategy)
        info = self._info()
        info["result"] = self.result
        final = strategy.observe(backtest.clock.now_ns)
        self.backtest = self.strategy = self._agent = None
        self._observation = None
        return final, reward, True, False, info

    def close(self) -> None:
        self._abandon()

    # -- episodes ----------------------------------------------------------------------

    def _draw_window(self, asked: Any, mirrored: bool | None) -> tuple[tuple[int, int], bool]:
        """The rows of the episode and whether its prices are mirrored."""
        if asked == "all":
            return (0, len(self.data)), bool(mirrored)
        if asked is not None:
            start_ns, end_ns = asked
            return window_rows(self.data, int(start_ns), int(end_ns)), bool(mirrored)
        if self._replay_mirrored is not None and mirrored is None:
            window, self._replay_mirrored = self._replay_mirrored, None
            return window, True
        span = self._last_ns - self._first_ns
        if span <= self.episode_ns:
            window = (0, len(self.data))
        else:
            start_ns = self._first_ns + int(self.np_random.integers(span - self.episode_ns + 1))
            window = window_rows(self.data, start_ns, start_ns + self.episode_ns)
        if mirrored is None and self.mirror_prices:
            self._replay_mirrored = window  # the next episode plays it mirrored
        return window, bool(mirrored)

    def _start(self, window: tuple[int, int], mirrored: bool, flow_seed: int,
               run_id: str) -> bool:
        """A new Backtest on the window, run to its first decision; False if it has none."""
        self.episodes += 1
        self.result = None
        data: EventSource | MirroredEvents = self.data
        if mirrored:  # reflected chunk by chunk as the engine reads them
            p0 = first_mids(data, window[0], self.survey.last_quotes)
            data = MirroredEvents(data, p0, self._ticks)
        settings = episode_settings(self.settings, flow_seed=flow_seed,
                                    twin=self.decision_log and
                                    self.settings.strategies.internalize.always_hedge_baseline)
        backtest = Backtest(settings, STRATEGY, self.specs, run_id,
                            decision_log=self.decision_log)
        strategy = backtest.strategy
        if not isinstance(strategy, RLInternalizeStrategy):
            raise TypeError(f"{STRATEGY} built a {type(strategy).__name__}")
        strategy.grid = self.grid
        agent = _PausingPolicy(backtest)
        strategy.agent = agent
        full = window == (0, len(data))
        backtest.open(data, None if full else window)  # type: ignore[arg-type]
        self.backtest, self.strategy, self._agent = backtest, strategy, agent
        self._mark = 0.0
        if not backtest.run_until(None):
            self.result = backtest.finish()
            self.backtest = self.strategy = self._agent = None
            return False
        self._observation = strategy.awaiting
        mark = strategy.mark_to_market()
        self._mark = mark if math.isfinite(mark) else 0.0
        return True

    def _abandon(self) -> None:
        """End an episode left unfinished (a reset before its end)."""
        if self.backtest is not None:
            self.backtest.finish()
        self.backtest = self.strategy = self._agent = None
        self._observation = None

    # -- reward and info ---------------------------------------------------------------

    def _reward(self, strategy: RLInternalizeStrategy) -> float:
        mark = strategy.mark_to_market()
        change = 0.0
        if math.isfinite(mark):
            change, self._mark = mark - self._mark, mark
        held = strategy.inventory / strategy.max_inventory
        return float(change - self.inventory_penalty * held * held)

    def _observation_now(self) -> np.ndarray:
        assert self._observation is not None
        return self._observation

    def _info(self) -> dict[str, Any]:
        strategy, backtest = self.strategy, self.backtest
        if strategy is None or backtest is None:
            return {"pnl": self._mark}
        return {"pnl": self._mark, "inventory": strategy.inventory,
                "now_ns": backtest.clock.now_ns}
