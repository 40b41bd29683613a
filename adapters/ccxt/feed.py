"""Market data from any exchange ccxt.pro supports, normalised to the same Quote/Trade.

For venues with no native adapter (and for binance/bybit with `feed = "ccxt"`). Top of
book comes from `watch_bids_asks` where the exchange has it (one subscription for all
symbols), otherwise from `watch_order_book(symbol, limit)` per symbol; trades from
`watch_trades_for_symbols` or `watch_trades` per symbol.

ccxt.pro owns the socket (and its keepalive); this module owns what happens around it,
through the same `ConnectionSupervisor` as the native adapters: a session builds a
fresh exchange object (markets loaded once, then shared), runs the watch loops, and
on any failure closes the exchange so the supervisor can back off and start over. Each
watch call's result counts as a frame for the silence watchdog.

Trade-offs to know: ccxt's watch_* calls return the latest state when called, so quote
updates that arrive between two calls are conflated (the bus would conflate them for a
slow consumer anyway); trades are not lost (ccxt caches them between calls). ccxt
parses every message into dicts of strings and floats: it costs an order of magnitude
more CPU per update than the native parsers.

Exchanges, URLs and the meaning of ccxt's exceptions come from the ccxt seam
(adapters/ccxt/exchange.py): a venue's `ws_url` / `rest_url` that are not ccxt's own
endpoints redirect all of the exchange's WebSocket / REST traffic there, which is how
tests and proxies point ccxt elsewhere.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from adapters.ccxt.exchange import build_exchange, feed_error
from adapters.common.errors import FeedError, SubscriptionRejected, VenueRefused
from adapters.common.events import FeedListener
from adapters.common.stats import VenueStats
from adapters.common.supervisor import ConnectionSupervisor, Link
from adapters.common.timings import FeedTimings, timings_from_settings
from config.settings import VenueSettings
from daemon.core.clock import NS_PER_MS
from daemon.core.logs import get_logger
from daemon.core.model import Quote, Trade
from daemon.market.bus import Bus

log = get_logger("ccxt_feed")



class CcxtFeed:
    """One venue's market data through ccxt.pro, supervised; `run()` until cancelled."""

    def __init__(
        self,
        venue: str,
        settings: VenueSettings,
        symbols: Sequence[str],
        bus: Bus,
        *,
        timings: FeedTimings | None = None,
        listeners: Iterable[FeedListener] = (),
        stats: VenueStats | None = None,
        exchange_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.venue = venue
        self.settings = settings
        self.symbols = list(symbols)
        self.bus = bus
        self.supervisor = ConnectionSupervisor(venue, bus, symbols,
                                               timings or timings_from_settings(settings),
                                               stats=stats, listeners=listeners)
        self.stats = self.supervisor.stats
        self.ccxt_id = settings.ccxt_id or venue
        self._exchange_factory = exchange_factory or self._default_exchange
        self._markets: Any = None
        self.exchange: Any = None

    async def run(self) -> None:
        """Stream until cancelled; raises only a `FeedError` that cannot be retried."""
        await self.supervisor.run(self)

    # -- Session -----------------------------------------------------------------------------

    async def serve(self, link: Link) -> None:
        exchange = self._exchange_factory()
        self.exchange = exchange
        try:
            await self._load_markets(exchange)
            link.connected(ccxt_id=self.ccxt_id, symbols=self.symbols)
            await _first_failure([self._watch_quotes(exchange), self._watch_trades(exchange)])
        except (FeedError, asyncio.CancelledError):
            raise
        except Exception as error:
            raise feed_error(self.venue, error) from error
        finally:
            self.exchange = None
            await _close_quietly(exchange)

    def _default_exchange(self) -> Any:
        """A keyless exchange, WebSocket and REST following the venue's URLs."""
        try:
            return build_exchange(self.venue, self.settings, keys=False,
                                  ws_url=self.settings.ws_url)
        except ValueError as error:  # a malformed URL setting: reconnecting cannot fix it
            raise VenueRefused(self.venue, str(error)) from None

    async def _load_markets(self, exchange: Any) -> None:
        if self._markets is not None:
            exchange.set_markets(self._markets)
        else:
            await exchange.load_markets()
            self._markets = exchange.markets
        for symbol in self.symbols:
            if symbol not in exchange.markets:
                raise SubscriptionRejected(self.venue, symbol,
                                           f"not a market of ccxt exchange {self.ccxt_id!r}")

    # -- quotes ------------------------------------------------------------------------------

    async def _watch_quotes(self, exchange: Any) -> None:
        if exchange.has.get("watchBidsAsks"):
            await self._watch_bids_asks(exchange)
        else:
            await _first_failure([self._watch_book(exchange, symbol) for symbol in self.symbols])

    async def _watch_bids_asks(self, exchange: Any) -> None:
        stats = self.stats
        while True:
            tickers = await exchange.watch_bids_asks(self.symbols)
            now = time.time_ns()
            stats.last_frame_ns = now
            stats.frames += 1
            for symbol, ticker in tickers.items():
                self._publish_quote(symbol, ticker.get("bid"), ticker.get("bidVolume"),
                                    ticker.get("ask"), ticker.get("askVolume"),
                                    ticker.get("timestamp"), now, 0)

    async def _watch_book(self, exchange: Any, symbol: str) -> None:
        limit = self.settings.book_depth if self.settings.book_depth > 1 else None
        stats = self.stats
        while True:
            book = await exchange.watch_order_book(symbol, limit)
            now = time.time_ns()
            stats.last_frame_ns = now
            stats.frames += 1
            bids, asks = book.get("bids") or (), book.get("asks") or ()
            if not bids or not asks:
                stats.drop("empty_book")
                continue
            self._publish_quote(symbol, bids[0][0], bids[0][1], asks[0][0], asks[0][1],
                                book.get("timestamp"), now, book.get("nonce") or 0)

    def _publish_quote(self, symbol: str, bid: Any, bid_qty: Any, ask: Any, ask_qty: Any,
                       timestamp_ms: Any, local_ts_ns: int, seq: Any) -> None:
        if not (_positive(bid) and _positive(ask) and _size(bid_qty) and _size(ask_qty)):
            self.stats.drop("bad_value")
            return
        if bid >= ask:
            self.stats.drop("crossed")
            return
        exchange_ts = int(timestamp_ms) * NS_PER_MS if timestamp_ms else 0
        self.bus.publish_quote(Quote(self.venue, symbol, float(bid), float(bid_qty or 0.0),
                                     float(ask), float(ask_qty or 0.0), exchange_ts,
                                     local_ts_ns, int(seq) if isinstance(seq, int) else 0))

    # -- trades ------------------------------------------------------------------------------

    async def _watch_trades(self, exchange: Any) -> None:
        if exchange.has.get("watchTradesForSymbols") and len(self.symbols) > 1:
            await self._trade_loop(lambda: exchange.watch_trades_for_symbols(self.symbols))
        elif exchange.has.get("watchTrades"):
            await _first_failure([
                self._trade_loop(lambda symbol=symbol: exchange.watch_trades(symbol))
                for symbol in self.symbols])
        else:
            log.warning("no_trade_stream", venue=self.venue, ccxt_id=self.ccxt_id)
            await asyncio.Event().wait()

    async def _trade_loop(self, watch: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        stats = self.stats
        while True:
            trades = await watch()
            now = time.time_ns()
            stats.last_frame_ns = now
            stats.frames += 1
            for trade in trades:
                self._publish_trade(trade, now)

    def _publish_trade(self, trade: dict[str, Any], local_ts_ns: int) -> None:
        price, amount, side = trade.get("price"), trade.get("amount"), trade.get("side")
        if not (_positive(price) and _positive(amount)) or side not in ("buy", "sell"):
            self.stats.drop("bad_value")
            return
        symbol = trade.get("symbol") or ""
        trade_id = str(trade.get("id") or "")
        timestamp = trade.get("timestamp")
        self.bus.publish_trade(Trade(self.venue, symbol, float(price), float(amount), side,
                                     int(timestamp) * NS_PER_MS if timestamp else 0,
                                     local_ts_ns, trade_id))


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and 0.0 < value < math.inf


def _size(value: Any) -> bool:
    """Sizes may be missing (None: the venue does not say) but never negative or NaN."""
    return value is None or (isinstance(value, int | float) and 0.0 <= value < math.inf)


async def _first_failure(coroutines: list[Coroutine[Any, Any, Any]]) -> None:
    """Run the loops together until one fails (or all end); cancel the rest."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    if not tasks:
        return
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


async def _close_quietly(exchange: Any) -> None:
    try:
        await exchange.close()
    except Exception as error:  # closing a broken client must not hide the real error
        log.debug("ccxt_close_failed", error=str(error))
