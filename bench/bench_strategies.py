"""Strategy figures: decision latency (quote in -> Decision out) and as_quotes calls/s.

Run: .venv/bin/python bench/bench_strategies.py [--rounds 3] [--calls 300000]
Prints figures, never asserts on time.

Decision latency is the wall time of `strategy.on_quote(quote)` alone (the fill simulator
and the driver around it are not timed), over every quote of the real Binance spot
BTCUSDT recording in ../shared/data (a synthetic random walk when it is absent):
- inventory MM as configured (re-evaluates on a fill, each second, or a 1 bps move; most
  quotes return None), with k fixed and k "auto", and re-evaluating on every quote (the
  full path each time: volatility, kernel, rounding, sizing, reconcile, Decision);
- arbitrage between that stream as venue A and a copy as venue B, 50 ms later and
  priced at a premium swinging +-6 bps over 20 s, so edges open and close (every quote
  evaluates both directions; a Decision is a skip on a changed edge, an arbitrage, or an
  unwind).
The market view's volatility is a constant here: its cost belongs to the ring buffer
(bench_ringbuffer.py), and the strategies cache it for a second anyway.

as_quotes: calls/s of the numba kernel called from Python (dispatch included), of the
same formula in plain Python, and of the kernel called from inside a numba loop.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import orjson
from numba import njit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from config.settings import ArbitrageSettings, InventoryMMSettings, VenueSettings  # noqa: E402
from daemon.core.model import Decision, Quote, Trade  # noqa: E402
from strategies.arbitrage import ArbitrageStrategy  # noqa: E402
from strategies.inventory_mm import InventoryMMStrategy, as_quotes  # noqa: E402
from tests.helpers.strategy_fakes import Driver, FakeAccount, FakeClock, FakeExchange, FakeMarket  # noqa: E402

RECORDING = ROOT.parent / "shared/data/binance_spot_btcusdt_20240808.gz"
A, B, SYMBOL = "binance_spot", "bybit_spot", "BTC/USDT"
NS = 1_000_000_000
SIGMA_LOG = 6.9e-5  # the recording's realised volatility per sqrt-second


def load_events() -> tuple[list[Quote | Trade], str]:
    if not RECORDING.is_file():
        return synthetic_events(), "synthetic random walk (../shared/data absent)"
    events: list[Quote | Trade] = []
    with gzip.open(RECORDING, "rb") as recording:
        for line in recording:
            local_ts, _, frame = line.partition(b" ")
            if b"@bookTicker" in frame[:40]:
                data = orjson.loads(frame)["data"]
                events.append(Quote(A, SYMBOL, float(data["b"]), float(data["B"]),
                                    float(data["a"]), float(data["A"]), 0, int(local_ts),
                                    data["u"]))
            elif b"@trade" in frame[:40]:
                data = orjson.loads(frame)["data"]
                events.append(Trade(A, SYMBOL, float(data["p"]), float(data["q"]),
                                    "sell" if data["m"] else "buy", data["T"] * 1_000_000,
                                    int(local_ts), str(data["t"])))
    return events, f"{RECORDING.name}"


def synthetic_events(count: int = 30_000) -> list[Quote | Trade]:
    rng = np.random.default_rng(7)
    mid = 60_000.0 * np.exp(np.cumsum(rng.normal(0, SIGMA_LOG * math.sqrt(0.012), count)))
    events: list[Quote | Trade] = []
    for index, price in enumerate(mid):
        ts = 1_723_161_600 * NS + index * 12_000_000
        bid = math.floor(price * 100) / 100
        events.append(Quote(A, SYMBOL, bid, 1.0, bid + 0.01, 1.0, 0, ts, index))
        if index % 3 == 0:
            side = "buy" if rng.random() < 0.5 else "sell"
            events.append(Trade(A, SYMBOL, bid + 0.01 if side == "buy" else bid, 0.01, side, ts,
                                ts + 1, str(index)))
    return events


class Timed:
    """Delegates to a strategy and times `on_quote` (ns), noting whether it decided."""

    def __init__(self, strategy: object) -> None:
        self._strategy = strategy
        self.samples: list[int] = []
        self.decided: list[bool] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._strategy, name)

    def on_quote(self, quote: Quote) -> Decision | None:
        start = time.perf_counter_ns()
        decision = self._strategy.on_quote(quote)  # type: ignore[attr-defined]
        self.samples.append(time.perf_counter_ns() - start)
        self.decided.append(decision is not None)
        return decision


def percentiles(samples: np.ndarray) -> tuple[float, float]:
    if samples.size == 0:
        return math.nan, math.nan
    p50, p99 = np.percentile(samples, [50, 99])
    return p50 / 1e3, p99 / 1e3


def run_mm(events: list[Quote | Trade], **overrides: object) -> Timed:
    settings = InventoryMMSettings(**{"venue": A, "symbol": SYMBOL, "order_qty": 0.001,
                                      "max_inventory": 0.003, "max_loss": 1e9, **overrides})
    venue = VenueSettings(markets={SYMBOL: {"tick": 0.01, "lot": 0.00001}}, stale_after_s=60)
    account = FakeAccount({A: {"BTC": 0.5, "USDT": 50_000.0}})
    market = FakeMarket()
    market.sigma[(A, SYMBOL)] = SIGMA_LOG
    timed = Timed(InventoryMMStrategy(settings, venue))
    Driver(timed, FakeExchange(account), market, account, FakeClock(events[0].local_ts_ns)) \
        .feed(events)
    return timed


def arbitrage_events(events: list[Quote | Trade]) -> list[Quote]:
    """Venue A as recorded; venue B 50 ms later at a premium of 6 bps * sin(2 pi t / 20 s)."""
    quotes = [e for e in events if isinstance(e, Quote)]
    start = quotes[0].local_ts_ns
    merged: list[Quote] = []
    for quote in quotes:
        merged.append(quote)
        ts = quote.local_ts_ns + 50_000_000
        premium = 1.0 + 6e-4 * math.sin(2 * math.pi * (ts - start) / (20 * NS))
        merged.append(Quote(B, SYMBOL, round(quote.bid * premium, 2), quote.bid_qty,
                            round(quote.ask * premium, 2), quote.ask_qty, 0, ts, quote.seq))
    merged.sort(key=lambda q: q.local_ts_ns)
    return merged


def run_arbitrage(quotes: list[Quote]) -> tuple[Timed, Driver]:
    settings = ArbitrageSettings(min_net_edge_bps=2.0, slippage_bps=0.5, max_notional=1_000.0,
                                 cooldown_s=1.0)
    venue = VenueSettings(taker_fee_bps=1.0, stale_after_s=60,
                          markets={SYMBOL: {"tick": 0.01, "lot": 0.00001}})
    account = FakeAccount({v: {"BTC": 10.0, "USDT": 1_000_000.0} for v in (A, B)})
    timed = Timed(ArbitrageStrategy(settings, {A: venue, B: venue}, [SYMBOL]))
    driver = Driver(timed, FakeExchange(account, fee_bps=1.0), FakeMarket(), account,
                    FakeClock(quotes[0].local_ts_ns))
    driver.feed(quotes)
    return timed, driver


def report_latency(label: str, rounds: list[Timed], extra: str = "") -> None:
    all_p50, all_p99, dec_p50, dec_p99 = [], [], [], []
    for timed in rounds:
        samples = np.asarray(timed.samples)
        decided = samples[np.asarray(timed.decided)]
        p50, p99 = percentiles(samples)
        d50, d99 = percentiles(decided)
        all_p50.append(p50)
        all_p99.append(p99)
        dec_p50.append(d50)
        dec_p99.append(d99)
    last = rounds[-1]
    decisions = sum(last.decided)
    print(f"{label:44s} all quotes p50 {statistics.median(all_p50):6.2f} us  "
          f"p99 {statistics.median(all_p99):6.2f} us | with a Decision ({decisions:,} of "
          f"{len(last.samples):,}) p50 {statistics.median(dec_p50):6.2f} us  "
          f"p99 {statistics.median(dec_p99):6.2f} us{extra}")


def as_quotes_python(mid: float, inventory: float, time_left: float, sigma: float,
                     gamma: float, k: float) -> tuple[float, float]:
    """The same closed form in plain Python (the benchmark's baseline)."""
    reservation = mid - inventory * gamma * sigma * sigma * time_left
    half_spread = 0.5 * (gamma * sigma * sigma * time_left
                         + (2.0 / gamma) * math.log(1.0 + gamma / k))
    return reservation - half_spread, reservation + half_spread


@njit(cache=True)
def _as_quotes_loop(calls: int) -> float:
    total = 0.0
    for index in range(calls):
        # k varies too, so LLVM cannot hoist the logarithm out of the loop.
        bid, ask = as_quotes(61_000.0 + index * 1e-6, 0.002, 60.0, 4.2, 0.1, 30.0 + index * 1e-9)
        total += ask - bid
    return total


def bench_as_quotes(calls: int, rounds: int) -> None:
    as_quotes(61_000.0, 0.002, 60.0, 4.2, 0.1, 30.0)  # compile (or load from cache)
    _as_quotes_loop(10)
    rates: dict[str, list[float]] = {"numba from Python": [], "plain Python": [],
                                     "numba inside a numba loop": []}
    mids = [61_000.0 + i * 1e-6 for i in range(calls)]
    for _ in range(rounds):
        for name, function in (("numba from Python", as_quotes),
                               ("plain Python", as_quotes_python)):
            start = time.perf_counter()
            for mid in mids:
                function(mid, 0.002, 60.0, 4.2, 0.1, 30.0)
            rates[name].append(calls / (time.perf_counter() - start))
        start = time.perf_counter()
        _as_quotes_loop(calls)
        rates["numba inside a numba loop"].append(calls / (time.perf_counter() - start))
    baseline = statistics.median(rates["plain Python"])
    print(f"\n## as_quotes, {calls:,} calls x {rounds} rounds (median)")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:28s} {rate / 1e6:8.2f} M calls/s  ({1e9 / rate:7.1f} ns/call)  "
              f"x{rate / baseline:5.2f} vs plain Python")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300_000)
    args = parser.parse_args()
    events, source = load_events()
    arb_quotes = arbitrage_events(events)
    # The loaded session is ~100k long-lived objects a live daemon does not hold: keep
    # them out of the collector's full passes so its pauses do not pose as strategy time.
    gc.collect()
    gc.freeze()
    quotes = sum(isinstance(e, Quote) for e in events)
    print(f"## decision latency: on_quote -> Decision, {source}: {quotes:,} quotes, "
          f"{len(events) - quotes:,} trades; median of {args.rounds} rounds")
    run_mm(events[:4000], k_bps="auto")  # warm up: numba kernels compiled or loaded from cache
    report_latency("inventory-mm, k_bps 9",
                   [run_mm(events, k_bps=9.0) for _ in range(args.rounds)])
    report_latency("inventory-mm, k auto", [run_mm(events, k_bps="auto")
                                            for _ in range(args.rounds)])
    report_latency("inventory-mm, k_bps 9, re-evaluate every quote",
                   [run_mm(events, k_bps=9.0, requote_interval_s=1e-6)
                    for _ in range(args.rounds)])
    runs = [run_arbitrage(arb_quotes) for _ in range(args.rounds)]
    actions = {}
    for decision in runs[-1][1].decisions:
        actions[decision.action] = actions.get(decision.action, 0) + 1
    report_latency("arbitrage, 2 venues", [timed for timed, _ in runs],
                   extra=f"  (decisions: {actions})")
    bench_as_quotes(args.calls, args.rounds)


if __name__ == "__main__":
    main()
