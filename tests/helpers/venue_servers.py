"""Local stand-ins for Binance and Bybit public WebSocket servers (127.0.0.1, ephemeral port).

They speak the venues' protocols as documented and replay real recorded frames:

- `BinanceServer`: combined streams (`/stream?streams=a/b`) and raw streams (`/ws`,
  `/ws/<n>`, `/public/ws/<n>` as ccxt.pro uses them) with live `SUBSCRIBE` /
  `UNSUBSCRIBE` / `LIST_SUBSCRIPTIONS`, plus the REST endpoints an adapter or ccxt needs
  (`/api/v3/depth`, `/fapi/v1/depth`, `/api/v3/exchangeInfo`, `/fapi/v1/exchangeInfo`),
  answered on the same port.
- `BybitServer`: v5 public `op: subscribe / unsubscribe / ping` with acks and pongs.
  It replays real Bybit frames verbatim, or re-encodes Binance bookTicker/trade frames
  as Bybit `orderbook.1` snapshot/delta and `publicTrade` messages (a second venue fed
  by real market data).

The tape is replayed once, from a cursor shared by all connections: a client that
reconnects resumes where the stream is, as with a real venue (what was sent to a dead
connection is gone). Faults are scripted by tape position (`faults={index: Fault}`) or
triggered by the test (`inject`, `stall`, `drop_connections`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

# --- tapes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TapeFrame:
    """One recorded Binance combined-stream frame, split for both endpoint kinds."""

    stream: str  # "btcusdt@bookTicker"; "" for non-stream lines (REST snapshot)
    combined: bytes  # {"stream": ..., "data": {...}} exactly as recorded
    raw: bytes  # the data object alone (what /ws endpoints send)
    local_ts_ns: int


def read_recording(path: Path) -> list[tuple[int, bytes]]:
    """(receive ns, frame) per line of a `<ns> <frame>` gzip recording."""
    out = []
    with gzip.open(path, "rb") as handle:
        for line in handle:
            ts, _, frame = line.rstrip(b"\n").partition(b" ")
            out.append((int(ts), frame))
    return out


def binance_tape(path: Path) -> tuple[list[TapeFrame], bytes | None]:
    """The stream frames of a shared Binance recording, and its REST depth snapshot."""
    frames: list[TapeFrame] = []
    snapshot = None
    for ts, frame in read_recording(path):
        if not frame.startswith(b'{"stream":"'):
            if frame.startswith(b'{"lastUpdateId"'):
                snapshot = frame
            continue
        end = frame.index(b'"', 11)
        stream = frame[11:end].decode()
        data_at = frame.index(b'"data":', end) + len(b'"data":')
        frames.append(TapeFrame(stream, frame, frame[data_at:-1], ts))
    return frames, snapshot


def count_streams(frames: Iterable[TapeFrame]) -> Counter[str]:
    return Counter(frame.stream.partition("@")[2] for frame in frames)


@dataclass(slots=True)
class Fault:
    """What to do when the cursor reaches a tape position (before sending that frame)."""

    #: "close" (clean close frame) | "drop" (TCP abort) | "stall" | "inject" |
    #: "cross" (Bybit: a delta in sequence whose bid is above every ask, per book topic)
    kind: str
    #: "stall": its length; "drop": the longest the cursor then waits for every stream
    #: the dropped connections had to be subscribed again (0: it goes straight on)
    seconds: float = 0.0
    frames: list[bytes | str] = field(default_factory=list)  # inject: sent as given


# --- the common server ----------------------------------------------------------------------


class _ReplayServer:
    """Serving, cursor, faults and bookkeeping shared by both venues."""

    def __init__(self, *, rate_hz: float | None = None,
                 faults: dict[int, Fault] | None = None) -> None:
        self.rate_hz = rate_hz
        self.faults = dict(faults or {})
        self.position = 0
        self.connections: list[ServerConnection] = []
        self.states: dict[ServerConnection, Any] = {}
        self._cut: list[ServerConnection] = []
        self._broadcaster: asyncio.Task[None] | None = None
        self.connection_count = 0
        self.requests: list[dict[str, Any]] = []
        self.http_requests: list[str] = []
        self.finished = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()
        self._server: Server | None = None
        self.port = 0
        self.last_request_at = 0.0

    async def start(self) -> _ReplayServer:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None,
                                   process_request=self._process_request, max_size=None,
                                   ping_interval=None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._broadcaster is not None:
            self._broadcaster.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._broadcaster
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- test controls -----------------------------------------------------------------------

    def stall(self) -> None:
        """Stop sending (connections stay open and answer control messages)."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    async def inject(self, frame: bytes | str) -> None:
        """Send one frame as given (bytes go out as a binary frame) to every connection."""
        for connection in list(self.connections):
            with contextlib.suppress(Exception):
                await connection.send(frame)

    def drop_connections(self) -> None:
        """Abrupt TCP drop of every connection: no close frame."""
        for connection in list(self.connections):
            connection.transport.abort()

    async def ping_clients(self, timeout_s: float = 2.0) -> list[float]:
        """Ping every client; the round-trip latencies (raises TimeoutError without pong)."""
        latencies = []
        for connection in list(self.connections):
            waiter = await connection.ping()
            latencies.append(await asyncio.wait_for(waiter, timeout_s))
        return latencies

    # -- internals ---------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        self.http_requests.append(request.path)
        status, body = self.http_response(request.path)
        response = connection.respond(status, "")
        response.headers = Headers([("Content-Type", "application/json"),
                                    ("Content-Length", str(len(body))),
                                    ("Connection", "close")])
        response.body = body
        return response

    def http_response(self, path: str) -> tuple[int, bytes]:
        return 404, b'{"code":-1,"msg":"not found"}'

    async def _handle(self, connection: ServerConnection) -> None:
        state = self.open_state(connection)
        self.connections.append(connection)
        self.states[connection] = state
        self.connection_count += 1
        if self._broadcaster is None:
            self._broadcaster = asyncio.create_task(self._broadcast())
        try:
            async for message in connection:
                request = orjson.loads(message)
                self.requests.append(request)
                self.last_request_at = asyncio.get_running_loop().time()
                await self.on_request(connection, state, request)
        except Exception:
            pass  # a client that goes away mid-request is not the server's problem
        finally:
            if connection in self.connections:
                self.connections.remove(connection)
            self.states.pop(connection, None)

    def _listening(self) -> list[tuple[ServerConnection, Any]]:
        return [(c, self.states[c]) for c in self.connections if self.subscribed(self.states[c])]

    async def _broadcast(self) -> None:
        """Advance the shared cursor, sending each frame to every connection that wants it.

        Like a venue, nothing goes out before a client subscribed. The cursor waits while
        nobody listens, so a client that reconnects misses nothing it did not miss live
        (what the dying connection was sent is gone), and a short lull in subscribe
        requests is awaited so a tape replays in full to every topic asked for.
        """
        interval = 1.0 / self.rate_hz if self.rate_hz else 0.0
        loop = asyncio.get_running_loop()
        next_at = 0.0
        while self.position < self.tape_length():
            await self._running.wait()
            if not self._listening() or loop.time() - self.last_request_at < 0.02:
                await asyncio.sleep(0.005)
                next_at = loop.time()
                continue
            fault = self.faults.pop(self.position, None)
            if fault is not None:
                await self._apply(fault)
                continue
            if not next_at:  # a client listening from its first moment: pace from now
                next_at = loop.time()
            for connection, state in self._listening():
                try:
                    for frame in self.frames_at(self.position, state):
                        await connection.send(frame)
                except Exception:
                    continue  # that connection died; the others go on
            self.position += 1
            if interval:
                next_at += interval
                delay = next_at - loop.time()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                    continue
            if self.position % 64 == 0:
                await asyncio.sleep(0)  # frames nobody wants need no send: yield anyway
        self.finished.set()

    def streams_of(self, connections: list[ServerConnection]) -> set[str]:
        """The streams these connections are subscribed to (venues that say which)."""
        return set()

    async def _await_streams(self, streams: set[str], dropped: list[ServerConnection],
                             hold_s: float) -> None:
        """Hold the cursor until every stream of the dropped connections is subscribed on
        a new one (at most `hold_s`): what comes after a drop is then sent to the client's
        new connections however slowly a loaded CPU lets it reconnect, instead of the tape
        running out meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hold_s
        while not streams <= self.streams_of([c for c in self.connections if c not in dropped]):
            if loop.time() > deadline:
                return
            await asyncio.sleep(0.005)

    async def _apply(self, fault: Fault) -> None:
        connections = list(self.connections)
        if fault.kind == "close":
            for connection in connections:
                with contextlib.suppress(Exception):
                    await connection.close(1001, "going away")
        elif fault.kind == "drop":
            streams = self.streams_of(connections)
            for connection in connections:
                connection.transport.abort()
            if fault.seconds:
                await self._await_streams(streams, connections, fault.seconds)
        elif fault.kind == "stall":
            await asyncio.sleep(fault.seconds)
        elif fault.kind == "inject":
            for connection in connections:
                with contextlib.suppress(Exception):  # a dying connection: the others go on
                    for frame in fault.frames:
                        await connection.send(frame)
        # A cut connection is gone at once for the broadcaster, as for a venue.
        if fault.kind in ("close", "drop"):
            for connection in connections:
                if connection in self.connections:
                    self.connections.remove(connection)
                    self._cut.append(connection)

    # -- per venue ---------------------------------------------------------------------------

    def open_state(self, connection: ServerConnection) -> Any:
        raise NotImplementedError

    def subscribed(self, state: Any) -> bool:
        raise NotImplementedError

    def tape_length(self) -> int:
        raise NotImplementedError

    def frames_at(self, index: int, state: Any) -> Iterator[bytes]:
        raise NotImplementedError

    async def on_request(self, connection: ServerConnection, state: Any,
                         request: dict[str, Any]) -> None:
        raise NotImplementedError


# --- Binance --------------------------------------------------------------------------------


@dataclass(slots=True)
class _BinanceConnection:
    combined: bool
    streams: set[str]


class BinanceServer(_ReplayServer):
    """Binance spot (`market="spot"`) or USD-M (`"usdm"`) stream server over a tape."""

    def __init__(self, tape: list[TapeFrame], *, market: str = "spot",
                 snapshot: bytes | None = None, reject_streams: Iterable[str] = (),
                 symbols: Iterable[str] = ("BTCUSDT",),
                 market_rules: Mapping[str, MarketFilters] | None = None,
                 **kwargs: Any) -> None:
        """`market_rules`: exchangeInfo filters per venue symbol (default BTCUSDT's)."""
        super().__init__(**kwargs)
        self.tape = tape
        self.market_rules = dict(market_rules or {})
        self.market = market
        self.snapshot = snapshot
        self.reject_streams = set(reject_streams)
        self.symbols = list(symbols)
        self.subscribed_paths: list[str] = []

    @property
    def ws_url(self) -> str:
        """The raw-stream base, as Binance documents it (the `ws_url` setting)."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tape_length(self) -> int:
        return len(self.tape)

    def open_state(self, connection: ServerConnection) -> _BinanceConnection:
        parts = urlsplit(connection.request.path)
        self.subscribed_paths.append(connection.request.path)
        if parts.path.rstrip("/").endswith("/stream"):
            query = parse_qs(parts.query).get("streams", [""])[0]
            return _BinanceConnection(True, {s for s in query.split("/") if s})
        tail = parts.path.rsplit("/", 1)[-1]
        return _BinanceConnection(False, {tail} if "@" in tail else set())

    def subscribed(self, state: _BinanceConnection) -> bool:
        return bool(state.streams)

    def streams_of(self, connections: list[ServerConnection]) -> set[str]:
        return set().union(*(self.states[c].streams for c in connections if c in self.states))

    def frames_at(self, index: int, state: _BinanceConnection) -> Iterator[bytes]:
        frame = self.tape[index]
        if frame.stream in state.streams:
            yield frame.combined if state.combined else frame.raw

    async def on_request(self, connection: ServerConnection, state: _BinanceConnection,
                         request: dict[str, Any]) -> None:
        method, request_id = request.get("method"), request.get("id")
        params = request.get("params") or []
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            refused = [p for p in params if p in self.reject_streams]
            if refused:
                reply: dict[str, Any] = {"error": {"code": 2, "msg": f"Invalid request: "
                                                   f"unknown stream {refused[0]}"},
                                         "id": request_id}
            else:
                if method == "SUBSCRIBE":
                    state.streams.update(params)
                else:
                    state.streams.difference_update(params)
                reply = {"result": None, "id": request_id}
        elif method == "LIST_SUBSCRIPTIONS":
            reply = {"result": sorted(state.streams), "id": request_id}
        else:
            reply = {"error": {"code": 2, "msg": "Invalid request: unknown method"},
                     "id": request_id}
        await connection.send(orjson.dumps(reply).decode())

    def http_response(self, path: str) -> tuple[int, bytes]:
        route = urlsplit(path).path
        if route in ("/api/v3/depth", "/fapi/v1/depth") and self.snapshot is not None:
            return 200, self.snapshot
        if route == "/api/v3/exchangeInfo":
            return 200, exchange_info(self.symbols, spot=True, rules=self.market_rules)
        if route == "/fapi/v1/exchangeInfo":
            return 200, exchange_info(self.symbols, spot=False, rules=self.market_rules)
        return 404, b'{"code":-1121,"msg":"Invalid symbol."}'


@dataclass(frozen=True, slots=True)
class MarketFilters:
    """A symbol's PRICE_FILTER tick, LOT_SIZE step and (optional) NOTIONAL minimum."""

    tick: str = "0.01"
    step: str = "0.00001"
    min_notional: str | None = None


def exchange_info(symbols: Iterable[str], spot: bool,
                  rules: Mapping[str, MarketFilters] | None = None) -> bytes:
    """A minimal exchangeInfo body in Binance's shape, enough for ccxt's load_markets."""
    entries = []
    for symbol in symbols:
        base, quote = symbol[:-4], symbol[-4:]
        filters = (rules or {}).get(symbol, MarketFilters())
        entry: dict[str, Any] = {
            "symbol": symbol, "status": "TRADING", "baseAsset": base,
            "baseAssetPrecision": 8, "quoteAsset": quote, "quotePrecision": 8,
            "quoteAssetPrecision": 8, "orderTypes": ["LIMIT", "MARKET"],
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": filters.tick,
                 "maxPrice": "1000000.00", "tickSize": filters.tick},
                {"filterType": "LOT_SIZE", "minQty": filters.step, "maxQty": "9000.00",
                 "stepSize": filters.step},
            ],
        }
        if filters.min_notional is not None:
            entry["filters"].append({"filterType": "NOTIONAL" if spot else "MIN_NOTIONAL",
                                     "minNotional": filters.min_notional,
                                     "notional": filters.min_notional})
        if spot:
            entry.update({"isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
                          "permissions": ["SPOT"], "permissionSets": [["SPOT"]]})
        else:
            entry.update({"pair": symbol, "contractType": "PERPETUAL", "deliveryDate":
                          4133404800000, "onboardDate": 1569398400000, "marginAsset": quote,
                          "pricePrecision": 2, "quantityPrecision": 3, "underlyingType": "COIN",
                          "contractStatus": "TRADING", "settlePlan": 0, "triggerProtect":
                          "0.0500", "liquidationFee": "0.012500", "marketTakeBound": "0.05"})
        entries.append(entry)
    return orjson.dumps({"timezone": "UTC", "serverTime": 1723161253937, "rateLimits": [],
                         "exchangeFilters": [], "symbols": entries})


# --- Bybit ----------------------------------------------------------------------------------


@dataclass(slots=True)
class BookTopicState:
    """A subscribed order-book topic on one connection: its sequence and last top."""

    update_id: int = 0
    snapshot_due: bool = True
    top: tuple[bytes, bytes, bytes, bytes] | None = None


@dataclass(slots=True)
class BybitConnectionState:
    connection_id: str
    topics: dict[str, BookTopicState] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BybitEvent:
    """One tape entry: a verbatim Bybit frame, or a Binance event to re-encode."""

    kind: str  # "frame" | "quote" | "trade"
    topic: str
    payload: Any
    ts_ms: int


def bybit_events_from_binance(frames: Iterable[TapeFrame], symbol: str = "BTCUSDT",
                              depth: int = 1) -> list[BybitEvent]:
    """Binance bookTicker/trade frames as Bybit topic events (re-encoded per connection)."""
    events = []
    for frame in frames:
        kind = frame.stream.partition("@")[2]
        ts_ms = frame.local_ts_ns // 1_000_000
        if kind == "bookTicker":
            data = orjson.loads(frame.raw)
            top = (data["b"].encode(), data["B"].encode(), data["a"].encode(), data["A"].encode())
            events.append(BybitEvent("quote", f"orderbook.{depth}.{symbol}", top, ts_ms))
        elif kind == "trade":
            data = orjson.loads(frame.raw)
            events.append(BybitEvent("trade", f"publicTrade.{symbol}", data, ts_ms))
    return events


def bybit_events_from_frames(lines: Iterable[bytes]) -> list[BybitEvent]:
    """Recorded Bybit messages, sent verbatim to subscribers of their topic."""
    events = []
    for line in lines:
        message = orjson.loads(line)
        events.append(BybitEvent("frame", message["topic"], line, int(message.get("ts", 0))))
    return events


@dataclass(frozen=True, slots=True)
class DepthView:
    """A `depth` event's payload: the levels that changed in the top-`depth` view (size
    "0": the level left the view) and the whole view after the change, best first."""

    bids: list[list[bytes]]
    asks: list[list[bytes]]
    view_bids: list[list[bytes]]
    view_asks: list[list[bytes]]

    def top(self) -> tuple[float, float, float, float]:
        """(bid, bid size, ask, ask size) of the view: what a correct book shows."""
        (bid, bid_qty), (ask, ask_qty) = self.view_bids[0], self.view_asks[0]
        return float(bid), float(bid_qty), float(ask), float(ask_qty)


def bybit_depth_events_from_binance(frames: Iterable[TapeFrame], snapshot: bytes,
                                    symbol: str = "BTCUSDT",
                                    depth: int = 50) -> list[BybitEvent]:
    """Real Binance depth diffs bridged onto their REST snapshot, seen as Bybit's
    `orderbook.<depth>` does: per diff, the changes inside the top-`depth` view (levels
    entering or leaving it included) and the view itself (what a fresh snapshot sends)."""
    book = orjson.loads(snapshot)
    last_id = book["lastUpdateId"]
    sides = {"b": {p: q for p, q in book["bids"]}, "a": {p: q for p, q in book["asks"]}}
    topic = f"orderbook.{depth}.{symbol}"
    events = []
    views = {key: _depth_view(side, key == "b", depth) for key, side in sides.items()}
    bridged = False
    for frame in frames:
        if not frame.stream.endswith("@depth@100ms"):
            continue
        diff = orjson.loads(frame.raw)
        if diff["u"] <= last_id or not (bridged or diff["U"] <= last_id + 1):
            continue
        bridged = True
        changes = {}
        for key, side in sides.items():
            for price, size in diff[key]:
                if float(size) == 0.0:
                    side.pop(price, None)
                else:
                    side[price] = size
            view = _depth_view(side, key == "b", depth)
            before = dict(views[key])
            after = dict(view)
            changes[key] = ([[p.encode(), q.encode()] for p, q in view if before.get(p) != q]
                            + [[p.encode(), b"0"] for p in before if p not in after])
            views[key] = view
        events.append(BybitEvent("depth", topic, DepthView(
            changes["b"], changes["a"],
            [[p.encode(), q.encode()] for p, q in views["b"]],
            [[p.encode(), q.encode()] for p, q in views["a"]]), diff["E"]))
    return events


def _depth_view(side: dict[str, str], bids: bool, depth: int) -> list[tuple[str, str]]:
    prices = sorted(side, key=float, reverse=bids)[:depth]
    return [(price, side[price]) for price in prices]


#: How long the cursor waits after a "cross" fault for the client's resubscribe: below
#: the 5 s silence/stale timers of the adapter tests, so only a resync caused by the
#: crossed delta itself comes in time.
CROSS_HOLD_S = 3.0


class BybitServer(_ReplayServer):
    """Bybit v5 public stream server (spot or linear: the protocol is the same)."""

    def __init__(self, events: list[BybitEvent], *, reject_topics: Iterable[str] = (),
                 delta_first: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events = events
        self.reject_topics = set(reject_topics)
        #: The first subscription of each order-book topic starts with a delta (a fault).
        self.delta_first = delta_first
        self.subscribe_counts: Counter[str] = Counter()
        self.pings = 0
        self._ids = itertools.count(1)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v5/public/spot"

    def tape_length(self) -> int:
        return len(self.events)

    def open_state(self, connection: ServerConnection) -> BybitConnectionState:
        return BybitConnectionState(f"test-{next(self._ids)}")

    def subscribed(self, state: BybitConnectionState) -> bool:
        return bool(state.topics)

    def frames_at(self, index: int, state: BybitConnectionState) -> Iterator[bytes]:
        event = self.events[index]
        topic = state.topics.get(event.topic)
        if topic is None:
            return
        if event.kind == "frame":
            yield event.payload
        elif event.kind == "trade":
            yield _bybit_trade(event)
        elif event.kind == "depth":
            yield _bybit_depth(event, topic)
        else:
            yield from _bybit_book(event, topic)

    async def _apply(self, fault: Fault) -> None:
        if fault.kind != "cross":
            await super()._apply(fault)
            return
        crossed: list[str] = []
        for connection in list(self.connections):
            state = self.states.get(connection)
            if state is None:
                continue
            for name, topic in state.topics.items():
                if not name.startswith("orderbook.") or topic.snapshot_due:
                    continue
                topic.update_id += 1  # in sequence: only the content is wrong
                crossed.append(name)
                with contextlib.suppress(Exception):
                    await connection.send(_book_message(
                        name, "delta", 0, [[b"10000000", b"1"]], [], topic.update_id))
        await self._await_resubscribe(crossed)

    async def _await_resubscribe(self, topics: list[str]) -> None:
        """Hold the cursor until every crossed topic is subscribed again (at most
        CROSS_HOLD_S). The client's reaction is then measured in tape frames, not in how
        fast a loaded CPU runs its event loop: without the hold, a starved loop let the
        broadcaster catch up on its schedule by sending dozens of frames (seconds of
        feed time) before the client had read the crossed delta. A client that never
        resubscribes gets the rest of the tape after the hold, as before."""
        before = {name: self.subscribe_counts[name] for name in topics}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CROSS_HOLD_S
        while any(self.subscribe_counts[name] == count for name, count in before.items()):
            if loop.time() > deadline:
                return
            await asyncio.sleep(0.005)

    async def on_request(self, connection: ServerConnection, state: BybitConnectionState,
                         request: dict[str, Any]) -> None:
        op = request.get("op")
        request_id = request.get("req_id", "")
        if op == "ping":
            self.pings += 1
            reply: dict[str, Any] = {"success": True, "ret_msg": "pong",
                                     "conn_id": state.connection_id, "req_id": request_id,
                                     "op": "ping"}
        elif op in ("subscribe", "unsubscribe"):
            args = request.get("args") or []
            refused = [t for t in args if t in self.reject_topics]
            if refused:
                reply = {"success": False,
                         "ret_msg": f"error:handler not found,topic:{refused[0]}",
                         "conn_id": state.connection_id, "req_id": request_id, "op": op}
            else:
                for topic in args:
                    if op == "subscribe":
                        self.subscribe_counts[topic] += 1
                        first = self.subscribe_counts[topic] == 1
                        state.topics[topic] = BookTopicState(
                            snapshot_due=not (self.delta_first and first), update_id=100)
                    else:
                        state.topics.pop(topic, None)
                reply = {"success": True, "ret_msg": "", "conn_id": state.connection_id,
                         "req_id": request_id, "op": op}
        else:
            reply = {"success": False, "ret_msg": f"error:invalid op {op}",
                     "conn_id": state.connection_id, "req_id": request_id, "op": op}
        await connection.send(orjson.dumps(reply).decode())


def _bybit_trade(event: BybitEvent) -> bytes:
    data = event.payload
    symbol = event.topic.partition(".")[2]
    return orjson.dumps({
        "topic": event.topic, "type": "snapshot", "ts": event.ts_ms,
        "data": [{"T": data["T"], "s": symbol, "S": "Sell" if data["m"] else "Buy",
                  "v": data["q"], "p": data["p"], "L": "ZeroMinusTick", "i": str(data["t"]),
                  "BT": False}],
    })


def _bybit_book(event: BybitEvent, topic: BookTopicState) -> Iterator[bytes]:
    bid, bid_qty, ask, ask_qty = event.payload
    symbol = event.topic.rsplit(".", 1)[1]
    topic.update_id += 1
    if topic.snapshot_due:
        kind = "snapshot"
        bids, asks = [[bid, bid_qty]], [[ask, ask_qty]]
        topic.snapshot_due = False
    elif topic.top is None:  # the delta-first fault: a delta with no snapshot before it
        kind = "delta"
        bids, asks = [[bid, bid_qty]], [[ask, ask_qty]]
    else:
        kind = "delta"
        old_bid, old_bid_qty, old_ask, old_ask_qty = topic.top
        bids = _level_delta(old_bid, bid, bid_qty, old_bid_qty)
        asks = _level_delta(old_ask, ask, ask_qty, old_ask_qty)
    topic.top = event.payload
    yield (b'{"topic":"' + event.topic.encode() + b'","type":"' + kind.encode()
           + b'","ts":' + str(event.ts_ms).encode() + b',"data":{"s":"' + symbol.encode()
           + b'","b":' + _levels(bids) + b',"a":' + _levels(asks) + b',"u":'
           + str(topic.update_id).encode() + b',"seq":' + str(topic.update_id).encode()
           + b'},"cts":' + str(event.ts_ms).encode() + b"}")


def _bybit_depth(event: BybitEvent, topic: BookTopicState) -> bytes:
    view: DepthView = event.payload
    topic.update_id += 1
    if topic.snapshot_due:
        topic.snapshot_due = False
        return _book_message(event.topic, "snapshot", event.ts_ms, view.view_bids,
                             view.view_asks, topic.update_id)
    return _book_message(event.topic, "delta", event.ts_ms, view.bids, view.asks,
                         topic.update_id)


def _book_message(name: str, kind: str, ts_ms: int, bids: list[list[bytes]],
                  asks: list[list[bytes]], update_id: int) -> bytes:
    symbol = name.rsplit(".", 1)[1]
    return (b'{"topic":"' + name.encode() + b'","type":"' + kind.encode() + b'","ts":'
            + str(ts_ms).encode() + b',"data":{"s":"' + symbol.encode() + b'","b":'
            + _levels(bids) + b',"a":' + _levels(asks) + b',"u":' + str(update_id).encode()
            + b',"seq":' + str(update_id).encode() + b'},"cts":' + str(ts_ms).encode()
            + b"}")


def _level_delta(old_price: bytes, price: bytes, qty: bytes,
                 old_qty: bytes) -> list[list[bytes]]:
    if old_price == price:
        return [] if old_qty == qty else [[price, qty]]
    return [[old_price, b"0"], [price, qty]]


def _levels(levels: list[list[bytes]]) -> bytes:
    return b"[" + b",".join(b'["' + p + b'","' + q + b'"]' for p, q in levels) + b"]"


# --- test helpers ---------------------------------------------------------------------------


async def wait_until(predicate: Any, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate()` every few ms; fail the test with `what` if it stays false."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(adapter: Any) -> Any:
    """Run `adapter.run()` as a task for the block; on exit cancel it and check that it
    ended by that cancel and nothing else (no exception escaped the adapter)."""
    task = asyncio.create_task(adapter.run(), name="adapter-under-test")
    try:
        yield task
    finally:
        if task.done():
            task.result()  # re-raise whatever ended it early
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
