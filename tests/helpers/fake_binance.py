"""A fake Binance spot REST API on 127.0.0.1 for the live executor's tests.

It implements what ccxt calls to trade: `exchangeInfo`, `time`, `ping`, `order` (POST,
DELETE, GET), `openOrders` and `account`, with Binance's wire formats and error codes:
HMAC-SHA256 signatures over the exact query string (GET/DELETE) or form body (POST),
the `X-MBX-APIKEY` header, `recvWindow`, LOT_SIZE / PRICE_FILTER filters, balance
locking, and `newClientOrderId` unique among open orders ("Duplicate order sent.").

The payload shapes follow Binance's API documentation and the real responses in ccxt's
static test data (ts/src/test/static/response/binance.json); the exchange filters are
those of BTCUSDT.

Faults for the retry tests (`order_faults`, consumed one per POST /api/v3/order):

- "hold":  wait until `release()` before processing (a response delayed past the client's
           timeout; the order is created when released, unless it is a duplicate then);
- "drop":  process the order, then drop the connection without a response;
- "unavailable": answer 503 without processing.

Faults of the lookup by id (GET /api/v3/order), for the unknown-outcome tests:
`lookup_faults` are consumed one per lookup; `lookup_outage` applies to every lookup until
the test clears it. Either is "unavailable" (503) or "timeout" (no answer for
`lookup_delay_s`, longer than the client waits, then 503). `cancel_faults` (one per
DELETE /api/v3/order): "unavailable" answers 503 without cancelling.

The server never matches orders against a market by itself: `fill()` executes (part of)
an order as a taker on the other side would. MARKET orders and LIMIT/IOC orders crossing
`best_bid`/`best_ask` fill at once at that price.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

SYMBOL = "BTCUSDT"
TICK = Decimal("0.01")
STEP = Decimal("0.00001")
COMMISSION = Decimal("0.001")


def exchange_info(server_time_ms: int) -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "serverTime": server_time_ms,
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
             "limit": 6000},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5,
             "limit": 61000},
        ],
        "exchangeFilters": [],
        "symbols": [{
            "symbol": SYMBOL,
            "status": "TRADING",
            "baseAsset": "BTC",
            "baseAssetPrecision": 8,
            "quoteAsset": "USDT",
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT",
                           "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": True,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": "0.01000000",
                 "maxPrice": "1000000.00000000", "tickSize": "0.01000000"},
                {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000",
                 "stepSize": "0.00001000"},
                {"filterType": "ICEBERG_PARTS", "limit": 10},
                {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000",
                 "maxQty": "83.57081291", "stepSize": "0.00000000"},
                {"filterType": "TRAILING_DELTA", "minTrailingAboveDelta": 10,
                 "maxTrailingAboveDelta": 2000, "minTrailingBelowDelta": 10,
                 "maxTrailingBelowDelta": 2000},
                {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "5",
                 "bidMultiplierDown": "0.2", "askMultiplierUp": "5",
                 "askMultiplierDown": "0.2", "avgPriceMins": 5},
                {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
                 "maxNotional": "9000000.00000000", "applyMaxToMarket": False,
                 "avgPriceMins": 5},
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
            ],
            "permissions": [],
            "permissionSets": [["SPOT", "MARGIN"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }],
    }


class BinanceError(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


@dataclass
class Order:
    order_id: int
    client_order_id: str
    side: str
    type: str
    time_in_force: str
    price: Decimal
    orig_qty: Decimal
    created_ms: int
    executed_qty: Decimal = Decimal(0)
    cumulative_quote: Decimal = Decimal(0)
    status: str = "NEW"
    fills: list[dict[str, Any]] = field(default_factory=list)
    updated_ms: int = 0

    @property
    def open(self) -> bool:
        return self.status in ("NEW", "PARTIALLY_FILLED")

    def as_query(self) -> dict[str, Any]:
        return {
            "symbol": SYMBOL, "orderId": self.order_id, "orderListId": -1,
            "clientOrderId": self.client_order_id, "price": _fmt(self.price),
            "origQty": _fmt(self.orig_qty), "executedQty": _fmt(self.executed_qty),
            "cummulativeQuoteQty": _fmt(self.cumulative_quote), "status": self.status,
            "timeInForce": self.time_in_force, "type": self.type, "side": self.side,
            "stopPrice": "0.00000000", "icebergQty": "0.00000000", "time": self.created_ms,
            "updateTime": self.updated_ms or self.created_ms, "isWorking": True,
            "workingTime": self.created_ms, "origQuoteOrderQty": "0.00000000",
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }

    def as_new_order_full(self) -> dict[str, Any]:
        return {
            "symbol": SYMBOL, "orderId": self.order_id, "orderListId": -1,
            "clientOrderId": self.client_order_id, "transactTime": self.created_ms,
            "price": _fmt(self.price), "origQty": _fmt(self.orig_qty),
            "executedQty": _fmt(self.executed_qty), "origQuoteOrderQty": "0.00000000",
            "cummulativeQuoteQty": _fmt(self.cumulative_quote), "status": self.status,
            "timeInForce": self.time_in_force, "type": self.type, "side": self.side,
            "workingTime": self.created_ms, "fills": list(self.fills),
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }


def _fmt(value: Decimal) -> str:
    return f"{value:.8f}"


def _now_ms() -> int:
    return int(time.time() * 1000)


class FakeBinance:
    """Binance spot REST, in memory. `requests` logs (method, path, params) of each call."""

    def __init__(self, api_key: str, api_secret: str,
                 balances: dict[str, str] | None = None) -> None:
        self.api_key = api_key
        self.api_secret = api_secret.encode()
        self.free = {a: Decimal(v) for a, v in (balances or {"BTC": "1", "USDT": "100000"}).items()}
        self.locked = {a: Decimal(0) for a in self.free}
        self.orders: dict[int, Order] = {}
        self.best_bid = Decimal("60000.00")
        self.best_ask = Decimal("60000.01")
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.order_faults: list[str] = []
        self.lookup_faults: list[str] = []
        self.lookup_outage = ""
        self.lookup_delay_s = 1.0
        self.cancel_faults: list[str] = []
        self._held = asyncio.Event()
        self._holding = 0
        self.processing = 0
        self._ids = itertools.count(28_457_000_001)
        self._trade_ids = itertools.count(3_735_683_259)
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/api/v3/{endpoint}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()

    def release(self) -> None:
        """Let requests held by a "hold" fault proceed."""
        self._held.set()

    async def idle(self) -> None:
        """Wait until no request is being processed (held ones included)."""
        while self.processing:
            await asyncio.sleep(0.001)

    # --- test helpers -------------------------------------------------------------------------

    def add_open_order(self, client_order_id: str, side: str, qty: str, price: str) -> Order:
        """An order resting before the daemon starts (from an earlier run, or a person's)."""
        order = self._new_order(client_order_id, side.upper(), "LIMIT", "GTC", Decimal(price),
                                Decimal(qty))
        self._lock_for(order)
        return order

    def fill(self, client_order_id: str, qty: str, price: str | None = None) -> Order:
        """Execute `qty` of an open order against a taker, at its limit price by default."""
        order = self.by_client_id(client_order_id, open_only=True)
        assert order is not None, f"no open order {client_order_id}"
        self._execute(order, Decimal(qty), Decimal(price) if price else order.price, maker=True)
        return order

    def by_client_id(self, client_order_id: str, open_only: bool = False) -> Order | None:
        matches = [o for o in self.orders.values() if o.client_order_id == client_order_id
                   and (o.open or not open_only)]
        return matches[-1] if matches else None

    def open_orders(self) -> list[Order]:
        return [o for o in self.orders.values() if o.open]

    def our_orders(self, prefix: str) -> list[Order]:
        """Every order (open or not) whose client id starts with `prefix`."""
        return [o for o in self.orders.values() if o.client_order_id.startswith(prefix)]

    def position(self, asset: str = "BTC") -> Decimal:
        """Net base quantity our orders executed (buys minus sells), before commission."""
        assert asset == "BTC"
        return sum((o.executed_qty if o.side == "BUY" else -o.executed_qty
                    for o in self.orders.values()), Decimal(0))

    def posted_client_ids(self) -> list[str]:
        return [p.get("newClientOrderId", "") for m, path, p in self.requests
                if m == "POST" and path == "order"]

    # --- HTTP -------------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["endpoint"]
        self.processing += 1
        try:
            body = await request.text()
            params = dict(parse_qsl(request.query_string, keep_blank_values=True))
            params.update(parse_qsl(body, keep_blank_values=True))
            self.requests.append((request.method, endpoint, params))
            handler = self._routes().get((request.method, endpoint))
            if handler is None:
                raise BinanceError(404, -1000, f"unknown endpoint {request.method} {endpoint}")
            signed, fault = handler
            if signed:
                self._authenticate(request, body)
            return await fault(request, params)
        except BinanceError as error:
            return web.json_response({"code": error.code, "msg": error.msg}, status=error.status)
        finally:
            self.processing -= 1

    def _routes(self) -> dict[tuple[str, str], tuple[bool, Any]]:
        return {
            ("GET", "ping"): (False, self._ping),
            ("GET", "time"): (False, self._time),
            ("GET", "exchangeInfo"): (False, self._exchange_info),
            ("POST", "order"): (True, self._post_order),
            ("DELETE", "order"): (True, self._delete_order),
            ("GET", "order"): (True, self._get_order),
            ("GET", "openOrders"): (True, self._open_orders),
            ("GET", "account"): (True, self._account),
        }

    def _authenticate(self, request: web.Request, body: str) -> None:
        if request.headers.get("X-MBX-APIKEY") != self.api_key:
            raise BinanceError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        # totalParams = query string + body; the signature is the last parameter.
        total = request.query_string + body
        payload, marker, signature = total.rpartition("&signature=")
        expected = hmac.new(self.api_secret, payload.encode(), hashlib.sha256).hexdigest()
        if not marker or not hmac.compare_digest(signature, expected):
            raise BinanceError(400, -1022, "Signature for this request is not valid.")
        fields = dict(parse_qsl(payload))
        window = int(fields.get("recvWindow", "5000"))
        if abs(_now_ms() - int(fields.get("timestamp", "0"))) > window:
            raise BinanceError(400, -1021,
                               "Timestamp for this request is outside of the recvWindow.")

    async def _ping(self, request: web.Request, params: dict[str, str]) -> web.Response:
        return web.json_response({})

    async def _time(self, request: web.Request, params: dict[str, str]) -> web.Response:
        return web.json_response({"serverTime": _now_ms()})

    async def _exchange_info(self, request: web.Request, params: dict[str, str]) -> web.Response:
        return web.json_response(exchange_info(_now_ms()))

    async def _post_order(self, request: web.Request, params: dict[str, str]
                          ) -> web.StreamResponse:
        fault = self.order_faults.pop(0) if self.order_faults else ""
        if fault == "unavailable":
            return web.Response(status=503, text="Service Unavailable")
        if fault == "hold":
            self._holding += 1
            await self._held.wait()
        order = self._create(params)
        if fault == "drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=200)
        return web.json_response(order.as_new_order_full())

    async def _delete_order(self, request: web.Request, params: dict[str, str]) -> web.Response:
        if self.cancel_faults and self.cancel_faults.pop(0) == "unavailable":
            return web.Response(status=503, text="Service Unavailable")
        order = self._find(params)
        if order is None or not order.open:
            raise BinanceError(400, -2011, "Unknown order sent.")
        order.status = "CANCELED"
        order.updated_ms = _now_ms()
        self._unlock_rest(order)
        body = order.as_query()
        body["origClientOrderId"] = order.client_order_id
        body["clientOrderId"] = f"cancel-{order.order_id}"
        body["transactTime"] = order.updated_ms
        return web.json_response(body)

    async def _get_order(self, request: web.Request, params: dict[str, str]) -> web.Response:
        fault = self.lookup_faults.pop(0) if self.lookup_faults else self.lookup_outage
        if fault == "timeout":
            await asyncio.sleep(self.lookup_delay_s)
        if fault in ("unavailable", "timeout"):
            return web.Response(status=503, text="Service Unavailable")
        order = self._find(params)
        if order is None:
            raise BinanceError(400, -2013, "Order does not exist.")
        return web.json_response(order.as_query())

    async def _open_orders(self, request: web.Request, params: dict[str, str]) -> web.Response:
        symbol = params.get("symbol")
        if symbol is not None and symbol != SYMBOL:
            raise BinanceError(400, -1121, "Invalid symbol.")
        return web.json_response([o.as_query() for o in self.orders.values() if o.open])

    async def _account(self, request: web.Request, params: dict[str, str]) -> web.Response:
        return web.json_response({
            "makerCommission": 10, "takerCommission": 10, "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {"maker": "0.00100000", "taker": "0.00100000",
                                "buyer": "0.00000000", "seller": "0.00000000"},
            "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False,
            "updateTime": _now_ms(), "accountType": "SPOT",
            "balances": [{"asset": a, "free": _fmt(self.free[a]), "locked": _fmt(self.locked[a])}
                         for a in sorted(self.free)],
            "permissions": ["SPOT"], "uid": 354937868,
        })

    # --- matching engine (as much of one as the tests need) --------------------------------

    def _create(self, params: dict[str, str]) -> Order:
        if params.get("symbol") != SYMBOL:
            raise BinanceError(400, -1121, "Invalid symbol.")
        client_order_id = params.get("newClientOrderId", "")
        if any(o.client_order_id == client_order_id and o.open for o in self.orders.values()):
            raise BinanceError(400, -2010, "Duplicate order sent.")
        side, kind = params["side"], params["type"]
        qty = Decimal(params["quantity"])
        if qty <= 0 or qty % STEP:
            raise BinanceError(400, -1013, "Filter failure: LOT_SIZE")
        price = Decimal(params.get("price", "0"))
        if kind != "MARKET" and (price <= 0 or price % TICK):
            raise BinanceError(400, -1013, "Filter failure: PRICE_FILTER")
        touch = self.best_ask if side == "BUY" else self.best_bid
        crosses = kind == "MARKET" or (price >= touch if side == "BUY" else price <= touch)
        if kind == "LIMIT_MAKER" and crosses:
            raise BinanceError(400, -2010, "Order would immediately match and take.")
        order = self._new_order(client_order_id, side, kind,
                                params.get("timeInForce", "GTC" if kind == "LIMIT" else ""),
                                price, qty)
        try:
            self._lock_for(order, touch if kind == "MARKET" else None)
        except BinanceError:
            del self.orders[order.order_id]
            raise
        if crosses:
            self._execute(order, qty, touch, maker=False)
        if order.open and (kind == "MARKET" or order.time_in_force == "IOC"):
            order.status = "EXPIRED"
            self._unlock_rest(order)
        return order

    def _new_order(self, client_order_id: str, side: str, kind: str, time_in_force: str,
                   price: Decimal, qty: Decimal) -> Order:
        order = Order(next(self._ids), client_order_id, side, kind, time_in_force, price, qty,
                      _now_ms())
        self.orders[order.order_id] = order
        return order

    def _lock_for(self, order: Order, market_price: Decimal | None = None) -> None:
        asset, need = (("USDT", order.orig_qty * (market_price or order.price))
                       if order.side == "BUY" else ("BTC", order.orig_qty))
        if self.free[asset] < need:
            raise BinanceError(400, -2010, "Account has insufficient balance for requested action.")
        self.free[asset] -= need
        self.locked[asset] += need

    def _unlock_rest(self, order: Order) -> None:
        rest = order.orig_qty - order.executed_qty
        asset, amount = ("USDT", rest * order.price) if order.side == "BUY" else ("BTC", rest)
        if order.type == "MARKET" and order.side == "BUY":
            amount = rest * self.best_ask
        self.locked[asset] -= amount
        self.free[asset] += amount

    def _execute(self, order: Order, qty: Decimal, price: Decimal, maker: bool) -> None:
        qty = min(qty, order.orig_qty - order.executed_qty)
        quote = qty * price
        locked_price = order.price if order.type != "MARKET" else self.best_ask
        if order.side == "BUY":  # commission in the asset received, as on Binance
            commission, asset = qty * COMMISSION, "BTC"
            self.locked["USDT"] -= qty * locked_price
            self.free["USDT"] += qty * (locked_price - price)
            self.free["BTC"] += qty - commission
        else:
            commission, asset = quote * COMMISSION, "USDT"
            self.locked["BTC"] -= qty
            self.free["USDT"] += quote - commission
        order.executed_qty += qty
        order.cumulative_quote += quote
        order.fills.append({"price": _fmt(price), "qty": _fmt(qty), "commission": _fmt(commission),
                            "commissionAsset": asset, "tradeId": next(self._trade_ids)})
        order.status = "FILLED" if order.executed_qty == order.orig_qty else "PARTIALLY_FILLED"
        order.updated_ms = _now_ms()

    def _find(self, params: dict[str, str]) -> Order | None:
        if "orderId" in params:
            return self.orders.get(int(params["orderId"]))
        client_order_id = params.get("origClientOrderId")
        return self.by_client_id(client_order_id) if client_order_id else None
