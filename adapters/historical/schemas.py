"""The column layouts of public historical data, and which one a file is in.

Where each layout comes from:

- Binance public data (https://data.binance.vision, documented in the README of
  github.com/binance/binance-public-data, "Data Information"):
  - spot `trades` (/api/v3/historicalTrades): trade id, price, qty, quoteQty, time,
    isBuyerMaker, isBestMatch -- 7 columns;
  - spot `aggTrades` (/api/v3/aggTrades): aggregate trade id, price, quantity, first
    trade id, last trade id, timestamp, was the buyer the maker, was the trade the best
    price match -- 8 columns;
  - USD-M `trades` (/fapi/v1/trades): id, price, qty, quote_qty, time, is_buyer_maker
    -- 6 columns (COIN-M's have base_qty fourth: refused, see below);
  - USD-M `aggTrades` (/fapi/v1/aggTrades): agg_trade_id, price, quantity,
    first_trade_id, last_trade_id, transact_time, is_buyer_maker -- 7 columns;
  - `bookTicker` (futures only: the spot archive has none, binance-public-data issue
    #372): update_id, best_bid_price, best_bid_qty, best_ask_price, best_ask_qty,
    transaction_time, event_time -- 7 columns (header as quoted in issue #305).
  Spot files have no header row; futures files have one since 2022 (issues #246, #283):
  both are read. Times are milliseconds, except spot from 2025-01-01 on, which are
  microseconds (README note): told apart per value by magnitude. The file name is
  `<SYMBOL>-<kind>-<YYYY-MM[-DD]>.zip` (one CSV of the same name inside).
- Tardis.dev downloadable CSV (https://docs.tardis.dev/downloadable-csv-files, "Data
  types"): always a header row; `quotes`: exchange, symbol, timestamp, local_timestamp,
  ask_amount, ask_price, bid_price, bid_amount; `trades`: exchange, symbol, timestamp,
  local_timestamp, id, side, price, amount; `incremental_book_L2`: exchange, symbol,
  timestamp, local_timestamp, is_snapshot, side, price, amount; `book_snapshot_25`:
  exchange, symbol, timestamp, local_timestamp, then asks[i].price, asks[i].amount,
  bids[i].price, bids[i].amount for i = 0..24. Times are microseconds since the epoch;
  `timestamp` is the exchange's, `local_timestamp` Tardis's arrival time. Columns are read
  by their header names, so extra columns do not matter.

The market of a Binance file is told by its shape, not a flag: bookTicker exists only for
futures, and spot trades/aggTrades carry one more column (isBestMatch) than USD-M's.
COIN-M (inverse, `BTCUSD_PERP`, `BTCUSD_240927`; Tardis `binance-delivery`, Bybit
`BTCUSD`) is refused with one clear line: the daemon has no inverse-contract venue, and
presenting one as `binance_usdm` would be wrong venue, wrong symbol and wrong sizes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from adapters.common.parsing import derive_unified_symbol

BINANCE = "binance"
TARDIS = "tardis"

# Format kinds.
BOOK_TICKER = "bookTicker"
TRADES = "trades"
AGG_TRADES = "aggTrades"
QUOTES = "quotes"
BOOK_L2 = "incremental_book_L2"
SNAPSHOT_25 = "book_snapshot_25"

#: Tardis exchange id -> the daemon's venue (daemon/core/model.py NATIVE_VENUES).
TARDIS_VENUES = {
    "binance": "binance_spot",
    "binance-futures": "binance_usdm",
    "bybit": "bybit_linear",
    "bybit-spot": "bybit_spot",
}
#: Tardis exchange ids of inverse (coin-margined) markets.
_TARDIS_INVERSE = frozenset({"binance-delivery"})

_BINANCE_NAME = re.compile(
    r"(?P<symbol>[A-Za-z0-9_]+)-(?P<kind>bookTicker|trades|aggTrades)-\d{4}-\d{2}(?:-\d{2})?"
    r"\.(?:zip|csv)$")
#: Inverse contracts: Binance COIN-M (`BTCUSD_PERP`, `BTCUSD_240927`), Bybit inverse
#: (`BTCUSD`, dated `BTCUSDH25`).
_INVERSE_SYMBOL = re.compile(r"[A-Z0-9]+USD(?:_(?:PERP|\d{6})|[FGHJKMNQUVXZ]\d{2})?")
#: A Binance COIN-M symbol inside a frame or a stream name.
COINM_IN_FRAME = re.compile(rb'"s":"[A-Z0-9]+USD_(?:PERP|\d{6})"|"[a-z0-9]+usd_(?:perp|\d{6})@')

#: A Binance CSV line: 6 to 8 fields of words, numbers and dots (a header or a row).
_CSV_LINE = re.compile(rb"[\w.\-]+(?:,[\w.\-]+){5,7}\s*")
_TRUE_FALSE = frozenset({b"true", b"false", b"True", b"False", b"TRUE", b"FALSE"})
#: Milliseconds below this, microseconds above (year 5138 in ms; 1973 in us).
MICROS_FROM = 100_000_000_000_000


class HistoricalError(ValueError):
    """A historical file that cannot be read as a whole (refused market, unknown layout)."""


@dataclass(frozen=True, slots=True)
class Layout:
    """How to read one historical file: provider, kind, where each value is.

    Binance: `venue` and `symbol` (venue form) hold for every row. Tardis: each row names
    its exchange and symbol (`venue`, `symbol` are the first row's); `columns` maps the
    header's names to their positions.
    """

    provider: str
    kind: str
    venue: str
    symbol: str = ""
    unified: str = ""
    width: int = 0  # Binance: columns per row
    time_column: int = 0  # the column that is local_ts (Binance ms/us, Tardis us)
    columns: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.provider} {self.kind}"


# --- Binance public data ----------------------------------------------------------------


def is_binance_csv(first_line: bytes) -> bool:
    """A first line of 6 to 8 plain comma-separated values: a Binance public data CSV (its
    header row or a first data row). Recordings start with `<ns> {`, Tardis with a header
    naming `exchange,symbol,`; random bytes are none of these."""
    return _CSV_LINE.fullmatch(first_line) is not None and not is_tardis_csv(first_line)


def is_binance_name(path: Path) -> bool:
    """Named as Binance names its files: `BTCUSDT-bookTicker-2024-08-08.csv`."""
    return _BINANCE_NAME.fullmatch(path.name) is not None


def binance_layout(path: Path, first_line: bytes, symbol: str | None) -> Layout:
    """The layout of a Binance public data file from its first line (header or data) and
    name; `symbol` (unified, from `@VENUE:SYMBOL`) stands in when the name has none."""
    fields = first_line.strip().split(b",")
    kind, venue = _binance_kind(fields, path)
    name = _BINANCE_NAME.search(path.name)
    venue_symbol = name.group("symbol").upper() if name else ""
    if not venue_symbol and symbol:
        venue_symbol = symbol.split(":", 1)[0].replace("/", "")
    if not venue_symbol:
        raise HistoricalError(
            f"{path}: cannot tell the symbol of this Binance {kind} file: keep Binance's "
            "name (BTCUSDT-trades-2024-08-08.zip) or add @VENUE:SYMBOL")
    if is_inverse_symbol(venue_symbol) or b"base_qty" in first_line:
        raise HistoricalError(
            f"{path}: Binance COIN-M futures ({venue_symbol}): inverse contracts are not "
            "supported")
    unified = derive_unified_symbol(venue, venue_symbol) or symbol
    if not unified:
        raise HistoricalError(
            f"{path}: cannot derive a unified symbol from {venue_symbol!r}: add "
            "@VENUE:SYMBOL (e.g. @binance_usdm:BTC/USDT:USDT)")
    width, time_column = _BINANCE_COLUMNS[(kind, venue)]
    return Layout(BINANCE, kind, venue, venue_symbol, unified, width, time_column)


#: (kind, venue) -> (columns per row, the column used as local time).
_BINANCE_COLUMNS = {
    (BOOK_TICKER, "binance_usdm"): (7, 6),  # event_time
    (TRADES, "binance_spot"): (7, 4),  # time
    (TRADES, "binance_usdm"): (6, 4),
    (AGG_TRADES, "binance_spot"): (8, 5),  # transact_time
    (AGG_TRADES, "binance_usdm"): (7, 5),
}
#: Header row (first name) -> kind; a header names no market, the column count does.
_BINANCE_HEADERS = {b"update_id": BOOK_TICKER, b"id": TRADES, b"agg_trade_id": AGG_TRADES}


def _binance_kind(fields: list[bytes], path: Path) -> tuple[str, str]:
    """(kind, venue) from a header row or a first data row (see the module docstring)."""
    width = len(fields)
    kind = _BINANCE_HEADERS.get(fields[0].strip().lower())
    if kind is None:
        kind = _kind_from_values(fields)
    if kind is None:
        named = _BINANCE_NAME.search(path.name)
        kind = named.group("kind") if named else None
    venue = {(BOOK_TICKER, 7): "binance_usdm", (TRADES, 7): "binance_spot",
             (TRADES, 6): "binance_usdm", (AGG_TRADES, 8): "binance_spot",
             (AGG_TRADES, 7): "binance_usdm"}.get((kind or "", width))
    if kind is None or venue is None:
        raise HistoricalError(
            f"{path}: not a Binance bookTicker, trades or aggTrades file ({width} columns "
            f"in its first line)")
    return kind, venue


def _kind_from_values(fields: list[bytes]) -> str | None:
    """bookTicker rows are all numbers; trades end in one (USD-M) or two (spot) booleans
    after the time; aggTrades have first/last trade ids before the time."""
    flags = [value.strip() in _TRUE_FALSE for value in fields]
    if not any(flags):
        return BOOK_TICKER if len(fields) == 7 else None
    booleans = flags.index(True)
    if booleans == 5:  # id, price, qty, quote_qty, time, booleans...
        return TRADES
    if booleans == 6:  # id, price, qty, first, last, time, booleans...
        return AGG_TRADES
    return None


def is_inverse_symbol(venue_symbol: str) -> bool:
    """Binance COIN-M or Bybit inverse: priced in USD, margined in the coin."""
    return _INVERSE_SYMBOL.fullmatch(venue_symbol.upper()) is not None


# --- Tardis.dev ---------------------------------------------------------------------------


def is_tardis_csv(first_line: bytes) -> bool:
    return first_line.startswith(b"exchange,symbol,timestamp,local_timestamp,")


def tardis_layout(path: Path, header: bytes) -> Layout:
    """The layout of a Tardis.dev CSV from its header row. The exchange and symbol are
    per row; the reader takes the first row's (`tardis_market` refuses an unsupported
    one)."""
    names = header.strip().decode("utf-8", "replace").split(",")
    columns = {name: index for index, name in enumerate(names)}
    kind = _tardis_kind(columns)
    if kind is None:
        raise HistoricalError(
            f"{path}: a Tardis.dev CSV of a kind not read here (header {header[:80]!r}); "
            "read are quotes, trades, incremental_book_L2, book_snapshot_25")
    return Layout(TARDIS, kind, "", width=len(names),
                  time_column=columns["local_timestamp"], columns=columns)


def _tardis_kind(columns: dict[str, int]) -> str | None:
    if {"ask_amount", "ask_price", "bid_price", "bid_amount"} <= columns.keys():
        return QUOTES
    if {"is_snapshot", "side", "price", "amount"} <= columns.keys():
        return BOOK_L2
    if {"id", "side", "price", "amount"} <= columns.keys():
        return TRADES
    if {"asks[0].price", "asks[0].amount", "bids[0].price", "bids[0].amount"} <= columns.keys():
        return SNAPSHOT_25
    return None


def tardis_market(path: Path, exchange: str, venue_symbol: str) -> tuple[str, str]:
    """(venue, unified symbol) of a Tardis exchange id and symbol; HistoricalError for an
    exchange or market the daemon does not trade (named, with why)."""
    if exchange in _TARDIS_INVERSE or (exchange in TARDIS_VENUES
                                       and is_inverse_symbol(venue_symbol)):
        raise HistoricalError(
            f"{path}: {exchange} {venue_symbol} is a coin-margined (inverse) contract: "
            "inverse contracts are not supported")
    venue = TARDIS_VENUES.get(exchange)
    if venue is None:
        raise HistoricalError(
            f"{path}: Tardis exchange id {exchange!r} is not read here; read are "
            f"{', '.join(TARDIS_VENUES)}")
    unified = derive_unified_symbol(venue, venue_symbol)
    if unified is None:
        raise HistoricalError(
            f"{path}: cannot derive a unified symbol from {exchange} {venue_symbol!r}")
    return venue, unified
