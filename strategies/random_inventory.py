"""The Monte Carlo baseline: a seeded random inventory target, reached at the touch.

The seed inventory-management-research benchmarks its Avellaneda-Stoikov maker against
"a baseline monte-carlo approach that just randomly changes the inventory": a random
target inventory per period, reached with a limit order that follows the touch, and the
same risk exit (cancel everything and close the position with a market order once the loss
passes a threshold). Run on the same data with several seeds, it shows what chance makes
there, so an A-S result can be placed in that distribution
(`python -m daemon.backtest.monte_carlo`).

What it shares with inventory-mm, by subclassing `InventoryMMStrategy` (settings mapped by
`RandomInventorySettings.inventory_mm()`): the market checks (stale or crossed quotes are
skipped), the order reconciling (`delta_price_bps` / `delta_size` keep a resting order),
the inventory limit and balance room, the bookkeeping of fills and P&L, the max-loss exit
and the kill switch. What it replaces is the evaluation (`_requote`):

1. every `retarget_interval_s` of feed time a new target is drawn uniformly on the lot grid
   in [-max_inventory, +max_inventory] from a numpy generator seeded with `seed` (the
   seed notebook's `np.random.randint(-max_size, max_size)` per 15-minute bar);
2. when the inventory is more than `target_tolerance` * max_inventory from the target, one
   post-only order for the whole gap rests at the touch on the side that closes it (bid
   at the best bid to buy, ask at the best ask to sell), re-placed when the touch moves
   away by more than `delta_price_bps`: the seed's FOLLOW_LIMIT at level 0; otherwise
   nothing rests.

Decisions: "quote" when orders change; "hold" otherwise (once per requote interval, from the
timer, and on every new target); "skip" and "max_loss_exit" as inventory-mm. Inputs carry
the target, its draw number and the gap to it, besides inventory-mm's account figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from daemon.core.clock import NS_PER_SECOND
from daemon.core.model import Decision, OrderIntent, Quote, Side
from daemon.core.vocabulary import Action
from strategies.inventory_mm import InventoryMMStrategy

if TYPE_CHECKING:  # settings are data handed in by the factory; no runtime dependency
    from config.settings import RandomInventorySettings, VenueSettings

__all__ = ["RandomInventoryStrategy"]


class RandomInventoryStrategy(InventoryMMStrategy):
    """Targets a seeded random inventory with inventory-mm's order handling and loss exit."""

    name = "random-inventory"

    def __init__(self, settings: RandomInventorySettings, venue: VenueSettings,
                 flatten_on_kill: bool = False) -> None:
        super().__init__(settings.inventory_mm(), venue, flatten_on_kill=flatten_on_kill)
        self.random_settings = settings
        self._rng = np.random.default_rng(settings.seed)
        self._retarget_ns = int(settings.retarget_interval_s * NS_PER_SECOND)
        self._next_target_ns: int | None = None
        #: Targets drawn on the lot grid: +-max_inventory is +-this many lots.
        self._max_lots = int(settings.max_inventory / self.lot + 1e-9)
        self.target = 0.0
        #: Every target drawn so far, (feed time, base units), oldest first.
        self.targets: list[tuple[int, float]] = []

    def _draw_target(self, now: int) -> bool:
        """A new target if one is due; True when drawn."""
        if self._next_target_ns is not None and now < self._next_target_ns:
            return False
        lots = int(self._rng.integers(-self._max_lots, self._max_lots, endpoint=True))
        self.target = round(lots * self.lot, 12)
        self.targets.append((now, self.target))
        self._next_target_ns = now + self._retarget_ns
        return True

    def _requote(self, now: int, quote: Quote, log_hold: bool) -> Decision | None:
        """Rest one order at the touch for the gap to the target (none once it is close)."""
        drawn = self._draw_target(now)
        s = self.random_settings
        gap = self.target - self.inventory
        if abs(gap) <= s.target_tolerance * s.max_inventory:
            gap = 0.0
        changes: list[str] = []
        cancels: list[str] = []
        intents: list[OrderIntent] = []
        bid_qty, bid_room = self._reconcile(Side.BUY, quote.bid, max(gap, 0.0), changes,
                                            cancels, intents)
        ask_qty, ask_room = self._reconcile(Side.SELL, quote.ask, max(-gap, 0.0), changes,
                                            cancels, intents)
        self._last_eval_ns, self._last_eval_mid, self._dirty = now, quote.mid, False
        self._last_skip = None
        if not (cancels or intents or drawn or log_hold):
            return None
        inputs = self._account_inputs()
        inputs.update(
            mid=quote.mid, market_bid=quote.bid, market_ask=quote.ask,
            market_spread_bps=quote.spread_bps, seed=s.seed, target=self.target,
            target_draw=len(self.targets), gap=self.target - self.inventory,
            bid=quote.bid, ask=quote.ask, bid_qty=bid_qty, ask_qty=ask_qty,
            bid_room=bid_room, ask_room=ask_room, pnl=self.pnl(quote.mid))
        reason = "; ".join(changes)
        if drawn:
            reason = f"new target {self.target:g} (draw {len(self.targets)})" + \
                (f"; {reason}" if reason else "")
        if cancels or intents:
            return Decision(self.name, now, Action.QUOTE, reason, inputs, intents=intents,
                            cancels=cancels)
        return Decision(self.name, now, Action.HOLD,
                        reason or ("target reached" if gap == 0.0 else "order at the touch"),
                        inputs)

    def _k_inputs(self) -> dict[str, object]:
        return {}  # no arrival model: nothing to report
