"""Live executor: real orders through ccxt (async), behind the same contract as paper.

Refusal first: `LiveExecutor` will not even build without an explicit opt-in (`--live`
or `execution.mode = "live"`) and keys for every venue; `LiveTradingRefused` says what
is missing in one line.

Idempotent submission. Every order carries our deterministic client order id (ccxt's
unified `clientOrderId`: Binance `newClientOrderId`, Bybit `orderLinkId`). When a submit
fails with an ambiguous error (timeout, dropped connection, 5xx: the order may or may not
exist) the executor looks the id up on the venue and, if the venue answers that it is
not there, retries with the SAME id; a "duplicate order" answer means the first attempt
got through, so the order is fetched and treated as accepted. Looking up before retrying
matters on Binance, whose duplicate check only covers *open* orders: an immediately
filled first attempt would not block a blind retry. A lookup that fails (timeout, 5xx) is
no answer: it is asked again with backoff and the order is UNKNOWN meanwhile (open at
full size for the risk gate, in flight for the strategy). Past
`execution.unknown_order_timeout_s` without an answer the order is flagged (error log,
`unknown_orders_flagged`, an UNKNOWN ack in the decision log) and never sent again; the
poller (or the order stream) resolves it when the venue answers. Rate limits back off;
invalid orders and insufficient funds are never retried (see daemon/trading/errors.py).

Cancel-all (the stop of `--mode action` and the kill switch) cancels every open order of
ours, in flight and unknown ones included, and re-sends cancels until the venue confirmed
each or `execution.shutdown_cancel_timeout_s` passed; `close()` waits for it first. What
is left is reported by client order id (error log, `cancels_unconfirmed`, an ack whose
reason starts "cancel not confirmed").

Order updates come from ccxt.pro `watch_orders` when the venue has it; polling
(`fetch_open_orders` per symbol, then `fetch_order` for our orders that left the open
list) always runs too: fast while the websocket is down or absent, slowly otherwise, to
catch updates lost across reconnects. Fills are derived from the growth of each order's
filled quantity and cost; the fee is the venue's when it reports one, else estimated
from the venue's fee setting (maker for fills after the order rested, taker for fills in
the submit response).

Start-up reconciliation (`start`): open orders whose client id carries our `cp` tag (this
or an earlier run) are cancelled or adopted per `ExecutionSettings.reconcile`; other
orders are counted and left alone.

Rate limits: ccxt's own throttle (`enableRateLimit`) for request weight, plus one order
token bucket per venue account shared by every task and executor in the process.

Exchanges come from the ccxt seam (adapters/ccxt/exchange.py): `VenueSettings.rest_url`
takes over ccxt's REST endpoints when it names a host ccxt does not already use (a local
fake or a proxy); the default `https://api.binance.com` changes nothing. WebSocket order
streams stay on ccxt's own endpoints.

Credentials go to ccxt and nowhere else: they are scrubbed from every message we log or
raise (ccxt's own log records included), and no repr of ours contains them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from adapters.ccxt.exchange import build_exchange, classify, wrap_error
from adapters.common.errors import VenueRefused
from config.settings import ExecutionSettings, Settings, VenueSettings
from daemon.core.clock import now_ns
from daemon.core.logs import get_logger
from daemon.core.model import (
    Fill,
    OrderAck,
    OrderIntent,
    OrderType,
    Quote,
    Side,
    Trade,
    split_symbol,
)
from daemon.core.tasks import spawn
from daemon.core.vocabulary import OrderAlert, OrderStatus
from daemon.trading.errors import (
    ErrorKind,
    ExecutionError,
    LiveTradingRefused,
    Redactor,
    backoff_s,
)
from daemon.trading.events import ExecutionEvents
from daemon.trading.order_ids import ClientOrderIds, is_ours, run_prefix, strategy_of
from daemon.trading.paper import MarketRules
from daemon.trading.ratelimit import AsyncTokenBucket, order_bucket

log = get_logger("live")

T = TypeVar("T")

_CCXT_STATUS = {
    "open": OrderStatus.NEW,
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELED,
    "cancelled": OrderStatus.CANCELED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}


def require_live_opt_in(execution: ExecutionSettings, venues: Mapping[str, VenueSettings],
                        live_flag: bool = False) -> None:
    """Raise `LiveTradingRefused` unless live trading was asked for and is possible."""
    if not (live_flag or execution.mode == "live"):
        raise LiveTradingRefused(
            'live trading refused: pass --live or set execution.mode = "live" '
            "(without that the daemon trades on paper)")
    if not venues:
        raise LiveTradingRefused("live trading refused: no venue is enabled")
    keyless = sorted(venue_id for venue_id, venue in venues.items() if not venue.has_keys)
    if keyless:
        raise LiveTradingRefused(
            f"live trading refused: no api_key/api_secret for {', '.join(keyless)}")


#: ccxt options of a trading account: fewer, lighter start-up calls (no margin or currency
#: endpoints, which also need extra permissions on some venues), and no warning for the
#: all-symbols open-orders fetch that reconciliation makes on purpose.
_TRADING_OPTIONS = {
    "fetchMargins": False,
    "fetchCurrencies": False,
    "warnOnFetchOpenOrdersWithoutSymbol": False,
}


def _trading_exchange(venue_id: str, venue: VenueSettings, *, websocket: bool = True,
                     overrides: Mapping[str, Any] | None = None) -> Any:
    """The keyed ccxt exchange of one venue for orders (see adapters/ccxt/exchange.py)."""
    overrides = dict(overrides or {})
    overrides["options"] = {**_TRADING_OPTIONS, **overrides.get("options", {})}
    try:
        return build_exchange(venue_id, venue, websocket=websocket, overrides=overrides)
    except VenueRefused:
        ccxt_id = venue.ccxt_id or venue_id
        raise LiveTradingRefused(
            f"live trading refused: ccxt has no exchange {ccxt_id!r}") from None


@dataclass(slots=True)
class _LiveOrder:
    intent: OrderIntent
    exchange_order_id: str = ""
    status: OrderStatus | None = None  # None: not (yet) known to be on the venue
    filled: float = 0.0
    cost: float = 0.0
    fee_paid: float = 0.0
    rested: bool = False  # seen open after its submit response: later fills are maker
    submit_task: asyncio.Task[None] | None = None
    cancel_task: asyncio.Task[None] | None = None

    @property
    def client_order_id(self) -> str:
        return self.intent.client_order_id

    @property
    def is_open(self) -> bool:
        """In flight, unknown or on the book: it may still fill."""
        return self.status is None or not self.status.is_terminal

    @property
    def unknown(self) -> bool:
        return self.status is OrderStatus.UNKNOWN


class _OutcomeUnknown(Exception):
    """The venue did not answer a lookup of the order within `unknown_order_timeout_s`."""


class LiveExecutor(ExecutionEvents):
    """Orders on real venues via ccxt; see the module docstring for the guarantees."""

    def __init__(
        self,
        venues: Mapping[str, VenueSettings],
        execution: ExecutionSettings,
        prefix: str,
        *,
        live: bool = False,
        ccxt_overrides: Mapping[str, Any] | None = None,
        websocket: bool = True,
        orders_per_s: float | None = None,
        poll_interval_s: float = 1.0,
        max_submit_attempts: int = 5,
    ) -> None:
        require_live_opt_in(execution, venues, live)
        super().__init__()
        self._venues = dict(venues)
        self._execution = execution
        self._ids = ClientOrderIds(prefix)
        self._redact = Redactor()
        for venue in venues.values():
            self._redact.add(venue.api_key.get_secret_value() if venue.api_key else None,
                             venue.api_secret.get_secret_value() if venue.api_secret else None)
        self._exchanges: dict[str, Any] = {
            venue_id: _trading_exchange(venue_id, venue, websocket=websocket,
                                        overrides=ccxt_overrides)
            for venue_id, venue in venues.items()
        }
        # Each venue's `max_orders_per_s` unless the caller (a test) sets one rate for all.
        self._buckets: dict[str, AsyncTokenBucket] = {
            venue_id: order_bucket(venue_id, self._exchanges[venue_id].apiKey,
                                   orders_per_s or venue.max_orders_per_s)
            for venue_id, venue in venues.items()
        }
        self._orders: dict[str, _LiveOrder] = {}
        self._balances: dict[str, dict[str, float]] = {venue_id: {} for venue_id in venues}
        self._websocket_up: dict[str, bool] = dict.fromkeys(venues, False)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[Any]] = []
        self._poll_interval_s = poll_interval_s
        self._max_attempts = max_submit_attempts
        #: What start-up reconciliation did, per venue: canceled / adopted ids, foreign count.
        self.reconciled: dict[str, dict[str, Any]] = {}
        #: Orders flagged UNKNOWN: no lookup answered within `unknown_order_timeout_s`
        #: (for /metrics and the operator; each is also an UNKNOWN ack in the decision log).
        self.unknown_orders_flagged = 0
        #: Cancels a cancel-all could not confirm within `shutdown_cancel_timeout_s`.
        self.cancels_unconfirmed = 0
        self._cancel_all_task: asyncio.Task[list[str]] | None = None
        #: Orders a cancel-all must see closed, and when it gives up on them (loop time).
        self._cancelling: dict[str, _LiveOrder] = {}
        self._cancel_deadline = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, run_id: str, live_flag: bool = False,
                      **options: Any) -> LiveExecutor:
        venues = {v: s for v, s in settings.venues.items() if s.enabled}
        require_live_opt_in(settings.execution, venues, live_flag)
        return cls(venues, settings.execution, run_prefix(run_id), live=True, **options)

    def exchange(self, venue: str) -> Any:
        """The ccxt exchange of a venue (for read-only calls such as fetching a ticker)."""
        return self._exchanges[venue]

    def __repr__(self) -> str:
        return f"LiveExecutor(venues={sorted(self._venues)}, prefix={self._ids.prefix!r})"

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, background: bool = True) -> None:
        """Load markets and balances, reconcile open orders, then follow order updates."""
        for venue_id, exchange in self._exchanges.items():
            try:
                await exchange.load_markets()
                await self._refresh_balances(venue_id)
                self.reconciled[venue_id] = await self._reconcile(venue_id)
            except ExecutionError:
                raise
            except Exception as error:
                raise wrap_error(error, self._redact) from None
        if background:
            for venue_id in self._exchanges:
                # Through spawn: if either dies, the orders are no longer followed, so the
                # process hears of it (/healthz, kill switch), not only the log.
                self._background.append(spawn(
                    self._poll_loop(venue_id), name=f"live-poll:{venue_id}"))
                self._background.append(spawn(
                    self._watch_loop(venue_id), name=f"live-watch:{venue_id}"))

    async def close(self) -> None:
        """Stop following orders. A cancel-all in progress (shutdown, kill switch) is let
        finish first, within its own bound: its cancels must reach the venue."""
        await self.wait_cancel_all()
        for task in (*self._background, *self._tasks):
            task.cancel()
        for task in (*self._background, *self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for exchange in self._exchanges.values():
            with contextlib.suppress(Exception):
                await exchange.close()

    async def __aenter__(self) -> LiveExecutor:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def drain(self) -> None:
        """Wait until every submit and cancel in progress has finished (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- Executor contract ----------------------------------------------------------------------

    @property
    def now_ns(self) -> int:
        return now_ns()

    def assign_client_order_id(self, intent: OrderIntent) -> str:
        return self._ids.assign(intent)

    def submit(self, intent: OrderIntent, now_ns: int) -> None:
        client_order_id = self._ids.assign(intent)
        if client_order_id in self._orders or intent.venue not in self._exchanges:
            reason = ("duplicate client order id" if client_order_id in self._orders
                      else f"no live connection to {intent.venue}")
            self._emit_ack(OrderAck(client_order_id, intent.venue, intent.symbol,
                                    OrderStatus.REJECTED, self.now_ns, reason=reason))
            return
        order = _LiveOrder(intent)
        self._orders[client_order_id] = order
        order.submit_task = self._spawn(self._submit(order), f"submit:{client_order_id}")

    def cancel(self, client_order_id: str, now_ns: int) -> None:
        order = self._orders.get(client_order_id)
        if order is None:
            self._emit_ack(OrderAck(client_order_id, "", "", OrderStatus.REJECTED, self.now_ns,
                                    reason="cancel rejected: unknown order"))
            return
        if order.cancel_task is None or order.cancel_task.done():
            order.cancel_task = self._spawn(self._cancel(order), f"cancel:{client_order_id}")

    def cancel_all(self, now_ns: int, venue: str | None = None) -> None:
        """Cancel every open order of ours (in flight and unknown ones too) and follow the
        cancels until the venue confirmed each, within `shutdown_cancel_timeout_s`; the
        ones it did not confirm are reported by client order id (`wait_cancel_all`).
        Orders sent after this call (a flatten on kill) are not its business."""
        for order in self._orders.values():
            if order.is_open and (venue is None or order.intent.venue == venue):
                self._cancelling[order.client_order_id] = order
                self.cancel(order.client_order_id, now_ns)
        loop = asyncio.get_running_loop()
        self._cancel_deadline = loop.time() + self._execution.shutdown_cancel_timeout_s
        if self._cancel_all_task is None or self._cancel_all_task.done():
            self._cancel_all_task = self._spawn(self._confirm_cancel_all(), "cancel-all")

    async def wait_cancel_all(self) -> list[str]:
        """Wait for the cancel-all in progress, if any; the client ids it left unconfirmed."""
        task = self._cancel_all_task
        if task is None:
            return []
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                raise
            return []

    async def _confirm_cancel_all(self) -> list[str]:
        """Re-send cancels until every order a cancel-all named is closed, or the bound."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            pending = [o.cancel_task for o in self._cancelling.values()
                       if o.cancel_task is not None and not o.cancel_task.done()]
            left = self._cancel_deadline - loop.time()
            if pending and left > 0:
                await asyncio.wait(pending, timeout=left)
            for cid in [cid for cid, o in self._cancelling.items() if not o.is_open]:
                del self._cancelling[cid]
            if not self._cancelling:
                log.info("cancel-all confirmed: no order of ours is open")
                return []
            left = self._cancel_deadline - loop.time()
            if left <= 0:
                break
            await asyncio.sleep(min(backoff_s(ErrorKind.AMBIGUOUS, attempt), left))
            attempt += 1
            for order in list(self._cancelling.values()):
                if order.is_open:
                    self.cancel(order.client_order_id, self.now_ns)  # no-op while one runs
        still_open = list(self._cancelling.values())
        self._cancelling.clear()
        unconfirmed = [o.client_order_id for o in still_open]
        self.cancels_unconfirmed += len(unconfirmed)
        timeout_s = self._execution.shutdown_cancel_timeout_s
        log.error("cancel-all not confirmed: these orders may still rest at the venue",
                  client_order_ids=unconfirmed, timeout_s=timeout_s)
        for order in still_open:
            self._ack(order, order.status or OrderStatus.UNKNOWN,
                      f"{OrderAlert.CANCEL_UNCONFIRMED} within {timeout_s:g} s: "
                      "may still rest at the venue")
        return unconfirmed

    def balances(self, venue: str) -> Mapping[str, float]:
        """Total balances as of the last refresh (start, then every poll)."""
        return self._balances.get(venue, {})

    def open_orders(self) -> list[OrderIntent]:
        """Orders that may still fill: resting, in flight, or of unknown outcome."""
        return [replace(o.intent, qty=o.intent.qty - o.filled)
                for o in self._orders.values() if o.is_open]

    def on_quote(self, quote: Quote) -> None:
        """Live orders meet the real market; nothing to simulate."""

    def on_trade(self, trade: Trade) -> None:
        """Live orders meet the real market; nothing to simulate."""

    def advance(self, now_ns: int) -> None:
        """The live executor runs on the wall clock."""

    # --- submit -------------------------------------------------------------------------------

    async def _submit(self, order: _LiveOrder) -> None:
        intent = order.intent
        exchange = self._exchanges[intent.venue]
        await self._buckets[intent.venue].acquire()
        try:
            args = self._order_arguments(exchange, intent)
        except Exception as error:
            self._reject(order, wrap_error(error, self._redact))
            return
        last: ExecutionError | None = None
        for attempt in range(self._max_attempts):
            try:
                raw = await exchange.create_order(*args)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                last = wrap_error(error, self._redact)
                try:
                    if await self._after_submit_error(order, last, exchange, attempt):
                        return
                except _OutcomeUnknown:
                    self._flag_unknown(order, last)
                    return
                continue
            self._apply(order, raw, immediate=True)
            return
        # Every attempt failed and every lookup answered "not there": nothing was created.
        assert last is not None
        self._reject(order, ExecutionError(
            last.kind, f"submit failed after {self._max_attempts} attempts: {last}"))

    async def _after_submit_error(self, order: _LiveOrder, error: ExecutionError,
                                  exchange: Any, attempt: int) -> bool:
        """Handle a failed attempt; True when the submit is settled (no more attempts)."""
        kind = error.kind
        cid = order.client_order_id
        if kind is ErrorKind.DUPLICATE or kind is ErrorKind.AMBIGUOUS:
            log.warning("submit not confirmed; looking the order up by its id",
                        client_order_id=cid, kind=str(kind), error=str(error))
            if await self._resolve(exchange, order):
                return True
        elif kind is ErrorKind.CLOCK:
            with contextlib.suppress(Exception):
                await exchange.load_time_difference()
        elif kind is not ErrorKind.RATE_LIMIT:
            self._reject(order, error)
            return True
        delay = backoff_s(kind, attempt)
        log.info("retrying submit with the same client order id", client_order_id=cid,
                 attempt=attempt + 2, delay_s=round(delay, 3), kind=str(kind))
        await asyncio.sleep(delay)
        return False

    def _order_arguments(self, exchange: Any, intent: OrderIntent) -> tuple[Any, ...]:
        """ccxt create_order arguments; prices rounded to the tick passively, qty down."""
        symbol = intent.symbol
        market = exchange.market(symbol)
        side = Side(intent.side)
        rules = MarketRules(tick=_step(exchange, market, "price"),
                            lot=_step(exchange, market, "amount"))
        amount = rules.round_qty(intent.qty)
        if amount <= 0:
            raise ExecutionError(ErrorKind.REJECTED,
                                 f"qty {intent.qty:g} rounds to 0 at lot {rules.lot:g}")
        params: dict[str, Any] = {"clientOrderId": intent.client_order_id}
        kind = OrderType(intent.type)
        if kind is OrderType.MARKET:
            return symbol, "market", str(side), amount, None, params
        if intent.price is None or not intent.price > 0:
            raise ExecutionError(ErrorKind.REJECTED, f"{kind} order needs a positive price")
        price = rules.round_price(intent.price, side)
        if kind is OrderType.IOC:
            params["timeInForce"] = "IOC"
        elif kind is OrderType.POST_ONLY:
            params["postOnly"] = True
        return symbol, "limit", str(side), amount, price, params

    async def _resolve(self, exchange: Any, order: _LiveOrder) -> bool:
        """After an ambiguous submit: look the order up, with backoff, until the venue
        answers. True when the order is known now (applied: by this lookup or by the order
        stream meanwhile); False when the venue answered that it does not exist (a retry
        with the same id is safe). Raises `_OutcomeUnknown` past `unknown_order_timeout_s`
        without an answer: the order must then never be sent again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._execution.unknown_order_timeout_s
        attempt = 0
        while True:
            try:
                raw = await self._lookup(exchange, order)
            except asyncio.CancelledError:
                raise
            except ExecutionError as error:
                if order.status is None:
                    order.status = OrderStatus.UNKNOWN  # open at full size until resolved
                if not order.unknown:  # the order stream resolved it meanwhile
                    return True
                delay = backoff_s(ErrorKind.AMBIGUOUS, attempt)
                attempt += 1
                if loop.time() + delay > deadline:
                    raise _OutcomeUnknown(str(error)) from None
                log.info("order lookup failed; asking again", delay_s=round(delay, 3),
                         client_order_id=order.client_order_id, error=str(error))
                await asyncio.sleep(delay)
                if not order.unknown:
                    return True
                continue
            if raw is not None:
                self._apply(order, raw, immediate=True)
                return True
            if order.status not in (None, OrderStatus.UNKNOWN):
                return True  # the stream saw it while the lookup said "not yet"
            order.status = None
            return False

    def _flag_unknown(self, order: _LiveOrder, error: ExecutionError | None) -> None:
        """No lookup answered within the bound: keep the order open at full size, say so
        (log, counter, an UNKNOWN ack in the decision log) and leave it to the poller and
        the order stream to resolve. It is never sent again."""
        order.status = OrderStatus.UNKNOWN
        self.unknown_orders_flagged += 1
        waited = self._execution.unknown_order_timeout_s
        log.error("order outcome unknown: not resent, held open at full size until the venue "
                  "answers", client_order_id=order.client_order_id, waited_s=waited,
                  error=str(error))
        self._ack(order, OrderStatus.UNKNOWN,
                  f"{OrderAlert.UNKNOWN_OUTCOME}: no lookup answered within {waited:g} s; "
                  f"not resent, held open until the venue answers ({error})")

    async def _lookup(self, exchange: Any, order: _LiveOrder) -> dict[str, Any] | None:
        """The venue's view of one of our orders by client id; None when the venue says it
        does not exist. A lookup that fails (timeout, 5xx) raises `ExecutionError`: that
        says nothing about the order, and must never be read as "not there"."""
        symbol = order.intent.symbol
        try:
            raw: dict[str, Any] = await exchange.fetch_order(
                None, symbol, {"clientOrderId": order.client_order_id})
            return raw
        except asyncio.CancelledError:
            raise
        except Exception as error:
            kind = classify(error)
            if kind is ErrorKind.NOT_FOUND:
                return None
            if kind is not ErrorKind.REJECTED:  # lookup itself failed: unknown, not absent
                log.warning("order lookup failed", client_order_id=order.client_order_id,
                            error=self._redact(error))
                raise wrap_error(error, self._redact) from None
        # Venues without lookup by client id: search the open orders.
        try:
            listed = await exchange.fetch_open_orders(symbol)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise wrap_error(error, self._redact) from None
        for raw in listed:
            if raw.get("clientOrderId") == order.client_order_id:
                return dict(raw)
        return None

    # --- cancel -------------------------------------------------------------------------------

    async def _cancel(self, order: _LiveOrder) -> None:
        if order.submit_task is not None and not order.submit_task.done():
            # Never overtake the submit: cancel what it created once we know its id.
            with contextlib.suppress(Exception):
                await asyncio.shield(order.submit_task)
        if not order.is_open:
            self._ack(order, order.status or OrderStatus.REJECTED,
                      f"cancel rejected: order already {order.status}")
            return
        exchange = self._exchanges[order.intent.venue]
        params = {} if order.exchange_order_id else {"clientOrderId": order.client_order_id}
        for attempt in range(self._max_attempts):
            try:
                raw = await exchange.cancel_order(order.exchange_order_id or None,
                                                  order.intent.symbol, params)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                wrapped = wrap_error(error, self._redact)
                if wrapped.should_retry:
                    await asyncio.sleep(backoff_s(wrapped.kind, attempt))
                    continue
                await self._cancel_failed(order, wrapped)
                return
            self._apply(order, raw)
            return
        log.error("cancel not confirmed", client_order_id=order.client_order_id)

    async def _cancel_failed(self, order: _LiveOrder, error: ExecutionError) -> None:
        """The venue refused the cancel: most often the order has just filled."""
        try:
            raw = await self._lookup(self._exchanges[order.intent.venue], order)
        except ExecutionError:
            raw = None  # still unknown: a cancel-all will try again
        if raw is not None:
            self._apply(order, raw)
        elif order.unknown and error.kind is ErrorKind.NOT_FOUND:
            # Neither a cancel nor a lookup finds it: the submit never reached the venue.
            self._finish_absent(order)
            return
        if order.is_open:
            self._ack(order, order.status or OrderStatus.REJECTED,
                      f"cancel rejected: {error}")
        else:
            log.info("cancel too late", client_order_id=order.client_order_id,
                     status=str(order.status))

    # --- order updates ------------------------------------------------------------------------

    def _apply(self, order: _LiveOrder, raw: Mapping[str, Any], immediate: bool = False) -> None:
        """Bring our record up to the venue's: emit the acceptance, new fills, the end."""
        if raw.get("id"):
            order.exchange_order_id = str(raw["id"])
        status = _CCXT_STATUS.get(str(raw.get("status") or "open"), OrderStatus.NEW)
        if order.status is None or order.status is OrderStatus.UNKNOWN:
            order.status = OrderStatus.NEW
            self._ack(order, OrderStatus.NEW)
        self._emit_new_fills(order, raw, immediate)
        if status is OrderStatus.NEW:
            order.rested = True  # on the book now: whatever fills it later is a taker, not us
        if status.is_terminal and not order.status.is_terminal:
            order.status = status
            self._ack(order, status)
        elif status is OrderStatus.NEW and order.filled > 0 and order.is_open:
            order.status = OrderStatus.PARTIALLY_FILLED

    def _emit_new_fills(self, order: _LiveOrder, raw: Mapping[str, Any], immediate: bool) -> None:
        filled = float(raw.get("filled") or 0.0)
        delta = filled - order.filled
        if delta <= order.intent.qty * 1e-9:
            return
        cost = raw.get("cost")
        if cost is not None:
            # Average price of the new part; 12 significant digits drop the binary noise
            # of the division (600.0001 / 0.01 = 60000.009999999995).
            price = float(f"{(float(cost) - order.cost) / delta:.12g}")
        else:
            price = float(raw.get("average") or raw.get("price") or 0.0)
            cost = order.cost + price * delta
        intent = order.intent
        quote_asset = split_symbol(intent.symbol)[1]
        liquidity = "maker" if order.rested and not immediate else "taker"
        fee, fee_asset = self._fee_of(order, raw, price * delta, liquidity, quote_asset)
        order.filled = filled
        order.cost = float(cost)
        self._emit_fill(Fill(order.client_order_id, intent.venue, intent.symbol, Side(intent.side),
                             price, delta, fee, fee_asset, liquidity, self.now_ns,
                             intent.strategy))

    def _fee_of(self, order: _LiveOrder, raw: Mapping[str, Any], notional: float,
                liquidity: str, quote_asset: str) -> tuple[float, str]:
        """The venue's cumulative fee minus what we already booked, else an estimate."""
        reported = raw.get("fee") or {}
        if reported.get("cost") is not None:
            total = float(reported["cost"])
            fee = max(0.0, total - order.fee_paid)
            order.fee_paid = total
            return fee, str(reported.get("currency") or quote_asset)
        venue = self._venues[order.intent.venue]
        bps = venue.maker_fee_bps if liquidity == "maker" else venue.taker_fee_bps
        return notional * bps * 1e-4, quote_asset

    async def poll_once(self, venue: str) -> None:
        """One polling round: open orders per symbol, then lookups for ones that left."""
        exchange = self._exchanges[venue]
        mine = [o for o in self._orders.values()
                if o.intent.venue == venue and o.is_open
                and (o.submit_task is None or o.submit_task.done())]
        for symbol in sorted({o.intent.symbol for o in mine}):
            listed = {raw.get("clientOrderId"): raw
                      for raw in await exchange.fetch_open_orders(symbol)}
            for order in (o for o in mine if o.intent.symbol == symbol):
                raw = listed.get(order.client_order_id)
                if raw is None and (order.exchange_order_id or order.unknown):
                    try:
                        raw = await self._lookup(exchange, order)
                    except ExecutionError:
                        continue  # no answer: ask again next round
                    if raw is None and order.unknown:
                        self._finish_absent(order)
                        continue
                if raw is not None:
                    self._apply(order, raw)
        await self._refresh_balances(venue)

    async def _poll_loop(self, venue: str) -> None:
        while True:
            slow = self._websocket_up[venue]
            await asyncio.sleep(self._poll_interval_s * (10.0 if slow else 1.0))
            try:
                await self.poll_once(venue)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("order poll failed", venue=venue, error=self._redact(error))

    async def _watch_loop(self, venue: str) -> None:
        """ccxt.pro order stream; polling covers for it whenever it is down."""
        exchange = self._exchanges[venue]
        if not getattr(exchange, "has", {}).get("watchOrders"):
            log.info("no websocket order updates for this venue: polling", venue=venue)
            return
        attempt = 0
        while True:
            try:
                updates = await exchange.watch_orders()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._websocket_up[venue] = False
                if classify(error) is ErrorKind.REJECTED:  # NotSupported and the like
                    log.info("websocket order updates unavailable: polling", venue=venue,
                             error=self._redact(error))
                    return
                delay = backoff_s(ErrorKind.AMBIGUOUS, attempt, base_s=0.5, cap_s=30.0)
                attempt += 1
                log.warning("order stream failed: polling meanwhile", venue=venue,
                            retry_in_s=delay, error=self._redact(error))
                await asyncio.sleep(delay)
                continue
            self._websocket_up[venue] = True
            attempt = 0
            for raw in updates:
                order = self._orders.get(str(raw.get("clientOrderId")))
                if order is not None:
                    self._apply(order, raw)

    # --- start-up -----------------------------------------------------------------------------

    async def _reconcile(self, venue: str) -> dict[str, Any]:
        """Cancel or adopt open orders carrying our tag; leave the others alone."""
        exchange = self._exchanges[venue]
        open_orders = await exchange.fetch_open_orders()
        ours = [raw for raw in open_orders if is_ours(raw.get("clientOrderId"))]
        summary: dict[str, Any] = {"canceled": [], "adopted": [],
                                   "foreign": len(open_orders) - len(ours)}
        for raw in ours:
            cid = str(raw["clientOrderId"])
            if self._execution.reconcile == "cancel":
                await exchange.cancel_order(raw["id"], raw["symbol"])
                summary["canceled"].append(cid)
            else:
                self._adopt(venue, raw)
                summary["adopted"].append(cid)
        log.info("reconciled open orders", venue=venue, mode=self._execution.reconcile,
                 canceled=len(summary["canceled"]), adopted=len(summary["adopted"]),
                 foreign=summary["foreign"])
        return summary

    def _adopt(self, venue: str, raw: Mapping[str, Any]) -> None:
        cid = str(raw["clientOrderId"])
        kind = OrderType.POST_ONLY if raw.get("postOnly") else OrderType.LIMIT
        intent = OrderIntent(venue=venue, symbol=str(raw["symbol"]), side=Side(raw["side"]),
                             type=kind, qty=float(raw["amount"]), price=raw.get("price"),
                             client_order_id=cid, strategy=strategy_of(cid),
                             reason="adopted at start")
        order = _LiveOrder(intent, exchange_order_id=str(raw["id"]), status=OrderStatus.NEW,
                           filled=float(raw.get("filled") or 0.0),
                           cost=float(raw.get("cost") or 0.0), rested=True)
        self._orders[cid] = order
        self._ids.skip_past(cid)
        self._ack(order, OrderStatus.NEW, "adopted at start")

    async def _refresh_balances(self, venue: str) -> None:
        balance = await self._exchanges[venue].fetch_balance()
        totals = balance.get("total") or {}
        self._balances[venue] = {asset: float(amount) for asset, amount in totals.items()
                                 if amount}

    # --- helpers ------------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("order task failed", task=task.get_name(),
                      error=self._redact(task.exception()))

    def _finish_absent(self, order: _LiveOrder) -> None:
        """An UNKNOWN order the venue, answering at last, says it never had. Final only
        because it comes after `unknown_order_timeout_s` (30 s by default), longer than the
        request's recvWindow (ccxt's 10 s on Binance): a late copy would be refused now."""
        order.status = OrderStatus.REJECTED
        log.warning("unknown order resolved: the venue never had it",
                    client_order_id=order.client_order_id)
        self._ack(order, OrderStatus.REJECTED,
                  "submit outcome resolved: the order never reached the venue")

    def _reject(self, order: _LiveOrder, error: ExecutionError) -> None:
        order.status = OrderStatus.REJECTED
        log.warning("order rejected by the venue", client_order_id=order.client_order_id,
                    kind=str(error.kind), error=str(error))
        self._ack(order, OrderStatus.REJECTED, str(error))

    def _ack(self, order: _LiveOrder, status: OrderStatus, reason: str = "") -> None:
        intent = order.intent
        self._emit_ack(OrderAck(order.client_order_id, intent.venue, intent.symbol, status,
                                self.now_ns, order.exchange_order_id, reason, order.filled))


def _step(exchange: Any, market: Mapping[str, Any], field: str) -> float:
    """Tick or lot of a ccxt market, whatever the exchange's precision mode."""
    precision = (market.get("precision") or {}).get(field)
    if precision is None:
        return 1e-8
    from ccxt.base.decimal_to_precision import TICK_SIZE

    if exchange.precisionMode == TICK_SIZE:
        return float(precision)
    return math.pow(10.0, -float(precision))
