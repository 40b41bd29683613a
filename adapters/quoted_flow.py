"""Quoted client flow: candidate clients see the desk's quote and trade only if it is good.

`SyntheticFlowSource` fills every arrival at a fixed markup, whatever the desk quotes;
here the price matters. Candidate clients arrive (`PoissonArrivals` at a rate, or
`HawkesArrivals`, e.g. fitted to a recording's trade arrivals: `adapters.hawkes`), each
buys or sells with probability 1/2 a size drawn from `LognormalSizes` (fitted to recorded
trade sizes), is shown the desk's markup on its side (`DeskQuote`: bid and ask markups in
bps vs the mid at time t, supplied by the strategy or the agent), and accepts with
probability `exp(-k * markup_bps)`. An accepted client fills at `mid * (1 + markup)`
(a buy) or `mid * (1 - markup)` (a sell); a declined one leaves no trace but a count.

Common random numbers: each candidate's time, side, size and acceptance draw `u` come
from the seed alone, and it accepts iff `u < exp(-k * markup_bps)`. So two policies run
on one seed face the very same clients, and a tighter quote wins a superset of the
fills a wider one wins: paired comparisons of policies are not noise.

Output is `ClientFill`, like the other sources: `generate` (synchronous, a mid function),
`client_flow` (a `ClientFlow` priced off the hedge quote when each client comes due: set
it as `Backtest.flow` before `run()`, or as `FeedClockFlow.flow` on a replay), or async
iteration (live paper).
Selected by `strategies.internalize.source = "quoted"` (`quoted_source`): candidates
at `synthetic_rate_hz`, Poisson or (`quoted_arrivals = "hawkes"`) clustered, lognormal
sizes of mean `synthetic_mean_qty`, acceptance `quoted_k_per_bps`, shown the strategy's
`desk_quote` if it has one (rl-internalize) or `synthetic_markup_bps` on both sides (every
other policy: the baselines face the same clients at a fixed price).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from adapters.client_flow import ClientFlow, MidSource, Sleep
from adapters.hawkes import (
    HawkesFit,
    HawkesParams,
    arrival_times_and_sizes,
    fit_hawkes,
    hawkes_arrivals,
)
from adapters.recordings.replay import ReplayFeed, parse_spec
from daemon.core.clock import NS_PER_SECOND, now_ns
from daemon.core.model import ClientFill, Quote, Side, Trade

BPS = 1e-4


class DeskQuote(Protocol):
    """The desk's quote to clients at time `ts_ns`: (bid markup, ask markup) in bps vs the
    mid. A client sell is shown the bid markup, a client buy the ask markup; a negative
    markup is a price better than mid."""

    def __call__(self, ts_ns: int) -> tuple[float, float]: ...


def fixed_markup(bid_bps: float, ask_bps: float | None = None) -> DeskQuote:
    """A constant quote: `bid_bps` on both sides unless `ask_bps` is given."""
    markups = (bid_bps, bid_bps if ask_bps is None else ask_bps)
    return lambda _ts_ns: markups


class Arrivals(Protocol):
    """Candidate arrival times in seconds from 0, an endless stream from `rng`."""

    def times(self, rng: np.random.Generator) -> Iterator[float]: ...


@dataclass(frozen=True, slots=True)
class PoissonArrivals:
    rate_hz: float

    def __post_init__(self) -> None:
        if not (self.rate_hz > 0.0 and math.isfinite(self.rate_hz)):
            raise ValueError(f"arrival rate must be positive, got {self.rate_hz!r}")

    def times(self, rng: np.random.Generator) -> Iterator[float]:
        t = 0.0
        while True:
            t += rng.exponential(1.0 / self.rate_hz)
            yield t


@dataclass(frozen=True, slots=True)
class HawkesArrivals:
    params: HawkesParams

    def times(self, rng: np.random.Generator) -> Iterator[float]:
        return hawkes_arrivals(self.params, rng)


@dataclass(frozen=True, slots=True)
class LognormalSizes:
    """Client sizes in base units: log(size) ~ Normal(log_mean, log_sd), rounded to 6
    decimals and at least 1e-6 (a venue's smallest step is far above)."""

    log_mean: float
    log_sd: float

    @classmethod
    def fit(cls, sizes: Iterable[float] | np.ndarray) -> LognormalSizes:
        """Maximum-likelihood fit to positive sizes (e.g. recorded trade sizes)."""
        values = np.asarray(sizes, dtype=np.float64)
        values = values[np.isfinite(values) & (values > 0.0)]
        if values.size < 2:
            raise ValueError("a size fit needs at least 2 positive sizes")
        logs = np.log(values)
        return cls(float(logs.mean()), float(logs.std()))

    @classmethod
    def with_mean(cls, mean: float, log_sd: float) -> LognormalSizes:
        """Sizes of mean `mean` (E[size] = exp(mu + sd^2 / 2)) and log spread `log_sd`."""
        return cls(math.log(mean) - log_sd * log_sd / 2.0, log_sd)

    def draw(self, rng: np.random.Generator) -> float:
        return max(round(float(rng.lognormal(self.log_mean, self.log_sd)), 6), 1e-6)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A client who may trade: `u` in [0, 1) decides acceptance (u < exp(-k m))."""

    ts_ns: int
    side: Side
    qty: float
    u: float
    sequence: int


@dataclass(slots=True)
class FlowTally:
    """What the candidates did; `acceptance_rate` over those who were shown a price."""

    shown: int = 0
    accepted: int = 0
    declined: int = 0
    no_mid: int = 0
    markup_bps_shown: float = 0.0
    by_side: Counter[str] = field(default_factory=Counter)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.shown if self.shown else math.nan


class QuotedFlowSource:
    """Seeded candidate clients who accept the desk's quote with probability
    exp(-k * markup_bps). Deterministic for a seed (numpy `Generator`)."""

    def __init__(self, symbol: str, arrivals: Arrivals, sizes: LognormalSizes,
                 k_per_bps: float, seed: int, quote: DeskQuote,
                 client_id: str = "quoted", mid: MidSource | None = None) -> None:
        if not (k_per_bps >= 0.0 and math.isfinite(k_per_bps)):
            raise ValueError(f"k must be a finite number >= 0 per bps, got {k_per_bps!r}")
        self.symbol = symbol
        self.arrivals = arrivals
        self.sizes = sizes
        self.k_per_bps = k_per_bps
        self.seed = seed
        self.quote = quote
        self.client_id = client_id
        self._mid = mid
        self.tally = FlowTally()

    def acceptance_probability(self, markup_bps: float) -> float:
        return min(1.0, math.exp(-self.k_per_bps * markup_bps))

    def candidates(self, start_ns: int) -> Iterator[Candidate]:
        """Every candidate from `start_ns` on, endless; the same for the same seed."""
        rng = np.random.default_rng(self.seed)
        # Arrival times from their own stream so the clustering does not depend on how
        # many draws a size takes.
        arrival_rng, client_rng = rng.spawn(2)
        for sequence, t in enumerate(self.arrivals.times(arrival_rng)):
            side = Side.BUY if client_rng.random() < 0.5 else Side.SELL
            qty = self.sizes.draw(client_rng)
            u = float(client_rng.random())
            yield Candidate(start_ns + int(t * NS_PER_SECOND), side, qty, u, sequence)

    def decide(self, candidate: Candidate, mid: float | None) -> ClientFill | None:
        """The fill if the candidate takes the desk's quote at `mid`, else None (counted)."""
        tally = self.tally
        if mid is None or not (mid > 0.0 and math.isfinite(mid)):
            tally.no_mid += 1  # no market: the client could not have been quoted
            return None
        bid_bps, ask_bps = self.quote(candidate.ts_ns)
        markup_bps = ask_bps if candidate.side is Side.BUY else bid_bps
        tally.shown += 1
        tally.markup_bps_shown += markup_bps
        if not candidate.u < self.acceptance_probability(markup_bps):
            tally.declined += 1
            return None
        tally.accepted += 1
        tally.by_side[candidate.side.value] += 1
        sign = 1.0 if candidate.side is Side.BUY else -1.0
        return ClientFill(candidate.ts_ns, self.symbol, candidate.side, candidate.qty,
                          mid * (1.0 + sign * markup_bps * BPS), self.client_id,
                          f"{self.client_id}-{self.seed}-{candidate.sequence}")

    def generate(self, start_ns: int, end_ns: int,
                 mid_at: Callable[[int], float | None]) -> Iterator[ClientFill]:
        """Accepted fills with times in (start_ns, end_ns], priced off `mid_at(time)`."""
        for candidate in self.candidates(start_ns):
            if candidate.ts_ns > end_ns:
                return
            fill = self.decide(candidate, mid_at(candidate.ts_ns))
            if fill is not None:
                yield fill

    def client_flow(self, start_ns: int, hedge_quote: Callable[[], Quote | None]) -> ClientFlow:
        """A `ClientFlow` for a backtest or a replay: each candidate is shown the desk's
        quote off the hedge market's newest mid when it comes due (`hedge_quote`, e.g.
        `lambda: bus.view.quote(venue, symbol)`); declines and no-market candidates count
        in `ClientFlow.unpriced` and, told apart, in `tally`."""
        waiting: dict[str, Candidate] = {}

        def placeholders() -> Iterator[ClientFill]:
            for candidate in self.candidates(start_ns):
                key = str(candidate.sequence)
                waiting[key] = candidate
                yield ClientFill(candidate.ts_ns, self.symbol, candidate.side,
                                 candidate.qty, 1.0, self.client_id, key)

        def reprice(fill: ClientFill) -> ClientFill | None:
            candidate = waiting.pop(fill.fill_id)
            quote = hedge_quote()
            mid = None if quote is None or quote.stale else quote.mid
            return self.decide(candidate, mid)

        return ClientFlow(placeholders(), reprice)

    def __aiter__(self) -> AsyncIterator[ClientFill]:
        """Live, as a `FlowSource` (`run_flow`): needs the `mid` given at construction."""
        if self._mid is None:
            raise ValueError("a live quoted flow needs a mid source (the hedge venue's quotes)")
        return self.stream(self._mid)

    async def stream(self, mid: MidSource, clock: Callable[[], int] = now_ns,
                     sleep: Sleep = asyncio.sleep) -> AsyncIterator[ClientFill]:
        """Live: candidates paced by their own gaps from now, priced off `mid()`."""
        start = clock()
        for candidate in self.candidates(start):
            delay = (candidate.ts_ns - clock()) / NS_PER_SECOND
            if delay > 0.0:
                await sleep(delay)
            fill = self.decide(candidate, mid())
            if fill is not None:
                yield fill


def quoted_source(settings: Any, desk_quote: DeskQuote | None = None,
                  mid: MidSource | None = None) -> QuotedFlowSource:
    """The quoted flow of the settings (`strategies.internalize`, see the module notes)."""
    own = settings.strategies.internalize
    sizes = LognormalSizes.with_mean(own.synthetic_mean_qty, own.quoted_size_log_sd)
    quote = desk_quote if desk_quote is not None else fixed_markup(own.synthetic_markup_bps)
    arrivals: Arrivals = PoissonArrivals(own.synthetic_rate_hz)
    if own.quoted_arrivals == "hawkes":
        branching, decay = own.quoted_hawkes_branching, own.quoted_hawkes_decay_per_s
        arrivals = HawkesArrivals(HawkesParams(own.synthetic_rate_hz * (1.0 - branching),
                                               branching * decay, decay))
    return QuotedFlowSource(own.symbol, arrivals, sizes, own.quoted_k_per_bps, own.seed,
                            quote, mid=mid)


# --- calibration from a recording ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedFlowFit:
    """Arrivals and sizes fitted to one market's recorded trades."""

    hawkes: HawkesFit
    sizes: LognormalSizes
    trades: int


async def recorded_trades(path: Path, symbol: str | None = None) -> list[Trade]:
    """Every trade of a recording (the live parsers read it: `ReplayFeed`), optionally of
    one symbol."""
    trades: list[Trade] = []

    def keep(trade: Trade) -> None:
        if symbol is None or trade.symbol == symbol:
            trades.append(trade)

    await ReplayFeed([parse_spec(str(path))], lambda _quote: None, keep).run()
    return trades


def fit_recording(path: Path, symbol: str | None = None) -> RecordedFlowFit:
    """Hawkes arrivals and lognormal sizes of a recording's taker arrivals (the prints of
    one venue time merged: `arrival_times_and_sizes`). Synchronous: not from a running
    event loop (await `recorded_trades` there)."""
    trades = asyncio.run(recorded_trades(path, symbol))
    times, sizes = arrival_times_and_sizes(trades)
    return RecordedFlowFit(fit_hawkes(times), LognormalSizes.fit(sizes), len(trades))
