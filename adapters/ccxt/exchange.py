"""The one seam to ccxt: exchange objects from venue settings, URL redirection, and what a
ccxt exception means for a market-data feed.

Both ccxt users build their exchanges here: the ccxt.pro market-data feed (feed.py, no
keys) and the live executor (executor.py, keys, REST and ccxt.pro order streams).

Keys: `VenueSettings.api_key` / `api_secret` are `SecretStr`s, unwrapped here only, into
the exchange's config; the exchange logs through its own logger whose records are scrubbed
of them (ccxt logs every request's headers at DEBUG, the API key among them).

URLs: a configured `rest_url` / `ws_url` whose host ccxt does not already use (a local
fake, a proxy) takes over every REST / WebSocket endpoint of the exchange: its scheme and
host replace ccxt's, REST paths go under its path (`http://proxy/x` + `/api/v3`), WebSocket
paths are kept as they are. A configured host ccxt already uses changes nothing: that is
the real venue, and its other endpoints (futures, margin) must stay put.

Errors: a ccxt exception becomes a kind of the execution taxonomy
(daemon/trading/errors.py: `classify`, `wrap_error`) for the executor and live transfers,
or an error of the feed taxonomy (adapters/common/errors.py: `feed_error`) for the feed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from adapters.common.errors import (
    ConnectionLost,
    ProtocolViolation,
    RateLimited,
    SubscriptionRejected,
    VenueRefused,
)
from config.settings import VenueSettings
from daemon.trading.errors import RETRYABLE, ErrorKind, ExecutionError, Redactor


def exchange_class(ccxt_id: str, *, websocket: bool = True) -> Any:
    """ccxt.pro's exchange class (`websocket`) or ccxt.async_support's (REST only);
    `VenueRefused` when ccxt has no such exchange."""
    import ccxt.async_support as ccxt_async

    module: Any = ccxt_async
    if websocket:
        try:
            import ccxt.pro as ccxt_pro
        except ImportError:  # an old ccxt without pro: REST only
            pass
        else:
            module = ccxt_pro
    found = getattr(module, ccxt_id, None)
    if found is None:
        kind = "ccxt.pro" if module is not ccxt_async else "ccxt"
        raise VenueRefused(ccxt_id, f"{kind} has no exchange {ccxt_id!r}")
    return found


def new_exchange(ccxt_id: str, config: Mapping[str, Any] | None = None, *,
                 websocket: bool = True) -> Any:
    """An exchange by ccxt id, rate limited by ccxt's own throttle, `config` on top."""
    return exchange_class(ccxt_id, websocket=websocket)({"enableRateLimit": True,
                                                         **(config or {})})


def build_exchange(venue_id: str, venue: VenueSettings, *, websocket: bool = True,
                   keys: bool = True, ws_url: str = "",
                   overrides: Mapping[str, Any] | None = None) -> Any:
    """The exchange of one venue: its market type, its keys (`keys`), REST redirected to
    `venue.rest_url`, WebSocket to `ws_url` (the feed passes the venue's market-data
    endpoint; the executor's private streams stay on ccxt's own).

    `overrides` go into ccxt's config, their "options" merged into ours.
    """
    api_key = venue.api_key.get_secret_value() if keys and venue.api_key else ""
    secret = venue.api_secret.get_secret_value() if keys and venue.api_secret else ""
    spot = venue.market_type == "spot"
    config: dict[str, Any] = {
        "apiKey": api_key,
        "secret": secret,
        "options": {"defaultType": "spot" if spot else "swap"},
    }
    for key, value in (overrides or {}).items():
        if key == "options":
            config["options"].update(value)
        else:
            config[key] = value
    config["logger"] = _redacting_logger(venue_id, api_key, secret)
    exchange = new_exchange(venue.ccxt_id or venue_id, config, websocket=websocket)
    fetch_markets = exchange.options.get("fetchMarkets")
    if isinstance(fetch_markets, dict) and "types" in fetch_markets:
        # Load only this venue's market type (binance would also fetch futures). Set here,
        # not in the config: an exchange whose option has another shape keeps it.
        fetch_markets["types"] = ["spot" if spot else "linear"]
    redirect_urls(exchange, ws_url, venue.rest_url)
    return exchange


def redirect_urls(exchange: Any, ws_url: str = "", rest_url: str = "") -> bool:
    """Point ccxt's WebSocket / REST endpoints at the configured URLs (see the module
    docstring); an empty URL leaves those endpoints alone. True when any was rewritten."""
    api = exchange.urls.get("api")
    if isinstance(api, str):
        api = exchange.urls["api"] = {"rest": api}
    if not isinstance(api, dict):
        return False
    changed = False
    if rest_url:
        leaves = [(path, url) for path, url in _url_leaves(exchange, api) if path[0] != "ws"]
        changed |= _redirect(api, leaves, rest_url, ("http", "https"), keep_prefix=True)
    if ws_url:
        leaves = [(path, url) for path, url in _url_leaves(exchange, api) if path[0] == "ws"]
        changed |= _redirect(api, leaves, ws_url, ("ws", "wss"), keep_prefix=False)
    return changed


def _redirect(api: dict[str, Any], leaves: list[tuple[tuple[str, ...], str]], configured: str,
              schemes: tuple[str, ...], *, keep_prefix: bool) -> bool:
    target = urlsplit(configured)
    if target.scheme not in schemes or not target.netloc:
        raise ValueError(f"expected a {'/'.join(schemes)} URL, got {configured!r}")
    if target.netloc in {urlsplit(url).netloc for _, url in leaves}:
        return False  # one of ccxt's own hosts: the real venue
    prefix = target.path.rstrip("/") if keep_prefix else ""
    for path, url in leaves:
        parts = urlsplit(url)
        _set_leaf(api, path, urlunsplit((target.scheme, target.netloc, prefix + parts.path,
                                         parts.query, parts.fragment)))
    return bool(leaves)


def _url_leaves(exchange: Any, node: Any, path: tuple[str, ...] = ()
                ) -> Iterable[tuple[tuple[str, ...], str]]:
    """(key path, URL with `{hostname}` filled in) of every URL string under `node`."""
    if isinstance(node, str):
        if "://" in node:
            yield path, exchange.implode_hostname(node)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _url_leaves(exchange, value, (*path, key))


def _set_leaf(root: dict[str, Any], path: tuple[str, ...], value: str) -> None:
    node = root
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value

# -- errors for the executor and live transfers ---------------------------------------------

#: Venue messages meaning "an order with this client id already exists".
_DUPLICATE_MARKERS = (
    "duplicate order sent",  # Binance spot/futures -2010 / -4015 style text
    "orderlinkedid is duplicate",  # Bybit 110072
    "duplicate clientorderid",  # Bybit 12141 / 170141
    "duplicate order id",
)


def classify(error: BaseException) -> ErrorKind:
    """The kind of an exception raised by a ccxt call (or the transport under it)."""
    if isinstance(error, ExecutionError):
        return error.kind
    import ccxt

    text = str(error).lower()
    if isinstance(error, ccxt.DuplicateOrderId) or any(m in text for m in _DUPLICATE_MARKERS):
        return ErrorKind.DUPLICATE
    # Order matters: the ccxt hierarchy nests RateLimitExceeded and InvalidNonce under
    # NetworkError, and OrderNotFound under InvalidOrder.
    if isinstance(error, ccxt.RateLimitExceeded | ccxt.DDoSProtection):
        return ErrorKind.RATE_LIMIT
    if isinstance(error, ccxt.InvalidNonce):
        return ErrorKind.CLOCK
    if isinstance(error, ccxt.NetworkError | asyncio.TimeoutError | TimeoutError | OSError):
        return ErrorKind.AMBIGUOUS
    if isinstance(error, ccxt.OrderNotFound):
        return ErrorKind.NOT_FOUND
    if isinstance(error, ccxt.AuthenticationError):
        return ErrorKind.AUTH
    if isinstance(error, ccxt.InvalidOrder | ccxt.InsufficientFunds | ccxt.BadRequest
                  | ccxt.OperationRejected | ccxt.ArgumentsRequired | ccxt.NotSupported):
        return ErrorKind.REJECTED
    if isinstance(error, ccxt.OperationFailed):
        # e.g. Binance -1000/-1006 "execution status unknown": the order may exist.
        return ErrorKind.AMBIGUOUS
    return ErrorKind.UNKNOWN


def should_retry(error: BaseException) -> bool:
    """Retry (with the same client order id) or give up."""
    return classify(error) in RETRYABLE


def wrap_error(error: BaseException, redact: Redactor) -> ExecutionError:
    """The ExecutionError of a failed ccxt call: its kind, and a message with no credentials."""
    return ExecutionError(classify(error), f"{type(error).__name__}: {redact(error)}")


def feed_error(venue: str, error: BaseException) -> BaseException:
    """ccxt's exception hierarchy mapped onto the feed taxonomy (others pass through to
    the supervisor's `classify_error`)."""
    import ccxt

    detail = f"{type(error).__name__}: {error}"
    if isinstance(error, ccxt.RateLimitExceeded | ccxt.DDoSProtection):
        return RateLimited(venue, detail)
    if isinstance(error, ccxt.BadSymbol):
        return SubscriptionRejected(venue, str(error).split()[-1] if str(error) else "?", detail)
    if isinstance(error, ccxt.AuthenticationError | ccxt.PermissionDenied | ccxt.NotSupported
                  | ccxt.AccountSuspended):
        return VenueRefused(venue, detail)
    if isinstance(error, ccxt.NetworkError):
        return ConnectionLost(venue, detail)
    if isinstance(error, ccxt.BaseError):
        return ProtocolViolation(venue, detail)
    return error


class _RedactingFilter(logging.Filter):
    """Formats each record and removes credentials from the text (headers included)."""

    def __init__(self) -> None:
        super().__init__()
        self.redact = Redactor()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        return True


def _redacting_logger(venue_id: str, *secrets: str) -> logging.Logger:
    logger = logging.getLogger(f"ccxt.cryptopipe.{venue_id}")
    redacting = next((f for f in logger.filters if isinstance(f, _RedactingFilter)), None)
    if redacting is None:
        redacting = _RedactingFilter()
        logger.addFilter(redacting)
    redacting.redact.add(*secrets)
    return logger


# -- market rules for paper trading -----------------------------------------------------------

MARKETS_SOURCE = "the venue's markets (ccxt)"


async def fetch_market_rules(venue_id: str, venue: VenueSettings, symbols: Iterable[str]
                             ) -> dict[str, dict[str, float]]:
    """Tick, lot and (where the venue says) min notional of `symbols`, from the venue's
    market description (ccxt `load_markets` over REST, no keys, against `rest_url`).
    Symbols the venue does not list are left out; a venue that cannot be asked raises
    `VenueRefused` with ccxt's reason."""
    exchange = build_exchange(venue_id, venue, websocket=False, keys=False)
    try:
        await exchange.load_markets()
    except Exception as error:
        raise VenueRefused(venue_id, f"loading markets failed: {type(error).__name__}: "
                                     f"{error}") from None
    finally:
        await exchange.close()
    found = {}
    for symbol in symbols:
        market = exchange.markets.get(symbol)
        rules = _market_rules(exchange, market) if market else None
        if rules is not None:
            found[symbol] = rules
    return found


def _market_rules(exchange: Any, market: Mapping[str, Any]) -> dict[str, float] | None:
    from ccxt.base.decimal_to_precision import DECIMAL_PLACES, TICK_SIZE

    precision = market.get("precision") or {}
    tick, lot = precision.get("price"), precision.get("amount")
    if tick is None or lot is None:
        return None
    if exchange.precisionMode == DECIMAL_PLACES:  # a number of decimals, not a step
        tick, lot = 10.0 ** -float(tick), 10.0 ** -float(lot)
    elif exchange.precisionMode != TICK_SIZE:  # significant digits: no fixed step
        return None
    rules = {"tick": float(tick), "lot": float(lot)}
    min_notional = ((market.get("limits") or {}).get("cost") or {}).get("min")
    if min_notional:
        rules["min_notional"] = float(min_notional)
    return rules
