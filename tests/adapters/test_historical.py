"""Historical data (Binance public data, Tardis.dev CSV) through the replay path.

Every file here is cut at test time from the real shared recordings
(tests/helpers/historical_files.py says what is derived); the expected events are what the
live parsers make of the same recorded frames.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.common.parsing import derive_unified_symbol
from adapters.historical.schemas import HistoricalError, tardis_market
from adapters.recordings.replay import (
    ReplayError,
    ReplayFeed,
    ReplaySpec,
    ReplayStats,
    parse_spec,
)
from adapters.venues import BinanceParser
from daemon.core.model import Quote, Trade
from daemon.core.routes import Callbacks
from tests.helpers.historical_files import (
    BOOK_TICKER_HEADER,
    TARDIS_L2_HEADER,
    TARDIS_QUOTES_HEADER,
    TARDIS_TRADES_HEADER,
    USDM_AGG_TRADES_HEADER,
    USDM_TRADES_HEADER,
    Frame,
    agg_trade_rows,
    book_ticker_rows,
    book_tops,
    local_ms,
    recorded_frames,
    tardis_l2_rows,
    tardis_quote_rows,
    tardis_snapshot_25,
    tardis_trade_rows,
    trade_rows,
    write_csv,
)

SPOT = "binance_spot_btcusdt_20240808.gz"
USDM = "binance_usdm_btcusdt_20240808.gz"
DAY = "2024-08-08"
SharedFile = Callable[[str], Path]


async def replay(*specs: ReplaySpec) -> tuple[ReplayStats, list[Quote | Trade]]:
    events: list[Quote | Trade] = []
    stats = await ReplayFeed(list(specs), events.append, events.append).run()
    return stats, events


def recording_of(path: Path, frames: list[Frame]) -> Path:
    """The frames as a recording (`<local ns> <frame>` lines), to replay as the reference."""
    path.write_bytes(gzip.compress(b"".join(b"%d %s\n" % (f.local_ns, f.line) for f in frames)))
    return path


async def recorded_events(tmp_path: Path, frames: list[Frame]) -> list[Quote | Trade]:
    return (await replay(ReplaySpec(recording_of(tmp_path / "reference.gz", frames))))[1]


def without_local_time(event: Quote | Trade) -> tuple[object, ...]:
    fields = [getattr(event, name) for name in event.__struct_fields__
              if name != "local_ts_ns"]
    return tuple(fields)


# --- Binance public data ------------------------------------------------------------------


@pytest.mark.parametrize("container", ["zip", "csv"])
@pytest.mark.parametrize("header", [True, False])
async def test_binance_book_ticker_gives_the_recorded_quotes(
    tmp_path: Path, shared_file: SharedFile, container: str, header: bool,
) -> None:
    frames = recorded_frames(shared_file(USDM), 300, ["bookTicker"])
    path = write_csv(tmp_path / f"BTCUSDT-bookTicker-{DAY}.{container}",
                     book_ticker_rows(frames), BOOK_TICKER_HEADER if header else None)
    stats, events = await replay(ReplaySpec(path))
    expected = await recorded_events(tmp_path, frames)
    assert len(events) == stats.quotes == 300 and stats.trades == 0
    assert [without_local_time(e) for e in events] == [without_local_time(e) for e in expected]
    # No receive time in the file: the event time E is the local time.
    assert [e.local_ts_ns for e in events] == [f.data["E"] * 1_000_000 for f in frames]
    assert events[0].exchange == "binance_usdm" and events[0].symbol == "BTC/USDT:USDT"
    assert stats.files[0].venues == {"binance_usdm"}
    assert stats.damage_summary() is None


@pytest.mark.parametrize(("recording", "spot", "header", "micros"), [
    (SPOT, True, False, False),  # spot: no header, ms (before 2025)
    (SPOT, True, False, True),  # spot from 2025: microseconds
    (USDM, False, True, False),  # USD-M: header row
    (USDM, False, False, False),  # USD-M before 2022: no header
])
async def test_binance_trades_give_the_recorded_trades(
    tmp_path: Path, shared_file: SharedFile, recording: str, spot: bool, header: bool,
    micros: bool,
) -> None:
    frames = recorded_frames(shared_file(recording), 200, ["trade"])
    rows = trade_rows(frames, spot=spot, micros=micros)
    path = write_csv(tmp_path / f"BTCUSDT-trades-{DAY}.zip", rows,
                     USDM_TRADES_HEADER if header else None)
    stats, events = await replay(ReplaySpec(path))
    expected = await recorded_events(tmp_path, frames)
    assert stats.trades == len(events) == 200
    # The file's one time (the trade time T) is both times of the trade.
    assert events == [Trade(e.exchange, e.symbol, e.price, e.qty, e.side, e.exchange_ts_ns,
                            e.exchange_ts_ns, e.trade_id) for e in expected]
    assert events[0].exchange == ("binance_spot" if spot else "binance_usdm")


@pytest.mark.parametrize(("recording", "spot", "header"), [
    (SPOT, True, False), (USDM, False, True), (USDM, False, False)])
async def test_binance_agg_trades_give_the_recorded_trades_as_aggregates(
    tmp_path: Path, shared_file: SharedFile, recording: str, spot: bool, header: bool,
) -> None:
    frames = recorded_frames(shared_file(recording), 150, ["trade"])
    path = write_csv(tmp_path / f"BTCUSDT-aggTrades-{DAY}.csv", agg_trade_rows(frames, spot),
                     USDM_AGG_TRADES_HEADER if header else None)
    stats, events = await replay(ReplaySpec(path))
    expected = await recorded_events(tmp_path, frames)
    assert stats.trades == 150
    assert [(e.price, e.qty, e.side, e.exchange_ts_ns, e.trade_id) for e in events] == [
        (e.price, e.qty, e.side, e.exchange_ts_ns, f"a{e.trade_id}") for e in expected]
    assert {e.symbol for e in events} == {"BTC/USDT" if spot else "BTC/USDT:USDT"}


async def test_a_malformed_row_is_skipped_and_counted(
    tmp_path: Path, shared_file: SharedFile,
) -> None:
    frames = recorded_frames(shared_file(USDM), 20, ["bookTicker"])
    rows = book_ticker_rows(frames)
    bad_price = rows[3].split(",")
    bad_price[1] = "not-a-price"
    rows[3] = ",".join(bad_price)  # right shape, wrong value: dropped by the parser
    rows[7] = rows[7].rsplit(",", 2)[0]  # two columns short: a corrupt line
    rows[9] = "x" + rows[9]  # an update id that is not a number: the time still reads
    path = write_csv(tmp_path / f"BTCUSDT-bookTicker-{DAY}.zip", rows, BOOK_TICKER_HEADER)
    stats, events = await replay(ReplaySpec(path))
    assert stats.quotes == len(events) == 17
    assert stats.files[0].corrupt_lines == 1
    assert stats.files[0].dropped == {"malformed_row": 2} == stats.dropped
    assert stats.files[0].lines == 21  # the header and 20 rows
    summary = stats.damage_summary()
    assert summary is not None and "1 corrupt lines" in summary and "malformed_row 2" in summary


async def test_a_renamed_binance_file_needs_its_symbol_and_takes_it_from_the_spec(
    tmp_path: Path, shared_file: SharedFile,
) -> None:
    frames = recorded_frames(shared_file(USDM), 10, ["bookTicker"])
    path = write_csv(tmp_path / "tickers.csv", book_ticker_rows(frames))
    with pytest.raises(ReplayError, match=r"tickers.csv: cannot tell the symbol .*@VENUE:SYMBOL"):
        await replay(ReplaySpec(path))
    stats, events = await replay(parse_spec(f"{path}@binance_usdm:BTC/USDT:USDT"))
    assert stats.quotes == 10 and {e.symbol for e in events} == {"BTC/USDT:USDT"}


async def test_historical_files_merge_by_time_with_each_other(
    tmp_path: Path, shared_file: SharedFile,
) -> None:
    frames = recorded_frames(shared_file(USDM), 400)
    tickers = write_csv(tmp_path / f"BTCUSDT-bookTicker-{DAY}.zip", book_ticker_rows(frames))
    trades = write_csv(tmp_path / f"BTCUSDT-trades-{DAY}.zip", trade_rows(frames, spot=False))
    stats, events = await replay(ReplaySpec(tickers), ReplaySpec(trades))
    assert stats.quotes + stats.trades == 400 and stats.quotes > 0 and stats.trades > 0
    times = [e.local_ts_ns for e in events]
    assert times == sorted(times)


# --- Tardis.dev ---------------------------------------------------------------------------


@pytest.mark.parametrize(("recording", "exchange", "venue", "symbol"), [
    (USDM, "binance-futures", "binance_usdm", "BTC/USDT:USDT"),
    (SPOT, "binance", "binance_spot", "BTC/USDT")])
async def test_tardis_quotes_and_trades_give_the_recorded_events(
    tmp_path: Path, shared_file: SharedFile, recording: str, exchange: str, venue: str,
    symbol: str,
) -> None:
    frames = recorded_frames(shared_file(recording), 500)
    quotes = write_csv(tmp_path / f"{exchange}_quotes_{DAY}_BTCUSDT.csv.gz",
                       tardis_quote_rows(frames, exchange), TARDIS_QUOTES_HEADER)
    trades = write_csv(tmp_path / f"{exchange}_trades_{DAY}_BTCUSDT.csv.gz",
                       tardis_trade_rows(frames, exchange), TARDIS_TRADES_HEADER)
    stats, events = await replay(ReplaySpec(quotes), ReplaySpec(trades))
    expected = await recorded_events(tmp_path, frames)
    assert stats.quotes + stats.trades == 500 == len(events)
    # Tardis's local_timestamp is the recorded receive time (to the microsecond).
    key = sorted
    assert key((e.local_ts_ns, type(e).__name__) for e in events) == key(
        (e.local_ts_ns // 1000 * 1000, type(e).__name__) for e in expected)
    assert {(e.exchange, e.symbol) for e in events} == {(venue, symbol)}
    assert [f.venues for f in stats.files] == [{venue}, {venue}]
    got_quotes = [(q.bid, q.bid_qty, q.ask, q.ask_qty) for q in events if type(q) is Quote]
    assert got_quotes == [(q.bid, q.bid_qty, q.ask, q.ask_qty) for q in expected
                          if type(q) is Quote]
    got_trades = [(t.price, t.qty, t.side, t.trade_id, t.exchange_ts_ns) for t in events
                  if type(t) is Trade]
    assert got_trades == [(t.price, t.qty, t.side, t.trade_id, t.exchange_ts_ns)
                          for t in expected if type(t) is Trade]


async def test_tardis_rows_with_bad_values_are_skipped_and_counted(
    tmp_path: Path, shared_file: SharedFile,
) -> None:
    frames = recorded_frames(shared_file(USDM), 200, ["trade"])
    rows = tardis_trade_rows(frames, "binance-futures")
    rows[2] = rows[2].replace(",sell,", ",unknown,").replace(",buy,", ",unknown,")
    cells = rows[5].split(",")
    cells[6] = "-1"  # a negative price
    rows[5] = ",".join(cells)
    rows[8] = rows[8] + ",extra"  # one column too many
    path = write_csv(tmp_path / f"binance-futures_trades_{DAY}_BTCUSDT.csv.gz", rows,
                     TARDIS_TRADES_HEADER)
    stats, events = await replay(ReplaySpec(path))
    assert stats.trades == len(events) == 197
    assert stats.dropped == {"unknown_side": 1, "malformed_row": 1}
    assert stats.files[0].corrupt_lines == 1


def changes(tops: list[tuple[float, float, float, float]]
            ) -> list[tuple[float, float, float, float]]:
    """Consecutive repeats removed: what a book that publishes changes of its top shows."""
    return [top for i, top in enumerate(tops) if i == 0 or tops[i - 1] != top]


async def test_tardis_incremental_book_l2_publishes_the_changes_of_the_top(
    tmp_path: Path, shared_file: SharedFile,
) -> None:
    frames = recorded_frames(shared_file(USDM), 400, ["snapshot", "depth"])
    rows = tardis_l2_rows(frames[:40], "binance-futures", "BTCUSDT")
    # Rows before the first snapshot are skipped, as Tardis says to.
    early = [row.replace("true", "false") for row in rows[:3]]
    early = [",".join([*r.split(",")[:3], str(int(r.split(",")[3]) - 1), *r.split(",")[4:]])
             for r in early]
    rows = early + tardis_l2_rows(frames, "binance-futures", "BTCUSDT")
    path = write_csv(tmp_path / f"binance-futures_incremental_book_L2_{DAY}_BTCUSDT.csv.gz",
                     rows, TARDIS_L2_HEADER)
    stats, events = await replay(ReplaySpec(path))
    tops = changes(book_tops(frames))  # the snapshot's top, then each change
    assert len(tops) > 20
    assert [(q.bid, q.bid_qty, q.ask, q.ask_qty) for q in events] == tops
    assert stats.dropped["before_snapshot"] == 1
    # The live Binance parser's depth book agrees once the REST snapshot's first top is
    # published (it then also applies diffs buffered before the snapshot, which a Tardis
    # file, snapshot first, does not have).
    live: list[Quote] = []
    parser = BinanceParser("binance_usdm", Callbacks(live.append), depth_quotes=True)
    for frame in frames:
        parser.feed(frame.line, frame.local_ns)
    assert (live[0].bid, live[0].bid_qty, live[0].ask, live[0].ask_qty) == tops[0]
    assert (live[-1].bid, live[-1].ask) == (events[-1].bid, events[-1].ask)
    assert all(type(q) is Quote and q.symbol == "BTC/USDT:USDT" and not q.crossed
               for q in events)


async def test_tardis_book_snapshot_25_publishes_its_top(
    tmp_path: Path, shared_file: SharedFile,
) -> None:
    frames = recorded_frames(shared_file(USDM), 300, ["snapshot", "depth"])
    header, rows = tardis_snapshot_25(frames, "binance-futures", "BTCUSDT")
    path = write_csv(tmp_path / f"binance-futures_book_snapshot_25_{DAY}_BTCUSDT.csv.gz",
                     rows, header)
    stats, events = await replay(ReplaySpec(path))
    tops = changes(book_tops(frames)[1:])  # a row per diff: the snapshot alone has none
    assert len(tops) > 20
    assert [(q.bid, q.bid_qty, q.ask, q.ask_qty) for q in events] == tops
    assert stats.quotes == len(tops) and stats.counts["top_unchanged"] == len(rows) - len(tops)


def test_tardis_exchange_ids_map_to_the_daemons_venues() -> None:
    path = Path("x.csv.gz")
    assert tardis_market(path, "binance", "BTCUSDT") == ("binance_spot", "BTC/USDT")
    assert tardis_market(path, "binance-futures", "BTCUSDT") == ("binance_usdm",
                                                                 "BTC/USDT:USDT")
    assert tardis_market(path, "bybit", "BTCUSDT") == ("bybit_linear", "BTC/USDT:USDT")
    assert tardis_market(path, "bybit-spot", "BTCUSDT") == ("bybit_spot", "BTC/USDT")
    for exchange, symbol in (("binance-delivery", "BTCUSD_PERP"), ("bybit", "BTCUSD")):
        with pytest.raises(HistoricalError, match="inverse contracts are not supported"):
            tardis_market(path, exchange, symbol)
    with pytest.raises(HistoricalError, match="'deribit' is not read here"):
        tardis_market(path, "deribit", "BTC-PERPETUAL")


# --- Binance COIN-M: refused, never mislabelled ----------------------------------------------


def coinm_recording(path: Path, frames: list[Frame]) -> Path:
    """Recorded USD-M frames in the shape Binance's COIN-M stream sends (stream
    `btcusd_perp@...`, symbol `BTCUSD_PERP`, bookTicker with its pair `ps`)."""
    lines = []
    for frame in frames:
        line = frame.line.replace(b"btcusdt@", b"btcusd_perp@").replace(
            b'"s":"BTCUSDT"', b'"s":"BTCUSD_PERP","ps":"BTCUSD"')
        lines.append(b"%d %s\n" % (frame.local_ns, line))
    path.write_bytes(gzip.compress(b"".join(lines)))
    return path


async def test_a_coin_m_recording_is_refused_naming_the_file(
    tmp_path: Path, shared_file: SharedFile,
) -> None:
    path = coinm_recording(tmp_path / "binance_usdm_btcusd_perp.gz",
                           recorded_frames(shared_file(USDM), 50))
    with pytest.raises(ReplayError) as refused:
        await replay(ReplaySpec(path))
    message = str(refused.value)
    assert str(path) in message and "COIN-M" in message
    assert "inverse contracts are not supported" in message and "\n" not in message
    # Even a parser handed such a frame never names it a USDC perpetual.
    assert derive_unified_symbol("binance_usdm", "BTCUSD_PERP") is None


async def test_coin_m_historical_files_are_refused(tmp_path: Path, shared_file: SharedFile,
                                                   ) -> None:
    frames = recorded_frames(shared_file(USDM), 10)
    path = write_csv(tmp_path / f"BTCUSD_PERP-bookTicker-{DAY}.zip", book_ticker_rows(frames))
    with pytest.raises(ReplayError, match=r"BTCUSD_PERP.*COIN-M.*inverse contracts are not"):
        await replay(ReplaySpec(path))
    rows = [r.replace("binance-futures,BTCUSDT", "binance-delivery,BTCUSD_PERP")
            for r in tardis_quote_rows(frames, "binance-futures")]
    path = write_csv(tmp_path / f"binance-delivery_quotes_{DAY}_BTCUSD_PERP.csv.gz", rows,
                     TARDIS_QUOTES_HEADER)
    with pytest.raises(ReplayError, match="inverse contracts are not supported"):
        await replay(ReplaySpec(path))


def test_local_ms_is_the_recorded_receive_time(shared_file: SharedFile) -> None:
    frame = recorded_frames(shared_file(USDM), 1)[0]
    assert local_ms(frame) == frame.local_ns // 1_000_000
