"""Learned flow internalization: a policy shades the desk's client quote and hedges.

The internalize desk (strategies/internalize.py: one symbol, hedge venues, inventory
limit, portfolio, hedge orders and their fills) with two things a policy chooses every
`decision_interval_s` (the strategy timer) instead of the closed form:

- **shading** (bps of mid): the desk quotes clients `base_markup_bps + shade` below mid
  on its bid and `base_markup_bps - shade` above mid on its ask (`desk_quote`, which the
  quoted client flow shows each candidate: adapters/quoted_flow.py). A positive shade
  makes buying from the desk cheaper and selling to it dearer: a long desk sheds
  inventory through its clients instead of the venue.
- **hedge fraction**: the share of the inventory offset on the venue now (IOC at the
  touch, as internalize hedges).

Between decisions client fills are booked and warehoused; the inventory limit is enforced
as internalize does (a fill past `max_inventory` is hedged back to it at once).

**Policies** (`Policy`: observation and desk state -> `DeskAction`, or None for "an outside
agent decides", the Gymnasium environment's way of pausing the engine): `AgentPolicy` (a
trained Q-network run with numpy, its greedy action on `ActionGrid`), `ConstantPolicy`
(e.g. never hedge: shade 0, hedge 0, capped by the limit), `AvellanedaStoikovPolicy`
(shading = q * gamma * sigma^2 * tau, the A-S reservation price offset, no hedging).

**Observation** (float32, `FEATURES` in this order; NaN -> 0):

| feature | meaning |
|---|---|
| inventory | settled inventory / max_inventory |
| shade | current shade / largest shade of the grid |
| spread | hedge venue spread, bps / 10 |
| volatility | sigma of log mid returns, bps per sqrt-second |
| client_flow | expected net desk-side client flow over the horizon / max_inventory |
| recent_return | mid change over `return_window_s`, bps / 10 |
| time_in_episode | feed time since the first quote / episode_s, capped at 1 |
| hedge_in_flight | base still to come from hedges sent / max_inventory |

Every decision is logged (action "quote", or "hedge"/"partial_hedge" when it hedges) with
the features, the action index, the shade, the hedge fraction and both markups.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from daemon.core.clock import NS_PER_SECOND
from daemon.core.model import Decision, Quote
from daemon.core.vocabulary import Action
from strategies.internalize import InternalizeStrategy, _fill_outcome, _Touch
from strategies.qnetwork import NumpyQNetwork

BPS = 1e-4
MODEL_FILE = "model.json"

FEATURES: tuple[str, ...] = ("inventory", "shade", "spread", "volatility", "client_flow",
                             "recent_return", "time_in_episode", "hedge_in_flight")


@dataclass(frozen=True, slots=True)
class DeskAction:
    """What a policy chose: the shade (bps, + lowers both client prices) and the share of
    the inventory to hedge now."""

    shade_bps: float
    hedge_fraction: float


@dataclass(frozen=True, slots=True)
class ActionGrid:
    """The discrete actions of DQN: every shade with every hedge fraction, index =
    shade_index * len(hedge_fractions) + hedge_index."""

    shades_bps: tuple[float, ...]
    hedge_fractions: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.shades_bps or not self.hedge_fractions:
            raise ValueError("an action grid needs at least one shade and one hedge fraction")
        if any(not 0.0 <= f <= 1.0 for f in self.hedge_fractions):
            raise ValueError(f"hedge fractions must be in [0, 1]: {self.hedge_fractions}")

    @classmethod
    def from_settings(cls, own: Any) -> ActionGrid:
        return cls(tuple(own.shades_bps), tuple(own.hedge_fractions))

    @property
    def size(self) -> int:
        return len(self.shades_bps) * len(self.hedge_fractions)

    @property
    def max_shade_bps(self) -> float:
        return max(abs(shade) for shade in self.shades_bps) or 1.0

    def action(self, index: int) -> DeskAction:
        if not 0 <= index < self.size:
            raise ValueError(f"action {index} outside the grid of {self.size}")
        shade, hedge = divmod(index, len(self.hedge_fractions))
        return DeskAction(self.shades_bps[shade], self.hedge_fractions[hedge])

    def index(self, action: DeskAction) -> int:
        return (self.shades_bps.index(action.shade_bps) * len(self.hedge_fractions)
                + self.hedge_fractions.index(action.hedge_fraction))


@dataclass(frozen=True, slots=True)
class DeskState:
    """The raw numbers behind an observation, for policies that are formulas."""

    now_ns: int
    inventory: float
    max_inventory: float
    mid: float
    sigma: float  # log mid returns per sqrt-second
    horizon_s: float


class Policy(Protocol):
    def __call__(self, observation: np.ndarray, state: DeskState) -> DeskAction | None: ...


@dataclass(frozen=True, slots=True)
class ConstantPolicy:
    """The same action every time (never hedge: `ConstantPolicy(DeskAction(0, 0))`)."""

    chosen: DeskAction

    def __call__(self, observation: np.ndarray, state: DeskState) -> DeskAction:
        return self.chosen


@dataclass(frozen=True, slots=True)
class AvellanedaStoikovPolicy:
    """The A-S client quote: reservation price mid - q*gamma*sigma^2*tau, so the shade is
    q*gamma*sigma_price^2*tau in price, here in bps of mid (gamma per quote unit, as
    internalize's); no hedging beyond the inventory limit."""

    gamma: float
    max_shade_bps: float = 50.0

    def __call__(self, observation: np.ndarray, state: DeskState) -> DeskAction:
        sigma_price = state.sigma * state.mid
        shade = state.inventory * self.gamma * sigma_price * sigma_price * state.horizon_s
        shade_bps = shade / state.mid / BPS if state.mid > 0.0 else 0.0
        if not math.isfinite(shade_bps):
            shade_bps = 0.0
        return DeskAction(max(-self.max_shade_bps, min(self.max_shade_bps, shade_bps)), 0.0)


class AgentPolicy:
    """A trained agent: the greedy action of its Q-network (numpy only) on its grid."""

    def __init__(self, network: NumpyQNetwork, grid: ActionGrid,
                 features: Sequence[str] = FEATURES, folder: Path | None = None) -> None:
        if tuple(features) != FEATURES:
            raise ValueError(f"the model was trained on features {list(features)}; this "
                             f"version observes {list(FEATURES)}: retrain it")
        if network.n_inputs != len(FEATURES) or network.n_actions != grid.size:
            raise ValueError(f"the Q-network maps {network.n_inputs} inputs to "
                             f"{network.n_actions} actions; expected {len(FEATURES)} to "
                             f"{grid.size}")
        self.network = network
        self.grid = grid
        self.folder = folder

    @classmethod
    def load(cls, folder: Path) -> AgentPolicy:
        """From a model folder written by `--mode train` (model.json + q_network.npz)."""
        folder = Path(folder)
        spec_path = folder / MODEL_FILE
        if not spec_path.is_file():
            raise ValueError(f"{folder} is not a model folder (no {MODEL_FILE})")
        spec = json.loads(spec_path.read_text())
        grid = ActionGrid(tuple(spec["action_grid"]["shades_bps"]),
                          tuple(spec["action_grid"]["hedge_fractions"]))
        return cls(NumpyQNetwork.load(folder), grid, spec["features"], folder)

    def __call__(self, observation: np.ndarray, state: DeskState) -> DeskAction:
        return self.grid.action(self.network.action(observation))


class RLInternalizeStrategy(InternalizeStrategy):
    """Internalize with the client quote's shading and the hedging chosen by `policy`."""

    def __init__(self, *args: Any, policy: Policy, grid: ActionGrid,
                 base_markup_bps: float, episode_s: float, return_window_s: float,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agent = policy
        self.grid = grid
        self.base_markup_bps = base_markup_bps
        self.episode_s = episode_s
        self._return_window_ns = int(return_window_s * NS_PER_SECOND)
        self.shade_bps = 0.0
        #: The observation an outside agent is to answer (the policy returned None).
        self.awaiting: np.ndarray | None = None
        self.decisions = 0
        self._hedge_fraction = 0.0
        self._start_ns = 0
        self._mids: deque[tuple[int, float]] = deque()

    @classmethod
    def from_settings(cls, settings: Any, name: str = "rl-internalize",
                      policy: Policy | None = None) -> RLInternalizeStrategy:
        """The desk of `strategies.internalize` with `strategies.rl_internalize`'s choices;
        `policy` None: the model of the settings (`rl_internalize.model`), required."""
        own, rl = settings.strategies.internalize, settings.strategies.rl_internalize
        if own.venue not in settings.venues:
            raise ValueError(f"strategies.internalize.venue {own.venue!r} is not a configured "
                             "venue")
        grid = ActionGrid.from_settings(rl)
        if policy is None and rl.policy != "model":
            policy = policy_from_name(rl.policy, settings)
        if policy is None:
            if rl.model is None:
                raise ValueError("rl-internalize decides with a trained model: pass --model "
                                 "PATH (a folder written by --mode train) or set "
                                 "strategies.rl_internalize.model")
            agent = AgentPolicy.load(rl.model)
            policy, grid = agent, agent.grid
        venue = settings.venues[own.venue]
        return cls(
            own.symbol, {own.venue: venue.taker_fee_bps}, gamma=own.gamma,
            horizon_s=own.horizon_s, max_inventory=own.max_inventory,
            slippage_coefficient=own.slippage_coefficient,
            initial_balances=own.initial_balances,
            volatility_window_s=own.volatility_window_s, flow_halflife_s=own.flow_halflife_s,
            reevaluate_interval_s=rl.decision_interval_s,
            lot=float(venue.markets.get(own.symbol, {}).get("lot", 0.0)),
            max_order_notional=settings.risk.max_order_notional,
            flatten_on_kill=settings.risk.flatten_on_kill, name=name,
            policy=policy, grid=grid, base_markup_bps=rl.base_markup_bps,
            episode_s=rl.episode_s, return_window_s=rl.return_window_s)

    # -- the quote clients see -----------------------------------------------------------

    def desk_quote(self, ts_ns: int) -> tuple[float, float]:
        """(bid markup, ask markup) in bps vs mid: the quoted flow's `DeskQuote`."""
        return self.base_markup_bps + self.shade_bps, self.base_markup_bps - self.shade_bps

    # -- events --------------------------------------------------------------------------

    def on_quote(self, quote: Quote) -> Decision | None:
        if (quote.symbol == self.symbol and quote.exchange == self._primary_venue
                and not quote.stale and quote.bid < quote.ask):
            now = quote.local_ts_ns
            if not self._start_ns:
                self._start_ns = now
            mids = self._mids
            mids.append((now, quote.mid))
            # Keep one mid at or before the return window's start (the return's base).
            while len(mids) > 1 and mids[1][0] <= now - self._return_window_ns:
                mids.popleft()
        return super().on_quote(quote)

    def on_timer(self, now_ns: int) -> Decision | None:
        """A decision: observe, ask the policy, act (or wait for an outside agent)."""
        self.portfolio.mark(now_ns, self._mid(), record=True)
        self._expire_pending(now_ns)
        observation = self.observe(now_ns)
        action = self.agent(observation, self.desk_state(now_ns))
        if action is None:
            self.awaiting = observation
            return None
        return self.act(action, now_ns, observation)

    # -- observation and action ----------------------------------------------------------

    def observe(self, now_ns: int) -> np.ndarray:
        """The features (`FEATURES`) at `now_ns`; reads state, changes none."""
        limit = self.max_inventory
        quote = self._market.quote(self._primary_venue, self.symbol) if self._market else None
        fresh = quote is not None and not quote.stale and quote.bid < quote.ask
        spread_bps = (quote.ask - quote.bid) / quote.mid / BPS if fresh else math.nan
        elapsed_s = (now_ns - self._start_ns) / NS_PER_SECOND if self._start_ns else 0.0
        in_flight = sum(hedge.remaining for hedge in self.pending)
        values = (
            self.inventory / limit,
            self.shade_bps / self.grid.max_shade_bps,
            spread_bps / 10.0,
            self._sigma_at(now_ns) / BPS,
            self.flow.expected(now_ns, self.horizon_s) / limit,
            self._recent_return_bps(quote.mid if fresh else math.nan) / 10.0,
            min(1.0, elapsed_s / self.episode_s),
            in_flight / limit,
        )
        return np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0,
                             neginf=0.0)

    def desk_state(self, now_ns: int) -> DeskState:
        return DeskState(now_ns, self.inventory, self.max_inventory, self._mid(),
                         self._sigma_at(now_ns), self.horizon_s)

    def act(self, action: DeskAction, now_ns: int,
            observation: np.ndarray | None = None) -> Decision:
        """Apply a chosen action: the new shading, and the hedge (IOC) if any. Always one
        Decision (called by `on_timer`, or by the environment for an outside agent)."""
        if observation is None:
            observation = self.observe(now_ns)
        self.awaiting = None
        self.decisions += 1
        self.shade_bps = action.shade_bps
        position = self.position
        busy = self.killed or bool(self.pending)
        self._hedge_fraction = 0.0 if busy else action.hedge_fraction
        try:
            plan = self._plan(position, now_ns)
        finally:
            self._hedge_fraction = 0.0
        hedged = plan.hedge_qty if (plan.touch is not None and position != 0.0
                                    and not self.killed) else 0.0
        outcome = (_fill_outcome(hedged, abs(position), self.lot) if hedged > 0.0
                   else Action.QUOTE)
        inputs = self._inputs(plan, now_ns, "decision", hedged, outcome)
        bid_markup, ask_markup = self.desk_quote(now_ns)
        inputs.update(zip(FEATURES, (float(v) for v in observation), strict=True))
        inputs.update(action_index=self._action_index(action), shade_bps=action.shade_bps,
                      hedge_fraction=action.hedge_fraction, bid_markup_bps=bid_markup,
                      ask_markup_bps=ask_markup, inventory_before=position)
        reason = (plan.reason if hedged > 0.0 else
                  "hedges in flight: shading only" if busy and not self.killed else
                  f"shade {action.shade_bps:+g} bps, hold the inventory")
        return self._decision(now_ns, outcome, reason, plan, hedged, inputs)

    def _policy_hedge(self, position: float, touch: _Touch, coefficient: float, risk: float,
                      offset: float) -> tuple[float, str]:
        """The chosen fraction at a decision; nothing between decisions (the limit still
        binds: `_plan` hedges back to it)."""
        fraction = self._hedge_fraction
        return fraction * abs(position), f"policy: hedge {fraction:.0%} of the inventory"

    def _action_index(self, action: DeskAction) -> int:
        try:
            return self.grid.index(action)
        except ValueError:
            return -1  # a formula's action, off the grid

    def _recent_return_bps(self, mid: float) -> float:
        if not self._mids or not mid > 0.0:
            return math.nan
        base = self._mids[0][1]
        return (mid / base - 1.0) / BPS

    def mark_to_market(self) -> float:
        """P&L of the desk at the current mid (quote currency; NaN without a mid)."""
        mid = self._mid()
        return self.portfolio.pnl_trading(mid) if mid > 0.0 else math.nan

    def summary_lines(self) -> list[str]:
        lines = super().summary_lines()
        lines.append(f"{self.decisions:,} policy decisions; last shade {self.shade_bps:+g} bps")
        return lines


def policy_from_name(name: str, settings: Any) -> Policy:
    """The evaluation baselines by name: "never-hedge", "a-s" (see the classes above)."""
    builders: Mapping[str, Callable[[], Policy]] = {
        "never-hedge": lambda: ConstantPolicy(DeskAction(0.0, 0.0)),
        "a-s": lambda: AvellanedaStoikovPolicy(settings.strategies.internalize.gamma),
    }
    if name not in builders:
        raise ValueError(f"unknown policy {name!r} (known: {', '.join(builders)})")
    return builders[name]()
