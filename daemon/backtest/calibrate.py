"""Slippage calibration: the formulaic coefficient vs walking real recorded depth.

The internalize strategy prices a hedge of `q` base units at the touch moved by
`slippage_coefficient * q` (a fraction of the touch per base unit). Here every client
fill is replayed against the depth book recorded at its time (Binance: REST snapshot +
`@depth` diffs, synced by `adapters.binance.parser.BinanceParser`; Bybit: the
`orderbook.N` snapshot + deltas, by `BybitParser`; `--mode record` records both with
`record.depth = true`): the hedge side is
the client's own side (the desk redoes the client's trade), the book is walked for the
fill's size, and

    walked slippage  = side * (walked average price / touch - 1)    (fraction of the touch)
    formula slippage = slippage_coefficient * qty

are compared per fill. The fitted coefficient is the least-squares slope through the
origin of walked slippage on size, `b = sum(q*s) / sum(q^2)` (slippage is zero for a zero
size by definition). `R^2 = 1 - SSR / SST` around the mean (can be negative when a line
through the origin fits worse than the mean). Fills whose size exceeds the visible depth
are reported ("beyond_book") and left out of the fit.

`--mode calibrate --data RECORDING.gz` (daemon/modes/calibrate.py) prints the comparison
(rich tables on a terminal, plain aligned text when piped), the fitted coefficient and the
setting that applies it, and writes `slippage_comparison_vs_orderbook.csv` (the seed's file
name) under the run's report folder, `<data_dir>/reports/<run_id>/`.
"""

from __future__ import annotations

import bisect
import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.settings import ConfigError
from daemon.core.model import ClientFill, Quote, Side, Trade, venue_symbol

if TYPE_CHECKING:
    from rich.console import Console

    from adapters.binance.parser import BinanceParser
    from adapters.bybit.parser import BybitParser
    from adapters.common.parsing import L2Book

    DepthParser = BinanceParser | BybitParser

SLIPPAGE_CSV = "slippage_comparison_vs_orderbook.csv"
#: Depth books come from the Binance parser (spot and USD-M recordings).
BINANCE_VENUES = ("binance_spot", "binance_usdm")
#: Bybit's order-book topics, deepest first (`orderbook.<N>.<SYMBOL>`).
BYBIT_VENUES = ("bybit_spot", "bybit_linear")
BYBIT_BOOK_DEPTHS = (1000, 500, 200, 50)
DEPTH_VENUES = BINANCE_VENUES + BYBIT_VENUES
COEFFICIENT_SETTING = "strategies.internalize.slippage_coefficient"
COEFFICIENT_ENV = "CRYPTOPIPE_STRATEGIES__INTERNALIZE__SLIPPAGE_COEFFICIENT"
#: Rows shown in the printed table (all of them go to the CSV).
TABLE_ROWS = 25


@dataclass(slots=True)
class SlippageRow:
    """One client fill against the recorded book at its time."""

    ts_ns: int
    fill_id: str
    side: str  # the hedge's taker side (= the client's side)
    qty: float
    touch: float
    walked_price: float  # NaN when the visible book is too thin
    walked_slippage: float  # fraction of the touch
    formula_price: float
    formula_slippage: float  # fraction of the touch
    difference: float  # walked - formula, fraction of the touch
    levels: int  # book levels on the walked side at the time

    @property
    def beyond_book(self) -> bool:
        return math.isnan(self.walked_price)


@dataclass(slots=True)
class SlippageCalibration:
    symbol: str
    configured_coefficient: float
    rows: list[SlippageRow] = field(default_factory=list)
    fitted_coefficient: float = math.nan
    r_squared: float = math.nan
    #: Fills before the book synced or after the recording ended.
    outside_recording: int = 0

    @property
    def fitted_rows(self) -> list[SlippageRow]:
        return [row for row in self.rows if not row.beyond_book]

    @property
    def beyond_book(self) -> int:
        return sum(row.beyond_book for row in self.rows)

    @property
    def mean_abs_difference(self) -> float:
        used = self.fitted_rows
        return sum(abs(r.difference) for r in used) / len(used) if used else math.nan


def fit_through_origin(sizes: list[float], slippages: list[float]) -> tuple[float, float]:
    """(slope, R^2) of least squares `slippage = slope * size` (no intercept)."""
    sum_xx = sum(x * x for x in sizes)
    if not sizes or sum_xx <= 0.0:
        return math.nan, math.nan
    slope = sum(x * y for x, y in zip(sizes, slippages, strict=True)) / sum_xx
    mean_y = sum(slippages) / len(slippages)
    total = sum((y - mean_y) ** 2 for y in slippages)
    residual = sum((y - slope * x) ** 2 for x, y in zip(sizes, slippages, strict=True))
    return slope, (1.0 - residual / total) if total > 0.0 else math.nan


# --- replaying the recording ---------------------------------------------------------------------


def _parser(venue: str, books: bool, quotes: list[Quote] | None = None) -> DepthParser:
    from adapters.venues import make_parser
    from daemon.core.routes import Callbacks

    def keep(quote: Quote) -> None:
        if quotes is not None:
            quotes.append(quote)

    def ignore(trade: Trade) -> None:
        return None

    return make_parser(venue, Callbacks(keep, ignore), books=books)


def _synced_book(parser: DepthParser, wanted: str) -> L2Book | None:
    """The synced depth book of venue symbol `wanted` in a parser, if it has one."""
    from adapters.binance.parser import BinanceParser

    if isinstance(parser, BinanceParser):
        return parser.book(wanted) if parser.in_sync(wanted) else None
    for depth in BYBIT_BOOK_DEPTHS:  # orderbook.1 is the touch alone: nothing to walk
        topic = f"orderbook.{depth}.{wanted}"
        if parser.in_sync(topic):
            return parser.book(topic)
    return None


def _frames(recording: Path) -> Iterator[tuple[int, bytes, str]]:
    from adapters.recordings.replay import ReplayError, iter_frames

    try:
        for ts_ns, frame, meta in iter_frames(recording):
            if meta.session is None:
                yield ts_ns, frame, meta.venue
    except ReplayError as exc:
        raise ConfigError(f"invalid setting --data: {exc}") from None


def recorded_mids(recording: Path, symbol: str) -> tuple[list[int], list[float]]:
    """(local ts, mid) of every recorded top-of-book quote of `symbol`, in time order."""
    quotes: list[Quote] = []
    parsers: dict[str, DepthParser] = {}
    for ts_ns, frame, venue in _frames(recording):
        if venue not in DEPTH_VENUES:
            continue
        parser = parsers.get(venue) or parsers.setdefault(venue, _parser(venue, False, quotes))
        parser.feed(frame, ts_ns)
    picked = [q for q in quotes if q.symbol == symbol]
    return [q.local_ts_ns for q in picked], [q.mid for q in picked]


def calibrate_slippage(recording: Path, fills: Iterable[ClientFill], symbol: str,
                       coefficient: float) -> SlippageCalibration:
    """Walk the recorded depth book for every fill at its time (fills in time order)."""
    result = SlippageCalibration(symbol, coefficient)
    pending = sorted(fills, key=lambda fill: fill.ts_ns)
    wanted = venue_symbol(symbol)
    parsers: dict[str, DepthParser] = {}
    synced = False
    index = 0
    for ts_ns, frame, venue in _frames(recording):
        # Each fill sees the book as it stood just before the first frame after its time.
        while index < len(pending) and pending[index].ts_ns < ts_ns:
            synced |= _walk_fill(result, pending[index], parsers, wanted, coefficient)
            index += 1
        if venue not in DEPTH_VENUES:
            continue
        parser = parsers.get(venue) or parsers.setdefault(venue, _parser(venue, True))
        parser.feed(frame, ts_ns)
    result.outside_recording += len(pending) - index
    if not synced and not any(_synced_book(p, wanted) for p in parsers.values()):
        raise ConfigError(
            f"invalid setting --data: {recording} holds no depth book for {symbol} "
            "(Binance depth diffs with a snapshot, or Bybit orderbook.50+: record with "
            "CRYPTOPIPE_RECORD__DEPTH=true; set strategies.internalize.symbol to the "
            "recorded symbol)"
        )
    used = result.fitted_rows
    result.fitted_coefficient, result.r_squared = fit_through_origin(
        [row.qty for row in used], [row.walked_slippage for row in used])
    return result


def _walk_fill(result: SlippageCalibration, fill: ClientFill,
               parsers: dict[str, DepthParser], wanted: str, coefficient: float) -> bool:
    """One fill against the book of the moment; False if no book was synced then."""
    books = (_synced_book(parser, wanted) for parser in parsers.values())
    book = next((found for found in books if found is not None), None)
    top = book.top() if book is not None else None
    if book is None or top is None:
        result.outside_recording += 1
        return False
    side = fill.side
    sign = side.sign
    touch = top[2] if side is Side.BUY else top[0]
    walked = book.walk(str(side), fill.qty)
    walked_price = math.nan if walked is None else walked
    walked_slippage = sign * (walked_price / touch - 1.0) + 0.0  # + 0.0: no -0.0 on sells
    formula_slippage = coefficient * fill.qty
    result.rows.append(SlippageRow(
        ts_ns=fill.ts_ns, fill_id=fill.fill_id, side=str(side), qty=fill.qty, touch=touch,
        walked_price=walked_price, walked_slippage=walked_slippage,
        formula_price=touch * (1.0 + sign * formula_slippage),
        formula_slippage=formula_slippage, difference=walked_slippage - formula_slippage,
        levels=len(book.asks if side is Side.BUY else book.bids),
    ))
    return True


# --- the flow to calibrate on ---------------------------------------------------------------------


def calibration_fills(settings: Any, recording: Path) -> list[ClientFill]:
    """The configured flow over the recording: the file's fills, or synthetic ones."""
    from adapters.client_flow import FileFlowSource, SyntheticFlowSource

    own = settings.strategies.internalize
    if own.source == "file":
        if own.file is None:
            raise ConfigError("invalid setting strategies.internalize.file: source 'file' "
                              "needs a CSV path")
        return list(FileFlowSource(Path(own.file), own.symbol))
    if own.source != "synthetic":
        raise ConfigError("invalid setting strategies.internalize.source: calibrate needs "
                          "recorded fills ('file') or 'synthetic' flow, not a live ingest")
    times, mids = recorded_mids(recording, own.symbol)
    if not times:
        raise ConfigError(f"invalid setting --data: {recording} holds no quotes for "
                          f"{own.symbol} (set strategies.internalize.symbol)")

    def mid_at(ts_ns: int) -> float | None:
        at = bisect.bisect_right(times, ts_ns) - 1
        return mids[at] if at >= 0 else None

    source = SyntheticFlowSource(own.symbol, own.synthetic_rate_hz, own.synthetic_mean_qty,
                                 own.seed, own.synthetic_markup_bps)
    return list(source.generate(times[0], times[-1], mid_at))


# --- output ---------------------------------------------------------------------------------


def write_slippage_csv(result: SlippageCalibration, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / SLIPPAGE_CSV
    columns = [f.name for f in fields(SlippageRow)]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in result.rows:
            writer.writerow([getattr(row, name) for name in columns])
    return path


def fit_summary(result: SlippageCalibration) -> list[tuple[str, str]]:
    """(measure, value) lines of the fit, for the table and the plain text alike."""
    return [
        ("fills walked", f"{len(result.fitted_rows)}"),
        ("beyond the visible book", f"{result.beyond_book}"),
        ("outside the recording / book not synced", f"{result.outside_recording}"),
        ("configured coefficient (fraction per base unit)",
         f"{result.configured_coefficient:.6g}"),
        ("fitted coefficient (fraction per base unit)", f"{result.fitted_coefficient:.6g}"),
        ("R^2 of the fit", f"{result.r_squared:.4f}"),
        ("mean |walked - formula| (bps)", _bps(result.mean_abs_difference)),
    ]


def how_to_apply(result: SlippageCalibration) -> list[str]:
    """The lines that say how to use the fitted coefficient (or why there is none)."""
    fitted = result.fitted_coefficient
    if not math.isfinite(fitted) or fitted < 0:
        return [f"no coefficient fitted (no fill walked the book); {COEFFICIENT_SETTING} "
                f"stays {result.configured_coefficient:.6g}"]
    return [f"apply it: {COEFFICIENT_ENV}={fitted:.6g}",
            f"   or in a --config TOML file: [strategies.internalize] "
            f"slippage_coefficient = {fitted:.6g}"]


def _row_cells(row: SlippageRow) -> list[str]:
    return [_utc(row.ts_ns), row.side, f"{row.qty:.6f}", f"{row.touch:.2f}",
            "beyond book" if row.beyond_book else f"{row.walked_price:.2f}",
            _bps(row.walked_slippage), _bps(row.formula_slippage), _bps(row.difference)]


_COLUMNS = ("time (UTC)", "side", "qty", "touch", "walked avg", "walked bps", "formula bps",
            "diff bps")


def _title(result: SlippageCalibration) -> str:
    return (f"Slippage: formula vs recorded depth, {result.symbol} "
            f"({len(result.rows)} fills, first {min(TABLE_ROWS, len(result.rows))})")


def calibration_text(result: SlippageCalibration) -> str:
    """The comparison as plain aligned text (no markup, no box drawing): for pipes and logs."""
    rows = [list(_COLUMNS)] + [_row_cells(row) for row in result.rows[:TABLE_ROWS]]
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(_COLUMNS))]
    lines = [_title(result)]
    for cells in rows:
        lines.append("  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(cells, widths,
                                                                     strict=True))).rstrip())
    summary = fit_summary(result)
    width = max(len(name) for name, _ in summary)
    lines += ["", "Fit: walked slippage = coefficient x size (least squares)"]
    lines += [f"{name.ljust(width)}  {value}" for name, value in summary]
    return "\n".join([*lines, "", *how_to_apply(result)])


def print_calibration(result: SlippageCalibration, console: Console) -> None:
    """Rich tables on a terminal; the plain text of `calibration_text` anywhere else."""
    if not console.is_terminal:
        console.print(calibration_text(result), markup=False, highlight=False,
                      soft_wrap=True)
        return
    from rich.table import Table

    table = Table(title=_title(result))
    for name in _COLUMNS:
        table.add_column(name, justify="left" if name in ("time (UTC)", "side") else "right")
    for row in result.rows[:TABLE_ROWS]:
        table.add_row(*_row_cells(row))
    console.print(table)
    summary = Table(title="Fit: walked slippage = coefficient x size (least squares)")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    for name, value in fit_summary(result):
        summary.add_row(name, value)
    console.print(summary)
    for line in how_to_apply(result):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _bps(fraction: float) -> str:
    if math.isnan(fraction):
        return "nan"
    bps = fraction * 1e4
    return f"{bps if abs(bps) >= 0.0005 else 0.0:.3f}"  # no "-0.000" from float noise


def _utc(ts_ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


# --- the library entry ----------------------------------------------------------------------------


def run_calibration(settings: Any, recording: Path, console: Console,
                    directory: Path | None = None) -> SlippageCalibration:
    """Library entry: fills from the settings, walk the recording, print, write the CSV
    under `directory` (the mode passes the run's report folder; default `data_dir`)."""
    own = settings.strategies.internalize
    fills = calibration_fills(settings, recording)
    result = calibrate_slippage(recording, fills, own.symbol, own.slippage_coefficient)
    print_calibration(result, console)
    path = write_slippage_csv(result, Path(directory or settings.data_dir))
    console.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)
    print_arrivals_fit(recording, own.symbol, console)
    return result


def print_arrivals_fit(recording: Path, symbol: str, console: Console) -> None:
    """The Hawkes fit of the recording's taker arrivals, as quoted-flow settings."""
    from adapters.quoted_flow import fit_recording

    try:
        fit = fit_recording(recording, symbol)
    except ValueError as exc:  # too few trades of the symbol to fit
        console.print(f"client arrivals: no Hawkes fit ({exc})", markup=False,
                      highlight=False, soft_wrap=True)
        return
    params = fit.hawkes.params
    console.print(
        f"client arrivals: Hawkes fit of {fit.trades:,} recorded trades "
        f"({fit.hawkes.arrivals:,} taker arrivals): {params.mean_rate_hz:.3g}/s, branching "
        f"ratio {params.branching_ratio:.3f}, decay {params.beta:.3g}/s; for the quoted "
        f"flow: quoted_arrivals = \"hawkes\", quoted_hawkes_branching = "
        f"{params.branching_ratio:.3f}, quoted_hawkes_decay_per_s = {params.beta:.3g} "
        "(strategies.internalize; the mean rate stays synthetic_rate_hz)",
        markup=False, highlight=False, soft_wrap=True)
