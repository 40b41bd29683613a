"""Market data on the wire: NATS subjects per key and a compact msgpack body per event.

Subjects: `md.<venue>.<SYMBOL>.quote` and `md.<venue>.<SYMBOL>.trade`, where SYMBOL is
the ccxt symbol made subject-safe and reversible (`symbol_token` / `token_symbol`):

- `/` becomes `_` and `:` becomes `-` (`BTC/USDT:USDT` -> `BTC_USDT-USDT`,
  `BTC/USDT` -> `BTC_USDT`);
- every other character outside `A-Z a-z 0-9` (a literal `_`, `-` or `~`, a `.`, `*`, `>`,
  a space, anything non-ASCII) becomes `~` and two hex digits per UTF-8 byte
  (`BTC/USD:BTC-240927` -> `BTC_USD-BTC~2D240927`).

So a token never holds the characters NATS gives a meaning to (`.`, `*`, `>`, white
space) and one token is one ccxt symbol, both ways. Venue ids get the same escaping but
keep `_` (`binance_spot` stays as it is).

Body: a msgpack array of the event's fields after the key (the key is the subject), in
the model's field order:

- quote: bid, bid_qty, ask, ask_qty, exchange_ts_ns, local_ts_ns, seq, stale (61 bytes
  for a BTC quote against 160 for the model encoded as a map);
- trade: price, qty, side, exchange_ts_ns, local_ts_ns, trade_id.

A reader ignores trailing elements it does not know, so a field appended later does not
break an older consumer. `decode_quote(venue, symbol, body)` gives back a `Quote` equal
field for field to the one published (floats travel as float64, exactly).
"""

from __future__ import annotations

import re

import msgspec

from daemon.core.model import Quote, Trade

MD_PREFIX = "md"
QUOTE = "quote"
TRADE = "trade"

_SYMBOL_PLAIN = re.compile(r"[A-Za-z0-9/:]")
_VENUE_PLAIN = re.compile(r"[A-Za-z0-9_]")
_ESCAPE = re.compile(r"~([0-9A-F]{2})")


class CodecError(ValueError):
    """A subject or body that is not market data of ours (dropped and counted)."""


def _escape(text: str, plain: re.Pattern[str]) -> str:
    out = []
    for char in text:
        if plain.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"~{byte:02X}" for byte in char.encode())
    return "".join(out)


def _unescape(token: str) -> str:
    if "~" not in token:
        return token
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(token):
        raw += token[position:match.start()].encode()
        raw.append(int(match.group(1), 16))
        position = match.end()
    raw += token[position:].encode()
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise CodecError(f"not a token of ours: {token!r}") from None


def symbol_token(symbol: str) -> str:
    """ccxt symbol -> subject token: `BTC/USDT:USDT` -> `BTC_USDT-USDT` (reversible)."""
    if not symbol:
        raise CodecError("empty symbol")
    return _escape(symbol, _SYMBOL_PLAIN).replace("/", "_").replace(":", "-")


def token_symbol(token: str) -> str:
    """Subject token -> the exact ccxt symbol `symbol_token` was given."""
    if not token or "." in token:
        raise CodecError(f"not a symbol token: {token!r}")
    return _unescape(token.replace("_", "/").replace("-", ":"))


def venue_token(venue: str) -> str:
    if not venue:
        raise CodecError("empty venue")
    return _escape(venue, _VENUE_PLAIN)


def token_venue(token: str) -> str:
    return _unescape(token)


def subject(venue: str, symbol: str, kind: str) -> str:
    """`md.<venue>.<SYMBOL>.<kind>` of one key (computed once per key, never per event)."""
    return f"{MD_PREFIX}.{venue_token(venue)}.{symbol_token(symbol)}.{kind}"


def key_filter(venue: str, symbol: str) -> str:
    """The subjects of both kinds of one key: `md.<venue>.<SYMBOL>.*`."""
    return f"{MD_PREFIX}.{venue_token(venue)}.{symbol_token(symbol)}.*"


def parse_subject(text: str) -> tuple[str, str, str]:
    """`md.binance_spot.BTC_USDT.quote` -> ("binance_spot", "BTC/USDT", "quote")."""
    parts = text.split(".")
    if len(parts) != 4 or parts[0] != MD_PREFIX or parts[3] not in (QUOTE, TRADE):
        raise CodecError(f"not a market-data subject: {text!r}")
    return token_venue(parts[1]), token_symbol(parts[2]), parts[3]


# -- bodies -----------------------------------------------------------------------------


class _QuoteBody(msgspec.Struct, array_like=True, gc=False):
    bid: float
    bid_qty: float
    ask: float
    ask_qty: float
    exchange_ts_ns: int
    local_ts_ns: int
    seq: int = 0
    stale: bool = False


class _TradeBody(msgspec.Struct, array_like=True, gc=False):
    price: float
    qty: float
    side: str
    exchange_ts_ns: int
    local_ts_ns: int
    trade_id: str = ""


_encode = msgspec.msgpack.Encoder().encode
_decode_quote = msgspec.msgpack.Decoder(_QuoteBody).decode
_decode_trade = msgspec.msgpack.Decoder(_TradeBody).decode


def encode_quote(quote: Quote) -> bytes:
    return _encode((quote.bid, quote.bid_qty, quote.ask, quote.ask_qty, quote.exchange_ts_ns,
                    quote.local_ts_ns, quote.seq, quote.stale))


def encode_trade(trade: Trade) -> bytes:
    return _encode((trade.price, trade.qty, trade.side, trade.exchange_ts_ns,
                    trade.local_ts_ns, trade.trade_id))


def decode_quote(venue: str, symbol: str, body: bytes) -> Quote:
    """The `Quote` of `venue`/`symbol` in `body`; `CodecError` when it is not one."""
    try:
        b = _decode_quote(body)
    except msgspec.DecodeError as exc:
        raise CodecError(f"bad quote body: {exc}") from None
    return Quote(venue, symbol, b.bid, b.bid_qty, b.ask, b.ask_qty, b.exchange_ts_ns,
                 b.local_ts_ns, b.seq, b.stale)


def decode_trade(venue: str, symbol: str, body: bytes) -> Trade:
    """The `Trade` of `venue`/`symbol` in `body`; `CodecError` when it is not one."""
    try:
        b = _decode_trade(body)
    except msgspec.DecodeError as exc:
        raise CodecError(f"bad trade body: {exc}") from None
    return Trade(venue, symbol, b.price, b.qty, b.side, b.exchange_ts_ns, b.local_ts_ns,
                 b.trade_id)
