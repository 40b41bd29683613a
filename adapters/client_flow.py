"""Client-flow sources for the internalize strategy: file replay, WebSocket ingest, synthetic.

Each source is an async iterator of `ClientFill` (the file and synthetic sources also
iterate synchronously, for backtests and calibration). They are I/O, so they live here and
not in `strategies/`: the daemon pumps fills into the runner, which calls
`strategy.on_client_fill` through its one dispatch path (`run_flow`).

Sides are always the **client's** side (see `ClientFill`).

Every fill is validated at this edge, before anything books it (`FlowLimits`): a time
(ISO 8601 or epoch s/ms/us/ns) between 2000 and 2100 and, at the ingest endpoint, within
`time_window_s` of the feed clock; a quantity > 0 and <= `max_qty`; a price finite and
> 0, with a finite notional. A fill outside them is refused (an error reply, a counter;
a CSV row skipped and counted), so no absurd number reaches the risk gate, the strategy
or the decision log.

- `FileFlowSource`: CSV of `time, side, qty, price` (aliases below), or a Dune export of
  1inch Fusion fills (`block_time, token_sold_symbol, token_bought_symbol,
  token_sold_amount, token_bought_amount`), mapped onto the configured `BASE/QUOTE`.
- `WebSocketFlowSource`: a local endpoint `ws://HOST:PORT/flow`; the handshake must carry
  `Authorization: Bearer <token>` (else HTTP 401). Each text message is one JSON client
  fill; each gets a JSON reply: `{"ok": true, "fill_id": ..., "seq": n}` or
  `{"ok": false, "error": "<what is wrong>"}`. Bad messages are logged, counted and
  answered, never fatal, never `ok`.
- `SyntheticFlowSource`: Poisson arrivals around a mid, seeded, so a paper demo or a
  backtest sees the same flow every run.

Live, a source's async iteration paces it (`run_flow` pumps it into the runner). A backtest
and `--mode action` on a replay instead take a file or synthetic source as a `ClientFlow`,
fills due by the feed clock and delivered between market events (`FeedClockFlow` in action),
so both see the same fills at the same feed times, whatever the replay speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import hmac
import math
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from config.settings import ConfigError
from daemon.core.clock import NS_PER_SECOND, now_ns
from daemon.core.logs import get_logger
from daemon.core.model import ClientFill, Quote, Side, Trade, split_symbol

log = get_logger("flow")

INGEST_PATH = "/flow"
#: A client fill is a few hundred bytes; anything much larger is not one.
MAX_MESSAGE_BYTES = 64 * 1024

MidSource = Callable[[], float | None]
#: The desk's answer before a fill is acknowledged: None to take it, else why not. The
#: float is the desk's side of the fills accepted and not yet delivered.
Admission = Callable[[ClientFill, float], str | None]
Sleep = Callable[[float], Awaitable[Any]]

_TIME_KEYS = ("time", "timestamp", "ts_ns", "ts", "block_time", "datetime")
_QTY_KEYS = ("qty", "base_qty", "quantity", "amount", "size")
_CLIENT_KEYS = ("client_id", "client", "taker", "tx_from")
_FILL_ID_KEYS = ("fill_id", "id", "tx_hash", "trade_id")
_DUNE_KEYS = ("token_sold_symbol", "token_bought_symbol", "token_sold_amount",
              "token_bought_amount")
#: Wrapped tokens trade as their underlying asset on a CEX hedge venue.
_ASSET_ALIASES = {"WETH": "ETH", "WBTC": "BTC", "BTCB": "BTC"}
#: A client fill's time is refused outside [2000-01-01, 2100-01-01) UTC: anything else is a
#: unit mistake or garbage, and an epoch beyond int64 ns cannot even be logged.
EARLIEST_NS = 946_684_800 * NS_PER_SECOND
LATEST_NS = 4_102_444_800 * NS_PER_SECOND
#: Bytes a CSV could not decode as UTF-8 (kept as lone surrogates, then skipped).
_UNDECODABLE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """What a client fill may carry (settings `strategies.internalize.max_client_qty` and
    `flow_time_window_s`); the defaults check only what every fill must satisfy."""

    #: Largest quantity of one client fill, base units.
    max_qty: float = math.inf
    #: The ingest endpoint refuses a fill whose time is further than this from the feed
    #: clock; None: no check (a file replays its own history).
    time_window_s: float | None = None

    @classmethod
    def from_settings(cls, internalize: Any) -> FlowLimits:
        return cls(internalize.max_client_qty, internalize.flow_time_window_s)


class FlowError(ValueError):
    """A client fill that cannot be used; `str()` names the problem for the reply/log."""


class FlowSource(Protocol):
    def __aiter__(self) -> AsyncIterator[ClientFill]: ...


# --- parsing shared by the file and the WebSocket source ----------------------------------


def parse_time_ns(value: Any) -> int:
    """Epoch ns from ns/us/ms/s numbers (told apart by magnitude) or ISO 8601 text (UTC)."""
    if isinstance(value, bool) or value is None or value == "":
        raise FlowError("time is missing")
    given = value
    if isinstance(value, str):
        text = value.strip()
        try:
            value = Decimal(text)  # exact: a float cannot hold 19 digits of epoch ns
        except InvalidOperation:
            return _iso_time_ns(text)
    if not isinstance(value, int | float | Decimal) or not math.isfinite(value) or value <= 0:
        raise FlowError(f"time {given!r} is not a positive epoch time")
    magnitude = abs(value)
    scale = (1 if magnitude >= 1e17 else 1_000 if magnitude >= 1e14
             else 1_000_000 if magnitude >= 1e11 else NS_PER_SECOND)
    return _in_range(int(value * scale), given)


def _in_range(ts_ns: int, given: Any) -> int:
    if not EARLIEST_NS <= ts_ns < LATEST_NS:
        raise FlowError(f"time {_short(given)} is not between 2000 and 2100")
    return ts_ns


def _short(value: Any, limit: int = 40) -> str:
    """A value for an error reply: repr, cut short (a client may send a megabyte)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _iso_time_ns(text: str) -> int:
    cleaned = text.removesuffix(" UTC").removesuffix("Z").replace(" ", "T", 1)
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise FlowError(f"time {text!r} is neither an epoch number nor ISO 8601") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = int(moment.timestamp())
    return _in_range(seconds * NS_PER_SECOND + moment.microsecond * 1_000, text)


def _positive(record: Mapping[str, Any], key: str) -> float:
    raw = record.get(key)
    if raw is None or raw == "":
        raise FlowError(f"{key} is missing")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise FlowError(f"{key} {raw!r} is not a number") from None
    if not (math.isfinite(value) and value > 0.0):
        raise FlowError(f"{key} must be a positive finite number, got {_short(raw)}")
    return value


def _checked(fill: ClientFill, limits: FlowLimits) -> ClientFill:
    """The limits no parse can check alone: the size and the notional."""
    if fill.qty > limits.max_qty:
        raise FlowError(f"qty {fill.qty:g} is above the maximum client fill {limits.max_qty:g}")
    if not math.isfinite(fill.qty * fill.price):
        raise FlowError(f"price {fill.price:g} x qty {fill.qty:g} is not a finite notional")
    return fill


def _first(record: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for key in keys:
        if key in record and record[key] not in (None, ""):
            return key, record[key]
    return None, None


def _asset(name: Any) -> str:
    text = str(name or "").strip().upper()
    return _ASSET_ALIASES.get(text, text)


def parse_side(value: Any) -> Side:
    text = str(value or "").strip().lower()
    if text in ("buy", "b", "bid"):
        return Side.BUY
    if text in ("sell", "s", "ask"):
        return Side.SELL
    raise FlowError(f"side {value!r} is not buy or sell")


def client_fill_from_record(record: Mapping[str, Any], symbol: str,
                            default_ts_ns: int | None = None,
                            limits: FlowLimits = FlowLimits()) -> ClientFill:
    """One client fill from a CSV row or a JSON object (keys lower-case); FlowError if bad."""
    if all(key in record for key in _DUNE_KEYS):
        return _checked(_from_dune(record, symbol), limits)
    given_symbol = record.get("symbol")
    if given_symbol not in (None, "") and given_symbol != symbol:
        raise FlowError(f"symbol {given_symbol!r} is not the configured {symbol!r}")
    time_key, time_value = _first(record, _TIME_KEYS)
    if time_key is None:
        if default_ts_ns is None:
            raise FlowError(f"time is missing (one of {', '.join(_TIME_KEYS)})")
        ts_ns = default_ts_ns
    else:
        ts_ns = parse_time_ns(time_value)
    qty_key = _first(record, _QTY_KEYS)[0] or "qty"
    return _checked(ClientFill(
        ts_ns=ts_ns, symbol=symbol, side=parse_side(record.get("side")),
        qty=_positive(record, qty_key), price=_positive(record, "price"),
        client_id=str(_first(record, _CLIENT_KEYS)[1] or ""),
        fill_id=str(_first(record, _FILL_ID_KEYS)[1] or ""),
    ), limits)


def _from_dune(record: Mapping[str, Any], symbol: str) -> ClientFill:
    """A dex.trades row: the client (taker) sold one token and bought the other.

    Client sold base for quote -> client sell of `token_sold_amount` at bought/sold;
    client sold quote for base -> client buy of `token_bought_amount` at sold/bought.
    """
    base, quote = split_symbol(symbol)
    sold, bought = _asset(record["token_sold_symbol"]), _asset(record["token_bought_symbol"])
    sold_amount = _positive(record, "token_sold_amount")
    bought_amount = _positive(record, "token_bought_amount")
    if (sold, bought) == (base, quote):
        side, qty, price = Side.SELL, sold_amount, bought_amount / sold_amount
    elif (sold, bought) == (quote, base):
        side, qty, price = Side.BUY, bought_amount, sold_amount / bought_amount
    else:
        raise FlowError(f"pair {sold}->{bought} is not {symbol}")
    time_key, time_value = _first(record, _TIME_KEYS)
    if time_key is None:
        raise FlowError("block_time is missing")
    fill_id = str(record.get("tx_hash") or "")
    if record.get("evt_index") not in (None, ""):
        fill_id = f"{fill_id}:{record['evt_index']}"
    return ClientFill(parse_time_ns(time_value), symbol, side, qty, price,
                      str(_first(record, _CLIENT_KEYS)[1] or ""), fill_id)


# --- file replay ----------------------------------------------------------------------------


class FileFlowSource:
    """Client fills from a CSV file, in file order; bad rows are counted and skipped.

    `speed` paces the async iteration by the fills' own time gaps (1 = real time, None =
    as fast as the consumer takes them). `skipped` counts the rows left out by what was
    wrong (the first word of the error: "time", "qty", "encoding", "malformed", ...); a
    backtest reports it in its summary, a live run logs it when the file ends.
    """

    def __init__(self, path: Path, symbol: str, speed: float | None = None,
                 sleep: Sleep = asyncio.sleep, limits: FlowLimits = FlowLimits()) -> None:
        self.path = Path(path)
        self.symbol = symbol
        self.speed = speed
        self.limits = limits
        self._sleep = sleep
        self.skipped: Counter[str] = Counter()

    def __iter__(self) -> Iterator[ClientFill]:
        # surrogateescape: a row with bytes that are not UTF-8 is skipped, not the file.
        with open(self.path, newline="", encoding="utf-8-sig",
                  errors="surrogateescape") as handle:
            reader = csv.DictReader(handle)
            try:
                fieldnames = reader.fieldnames
            except csv.Error as exc:
                self._skip("malformed", 1, f"header: {exc}")
                return
            if fieldnames is None:
                return
            reader.fieldnames = [name.strip().lower() for name in fieldnames]
            yield from self._fills(reader)
        if self.skipped:
            log.warning("flow_rows_skipped", path=str(self.path), skipped=dict(self.skipped))

    def _fills(self, reader: csv.DictReader[str]) -> Iterator[ClientFill]:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # a NUL byte, a field past the csv size limit
                self._skip("malformed", reader.line_num, str(exc))
                continue
            if any(isinstance(value, str) and _UNDECODABLE.search(value)
                   for value in row.values()):
                self._skip("encoding", reader.line_num, "not UTF-8 text")
                continue
            try:
                yield client_fill_from_record(row, self.symbol, limits=self.limits)
            except FlowError as exc:
                self._skip(str(exc).split(" ", 1)[0], reader.line_num, str(exc))

    def _skip(self, what: str, line: int, error: str) -> None:
        self.skipped[what] += 1
        log.debug("flow_row_skipped", path=str(self.path), line=line, error=error)

    async def __aiter__(self) -> AsyncIterator[ClientFill]:
        previous_ns: int | None = None
        for count, fill in enumerate(self, start=1):
            if self.speed is not None and previous_ns is not None:
                await self._sleep(max(0.0, (fill.ts_ns - previous_ns) / NS_PER_SECOND
                                      / self.speed))
            elif count % 1024 == 0:
                await asyncio.sleep(0)  # let the event loop breathe on a big unpaced file
            previous_ns = fill.ts_ns
            yield fill


# --- synthetic Poisson flow -------------------------------------------------------------------


class SyntheticFlowSource:
    """Seeded Poisson client flow around a mid: for paper demos and backtests.

    Arrivals: exponential gaps at `rate_hz` per second. Each client buys or sells with
    probability 1/2 an exponentially distributed size (mean `mean_qty` base, 6 decimals)
    and pays the mid plus `markup_bps` (buys at mid*(1+m), sells at mid*(1-m)).
    """

    def __init__(self, symbol: str, rate_hz: float, mean_qty: float, seed: int,
                 markup_bps: float = 5.0, mid: MidSource | None = None,
                 clock: Callable[[], int] = now_ns, sleep: Sleep = asyncio.sleep) -> None:
        self.symbol = symbol
        self.rate_hz = rate_hz
        self.mean_qty = mean_qty
        self.markup = markup_bps * 1e-4
        self.seed = seed
        self._mid = mid
        self._clock = clock
        self._sleep = sleep
        self.skipped: Counter[str] = Counter()

    def generate(self, start_ns: int, end_ns: int,
                 mid_at: Callable[[int], float | None]) -> Iterator[ClientFill]:
        """Fills with times in (start_ns, end_ns], priced off `mid_at(time)`."""
        rng = random.Random(self.seed)
        ts_ns = start_ns
        sequence = 0
        while True:
            ts_ns += int(rng.expovariate(self.rate_hz) * NS_PER_SECOND)
            if ts_ns > end_ns:
                return
            side, qty = self._draw(rng)
            fill = self._priced(ts_ns, side, qty, mid_at(ts_ns), sequence)
            sequence += 1
            if fill is not None:
                yield fill

    async def __aiter__(self) -> AsyncIterator[ClientFill]:
        if self._mid is None:
            raise ConfigError("synthetic flow needs a mid source (the hedge venue's quotes)")
        rng = random.Random(self.seed)
        sequence = 0
        while True:
            await self._sleep(rng.expovariate(self.rate_hz))
            side, qty = self._draw(rng)
            fill = self._priced(self._clock(), side, qty, self._mid(), sequence)
            sequence += 1
            if fill is not None:
                yield fill

    def _draw(self, rng: random.Random) -> tuple[Side, float]:
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        qty = max(round(rng.expovariate(1.0 / self.mean_qty), 6), 1e-6)
        return side, qty

    def _priced(self, ts_ns: int, side: Side, qty: float, mid: float | None,
                sequence: int) -> ClientFill | None:
        if mid is None or not mid > 0.0:
            self.skipped["no_mid"] += 1  # no market yet: the client would not get a price
            return None
        price = mid * (1.0 + self.markup) if side is Side.BUY else mid * (1.0 - self.markup)
        return ClientFill(ts_ns, self.symbol, side, qty, price, "synthetic",
                          f"syn-{self.seed}-{sequence}")


# --- due by the feed clock: backtests and replays ----------------------------------------------


#: Synthetic arrivals are drawn up to here; the data's end stops them first.
_FOREVER_NS = 2**62


class SteppedClock(Protocol):
    """A clock that code can move forward: a backtest's simulated clock, a replay's feed
    clock (`advance_to` never goes back)."""

    def __call__(self) -> int: ...

    def advance_to(self, ts_ns: int) -> None: ...


class FlowTaker(Protocol):
    """Who takes the client fills: the strategy runner (risk gate first, then the strategy)."""

    def advance(self, now_ns: int) -> None: ...

    def on_client_fill(self, fill: ClientFill) -> None: ...


class ClientFlow:
    """Client fills in time order, handed out as the feed clock passes them.

    A backtest and `--mode action` on a replay deliver them the same way (`deliver`),
    between market events, so both see the same fills at the same feed times."""

    def __init__(self, fills: Iterator[ClientFill],
                 reprice: Callable[[ClientFill], ClientFill | None] | None = None,
                 skipped: Mapping[str, int] | None = None) -> None:
        self._fills = fills
        self._reprice = reprice
        #: The source's count of fills it left out (read at the end: the file is read first).
        self.skipped: Mapping[str, int] = skipped if skipped is not None else {}
        self._next: ClientFill | None = next(fills, None)
        self.delivered = 0
        self.unpriced = 0

    @property
    def next_ts_ns(self) -> int | None:
        """Time of the next fill (priced or not when it comes due); None at the end."""
        return self._next.ts_ns if self._next is not None else None

    def arrivals(self, until_ns: int) -> Iterator[ClientFill]:
        """Fills with a time <= until_ns as they arrived, not yet priced (`price` each once
        the clock has moved to it: what the desk quotes by then is what the client sees)."""
        while self._next is not None and self._next.ts_ns <= until_ns:
            fill, self._next = self._next, next(self._fills, None)
            yield fill

    def price(self, arrival: ClientFill) -> ClientFill | None:
        """The fill as priced now (if repricing), counted; None (counted) when it cannot be."""
        fill = arrival
        if self._reprice is not None:
            fill = self._reprice(arrival)
            if fill is None:
                self.unpriced += 1
                return None
        self.delivered += 1
        return fill

    def due(self, until_ns: int) -> Iterator[ClientFill]:
        """Fills with a time <= until_ns, each priced (if repricing) as it comes due."""
        for arrival in self.arrivals(until_ns):
            fill = self.price(arrival)
            if fill is not None:
                yield fill

    def deliver(self, until_ns: int, clock: SteppedClock, taker: FlowTaker) -> None:
        """The fills due by `until_ns` (the next market event's time) to `taker`, each at
        its own time: the clock moves to it and what is due by then (order latency,
        timers: a strategy's new client quote) happens first, then it is priced."""
        for arrival in self.arrivals(until_ns):
            clock.advance_to(arrival.ts_ns)
            taker.advance(clock())
            fill = self.price(arrival)
            if fill is not None:
                taker.on_client_fill(fill)


def timed_client_flow(settings: Any, hedge_quote: Callable[[], Quote | None],
                      start_ns: int, desk_quote: Any = None) -> ClientFlow:
    """The configured source (`strategies.internalize.source`, settings: the daemon
    Settings) as a time-ordered stream from `start_ns`, the data's first event.

    "file": the CSV's fills by their own times. "synthetic": the seeded Poisson arrivals
    of `SyntheticFlowSource`, each priced off the hedge market's mid when it comes due
    (`hedge_quote`: the newest quote the strategy has seen, as live prices off the mid at
    arrival). "quoted": seeded candidates shown `desk_quote` (the strategy's, e.g.
    rl-internalize's shading; None: `synthetic_markup_bps` on both sides) who accept or
    not (adapters/quoted_flow.py). A WebSocket source cannot be replayed and is refused."""
    own = settings.strategies.internalize
    if own.source == "quoted":
        from adapters.quoted_flow import quoted_source

        return quoted_source(settings, desk_quote).client_flow(start_ns, hedge_quote)
    if own.source == "file":
        file = FileFlowSource(flow_file(own), own.symbol,
                              limits=FlowLimits(max_qty=own.max_client_qty))
        fills = sorted(file, key=lambda f: f.ts_ns)
        return ClientFlow(iter(fills), skipped=file.skipped)
    if own.source != "synthetic":
        raise ConfigError(f"strategies.internalize.source {own.source!r} cannot be replayed: "
                          "use 'file', 'synthetic' or 'quoted' for a backtest")
    source = SyntheticFlowSource(own.symbol, own.synthetic_rate_hz, own.synthetic_mean_qty,
                                 own.seed, own.synthetic_markup_bps)
    # Arrival times and sizes come from the seeded source; the price is set when the fill
    # comes due, off the mid at that moment.
    arrivals = source.generate(start_ns, _FOREVER_NS, lambda _ts: 1.0)

    def reprice(fill: ClientFill) -> ClientFill | None:
        quote = hedge_quote()
        if quote is None or quote.stale or not quote.mid > 0.0:
            return None  # no market: the client would not have been quoted
        sign = 1.0 if fill.side is Side.BUY else -1.0
        return dataclasses.replace(fill, price=quote.mid * (1.0 + sign * source.markup))

    return ClientFlow(arrivals, reprice)


class FeedClockFlow:
    """A file or synthetic source in `--mode action` on a replay: due by the feed clock.

    The same arrivals as a backtest of the same data, whatever `--speed`: the flow starts
    at the feed's first event (`on_published`, a bus sink, sees every event before any
    conflation) and the action loop calls `before(event)` ahead of each market event it
    hands the strategy, which delivers the fills due by then (`ClientFlow.deliver`).
    Synthetic fills are priced off the newest hedge quote the strategy has seen.
    """

    def __init__(self, settings: Any, taker: FlowTaker, clock: SteppedClock,
                 desk_quote: Any = None) -> None:
        own = settings.strategies.internalize
        self._settings = settings
        self._desk_quote = desk_quote  # the strategy's quote to clients (quoted flow)
        self._hedge_key = (own.venue, own.symbol)
        self._hedge: Quote | None = None
        self._taker = taker
        self._clock = clock
        if own.source == "file":
            flow_file(own)  # a missing file is a setting error at start, not at the first event
        #: Receive time of the feed's first event: the flow's start (0: none yet).
        self.start_ns = 0
        self.flow: ClientFlow | None = None

    def on_published(self, event: Quote | Trade) -> None:
        if not self.start_ns:
            self.start_ns = event.local_ts_ns

    def before(self, event: Quote | Trade) -> None:
        """Deliver the fills due by `event`, which the strategy is about to see."""
        now = event.local_ts_ns
        flow = self.flow
        if flow is None:
            flow = self.flow = timed_client_flow(self._settings, self._hedge_quote,
                                                 self.start_ns or now, self._desk_quote)
        flow.deliver(now, self._clock, self._taker)
        if (type(event) is Quote and event.exchange == self._hedge_key[0]
                and event.symbol == self._hedge_key[1]):
            self._hedge = event

    def _hedge_quote(self) -> Quote | None:
        return self._hedge


# --- WebSocket ingest endpoint ------------------------------------------------------------------


class WebSocketFlowSource:
    """`ws://host:port/flow`: authenticated clients push fills, each answered in JSON.

    `start()` binds (port 0 picks a free one: see `.port`); iterate to receive the
    accepted fills; `stop()` closes the server and ends the iteration. A full queue answers
    `{"ok": false, "error": "ingest queue full ..."}` rather than buffering without bound.
    """

    def __init__(self, symbol: str, token: str, host: str = "127.0.0.1", port: int = 0,
                 queue_size: int = 10_000, clock: Callable[[], int] = now_ns,
                 limits: FlowLimits = FlowLimits(), admit: Admission | None = None) -> None:
        if not token:
            raise ConfigError("the flow ingest endpoint needs a bearer token "
                              "(strategies.internalize.ingest_token)")
        self.symbol = symbol
        self.host = host
        self.port = port
        self._token = token.encode()
        self._clock = clock
        self.limits = limits
        self._admit = admit
        self._queue: asyncio.Queue[ClientFill | None] = asyncio.Queue(queue_size)
        #: The desk's side (base) of the fills in the queue: the admission counts them.
        self._queued_delta = 0.0
        self._server: Any = None
        self.accepted = 0
        self.rejected: Counter[str] = Counter()

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        self._server = await serve(self._serve, self.host, self.port,
                                   process_request=self._authorize,
                                   max_size=MAX_MESSAGE_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("flow_ingest_listening", url=f"ws://{self.host}:{self.port}{INGEST_PATH}")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)  # wakes the iterator, which then ends

    async def __aenter__(self) -> WebSocketFlowSource:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def __aiter__(self) -> AsyncIterator[ClientFill]:
        if self._server is None:
            await self.start()
        while True:
            fill = await self._queue.get()
            if fill is None:
                return
            self._queued_delta -= fill.desk_base_delta
            yield fill

    def _authorize(self, connection: Any, request: Any) -> Any:
        """Handshake check: right path and bearer token, else an HTTP error, no upgrade."""
        if urlsplit(request.path).path != INGEST_PATH:
            self.rejected["path"] += 1
            return connection.respond(HTTPStatus.NOT_FOUND, f"unknown path: use {INGEST_PATH}\n")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 self._token):
            self.rejected["unauthorized"] += 1
            log.warning("flow_ingest_unauthorized", remote=str(connection.remote_address),
                        header_present=bool(scheme))
            response = connection.respond(HTTPStatus.UNAUTHORIZED,
                                          "missing or wrong bearer token\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="flow"'
            return response
        return None

    async def _serve(self, connection: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in connection:
                await connection.send(orjson.dumps(self._accept(message)).decode())
        except ConnectionClosed:
            pass  # the client went away mid-reply: nothing to answer any more

    def _accept(self, message: str | bytes) -> dict[str, Any]:
        """Parse, validate and queue one message; the reply says what happened."""
        try:
            now = self._clock()
            fill = parse_client_fill_message(message, self.symbol, now, self.limits)
            _check_time_window(fill, now, self.limits)
            refusal = self._admit(fill, self._queued_delta) if self._admit else None
            if refusal is not None:
                return self._refuse(f"refused: {refusal}", message, counter="refused")
            self._queue.put_nowait(fill)
        except FlowError as exc:
            return self._refuse(str(exc), message)
        except asyncio.QueueFull:
            return self._refuse("ingest queue full: retry later", message)
        self._queued_delta += fill.desk_base_delta
        self.accepted += 1
        return {"ok": True, "fill_id": fill.fill_id, "seq": self.accepted}

    def _refuse(self, error: str, message: str | bytes,
                counter: str | None = None) -> dict[str, Any]:
        self.rejected[counter or error.split(" ", 1)[0]] += 1
        log.warning("flow_ingest_bad_message", error=error, message=_excerpt(message))
        return {"ok": False, "error": error}


def _check_time_window(fill: ClientFill, now_ns: int, limits: FlowLimits) -> None:
    window = limits.time_window_s
    if window is not None and abs(fill.ts_ns - now_ns) > window * NS_PER_SECOND:
        off_s = (fill.ts_ns - now_ns) / NS_PER_SECOND
        raise FlowError(f"time is {off_s:+.0f} s from the feed clock (window {window:g} s)")


def parse_client_fill_message(message: str | bytes, symbol: str, received_ns: int,
                              limits: FlowLimits = FlowLimits()) -> ClientFill:
    """One JSON object -> ClientFill (time defaults to `received_ns`); FlowError if bad."""
    try:
        record = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise FlowError(f"malformed JSON: {exc}") from None
    if not isinstance(record, dict):
        raise FlowError(f"expected a JSON object, got {type(record).__name__}")
    lowered = {str(key).strip().lower(): value for key, value in record.items()}
    fill = client_fill_from_record(lowered, symbol, default_ts_ns=received_ns, limits=limits)
    if not fill.fill_id:
        fill.fill_id = f"ws-{received_ns}"
    return fill


def _excerpt(message: str | bytes, limit: int = 200) -> str:
    text = message if isinstance(message, str) else message.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "..."


# --- wiring -----------------------------------------------------------------------------------


AnyFlowSource = FileFlowSource | SyntheticFlowSource | WebSocketFlowSource


def flow_file(internalize: Any) -> Path:
    """The CSV of source = "file" (settings `strategies.internalize`); ConfigError if none."""
    if internalize.file is None:
        raise ConfigError("invalid setting strategies.internalize.file: source 'file' "
                          "needs a CSV path")
    if not Path(internalize.file).is_file():
        raise ConfigError(f"invalid setting strategies.internalize.file: {internalize.file} "
                          "is not a file")
    return Path(internalize.file)


def build_flow_source(settings: Any, mid: MidSource | None = None,
                      clock: Callable[[], int] = now_ns,
                      admit: Admission | None = None, desk_quote: Any = None) -> AnyFlowSource:
    """The source chosen by `strategies.internalize.source` (settings: the daemon Settings).

    `admit` (the runner's `client_fill_refusal`) lets the ingest endpoint answer a fill
    the desk cannot take with an error; the other sources cannot answer, so the runner
    refuses those when they are delivered. `desk_quote`: the strategy's quote to clients
    for the quoted source."""
    own = settings.strategies.internalize
    if own.source == "quoted":
        from adapters.quoted_flow import quoted_source

        return quoted_source(settings, desk_quote, mid=mid)
    if own.source == "file":
        return FileFlowSource(flow_file(own), own.symbol,
                              limits=FlowLimits(max_qty=own.max_client_qty))
    if own.source == "websocket":
        token = own.ingest_token.get_secret_value() if own.ingest_token else ""
        return WebSocketFlowSource(own.symbol, token, own.ingest_host, own.ingest_port,
                                   clock=clock, limits=FlowLimits.from_settings(own),
                                   admit=admit)
    return SyntheticFlowSource(own.symbol, own.synthetic_rate_hz, own.synthetic_mean_qty,
                               own.seed, own.synthetic_markup_bps, mid=mid, clock=clock)


async def run_flow(source: FlowSource, deliver: Callable[[ClientFill], object]) -> int:
    """Pump every fill of `source` into `deliver` (e.g. the runner); returns the count.

    Live wiring: `deliver = runner.on_client_fill` (risk gate first, then the strategy).
    """
    count = 0
    async for fill in source:
        deliver(fill)
        count += 1
    return count
