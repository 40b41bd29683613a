"""Operations endpoints: Prometheus `/metrics` and `/healthz` on one port (default 127.0.0.1:9108).

The hot path never calls prometheus_client. Components keep plain counters they already
need (the bus's publish/conflation counts, each venue's `adapters.common.stats.VenueStats`, the
`TradingStats` below); custom collectors read them when Prometheus scrapes. The HTTP server
runs on the daemon's own event loop, so a scrape reads those counters between two events,
never while one is half-applied, and no lock is needed.

`/healthz` answers 200 or 503 with a JSON body saying why (see daemon/ops/health.py).

`start_operations(app)` starts this server and, when enabled, the `/book` data socket for
the long-running modes; `_supervise` in daemon/run.py closes them when the mode ends.
They read the process through `Observed` (what `daemon.app.App` offers), not the App itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, ClassVar, Protocol
from urllib.parse import urlsplit

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from config.settings import ConfigError
from daemon.core.clock import now_ns
from daemon.core.logs import get_logger
from daemon.core.model import (
    BalanceSnapshot,
    Decision,
    Fill,
    OrderAck,
    OrderIntent,
    Side,
    split_symbol,
)
from daemon.core.records import Record, RecordSink
from daemon.core.vocabulary import OrderAlert
from daemon.market.bus import Bus
from daemon.market.view import ConsolidatedView
from daemon.ops.health import Health, HealthReport

if TYPE_CHECKING:
    import argparse

    from config.settings import Settings
    from daemon.ops.booksocket import BookSocketServer
    from daemon.postmortem.writer import DecisionLogWriter

log = get_logger("metrics")

#: Modes that run until stopped and so get the endpoints. Backtest, calibrate and
#: post-mortem are batch jobs: binding 9108 there would only collide with a running daemon.
SERVED_MODES = frozenset({"watch", "record", "action", "archive"})

#: Tick-to-decision latency buckets, seconds: 50 µs to 1 s.
LATENCY_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                     0.05, 0.1, 0.25, 0.5, 1.0)


class Observed(Protocol):
    """What the operations endpoints read of the running process (`daemon.app.App`)."""

    settings: Settings
    args: argparse.Namespace
    bus: Bus
    health: Health
    trading: TradingStats
    #: The strategy modes' decision log; None in watch and record, or before it opens.
    decision_log: DecisionLogWriter | None

    @property
    def replaying(self) -> bool: ...


# -- trading counters (kept by the action layer's record path, read at scrape time) --------


class TradingStats:
    """Decisions, orders, fills and P&L, counted from the records the runner already writes.

    Wire it in front of the post-mortem sink and tell it when each market event arrives:

        runner = StrategyRunner(strategy, executor, app.trading.tee(sink), ...)
        app.trading.tick(quote.local_ts_ns)   # just before runner.on_quote(quote)

    Each call is a few dict/int operations: no prometheus call, no I/O.

    P&L is trading P&L since start, per (strategy, venue, symbol), in the quote currency:
    the cash flow of our fills (fees in the quote or base asset included) plus the position
    they built marked to the current mid. Starting balances are not P&L.
    """

    def __init__(self) -> None:
        self.decisions: Counter[tuple[str, str]] = Counter()  # (strategy, action)
        self.orders: Counter[tuple[str, str, str]] = Counter()  # (strategy, venue, type)
        self.acks: Counter[tuple[str, str]] = Counter()  # (venue, status)
        #: Acks an operator must hear of (OrderAlert): (venue, kind)
        self.order_alerts: Counter[tuple[str, str]] = Counter()
        self.fills: Counter[tuple[str, str, str]] = Counter()  # (strategy, venue, liquidity)
        self.fill_notional: Counter[tuple[str, str]] = Counter()  # (strategy, venue)
        #: (strategy, venue, symbol) -> [position in base, cash in quote, last fill price]
        self.books: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        #: Fees paid in neither leg's asset (e.g. BNB), by asset: not in P&L, shown apart.
        self.other_fees: Counter[str] = Counter()
        self.latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)  # the last one is +Inf
        self.latency_sum_s = 0.0
        #: Live, latency counts from the event's receipt (its wait in the bus included). A
        #: replay's receive times are the recording's, so there it counts from `tick()`.
        self.from_receipt = True
        self._tick_ns = 0

    def tick(self, local_ts_ns: int) -> None:
        """A market event (received at `local_ts_ns`) is about to reach the strategy."""
        self._tick_ns = local_ts_ns if self.from_receipt else now_ns()

    def tee(self, sink: RecordSink) -> RecordSink:
        """A sink that counts each record, then passes it on to `sink`."""
        return _TeeSink(self, sink)

    def record(self, record: Record) -> None:
        if isinstance(record, Decision):
            self.decisions[(record.strategy, record.action)] += 1
            if self._tick_ns:
                # First decision after a tick: how long from the wire to the decision.
                self._observe_latency((now_ns() - self._tick_ns) / 1e9)
                self._tick_ns = 0
        elif isinstance(record, OrderIntent):
            self.orders[(record.strategy, record.venue, str(record.type))] += 1
        elif isinstance(record, OrderAck):
            self.acks[(record.venue, str(record.status))] += 1
            alert = OrderAlert.of(record.reason) if record.reason else None
            if alert is not None:
                self.order_alerts[(record.venue, alert.name.lower())] += 1
        elif isinstance(record, Fill):
            self._on_fill(record)
        elif not isinstance(record, BalanceSnapshot):
            log.debug("uncounted_record", kind=type(record).__name__)

    def pnl(self, view: ConsolidatedView) -> Iterator[tuple[tuple[str, str, str], float, float]]:
        """((strategy, venue, symbol), position, P&L marked to the view's mid) per book."""
        for key, (position, cash, last_price) in self.books.items():
            quote = view.quote(key[1], key[2])
            mark = quote.mid if quote is not None and not quote.crossed else last_price
            yield key, position, cash + position * mark

    def _on_fill(self, fill: Fill) -> None:
        strategy = fill.strategy
        self.fills[(strategy, fill.venue, fill.liquidity)] += 1
        self.fill_notional[(strategy, fill.venue)] += fill.notional
        book = self.books[(strategy, fill.venue, fill.symbol)]
        sign = 1.0 if fill.side == Side.BUY else -1.0
        book[0] += sign * fill.qty
        book[1] -= sign * fill.notional
        book[2] = fill.price
        base, quote_asset = split_symbol(fill.symbol)
        if fill.fee_asset == quote_asset:
            book[1] -= fill.fee
        elif fill.fee_asset == base:
            book[0] -= fill.fee
        elif fill.fee:
            self.other_fees[fill.fee_asset] += fill.fee

    def _observe_latency(self, seconds: float) -> None:
        self.latency_counts[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.latency_sum_s += seconds


class _TeeSink:
    __slots__ = ("_sink", "_stats")

    def __init__(self, stats: TradingStats, sink: RecordSink) -> None:
        self._stats = stats
        self._sink = sink

    def record(self, record: Record) -> None:
        self._stats.record(record)
        self._sink.record(record)


# -- collectors: read the components' counters when Prometheus scrapes ---------------------


class BusCollector(Collector):
    """The bus's publish, delivery, conflation and stale-mark counts."""

    _HELP: ClassVar[dict[str, str]] = {
        "published_quotes": "Quotes published to the bus.",
        "published_trades": "Trades published to the bus.",
        "delivered": "Events handed to subscribers.",
        "conflated": "Quotes overwritten by a newer one before a subscriber read them.",
        "trades_dropped": "Trades dropped from a full subscriber queue.",
        "stale_marks": "Quotes flagged stale by a feed watchdog.",
    }

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    def collect(self) -> Iterator[Metric]:
        for name, value in self._bus.counters().items():
            yield CounterMetricFamily(f"cryptopipe_bus_{name}", self._HELP.get(name, name),
                                      value=value)


class FeedCollector(Collector):
    """Per (venue, symbol): age of the latest quote and its stale flag; overall health."""

    def __init__(self, view: ConsolidatedView, health: Callable[[], HealthReport],
                 clock: Callable[[], int]) -> None:
        self._view = view
        self._health = health
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        age = GaugeMetricFamily("cryptopipe_quote_age_seconds",
                                "Age of the latest quote (feed clock in a replay).",
                                labels=["venue", "symbol"])
        stale = GaugeMetricFamily("cryptopipe_quote_stale",
                                  "1 when the latest quote is flagged stale.",
                                  labels=["venue", "symbol"])
        now = self._clock()
        for quote in self._view.all_quotes():
            labels = [quote.exchange, quote.symbol]
            age.add_metric(labels, max(0.0, (now - quote.local_ts_ns) / 1e9))
            stale.add_metric(labels, 1.0 if quote.stale else 0.0)
        report = self._health()
        yield age
        yield stale
        yield GaugeMetricFamily("cryptopipe_healthy", "1 when /healthz answers 200.",
                                value=1.0 if report.healthy else 0.0)
        yield GaugeMetricFamily("cryptopipe_kill_switch", "1 when the kill switch is on.",
                                value=0.0 if report.kill_switch is None else 1.0)
        yield GaugeMetricFamily("cryptopipe_degraded",
                                "1 while /healthz reports something degraded (e.g. a "
                                "strategy halted until its cooldown ends).",
                                value=1.0 if report.degraded else 0.0)


class VenueStatsCollector(Collector):
    """Each venue adapter's counters (adapters/common/stats.py), when the adapters are present."""

    _COUNTERS: ClassVar[dict[str, str]] = {
        "frames": "Frames received from the venue.",
        "connects": "Successful connections.",
        "reconnects": "Reconnection attempts.",
        "disconnects": "Connections lost.",
        "silences": "Connections dropped by the silence watchdog.",
        "stale_events": "Quotes flagged stale by the quote-age watchdog.",
        "resyncs": "Book resynchronisations.",
    }

    def __init__(self, source: Callable[[], Mapping[str, object]] | None = None,
                 clock: Callable[[], int] = now_ns) -> None:
        self._source = source or _adapter_stats
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        families = {name: CounterMetricFamily(f"cryptopipe_venue_{name}", text, labels=["venue"])
                    for name, text in self._COUNTERS.items()}
        parse_errors = CounterMetricFamily("cryptopipe_venue_parse_errors",
                                           "Frames dropped as malformed, crossed or out of "
                                           "sequence, by reason.", labels=["venue", "reason"])
        connected = GaugeMetricFamily("cryptopipe_venue_connected",
                                      "1 while a connection to the venue is up.",
                                      labels=["venue"])
        staleness = GaugeMetricFamily("cryptopipe_venue_staleness_seconds",
                                      "Seconds since the venue's last frame.", labels=["venue"])
        now = self._clock()
        for venue, stats in sorted(self._source().items()):
            snapshot = stats.as_dict()  # type: ignore[attr-defined]
            for name, family in families.items():
                family.add_metric([venue], snapshot.get(name, 0))
            for reason, count in sorted(snapshot.get("parse_errors", {}).items()):
                parse_errors.add_metric([venue, reason], count)
            connected.add_metric([venue], 1.0 if snapshot.get("connected") else 0.0)
            last_frame_ns = snapshot.get("last_frame_ns", 0)
            if last_frame_ns:
                staleness.add_metric([venue], max(0.0, (now - last_frame_ns) / 1e9))
        yield from families.values()
        yield from (parse_errors, connected, staleness)


def _adapter_stats() -> Mapping[str, object]:
    try:
        from adapters.common.stats import registry
    except ModuleNotFoundError:  # a build without live adapters: nothing to export
        return {}
    return registry()


class TradingCollector(Collector):
    """Decisions by outcome, orders, acks, fills, positions, P&L and tick-to-decision latency."""

    def __init__(self, stats: TradingStats, view: ConsolidatedView) -> None:
        self._stats = stats
        self._view = view

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        yield _counter("cryptopipe_decisions", "Strategy decisions by action (taken, skipped, "
                       "rejected, kill).", ["strategy", "action"], stats.decisions)
        yield _counter("cryptopipe_orders_submitted", "Orders that passed the risk gate.",
                       ["strategy", "venue", "type"], stats.orders)
        yield _counter("cryptopipe_order_acks", "Executor answers by status.",
                       ["venue", "status"], stats.acks)
        yield _counter("cryptopipe_order_alerts", "Live orders needing an operator: an outcome "
                       "no lookup could tell (held open, not resent) or a cancel the venue "
                       "did not confirm.", ["venue", "kind"], stats.order_alerts)
        yield _counter("cryptopipe_fills", "Fills of our orders.",
                       ["strategy", "venue", "liquidity"], stats.fills)
        yield _counter("cryptopipe_fill_notional", "Filled notional, quote currency.",
                       ["strategy", "venue"], stats.fill_notional)
        yield _counter("cryptopipe_fees_other_asset", "Fees paid in an asset outside the "
                       "traded pair (not in P&L).", ["asset"],
                       {(asset,): fee for asset, fee in stats.other_fees.items()})
        position = GaugeMetricFamily("cryptopipe_position", "Position built by our fills, "
                                     "base units.", labels=["strategy", "venue", "symbol"])
        pnl = GaugeMetricFamily("cryptopipe_pnl", "Trading P&L since start, quote currency, "
                                "marked to mid.", labels=["strategy", "venue", "symbol"])
        for key, base_position, value in stats.pnl(self._view):
            position.add_metric(list(key), base_position)
            pnl.add_metric(list(key), value)
        yield position
        yield pnl
        latency = HistogramMetricFamily("cryptopipe_tick_to_decision_seconds",
                                        "From a market event's receipt to the decision it led "
                                        "to.")
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), stats.latency_counts,
                                strict=True):
            cumulative += count
            buckets.append((_bucket_label(bound), cumulative))
        latency.add_metric([], buckets, stats.latency_sum_s)
        yield latency


def _counter(name: str, text: str, labels: list[str],
             values: Mapping[tuple[str, ...], float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class BookSocketCollector(Collector):
    """The `/book` data socket: clients connected, views sent, quotes conflated for them."""

    def __init__(self, server: BookSocketServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        stats = self._server.stats()
        yield GaugeMetricFamily("cryptopipe_book_socket_clients", "Clients connected now.",
                                value=stats["clients"])
        yield CounterMetricFamily("cryptopipe_book_socket_views_sent",
                                  "Consolidated views sent to clients.", value=stats["sent"])
        yield CounterMetricFamily("cryptopipe_book_socket_conflated",
                                  "Quotes superseded before a client took them.",
                                  value=stats["conflated"])
        yield CounterMetricFamily("cryptopipe_book_socket_refused",
                                  "Clients refused because max_clients were connected.",
                                  value=stats["refused"])


class DecisionLogCollector(Collector):
    """The decision log writer: records durable, queue depth, back-pressure, write errors.

    The app may have no writer (watch, record) or get one after the server starts
    (action): read it at scrape time.
    """

    #: writer counter -> (metric suffix, help, is a counter)
    _FIELDS: ClassVar[dict[str, tuple[str, str, bool]]] = {
        "records": ("records", "Records handed to the decision log.", True),
        "durable_records": ("durable_records", "Records written and fsync'd.", True),
        "queued": ("queued", "Records waiting for the disk now.", False),
        "backpressure_blocks": ("backpressure_blocks",
                                "Times a full queue blocked the producer.", True),
        "backpressure_blocked_s": ("backpressure_blocked_seconds",
                                   "Time producers spent blocked on a full queue.", True),
        "write_errors": ("write_errors", "Failed writes (retried, never dropped).", True),
        "failing": ("failing", "1 while the disk refuses the log's writes (records are held "
                    "in memory and trading is stopped).", False),
    }

    def __init__(self, app: Observed) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        writer = self._app.decision_log
        if writer is None:
            return
        counters = writer.counters()
        for key, (suffix, help_text, is_counter) in self._FIELDS.items():
            family = CounterMetricFamily if is_counter else GaugeMetricFamily
            yield family(f"cryptopipe_decision_log_{suffix}", help_text, value=counters[key])


class BridgeCollector(Collector):
    """The NATS bridge's parts (daemon/bridge): heartbeats, kill requests, decision-log
    shipping and archiving, as `cryptopipe_nats_<counter>`. Read at scrape time: the
    parts start after the server (the bridge joins after it, the shipper with the log)."""

    #: Counters that go down as well as up.
    _GAUGES: ClassVar[frozenset[str]] = frozenset({"dlog_ship_backlog_bytes"})

    def __init__(self, app: Observed) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        bridge = getattr(self._app, "bridge", None)
        counters = bridge.counters() if bridge is not None else {}
        for name, value in sorted(counters.items()):
            family = GaugeMetricFamily if name in self._GAUGES else CounterMetricFamily
            yield family(f"cryptopipe_nats_{name}", f"NATS bridge: {name}.", value=value)


def build_registry(app: Observed, book_socket: BookSocketServer | None = None) -> CollectorRegistry:
    """A registry of its own per app (not the global one), so tests can run several."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    registry.register(BusCollector(app.bus))
    registry.register(FeedCollector(app.bus.view, lambda: health_report(app), _feed_clock(app)))
    registry.register(VenueStatsCollector())
    registry.register(TradingCollector(app.trading, app.bus.view))
    registry.register(DecisionLogCollector(app))
    registry.register(BridgeCollector(app))
    if book_socket is not None:
        registry.register(BookSocketCollector(book_socket))
    return registry


def health_report(app: Observed) -> HealthReport:
    return app.health.evaluate(app.bus.view, replaying=app.replaying)


def _feed_clock(app: Observed) -> Callable[[], int]:
    def clock() -> int:
        if app.replaying:
            return max((q.local_ts_ns for q in app.bus.view.all_quotes()), default=0)
        return now_ns()

    return clock


# -- the HTTP server ---------------------------------------------------------------------


class OperationsServer:
    """A tiny HTTP/1.1 server for `/metrics` and `/healthz` on the daemon's event loop.

    One request per connection, GET or HEAD only, requests capped in size and time: it
    serves a Prometheus scraper and a health probe, nothing else.
    """

    REQUEST_TIMEOUT_S = 5.0
    MAX_REQUEST_BYTES = 16 * 1024

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 health: Callable[[], HealthReport]) -> None:
        self.host = host
        self.requested_port = port
        self.registry = registry
        self._health = health
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        if self._server is None or not self._server.sockets:
            return self.requested_port
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.requested_port, limit=self.MAX_REQUEST_BYTES
            )
        except OSError as exc:  # port taken, bad host: an operator's fix, not a crash
            raise ConfigError(f"invalid setting metrics: cannot listen on "
                              f"{self.host}:{self.requested_port}: {exc.strerror}") from None
        log.info("metrics_listening", url=f"http://{self.host}:{self.port}/metrics",
                 health=f"http://{self.host}:{self.port}/healthz")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.REQUEST_TIMEOUT_S):  # wait_for can swallow a cancel
                head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, ConnectionError):
            writer.close()
            return
        status, content_type, body = self._respond(method, urlsplit(target).path)
        writer.write(
            f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
        )
        if method != "HEAD":
            writer.write(body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _respond(self, method: str, path: str) -> tuple[HTTPStatus, str, bytes]:
        if method not in ("GET", "HEAD"):
            return HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"GET only\n"
        if path == "/metrics":
            return HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            report = self._health()
            status = HTTPStatus.OK if report.healthy else HTTPStatus.SERVICE_UNAVAILABLE
            return status, "application/json", orjson.dumps(report.to_dict()) + b"\n"
        if path == "/":
            return HTTPStatus.OK, "text/plain", b"cryptopipe: /metrics /healthz\n"
        return HTTPStatus.NOT_FOUND, "text/plain", b"not found\n"


class Operations:
    """The endpoints one run started; `aclose()` stops them, the book socket last."""

    def __init__(self) -> None:
        self.metrics: OperationsServer | None = None
        self.book_socket: BookSocketServer | None = None

    async def aclose(self) -> None:
        if self.metrics is not None:
            await self.metrics.close()
        if self.book_socket is not None:
            await self.book_socket.close()


async def start_operations(app: Observed) -> Operations:
    """Start the metrics/health server and the `/book` socket as settings ask.

    Nothing starts in batch modes (see `SERVED_MODES`).
    """
    operations = Operations()
    if getattr(app.args, "mode", None) not in SERVED_MODES:
        return operations
    settings = app.settings
    try:
        if settings.book_socket.enabled:
            from daemon.ops.booksocket import BookSocketServer

            operations.book_socket = BookSocketServer(app.bus, settings.book_socket)
            await operations.book_socket.start()
        if settings.metrics.enabled:
            app.health.require_configured_feeds(settings)
            app.trading.from_receipt = not app.replaying
            server = OperationsServer(settings.metrics.host, settings.metrics.port,
                                      build_registry(app, operations.book_socket),
                                      lambda: health_report(app))
            try:
                await server.start()
            except ConfigError as exc:
                if app.args.mode != "watch":
                    raise
                # A second viewer next to a running daemon: the view matters, not the port.
                log.warning("metrics_disabled", reason=str(exc))
            else:
                operations.metrics = server
    except BaseException:  # e.g. the port is taken: stop what did start, then report
        await operations.aclose()
        raise
    return operations
