"""Market rules (tick, lot) and paper balances for markets the settings do not describe.

A new symbol needs `venues.<venue>.markets[SYMBOL]` (tick and lot: inventory-mm refuses to
start without them, the paper executor rounds orders by them) and paper balances of its
assets. Settings win whenever they say something; what they leave out is filled in here
from what the run can know:

- live (`--feed live`): the venue's own market description, loaded through ccxt
  (adapters/ccxt/exchange.py, `fetch_market_rules`): tick, lot and minimum notional;
- replay and backtest: the recorded prices and sizes (adapters/recordings/market_rules.py,
  `sample_market_rules`): the finest decimal step seen in the first events, a power of
  ten (`decimal_step`). A venue's real tick can be coarser (0.5, 5) or finer than any
  price the sample shows; the log line says where the figures came from and how to
  override them.

Paper balances: an enabled venue with no balance in a traded market's quote asset starts
with `PAPER_QUOTE_BALANCE` of it when that is a USD stablecoin; a spot market's base asset
with no balance starts with the value of half the quote balance at the first recorded mid
(rounded down to the lot). Anything else gets a warning naming the setting to set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from config.settings import Settings, VenueSettings
from daemon.core.logs import get_logger
from daemon.core.model import is_perp_symbol, split_symbol

log = get_logger("markets")

#: Paper balance of a USD stablecoin quote asset the settings give none of.
PAPER_QUOTE_BALANCE = 50_000.0
#: Share of the quote balance a missing spot base balance is worth at the first mid.
PAPER_BASE_SHARE = 0.5
USD_STABLECOINS = frozenset({"USDT", "USDC", "BUSD", "FDUSD", "TUSD", "USD", "DAI"})
#: Decimals beyond this are float noise, not a venue's step.
MAX_DECIMALS = 10

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class FoundRules:
    """Tick and lot of one market as found (not configured), and where from."""

    tick: float
    lot: float
    source: str  # "recorded data" | "the venue's markets (ccxt)"
    min_notional: float | None = None
    #: The first mid seen (recorded data), to value a default base balance.
    mid: float | None = None

    def as_setting(self) -> dict[str, float]:
        rules = {"tick": self.tick, "lot": self.lot}
        if self.min_notional:
            rules["min_notional"] = self.min_notional
        return rules


def decimals_of(value: float) -> int:
    """Decimal places of a float as written on the wire (`3425.10` -> 1, `0.001` -> 3)."""
    if not math.isfinite(value) or value == 0.0:
        return 0
    exponent = Decimal(repr(abs(value))).normalize().as_tuple().exponent
    return min(MAX_DECIMALS, max(0, -int(exponent)))


def decimal_step(values: Iterable[float]) -> float | None:
    """The finest power-of-ten step the values show: 10^-(most decimals); None if empty."""
    most = None
    for value in values:
        places = decimals_of(value)
        if most is None or places > most:
            most = places
    return None if most is None else float(Decimal(1).scaleb(-most))


def _configured(venue: VenueSettings, symbol: str) -> bool:
    rules = venue.markets.get(symbol, {})
    return bool(rules.get("tick")) and bool(rules.get("lot"))


def missing_rules(settings: Settings, keys: Iterable[Key]) -> list[Key]:
    """The markets among `keys` on configured venues that have no tick and lot set."""
    return sorted({(venue, symbol) for venue, symbol in keys
                   if venue in settings.venues
                   and not _configured(settings.venues[venue], symbol)})


def wanted_markets(settings: Settings, strategy: str | None) -> list[Key]:
    """Markets a live run trades: each enabled venue's symbols, and the strategy's own."""
    keys = {(venue, symbol) for venue in settings.enabled_venues()
            for symbol in settings.symbols_for(venue)}
    own = {"inventory-mm": settings.strategies.inventory_mm,
           "random-inventory": settings.strategies.random_inventory,
           "internalize": settings.strategies.internalize}.get(strategy or "")
    if own is not None and own.venue in settings.venues:
        keys.add((own.venue, own.symbol))
    return sorted(keys)


def apply_market_rules(settings: Settings, found: Mapping[Key, FoundRules],
                       *, paper: bool = True) -> Settings:
    """`settings` with the found rules of markets it has none for (one log line each) and,
    on paper, default balances for their assets; explicit settings always win."""
    venues = dict(settings.venues)
    for (venue_id, symbol), rules in sorted(found.items()):
        venue = venues.get(venue_id)
        if venue is None:
            continue
        if not _configured(venue, symbol):
            venue = venue.model_copy(update={"markets": {**venue.markets,
                                                         symbol: rules.as_setting()}})
            extra = f" min notional {rules.min_notional:g}" if rules.min_notional else ""
            log.info("markets", venue=venue_id, symbol=symbol, tick=rules.tick, lot=rules.lot,
                     note=(f"markets: {symbol} on {venue_id} tick {rules.tick:g} lot "
                           f"{rules.lot:g}{extra} from {rules.source}; set "
                           f"venues.{venue_id}.markets to override"))
        if paper and venue.enabled:
            venue = _with_paper_balances(venue_id, venue, symbol, rules)
        venues[venue_id] = venue
    return settings.model_copy(update={"venues": venues})


def _with_paper_balances(venue_id: str, venue: VenueSettings, symbol: str,
                         rules: FoundRules) -> VenueSettings:
    base, quote = split_symbol(symbol)
    balances = dict(venue.balances)
    added: list[str] = []
    if quote not in balances:
        if quote in USD_STABLECOINS:
            balances[quote] = PAPER_QUOTE_BALANCE
            added.append(f"{quote} {PAPER_QUOTE_BALANCE:g} (the default of a USD quote)")
        else:
            _warn_no_balance(venue_id, symbol, quote)
    if not is_perp_symbol(symbol) and base not in balances:
        quote_balance = balances.get(quote, 0.0)
        lot = float(venue.markets[symbol]["lot"])
        if rules.mid and quote_balance > 0:
            amount = PAPER_BASE_SHARE * quote_balance / rules.mid
            balances[base] = round(math.floor(amount / lot) * lot, decimals_of(lot))
            added.append(f"{base} {balances[base]:g} (worth {PAPER_BASE_SHARE:g} of the "
                         f"{quote} balance at the first mid, {rules.mid:g})")
        else:
            _warn_no_balance(venue_id, symbol, base)
    if not added:
        return venue
    log.info("paper_balances", venue=venue_id, symbol=symbol,
             note=(f"paper balances for {symbol} on {venue_id}: {'; '.join(added)}; set "
                   f"venues.{venue_id}.balances to override"))
    return venue.model_copy(update={"balances": balances})


def _warn_no_balance(venue_id: str, symbol: str, asset: str) -> None:
    log.warning("paper_balance_missing", venue=venue_id, symbol=symbol, asset=asset,
                note=(f"no paper balance of {asset} on {venue_id}: orders of {symbol} that "
                      f"need it are refused; set CRYPTOPIPE_VENUES__{venue_id.upper()}"
                      f"__BALANCES='{{\"{asset}\": ...}}' (or venues.{venue_id}.balances)"))
