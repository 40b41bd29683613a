"""Strategies and their registry: `build(name, settings)` returns a ready `Strategy`.

Each factory takes the whole `Settings` and picks what its strategy needs, so the runner
knows only names. Strategy modules are imported inside the factories: loading this
package stays cheap, and numba kernels compile (or load from cache) only for the strategy
that runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config.settings import Settings
    from strategies.base import Strategy


def build_arbitrage(settings: Settings) -> Strategy:
    """Cross-venue arbitrage over every enabled venue and configured symbol."""
    from strategies.arbitrage import ArbitrageStrategy

    venues = {venue: settings.venues[venue] for venue in settings.enabled_venues()}
    return ArbitrageStrategy(
        settings.strategies.arbitrage, venues, list(settings.symbols),
        # Transfer time and network fee per asset: the same figures the paper transfer
        # service uses, so the strategy prices what the simulation will charge.
        transfer_time_s=settings.execution.transfer_delay_s,
        transfer_fee=settings.execution.transfer_fee,
    )


def build_inventory_mm(settings: Settings) -> Strategy:
    """Avellaneda-Stoikov market making on `strategies.inventory_mm.venue` / `.symbol`."""
    from strategies.inventory_mm import InventoryMMStrategy

    mm = settings.strategies.inventory_mm
    if mm.venue not in settings.venues:
        raise ValueError(f"strategies.inventory_mm.venue {mm.venue!r} is not a configured venue")
    return InventoryMMStrategy(mm, settings.venues[mm.venue],
                               flatten_on_kill=settings.risk.flatten_on_kill,
                               max_order_notional=settings.risk.max_order_notional)


def build_random_inventory(settings: Settings) -> Strategy:
    """The Monte Carlo baseline on `strategies.random_inventory.venue` / `.symbol`."""
    from strategies.random_inventory import RandomInventoryStrategy

    ri = settings.strategies.random_inventory
    if ri.venue not in settings.venues:
        raise ValueError(
            f"strategies.random_inventory.venue {ri.venue!r} is not a configured venue")
    return RandomInventoryStrategy(ri, settings.venues[ri.venue],
                                   flatten_on_kill=settings.risk.flatten_on_kill)


def build_internalize(settings: Settings) -> Strategy:
    """Hedge-or-warehouse for client flow on `strategies.internalize.venue` / `.symbol`."""
    from strategies.internalize import InternalizeStrategy

    return InternalizeStrategy.from_settings(settings)


def build_rl_internalize(settings: Settings) -> Strategy:
    """The learned internalizer: a model's shading and hedging on the internalize desk."""
    from strategies.rl_internalize import RLInternalizeStrategy

    return RLInternalizeStrategy.from_settings(settings)


#: CLI name -> factory.
STRATEGIES: dict[str, Callable[[Settings], Strategy]] = {
    "arbitrage": build_arbitrage,
    "inventory-mm": build_inventory_mm,
    "internalize": build_internalize,
    "random-inventory": build_random_inventory,
    "rl-internalize": build_rl_internalize,
}


def build(name: str, settings: Settings) -> Strategy:
    """The strategy registered under `name`, built from the settings."""
    factory = STRATEGIES.get(name)
    if factory is None:
        raise ValueError(f"unknown strategy {name!r} (known: {', '.join(sorted(STRATEGIES))})")
    return factory(settings)
