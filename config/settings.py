"""Settings: one frozen pydantic-settings model, layered from five sources.

Precedence, highest first (each level wins over the next):

1. command-line flags (`--venues`, `--symbols`, `--live`, ...), passed in as overrides;
2. environment variables, `CRYPTOPIPE_` prefix, `__` for nesting
   (`CRYPTOPIPE_VENUES__BINANCE_SPOT__WS_URL=ws://127.0.0.1:8765/ws`);
3. a `.env` file in the working directory (same names);
4. secret files for API keys: a directory (`CRYPTOPIPE_SECRETS_DIR`, default
   `/run/secrets` when present) of files named like the environment variables;
5. the TOML file given with `--config`, layered over the shipped `config/default.toml`;
6. the defaults written here.

Venue ids are `binance_spot`, `binance_usdm`, `bybit_spot`, `bybit_linear`, plus any
exchange id ccxt supports (those run through the ccxt.pro feed). A venue given only
partly (say just its `ws_url` from the environment) is completed from its built-in
defaults, so overriding one field never loses the others.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

from daemon.core.model import NATIVE_VENUES, is_perp_symbol

DEFAULT_TOML = Path(__file__).with_name("default.toml")

_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like `90`, `90s`, `6m`, `24h`, `1d`.

    Messages never repeat the value: it may be a secret typed into the wrong variable.
    """
    if isinstance(value, bool):
        raise ValueError("invalid duration (use seconds or e.g. '90s', '6m', '24h')")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError("invalid duration (use seconds or e.g. '90s', '6m', '24h')")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError("duration must be a finite number of seconds")
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Bps = Annotated[float, Field(ge=0.0)]


class _Frozen(BaseModel):
    # allow_inf_nan=False: every float setting (limits, intervals, fees, balances, map
    # values) must be finite; an `inf` daily loss limit or a `nan` interval disarms a check.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class VenueSettings(_Frozen):
    """One trading venue: where to connect, what it costs, and the keys to trade there."""

    #: Connect to this venue (market data, and orders in action mode).
    enabled: bool = False
    #: "native" uses our own WebSocket adapter (binance, bybit); "ccxt" the ccxt.pro feed.
    feed: Literal["native", "ccxt"] = "ccxt"
    #: ccxt exchange id used for markets, orders and the ccxt feed (e.g. "binanceusdm").
    ccxt_id: str = ""
    #: "spot" or "linear" (USDT-margined perpetuals): which symbols the venue takes.
    market_type: Literal["spot", "linear"] = "spot"
    #: WebSocket endpoint of the market-data feed (point it at a local server to test).
    ws_url: str = ""
    #: REST endpoint (depth snapshots, orders).
    rest_url: str = ""
    #: Fee on orders that rest (maker), bps of notional; costs and paper fills use it.
    maker_fee_bps: Bps = 10.0
    #: Fee on orders that cross (taker), bps of notional.
    taker_fee_bps: Bps = 10.0
    #: API key for live trading: give it as an environment variable or a secret file.
    api_key: SecretStr | None = None
    #: API secret for live trading; never logged, never in a config file.
    api_secret: SecretStr | None = None
    #: Order-book depth to subscribe to: Bybit orderbook.N (rounded up to a published N);
    #: Binance adds @depth diffs and a REST snapshot when > 1. Paper taker orders walk
    #: that book (execution.walk_depth); at 1 they take the touch.
    book_depth: int = Field(default=1, ge=1, le=1000)
    #: A quote older than this is flagged stale and must not be acted on.
    stale_after_s: Duration = 10.0
    #: No message at all on the connection for this long: reconnect (half-open socket).
    silence_timeout_s: Duration = 30.0
    #: Reconnect backoff: the first delay, doubled per failed attempt (with jitter) up to
    #: `reconnect_max_s`; a connection that delivered market data (or stayed up for
    #: 30 s) starts it over.
    reconnect_initial_s: Duration = 0.5
    #: Reconnect backoff: the longest delay between two attempts.
    reconnect_max_s: Duration = 30.0
    #: Reconnect on purpose after this long; unset: never. The Binance venues default to
    #: 23 h (Binance closes every connection at 24 h).
    max_connection_age_s: Duration | None = None
    #: Keepalive: a WebSocket ping (Binance) or the venue's own ping message (Bybit)
    #: this often, at most half the silence timeout.
    ping_interval_s: Duration = 20.0
    #: Live trading: orders per second sent to this venue (a token bucket per API key).
    max_orders_per_s: float = Field(default=10.0, gt=0.0)
    #: Paper trading: starting balances per asset on this venue. A traded market's asset
    #: left out starts at a default, said in the log: 50,000 of a USD stablecoin quote, a
    #: spot base worth half the quote balance at the first recorded mid.
    balances: dict[str, Annotated[float, Field(ge=0.0)]] = Field(default_factory=dict)
    #: Market rules per unified symbol: {"tick": 0.01, "lot": 0.00001}, optionally
    #: "min_notional" (quote currency; paper refuses smaller orders, as the venue does). A
    #: market left out takes them from the recording (replay, backtest) or the venue's
    #: markets via ccxt (live, with "min_notional"), said in the log.
    markets: dict[str, dict[str, float]] = Field(default_factory=dict)

    @property
    def has_keys(self) -> bool:
        return bool(self.api_key and self.api_secret)


_NATIVE_DEFAULTS: dict[str, dict[str, Any]] = {
    "binance_spot": {
        "feed": "native",
        "ccxt_id": "binance",
        "market_type": "spot",
        "ws_url": "wss://stream.binance.com:9443/ws",
        "rest_url": "https://api.binance.com",
        "max_connection_age_s": 23 * 3600.0,
        "maker_fee_bps": 10.0,
        "taker_fee_bps": 10.0,
    },
    "binance_usdm": {
        "feed": "native",
        "ccxt_id": "binanceusdm",
        "market_type": "linear",
        # Binance split USD-M WebSockets by data category and retired the legacy /ws and
        # /stream on 2026-04-23; bookTicker, trade and depth are "public" streams.
        "ws_url": "wss://fstream.binance.com/public/ws",
        "rest_url": "https://fapi.binance.com",
        "max_connection_age_s": 23 * 3600.0,
        "maker_fee_bps": 2.0,
        "taker_fee_bps": 5.0,
    },
    "bybit_spot": {
        "feed": "native",
        "ccxt_id": "bybit",
        "market_type": "spot",
        "ws_url": "wss://stream.bybit.com/v5/public/spot",
        "rest_url": "https://api.bybit.com",
        "maker_fee_bps": 10.0,
        "taker_fee_bps": 10.0,
    },
    "bybit_linear": {
        "feed": "native",
        "ccxt_id": "bybit",
        "market_type": "linear",
        "ws_url": "wss://stream.bybit.com/v5/public/linear",
        "rest_url": "https://api.bybit.com",
        "maker_fee_bps": 2.0,
        "taker_fee_bps": 5.5,
    },
}


def known_ccxt_exchanges() -> frozenset[str]:
    import ccxt  # imported lazily: ccxt is large and only needed to vet extra venue ids

    return frozenset(ccxt.exchanges)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _complete_venues(raw: Any) -> dict[str, Any]:
    """Fill each venue from its built-in defaults; reject ids that are neither native nor ccxt."""
    given = dict(raw or {})
    venues: dict[str, Any] = {}
    for venue_id, defaults in _NATIVE_DEFAULTS.items():
        override = given.pop(venue_id, {})
        if isinstance(override, VenueSettings):
            override = override.model_dump(exclude_unset=True)
        venues[venue_id] = _merge(defaults, override) if isinstance(override, dict) else override
    if given:
        ccxt_ids = known_ccxt_exchanges()
        for venue_id, override in given.items():
            if venue_id not in ccxt_ids:
                raise ValueError(
                    f"unknown venue {venue_id!r} (known: {', '.join(NATIVE_VENUES)} "
                    "or any ccxt exchange id)"
                )
            if isinstance(override, VenueSettings):
                override = override.model_dump(exclude_unset=True)
            venues[venue_id] = _merge({"feed": "ccxt", "ccxt_id": venue_id}, override)
    return venues


class ArbitrageSettings(_Frozen):
    #: Act when the net edge after all costs is at least this many bps.
    min_net_edge_bps: Bps = 2.0
    #: Slippage estimate per leg, bps of notional; each leg's IOC is priced this far through
    #: the touch, so a touch that moves within the budget before the leg lands still fills.
    slippage_bps: Bps = 1.0
    #: Largest notional (quote currency) one arbitrage may trade.
    max_notional: Annotated[float, Field(gt=0)] = 1_000.0
    #: "inventory": pre-funded on both venues; "transfer": buy, move, sell.
    mode: Literal["inventory", "transfer"] = "inventory"
    #: Transfer mode: price risk over the transfer time, sigma from the ring, times z.
    transfer_risk_z: Annotated[float, Field(ge=0)] = 2.0
    #: After acting on a venue pair, wait this many seconds before acting on it again.
    cooldown_s: Annotated[float, Field(ge=0)] = 1.0
    #: Inventory mode: rebalance when a venue's share of an asset drifts past this fraction.
    rebalance_threshold: Annotated[float, Field(gt=0, le=1)] = 0.25
    #: Unwinding a failed leg: IOC limit this many bps through the touch (a protected market)
    #: on the first attempt; each retry widens it by unwind_tolerance_step_bps.
    unwind_tolerance_bps: Bps = 25.0
    #: Each retry of an unwind goes this many bps further through the touch than the last.
    unwind_tolerance_step_bps: Bps = 25.0
    #: An unwind is never priced further than this many bps through the touch.
    unwind_tolerance_max_bps: Bps = 100.0
    #: IOC attempts to unwind a residual before the strategy halts (the residual is kept as
    #: a position, an "unwind_failed" alert is logged and /healthz reports degraded).
    unwind_attempts: Annotated[int, Field(ge=1)] = 3
    #: After a failed unwind, the strategy pauses this long (feed clock), then resumes: it
    #: retries the unwind of the residual it carries and trades on.
    halt_cooldown_s: Duration = 30.0

    @model_validator(mode="after")
    def _unwind_tolerances_widen(self) -> ArbitrageSettings:
        if self.unwind_tolerance_max_bps < self.unwind_tolerance_bps:
            raise ValueError(
                f"unwind_tolerance_max_bps ({self.unwind_tolerance_max_bps:g}) is below "
                f"unwind_tolerance_bps ({self.unwind_tolerance_bps:g}): retries would narrow")
        return self


class InventoryMMSettings(_Frozen):
    #: Venue to quote on.
    venue: str = "binance_spot"
    #: Symbol to quote.
    symbol: str = "BTC/USDT"
    #: Risk aversion (Avellaneda-Stoikov gamma): higher skews quotes harder against inventory.
    gamma: Annotated[float, Field(gt=0)] = 0.1
    #: Order-arrival decay k per bps of mid: fills at a quote d bps from the mid arrive at a
    #: rate A exp(-k_bps d), so one value fits BTC, ETH and XRP alike (the order-flow part of
    #: the spread is about 2 / k_bps bps). "auto" fits it from trade arrivals at each
    #: distance. Replaces `k` (1/price), which is refused with the conversion.
    k_bps: Annotated[float, Field(gt=0)] | Literal["auto"] = 0.5
    #: k_bps = "auto": the fitted k is never taken below this (a flat or noisy fit would
    #: otherwise quote absurdly wide); trades needed first are `k_auto_min_trades`.
    k_auto_floor_bps: Annotated[float, Field(gt=0)] = 0.05
    #: k_bps = "auto": trades in the volatility window before the fit is used (warm-up:
    #: skip decisions say how many have been seen).
    k_auto_min_trades: Annotated[int, Field(ge=2)] = 30
    #: Each quote rests at least the venue's maker fee plus this many bps from the mid, so
    #: a fill earns an edge after fees.
    min_edge_bps: Bps = 1.0
    #: Opt-out: let the model quote closer to the mid than maker fee + min_edge_bps (e.g.
    #: to study the raw Avellaneda-Stoikov quotes). Off by default.
    allow_quotes_inside_fees: bool = False
    #: Rolling horizon (T - t) for a 24/7 market.
    horizon_s: Duration = 60.0
    #: Window of the rolling volatility (log mid returns) behind the spread.
    volatility_window_s: Duration = 360.0
    #: Size of each quote, base units (the model's unit of inventory).
    order_qty: Annotated[float, Field(gt=0)] = 0.001
    #: Order size shrinks as exp(-size_decay * q / max_inventory) on the side that adds risk.
    size_decay: Annotated[float, Field(ge=0)] = 1.0
    #: Largest absolute inventory, base units; no fill may take it further.
    max_inventory: Annotated[float, Field(gt=0)] = 0.01
    #: Do not quote when the market's own spread is narrower than this (0 = off).
    min_market_spread_bps: Bps = 0.0
    #: Hysteresis of that filter: after a narrow market, quote again only once the spread is
    #: at least min_market_spread_bps plus this margin (or after min_market_spread_hold_s).
    min_market_spread_margin_bps: Bps = 0.5
    #: Hysteresis of that filter: after a narrow market, quote again once the spread has
    #: stayed at or above min_market_spread_bps this long (or cleared the margin).
    min_market_spread_hold_s: Duration = 5.0
    #: Keep a resting order whose price is within this many bps of the target.
    delta_price_bps: Bps = 1.0
    #: Keep a resting order whose size is within this fraction of the target.
    delta_size: Annotated[float, Field(ge=0, le=1)] = 0.2
    #: Stop and flatten when P&L (quote currency, marked to mid) falls below -max_loss.
    max_loss: Annotated[float, Field(gt=0)] = 100.0
    #: Also stop and flatten when P&L falls below this percentage of the starting equity
    #: (the venue portfolio's value at the first usable quote; 2 = 2 %); whichever of this
    #: and max_loss is the smaller loss bites first. Unset: only max_loss.
    max_loss_pct: Annotated[float, Field(gt=0, le=100)] | None = None
    #: Direction flip: after more than this many fills in a row on one side (partial fills
    #: of one order count once), quote only the side that reduces the inventory until
    #: |inventory| is back within flip_release_inventory. 0 = off.
    one_sided_fills_limit: Annotated[int, Field(ge=0)] = 10
    #: Direction flip: quote both sides again once |inventory| is at most this fraction of
    #: max_inventory (0 = only when flat).
    flip_release_inventory: Annotated[float, Field(ge=0, lt=1)] = 0.25
    #: Re-evaluate the quotes at least this often.
    requote_interval_s: Duration = 1.0
    #: Portfolio rebalancing over several assets: target share of the venue's portfolio
    #: value per asset, e.g. {BTC = 0.4, ETH = 0.2}; the symbol's quote asset (USDT) holds
    #: the rest (or is listed, and the weights sum to 1). Each asset trades against the
    #: quote asset on this venue: it needs a venues.<venue>.markets entry and quotes (list
    #: the symbol in `symbols` for a live feed); an asset without them is reported in a
    #: skip decision and nothing is rebalanced. Empty = off.
    target_weights: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict)
    #: Portfolio rebalancing, one asset: the base asset's target share of the venue's value
    #: (the same as target_weights = {BASE = weight}); unset = off. Set one of the two.
    target_base_weight: Annotated[float, Field(ge=0, le=1)] | None = None
    #: Rebalance when an asset's share drifts further than this from its target weight.
    rebalance_threshold: Annotated[float, Field(gt=0, le=1)] = 0.1
    #: positions.csv under the run's report folder: a row per market appended after every
    #: this many fills (the seed exported every 1000 trades). 0 = not by fills.
    positions_every_fills: Annotated[int, Field(ge=0)] = 1000
    #: positions.csv: rows appended at least this often (seconds of the feed clock), and
    #: once at the end of the run. 0 = not by time (with positions_every_fills 0: no file).
    positions_every_s: Annotated[float, Field(ge=0)] = 60.0

    @model_validator(mode="after")
    def _one_rebalancing_target(self) -> InventoryMMSettings:
        if self.target_weights and self.target_base_weight is not None:
            raise ValueError("strategies.inventory_mm: set target_weights or target_base_weight "
                             "(the one-asset case), not both")
        if sum(self.target_weights.values()) > 1.0 + 1e-9:
            raise ValueError("strategies.inventory_mm.target_weights sum to "
                             f"{sum(self.target_weights.values()):g}, more than 1")
        return self

    @model_validator(mode="before")
    @classmethod
    def _k_in_bps(cls, data: Any) -> Any:
        """`k` (1/price) became `k_bps` (1/bps of mid): "auto" carries over, a number is
        refused with the conversion, since it depends on the instrument's price."""
        if not isinstance(data, dict) or "k" not in data:
            return data
        data = dict(data)
        k = data.pop("k")
        if k == "auto" and "k_bps" not in data:
            data["k_bps"] = "auto"
            return data
        raise ValueError(
            f"strategies.inventory_mm.k = {k!r} is no longer read: k is now k_bps, the decay "
            "per bps of mid (k_bps = k * mid / 10000; k = 1.5 at a mid of 60000 is k_bps = 9). "
            "Set k_bps (or k_bps = \"auto\") and remove k.")


class RandomInventorySettings(_Frozen):
    """The Monte Carlo baseline (seed inventory-management-research): inventory-mm's
    market, order handling and loss exit, but a seeded random inventory target instead of
    Avellaneda-Stoikov quotes, so a backtest shows what chance makes on the same data."""

    #: Venue to trade on (as inventory-mm's).
    venue: str = "binance_spot"
    #: Symbol to trade (as inventory-mm's).
    symbol: str = "BTC/USDT"
    #: Random seed of the inventory targets: the same seed on the same data gives the same
    #: decision log; run several seeds to see the spread of P&L chance gives.
    seed: int = 42
    #: A new target, drawn uniformly on the lot grid in [-max_inventory, +max_inventory],
    #: this often (feed time).
    retarget_interval_s: Duration = 30.0
    #: Largest absolute inventory, base units; the bound of the targets, and no fill may
    #: take the inventory further.
    max_inventory: Annotated[float, Field(gt=0)] = 0.01
    #: The target counts as reached (no order rests) when the inventory is within this
    #: fraction of max_inventory of it.
    target_tolerance: Annotated[float, Field(ge=0, le=1)] = 0.05
    #: Stop and flatten when P&L (quote currency, marked to mid) falls below -max_loss
    #: (inventory-mm's exit).
    max_loss: Annotated[float, Field(gt=0)] = 100.0
    #: Also stop and flatten below this percentage of the starting equity (inventory-mm's
    #: max_loss_pct; the same exit on both sides of an A-S against chance comparison).
    max_loss_pct: Annotated[float, Field(gt=0, le=100)] | None = None
    #: Re-evaluate the order at least this often.
    requote_interval_s: Duration = 1.0
    #: Keep the resting order while its price is within this many bps of the touch.
    delta_price_bps: Bps = 1.0
    #: Keep the resting order while its size is within this fraction of what is left to go.
    delta_size: Annotated[float, Field(ge=0, le=1)] = 0.2

    #: The settings that are this strategy's own; every other one is inventory-mm's.
    OWN: ClassVar[frozenset[str]] = frozenset({"seed", "retarget_interval_s", "target_tolerance"})

    def inventory_mm(self) -> InventoryMMSettings:
        """The inventory-mm settings behind the shared machinery (market checks, order
        reconciling, inventory limit, loss exit): the fields of the same name, the rest
        inventory-mm's defaults (its quoting model is never used)."""
        shared = {name: getattr(self, name) for name in type(self).model_fields
                  if name not in self.OWN}
        return InventoryMMSettings(**shared)


class InternalizeSettings(_Frozen):
    #: Hedge venue.
    venue: str = "binance_spot"
    #: Symbol the clients trade (and the desk hedges).
    symbol: str = "ETH/USDT"
    #: Where client fills come from: a CSV file, a local WebSocket endpoint, synthetic flow
    #: (every arrival fills at `synthetic_markup_bps`), or quoted flow (candidate clients see
    #: the desk's quote and accept with probability exp(-quoted_k_per_bps * markup_bps):
    #: adapters/quoted_flow.py; the rl-internalize agent shades that quote).
    source: Literal["file", "websocket", "synthetic", "quoted"] = "synthetic"
    #: Client fills for source = "file": a CSV of time, side, qty, price (or a Dune export).
    file: Path | None = None
    #: Risk aversion per quote unit (1/quote currency): the cost of warehousing inventory.
    gamma: Annotated[float, Field(gt=0)] = 0.1
    #: Horizon over which warehoused inventory is exposed to price risk.
    horizon_s: Duration = 300.0
    #: Largest absolute inventory, base units; beyond it the desk hedges back.
    max_inventory: Annotated[float, Field(gt=0)] = 50.0
    #: Hedge price impact: fraction of the touch per base unit hedged.
    slippage_coefficient: Annotated[float, Field(ge=0)] = 0.0005
    #: Window of the volatility (log mid returns per sqrt-second) behind the inventory risk.
    volatility_window_s: Duration = 360.0
    #: Half-life of the exponentially weighted net client flow behind the expected offset.
    flow_halflife_s: Duration = 120.0
    #: Warehoused inventory is re-evaluated this often (and on quotes, at most every second).
    reevaluate_interval_s: Duration = 5.0
    #: Synthetic flow: clients pay the mid plus this markup (their cost, the desk's edge).
    synthetic_markup_bps: Bps = 5.0
    #: Synthetic flow: client fills per second and seed.
    synthetic_rate_hz: Annotated[float, Field(gt=0)] = 0.5
    #: Synthetic flow: mean client fill size, base units.
    synthetic_mean_qty: Annotated[float, Field(gt=0)] = 1.0
    #: Synthetic flow: random seed, so every run sees the same flow.
    seed: int = 7
    #: Quoted flow: how fast acceptance falls with the markup a client is shown, per bps
    #: (a client shown m bps accepts with probability exp(-k m); 0.1: 5 bps wins 61 %).
    #: Candidates arrive at `synthetic_rate_hz` with lognormal sizes of mean
    #: `synthetic_mean_qty`; the seed is `seed`.
    quoted_k_per_bps: Annotated[float, Field(ge=0)] = 0.1
    #: Quoted flow: standard deviation of log client sizes (their spread around the mean).
    quoted_size_log_sd: Annotated[float, Field(ge=0)] = 0.8
    #: Quoted flow: candidate arrivals, "poisson" at `synthetic_rate_hz`, or "hawkes":
    #: clustered as a market's takers are, at the same mean rate (adapters/hawkes.py).
    #: `--mode calibrate` prints both Hawkes figures below fitted to a recording's trades.
    quoted_arrivals: Literal["poisson", "hawkes"] = "poisson"
    #: Hawkes arrivals: the branching ratio (arrivals each arrival triggers, on average).
    quoted_hawkes_branching: Annotated[float, Field(ge=0, lt=1)] = 0.5
    #: Hawkes arrivals: how fast the excitement of an arrival decays, per second.
    quoted_hawkes_decay_per_s: Annotated[float, Field(gt=0)] = 1.0
    #: source = "websocket": address of the ws://HOST:PORT/flow endpoint.
    ingest_host: str = "127.0.0.1"
    #: source = "websocket": port of the flow endpoint.
    ingest_port: int = Field(default=8766, ge=0, le=65535)
    #: source = "websocket": bearer token clients must present (required).
    ingest_token: SecretStr | None = None
    #: Largest quantity of one client fill, base units: a bigger one is refused at the
    #: edge (error reply at the endpoint, a skipped row in a file), never booked.
    max_client_qty: Annotated[float, Field(gt=0)] = 1_000.0
    #: source = "websocket": a client fill whose time is further than this from the feed
    #: clock (past or future) is refused; one without a time gets the time it arrived.
    flow_time_window_s: Duration = 300.0
    #: "optimal": hedge or warehouse, whichever costs less; "always_hedge": offset every
    #: client fill at once (the baseline policy, forced).
    policy: Literal["optimal", "always_hedge"] = "optimal"
    #: Run an always-hedge twin beside the strategy (same client flow, its own paper
    #: executor, logged as `<strategy>.always-hedge`): the baseline the post-mortem's
    #: "saved vs always-hedge" compares with, priced by the same fill model.
    always_hedge_baseline: bool = True
    #: Starting balances of the desk per asset.
    initial_balances: dict[str, float] = Field(
        default_factory=lambda: {"ETH": 100.0, "USDT": 100_000.0}
    )


class RLInternalizeSettings(_Frozen):
    """The learned internalizer (strategies/rl_internalize.py): the internalize desk of
    `strategies.internalize` (venue, symbol, limits, balances, client flow) whose client
    quote shading and hedging a policy chooses every `decision_interval_s`, from the
    discrete grid `shades_bps` x `hedge_fractions` (DQN's actions)."""

    #: A decision (observation, action) this often, feed time.
    decision_interval_s: Duration = 1.0
    #: The desk's markup to clients before shading, bps of mid on each side.
    base_markup_bps: float = 3.0
    #: Shading choices, bps: positive lowers both client prices (a long desk sells more).
    shades_bps: list[float] = Field(default_factory=lambda: [-4.0, -2.0, 0.0, 2.0, 4.0])
    #: Hedge choices: the fraction of the inventory offset on the venue at a decision.
    hedge_fractions: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.0, 0.5, 1.0])
    #: Reward: change in marked-to-market P&L minus this times (inventory /
    #: max_inventory)^2 per decision, quote currency.
    inventory_penalty: Annotated[float, Field(ge=0)] = 1.0
    #: Training episodes: random windows of this length of the data (the observation's
    #: time-in-episode is measured against it).
    episode_s: Annotated[Duration, Field(gt=0)] = 600.0
    #: Recent return feature: mid change over this window.
    return_window_s: Annotated[Duration, Field(gt=0)] = 10.0
    #: Training: also play each window's mirrored price path (p0^2 / p).
    mirror_prices: bool = False
    #: Who chooses: "model" (the trained agent of `model`), or a formula baseline on the
    #: same desk: "never-hedge" (shade 0, hedge only back to max_inventory) or "a-s" (the
    #: Avellaneda-Stoikov client quote: shade = q * gamma * sigma^2 * horizon, no hedging).
    policy: Literal["model", "never-hedge", "a-s"] = "model"
    #: The model folder to decide with (--model overrides it); None: no model.
    model: Path | None = None
    #: Training: the DQN's learning rate.
    learning_rate: Annotated[float, Field(gt=0)] = 1e-3
    #: Training: transitions kept in the replay buffer.
    buffer_size: Annotated[int, Field(gt=0)] = 50_000
    #: Training: the discount factor of future rewards (per decision).
    discount: Annotated[float, Field(gt=0, le=1)] = 0.99
    #: Training: share of the steps over which exploration falls from 1 to its floor.
    exploration_fraction: Annotated[float, Field(gt=0, le=1)] = 0.3
    #: Training: hidden layer widths of the Q-network (ReLU between them).
    hidden_layers: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [64, 64])
    #: Training: seed of the network's initialisation, exploration and episode draws.
    train_seed: int = 1

    @model_validator(mode="after")
    def _grid(self) -> RLInternalizeSettings:
        if not self.shades_bps or not self.hedge_fractions:
            raise ValueError("shades_bps and hedge_fractions each need at least one value")
        return self


class StrategySettings(_Frozen):
    arbitrage: ArbitrageSettings = ArbitrageSettings()
    inventory_mm: InventoryMMSettings = InventoryMMSettings()
    internalize: InternalizeSettings = InternalizeSettings()
    random_inventory: RandomInventorySettings = RandomInventorySettings()
    rl_internalize: RLInternalizeSettings = RLInternalizeSettings()


class RiskSettings(_Frozen):
    #: Refuse an order whose notional (quote currency) is above this.
    max_order_notional: Annotated[float, Field(gt=0)] = 5_000.0
    #: Max absolute position per asset (base units), e.g. {"BTC": 0.5}; "*" for the rest.
    max_position: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: {"*": 1e12}
    )
    #: Refuse new orders while this many are open (in flight or resting).
    max_open_orders: Annotated[int, Field(gt=0)] = 20
    #: Refuse a limit price further than this from mid.
    price_collar_bps: Bps = 100.0
    #: Refuse orders on a symbol whose quote is older than this.
    stale_quote_s: Duration = 5.0
    #: Accepted orders per second at most (token bucket, one per account).
    max_orders_per_s: Annotated[float, Field(gt=0)] = 20.0
    #: Loss (quote currency, marked to mid) that trips the kill switch for the day.
    daily_loss_limit: Annotated[float, Field(gt=0)] = 1_000.0
    #: The kill switch fires when this file appears (touch it to stop trading).
    kill_switch_file: Path | None = None
    #: When the kill switch fires, also close positions with market orders.
    flatten_on_kill: bool = False


class ExecutionSettings(_Frozen):
    #: "paper" fills against the live book; "live" sends real orders (needs keys and --live).
    mode: Literal["paper", "live"] = "paper"
    #: Paper trading: an order reaches the venue this long after it is sent.
    submit_latency_ms: Annotated[float, Field(ge=0)] = 20.0
    #: Paper trading: a cancel reaches the venue this long after it is sent.
    cancel_latency_ms: Annotated[float, Field(ge=0)] = 20.0
    #: Paper trading: queue position of resting orders. "none": a resting order fills as
    #: soon as a print reaches its price. "probabilistic": it joins behind the size shown
    #: at its level; prints at its price eat that queue first, and a drop in the shown size
    #: no print explains (cancels) moves it up by hftbacktest's power model (queue_power).
    queue_model: Literal["none", "probabilistic"] = "none"
    #: Paper trading, queue_model = "probabilistic": n in the share of a cancel taken as
    #: behind us, back^n / (back^n + front^n); the higher n, the more the longer side takes.
    queue_power: Annotated[float, Field(gt=0)] = 2.0
    #: Paper trading: a marketable order walks the order book's levels (bounded by its
    #: limit, taken size remembered per level) where the market data has depth: Binance
    #: @depth books (live: book_depth > 1), Bybit orderbook.N (N > 1), recordings that
    #: hold them; elsewhere it takes the touch. false: always the touch only.
    walk_depth: bool = True
    #: On start, open orders carrying our prefix are cancelled or adopted.
    reconcile: Literal["cancel", "adopt"] = "cancel"
    #: Live: an order whose submit outcome is unknown (response lost) is looked up by its
    #: client id with backoff, never resent blindly; past this long without an answer it is
    #: flagged (log, decision log, counter), kept open at full size, and followed up.
    unknown_order_timeout_s: Duration = 30.0
    #: Live: on stop (--duration, SIGTERM, Ctrl-C) and when the kill switch fires, every open
    #: order of ours is cancelled and each cancel confirmed within this long; the ones that
    #: are not are reported by client order id.
    shutdown_cancel_timeout_s: Duration = 10.0
    #: Live transfers/withdrawals only to these addresses.
    withdrawal_whitelist: list[str] = Field(default_factory=list)
    #: Paper transfers: delay and fee per asset.
    transfer_delay_s: dict[str, Duration] = Field(
        default_factory=lambda: {"BTC": 360.0, "ETH": 180.0, "USDT": 60.0}
    )
    #: Paper transfers: fee per asset, in that asset.
    transfer_fee: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"BTC": 0.0001, "ETH": 0.001, "USDT": 1.0}
    )


class RingSettings(_Frozen):
    #: Rows/s per (venue, symbol) the buffer is sized for (capacity = retention x rate).
    max_rate_hz: Annotated[float, Field(gt=0)] = 200.0
    #: Snapshot the ring buffer to Feather this often (and at shutdown).
    snapshot_interval_s: Duration = 600.0


class LoggingSettings(_Frozen):
    #: Log level.
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: "auto": JSON lines when stdout is not a terminal, readable console when it is.
    format: Literal["auto", "json", "console"] = "auto"


class MetricsSettings(_Frozen):
    #: Serve Prometheus /metrics and /healthz in watch, record and action modes.
    enabled: bool = True
    #: Address of the metrics endpoint (0.0.0.0 in the container so it can be scraped).
    host: str = "127.0.0.1"
    #: Port of /metrics and /healthz (0: any free port).
    port: int = Field(default=9108, ge=0, le=65535)


class BookSocketSettings(_Frozen):
    #: Serve the consolidated view on ws://HOST:PORT/book.
    enabled: bool = False
    #: Address of the /book data socket.
    host: str = "127.0.0.1"
    #: Port of the /book data socket (0: any free port).
    port: int = Field(default=8767, ge=0, le=65535)
    #: When set, clients must present it (?token= or Authorization: Bearer).
    token: SecretStr | None = None
    #: Clients served at once; one more is refused (HTTP 503) until one leaves.
    max_clients: int = Field(default=16, ge=1)


class PostMortemSettings(_Frozen):
    #: The decision log is written and fsync'd this often: a crash loses at most this much.
    flush_interval_ms: Annotated[float, Field(gt=0)] = 200.0
    #: Records waiting to be written at most; beyond it recording blocks (never drops).
    queue_size: Annotated[int, Field(gt=0)] = 100_000
    #: Balances are logged this often for the post-mortem's equity curve.
    balance_snapshot_interval_s: Duration = 10.0


class BacktestSettings(_Frozen):
    #: Keep each recording's decoded events under data_dir/cache/backtest and reuse them
    #: (rebuilt when a file changes), and skip events of markets the strategy does not
    #: trade while nothing is due; off: every frame is parsed and run, one by one.
    cache: bool = True
    #: The cache is kept under this many MB: building a new entry removes the least
    #: recently used ones beyond it.
    cache_max_mb: float = Field(default=2048.0, gt=0.0)
    #: From the cache, rows that change nothing but the clocks and the latest quotes (the
    #: strategy's quick check passes, no paper order is reached, no loss check fires,
    #: nothing is due) are checked in bulk, compiled, without building an event; the last
    #: quote of each market in such a stretch still runs. The log is the same byte for
    #: byte; false runs every row as an event (inventory-mm with k set, so far).
    quiet_rows: bool = True


class RecordSettings(_Frozen):
    #: `--mode record` also records order-book depth: Binance `<symbol>@depth@100ms` with
    #: its REST snapshot, Bybit `orderbook.50` (or the venue's `book_depth` if deeper), so
    #: `--mode calibrate` can walk the book of your own recordings.
    depth: bool = False


class NatsSettings(_Frozen):
    """The NATS server that carries market data, decision logs, heartbeats and control
    between processes (`--bus-publish`, `--feed nats://`, `--mode feed|archive`)."""

    #: Server address, nats://HOST:PORT (or tls://). `--bus-publish URL` and `--feed URL`
    #: name it on the command line; this is the default for both and for the archiver.
    url: str = "nats://127.0.0.1:4222"
    #: Token the server requires (its `authorization { token }`); give it as an
    #: environment variable or a secret file.
    token: SecretStr | None = None
    #: User name, with `password`, when the server requires user/password instead.
    user: str | None = None
    #: Password of `user`; never logged.
    password: SecretStr | None = None
    #: CA bundle that signed the server's certificate: connect with TLS, verified.
    tls_ca_file: Path | None = None
    #: Client certificate and key, when the server verifies clients (mutual TLS).
    tls_cert_file: Path | None = None
    #: Private key of `tls_cert_file`.
    tls_key_file: Path | None = None
    #: Give up a first connection attempt after this long (reconnects go on forever).
    connect_timeout_s: Duration = 2.0
    #: Between two reconnect attempts after the server went away.
    reconnect_wait_s: Duration = 0.5
    #: Name of this process on the bus (heartbeats `hb.<name>`, control `ctl.<name>.kill`);
    #: empty: `<mode>-<strategy or venues>-<pid>`.
    process_name: str = ""
    #: JetStream stream that keeps the market data published on `md.>` (created or
    #: updated by each publisher at start), so a process can replay it.
    md_stream: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] = "MD"
    #: The market-data stream drops messages older than this.
    md_max_age_s: Duration = 86_400.0
    #: The market-data stream drops its oldest messages beyond this many bytes.
    md_max_bytes: Annotated[int, Field(gt=0)] = 1 << 30
    #: Market events a publisher holds for its task while the server is slow; one more
    #: is dropped and counted (`cryptopipe_nats_md_dropped`): the feed never waits.
    md_publish_buffer: Annotated[int, Field(gt=0)] = 10_000
    #: A strategy process on the bus ships every decision-log record, from its durable
    #: local file, to `dlog.<run_id>.<kind>` for `--mode archive` (false: keep it local).
    ship_decision_log: bool = True
    #: How long the server keeps shipped decision-log records (the `DLOG` stream on
    #: `dlog.>`) for an archiver that is away.
    dlog_max_age_s: Duration = 7 * 86_400.0
    #: Most bytes the `DLOG` stream keeps; the oldest records go first beyond it.
    dlog_max_bytes: Annotated[int, Field(gt=0)] = 1024 ** 3
    #: The server drops a record sent again within this window (same message id): a
    #: shipper that resends after a restart or a lost ack writes nothing twice.
    dlog_duplicate_window_s: Duration = 120.0
    #: Durable consumer name of `--mode archive`: an archiver restarted under the same name
    #: goes on where it stopped; two archives of the same stream need two names.
    archive_consumer: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] = "archive"
    #: Every process on the bus publishes a small JSON heartbeat on `hb.<process_name>`
    #: this often (run id, mode, strategy, uptime, feeds, kill switch).
    heartbeat_interval_s: Duration = 5.0
    #: Token a request on `ctl.<process_name>.kill` must carry; unset: every kill request
    #: is refused. Never logged.
    control_token: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if scheme not in ("nats", "tls") or not sep or not rest:
            raise ValueError("expected nats://HOST:PORT or tls://HOST:PORT")
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> NatsSettings:
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together")
        if self.token is not None and self.user is not None:
            raise ValueError("give a token or user/password, not both")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self


class CrossRateSettings(_Frozen):
    """One synthetic cross rate, e.g. ETH/BTC from ETH/USDT and BTC/USDT legs."""

    #: The cross's symbol, published under the venue "synthetic" (e.g. "ETH/BTC").
    symbol: str
    #: The leg whose base is the cross's base, "venue:SYMBOL" (e.g. "binance_spot:ETH/USDT").
    base_leg: str
    #: The leg whose base is the cross's quote, "venue:SYMBOL" (e.g. "binance_spot:BTC/USDT").
    quote_leg: str
    #: Price the cross net of both legs' taker fees (bid lower, ask higher).
    net_of_fees: bool = False

    @field_validator("base_leg", "quote_leg")
    @classmethod
    def _venue_symbol(cls, value: str) -> str:
        venue, sep, symbol = value.partition(":")
        if not sep or not venue or not symbol:
            raise ValueError(f"{value!r}: expected 'venue:SYMBOL'")
        return value


class ConsolidatedSettings(_Frozen):
    """One consolidated best bid/offer over the same instrument on several venues."""

    #: Its symbol, published under the venue "synthetic" (e.g. "BTC/USDT").
    symbol: str
    #: The markets it consolidates, each "venue:SYMBOL" (e.g. "binance_spot:BTC/USDT").
    legs: list[str] = Field(min_length=1)

    @field_validator("legs")
    @classmethod
    def _venue_symbols(cls, value: list[str]) -> list[str]:
        for leg in value:
            venue, sep, symbol = leg.partition(":")
            if not sep or not venue or not symbol:
                raise ValueError(f"{leg!r}: expected 'venue:SYMBOL'")
        return value


class SyntheticSettings(_Frozen):
    """Derived markets published on the bus (daemon/market/synthetic.py)."""

    #: Cross rates: list of {symbol, base_leg, quote_leg, net_of_fees}; none by default.
    crosses: list[CrossRateSettings] = Field(default_factory=list)
    #: Consolidated best bid/offer: list of {symbol, legs}; none by default.
    consolidated: list[ConsolidatedSettings] = Field(default_factory=list)


class Settings(BaseSettings):
    """Everything the daemon can be told. Field names are a contract: keep them stable."""

    model_config = SettingsConfigDict(
        env_prefix="CRYPTOPIPE_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
    )

    venues: dict[str, VenueSettings] = Field(default_factory=dict)
    #: ccxt unified symbols; each venue takes those of its own market type.
    symbols: list[str] = Field(default_factory=lambda: ["BTC/USDT"])
    strategies: StrategySettings = StrategySettings()
    risk: RiskSettings = RiskSettings()
    execution: ExecutionSettings = ExecutionSettings()
    #: Where ring snapshots, recordings, decision logs and reports go.
    data_dir: Path = Path("data")
    #: How much top-of-book history the ring buffer keeps in memory (e.g. 86400, "24h").
    retention: Duration = 86_400.0
    ring: RingSettings = RingSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    book_socket: BookSocketSettings = BookSocketSettings()
    postmortem: PostMortemSettings = PostMortemSettings()
    backtest: BacktestSettings = BacktestSettings()
    record: RecordSettings = RecordSettings()
    synthetic: SyntheticSettings = SyntheticSettings()
    nats: NatsSettings = NatsSettings()

    @field_validator("venues", mode="before")
    @classmethod
    def _complete_venues(cls, value: Any) -> dict[str, Any]:
        return _complete_venues(value)

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        return value

    @field_validator("symbols")
    @classmethod
    def _check_symbols(cls, value: list[str]) -> list[str]:
        for number, symbol in enumerate(value, start=1):
            base, slash, rest = symbol.partition("/")
            if not base or not slash or not rest.split(":")[0]:
                raise ValueError(  # the value is not repeated: it may be a misplaced secret
                    f"symbol #{number} is not a ccxt unified symbol "
                    "(e.g. 'BTC/USDT', 'BTC/USDT:USDT')"
                )
        return value

    @field_validator("data_dir")
    @classmethod
    def _check_data_dir(cls, value: Path) -> Path:
        """A directory, or one that can be made: checked here, created when first written."""
        if value.exists():
            if not value.is_dir():
                raise ValueError(f"{value} exists and is not a directory")
            if not os.access(value, os.W_OK | os.X_OK):
                raise ValueError(f"{value} is not writable")
            return value
        parent = value.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"{value} cannot be created ({parent} is not a writable directory)")
        return value

    @model_validator(mode="after")
    def _check_live_keys(self) -> Settings:
        if self.execution.mode == "live":
            keyless = [v for v, s in self.venues.items() if s.enabled and not s.has_keys]
            if keyless:
                raise ValueError(
                    "execution.mode is 'live' but these enabled venues have no api_key/api_secret: "
                    + ", ".join(keyless)
                )
        return self

    def enabled_venues(self) -> list[str]:
        return [venue_id for venue_id, venue in self.venues.items() if venue.enabled]

    def symbols_for(self, venue_id: str) -> list[str]:
        """The configured symbols of this venue's market type (spot `A/B`, linear `A/B:C`)."""
        want_perp = self.venues[venue_id].market_type == "linear"
        return [s for s in self.symbols if is_perp_symbol(s) == want_perp]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The same sources with list/map decoding of our own (`_LenientDecoding`); the .env
        # file is the one pydantic-settings was told (`_env_file`).
        return (
            init_settings,
            _EnvSource(settings_cls),
            _DotEnvSource(settings_cls, env_file=getattr(dotenv_settings, "env_file", None),
                          env_file_encoding=getattr(dotenv_settings, "env_file_encoding",
                                                    None)),
            _SecretFilesSource(settings_cls, _secrets_dir()),
            _TomlSource(settings_cls, _toml_files.get()),
        )


class ConfigError(Exception):
    """A setting that cannot be used. `str()` is one readable line for the operator."""


class _LenientDecoding:
    """Lists and maps from an environment variable (or .env), decoded one way for both.

    JSON as pydantic-settings reads it; a list also takes comma-separated values (the
    README's `CRYPTOPIPE_SYMBOLS=BTC/USDT`); anything else that is not JSON is a
    `ConfigError` naming the setting and its variable, never the value.
    """

    env_vars: Any
    env_prefix: str
    env_nested_delimiter: str | None

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        try:
            return json.loads(value)
        except ValueError:
            if field is not None and get_origin(field.annotation) is list:
                return [item.strip() for item in str(value).split(",") if item.strip()]
            variable = self._variable_of(field_name, value)
            setting = variable[len(self.env_prefix):].replace(
                self.env_nested_delimiter or "__", ".").lower()
            raise ConfigError(f"invalid setting {setting}: {variable.upper()} is not valid JSON "
                              "(a map takes an object, e.g. '{\"BTC\": 0.5}')") from None

    def _variable_of(self, field_name: str, value: Any) -> str:
        """The variable that carried `value` for `field_name` (nested names end with it)."""
        for name, given in self.env_vars.items():
            if given == value and name.lower().endswith(field_name.lower()):
                return str(name)
        return f"{self.env_prefix}{field_name}"


class _EnvSource(_LenientDecoding, EnvSettingsSource):
    pass


class _DotEnvSource(_LenientDecoding, DotEnvSettingsSource):
    pass


_toml_files: ContextVar[tuple[Path, ...]] = ContextVar("toml_files", default=(DEFAULT_TOML,))


def _secrets_dir() -> Path | None:
    configured = os.environ.get("CRYPTOPIPE_SECRETS_DIR")
    if configured:
        return Path(configured)
    docker_default = Path("/run/secrets")
    return docker_default if docker_default.is_dir() else None


class _SecretFilesSource(PydanticBaseSettingsSource):
    """Docker-style secret files named like the environment variables they stand for.

    `/run/secrets/CRYPTOPIPE_VENUES__BINANCE_SPOT__API_KEY` holding the key sets
    `venues.binance_spot.api_key`; the file content is the value (surrounding whitespace
    stripped). Keys never need to be in the environment or a config file.
    """

    prefix = "cryptopipe_"

    def __init__(self, settings_cls: type[BaseSettings], directory: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if directory is None or not directory.is_dir():
            return
        for path in sorted(directory.iterdir()):
            name = path.name.lower()
            if not name.startswith(self.prefix) or not path.is_file():
                continue
            *parents, leaf = name[len(self.prefix):].split("__")
            node = self._data
            for part in parents:
                node = node.setdefault(part, {})
            try:
                node[leaf] = path.read_text(encoding="utf-8").strip()
            except UnicodeDecodeError:
                setting = ".".join((*parents, leaf))
                raise ConfigError(f"invalid setting {setting}: secret file {path} is not "
                                  "UTF-8 text") from None

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class _TomlSource(PydanticBaseSettingsSource):
    """The shipped default.toml with the `--config` file layered on top."""

    def __init__(self, settings_cls: type[BaseSettings], files: tuple[Path, ...]) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        for path in files:
            self._data = _merge(self._data, read_toml(path))

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: malformed TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text (TOML is UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from None


@contextmanager
def _toml_layers(config_file: Path | None) -> Iterator[None]:
    files = (DEFAULT_TOML,) if config_file is None else (DEFAULT_TOML, config_file)
    token = _toml_files.set(files)
    try:
        yield
    finally:
        _toml_files.reset(token)


def load_settings(
    overrides: dict[str, Any] | None = None,
    config_file: Path | None = None,
    env_file: Path | None = Path(".env"),
) -> Settings:
    """Build the settings from every source; raise `ConfigError` with one readable line."""
    from pydantic import ValidationError

    try:
        with _toml_layers(config_file):
            return Settings(_env_file=env_file, **(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except UnicodeDecodeError:  # the only file read without a check of its own: .env
        raise ConfigError(f"env file {env_file}: not UTF-8 text") from None
    except SettingsError as exc:  # a source pydantic-settings could not read
        raise ConfigError(f"invalid setting: {exc}") from None


def describe_validation_error(exc: Any) -> str:
    """One line per problem joined with '; ': `setting.path: problem`.

    The value given is never repeated (pydantic keeps it as `input`): an API key pasted
    into the wrong variable must not end up on a terminal or in a log collector.
    """
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in error["loc"]) or "settings"
        message = " ".join(error["msg"].removeprefix("Value error, ").split())
        problems.append(f"{location}: {message}")
    return "invalid setting " + "; ".join(problems)
