"""The post-mortem HTML report: one self-contained file with plotly charts per run.

plotly.js is inlined once (`include_plotlyjs=True` on the first figure), so the file opens
offline, e.g. on a trading host without internet. Series are downsampled to a few
thousand points, keeping each bucket's minimum and maximum so a drawdown or an inventory
spike stays visible, which keeps a million-decision run's report a few MB.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from daemon.postmortem.figures import RunSummary
from daemon.postmortem.performance import MarketSeries, Markout

MAX_POINTS = 4_000
#: Fills drawn as markers per market and side; more are thinned evenly (said in the legend).
MAX_FILL_MARKERS = 2_000
#: Halts, kills and rebalances drawn as vertical lines; all of them get a marker.
MAX_EVENT_LINES = 100
TIMELINE_BUCKETS = 200
ROW_TITLES = ("P&L (quote)", "Inventory (base)",
              "Portfolio value (quote): desk, and venue balances incl. funds in transit",
              "Decisions per interval; halts, kills and rebalances")
EVENT_COLOURS = {"kill": "#d62728", "max loss exit": "#9467bd", "halt": "#ff7f0e",
                 "rebalance": "#2ca02c"}
SIDE_STYLE = {"buy": ("#2ca02c", "triangle-up"), "sell": ("#d62728", "triangle-down")}


def downsample(ts: np.ndarray, values: np.ndarray, max_points: int = MAX_POINTS
               ) -> tuple[np.ndarray, np.ndarray]:
    """At most ~max_points points: each bucket's min and max, in time order."""
    count = len(values)
    if count <= max_points:
        return ts, values
    buckets = max_points // 2
    edges = np.linspace(0, count, buckets + 1).astype(np.int64)
    keep = [count - 1]
    for start, stop in itertools.pairwise(edges.tolist()):
        if stop > start:
            window = values[start:stop]
            keep.append(start + int(np.argmin(window)))
            keep.append(start + int(np.argmax(window)))
    index = np.unique(np.asarray(keep))
    return ts[index], values[index]


def downsample_steps(ts: np.ndarray, values: np.ndarray, max_points: int = MAX_POINTS
                     ) -> tuple[np.ndarray, np.ndarray]:
    """`downsample` for a step series with gaps (NaN): a bucket keeps its extremes and its
    first gap, so a stretch without our quotes stays visible."""
    count = len(values)
    if count <= max_points:
        return ts, values
    edges = np.linspace(0, count, (max_points - 1) // 3 + 1).astype(np.int64)
    keep = [count - 1]
    for start, stop in itertools.pairwise(edges.tolist()):
        keep.extend(start + i for i in _extremes_and_gap(values[start:stop]))
    index = np.unique(np.asarray(keep))
    return ts[index], values[index]


def _extremes_and_gap(window: np.ndarray) -> list[int]:
    gaps = np.flatnonzero(np.isnan(window))
    if len(gaps) == len(window):
        return [0] if len(window) else []
    kept = [int(np.nanargmin(window)), int(np.nanargmax(window))]
    return kept + ([int(gaps[0])] if len(gaps) else [])


def _thin(count: int, max_points: int = MAX_FILL_MARKERS) -> np.ndarray:
    """Evenly spaced indices, at most max_points of them."""
    if count <= max_points:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, max_points).astype(np.int64))


def _times(ts_ns: np.ndarray) -> np.ndarray:
    return np.asarray(ts_ns, dtype=np.int64).astype("datetime64[ns]")


def run_figure(summary: RunSummary) -> go.Figure:
    """P&L, inventory, portfolio value and the decision timeline, sharing the time axis."""
    series = summary.series
    figure = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                           subplot_titles=ROW_TITLES)
    if series is None:
        return figure
    ts, pnl = downsample(series.pnl_ts, series.pnl)
    figure.add_trace(go.Scatter(x=_times(ts), y=pnl, name="total P&L", mode="lines"),
                     row=1, col=1)
    ts, realised = downsample(series.realised_ts, series.realised)
    figure.add_trace(go.Scatter(x=_times(ts), y=realised, name="realised P&L", mode="lines",
                                line_shape="hv"), row=1, col=1)
    for symbol, (times, held) in series.inventory.items():
        times, held = downsample(times, held)
        figure.add_trace(go.Scatter(x=_times(times), y=held, name=f"{symbol} position",
                                    mode="lines", line_shape="hv"), row=2, col=1)
    _add_portfolio(figure, summary)
    _add_timeline(figure, series.decision_ts, series.decision_action)
    _add_events(figure, series.events_ts, series.events_kind, series.events_reason)
    figure.update_layout(height=1000, barmode="stack", hovermode="x unified",
                         title=f"{summary.strategy} — run {summary.run_id}",
                         margin={"l": 60, "r": 20, "t": 80, "b": 40})
    return figure


def _add_portfolio(figure: go.Figure, summary: RunSummary) -> None:
    """The desk's portfolio (internalize) and the venues' balances, funds in transit
    included (figures.portfolio_series); each labelled, they are different books."""
    series = summary.series
    assert series is not None
    if series.desk is not None:
        desk = series.desk
        ts, equity = downsample(desk.ts, desk.equity)
        figure.add_trace(go.Scatter(x=_times(ts), y=equity, mode="lines",
                                    name="desk portfolio (base + quote at mid)"), row=3, col=1)
    if len(series.portfolio_value):
        ts, value = downsample(series.portfolio_ts, series.portfolio_value)
        figure.add_trace(go.Scatter(x=_times(ts), y=value, mode="lines",
                                    name="venue balances incl. funds in transit"),
                         row=3, col=1)


def _add_events(figure: go.Figure, ts: np.ndarray, kinds: np.ndarray,
                reasons: np.ndarray) -> None:
    """Halts, kills and rebalances: a marker each on the timeline row, and a vertical line
    through every row (the first MAX_EVENT_LINES)."""
    if not len(ts):
        return
    names = [str(kind) for kind in kinds]
    colours = [EVENT_COLOURS.get(name.split(":")[0], "#7f7f7f") for name in names]
    for index in range(min(len(ts), MAX_EVENT_LINES)):
        figure.add_shape(type="line", x0=_times(ts[index:index + 1])[0],
                         x1=_times(ts[index:index + 1])[0], y0=0, y1=1, xref="x",
                         yref="paper", line={"color": colours[index], "dash": "dot",
                                             "width": 1})
    figure.add_trace(go.Scatter(
        x=_times(ts), y=np.zeros(len(ts)), mode="markers", name="halts, kills, rebalances",
        marker={"color": colours, "size": 11, "symbol": "x"},
        hovertext=[f"{name}: {reason}" for name, reason in zip(names, reasons, strict=True)],
        hoverinfo="text+x"), row=4, col=1)


def market_figure(market: MarketSeries) -> go.Figure:
    """One market: its bid and ask, our resting quotes as steps, our fills by side."""
    figure = go.Figure()
    for name, values in (("market bid", market.bid), ("market ask", market.ask)):
        ts, price = downsample(market.quote_ts, values)
        figure.add_trace(go.Scatter(x=_times(ts), y=price, name=name, mode="lines",
                                    line={"width": 1}, line_shape="hv", opacity=0.6))
    for side, (ts_all, price_all) in market.our_quotes.items():
        ts, price = downsample_steps(ts_all, price_all)
        figure.add_trace(go.Scatter(
            x=_times(ts), y=price, mode="lines", line_shape="hv", connectgaps=False,
            name=f"our {'bid' if side == 'buy' else 'ask'}",
            line={"color": SIDE_STYLE[side][0], "width": 2}))
    for (kind, side), (ts, price, qty) in market.fills.items():
        figure.add_trace(_fill_markers(kind, side, ts, price, qty))
    figure.update_layout(height=420, hovermode="closest",
                         title=f"{market.venue} {market.symbol}: market, our quotes and fills",
                         margin={"l": 60, "r": 20, "t": 60, "b": 40})
    return figure


def _fill_markers(kind: str, side: str, ts: np.ndarray, price: np.ndarray,
                  qty: np.ndarray) -> go.Scatter:
    keep = _thin(len(ts))
    colour, symbol = SIDE_STYLE[side]
    name = f"{'client fill, desk ' if kind == 'client' else 'our '}{side}"
    if len(keep) < len(ts):
        name += f" (every {len(ts) / len(keep):.0f}th of {len(ts):,})"
    return go.Scatter(
        x=_times(ts[keep]), y=price[keep], mode="markers", name=name,
        marker={"color": colour, "symbol": symbol if kind == "venue" else "circle-open",
                "size": 9, "line": {"width": 1}},
        hovertext=[f"{side} {q:g} @ {p:g}" for q, p in zip(qty[keep], price[keep],
                                                          strict=True)],
        hoverinfo="text+x")


def markout_figure(markouts: Sequence[Markout]) -> go.Figure:
    """Markout in bps of notional at each horizon, per kind of fill."""
    figure = go.Figure()
    for kind in sorted({m.kind for m in markouts}, reverse=True):
        mine = [m for m in markouts if m.kind == kind]
        figure.add_trace(go.Bar(
            x=[f"{m.horizon_s} s" for m in mine], y=[m.markout_bps for m in mine],
            name=f"{kind} fills", text=[f"{m.markout:,.2f} quote, {m.marked} fills"
                                        for m in mine]))
    figure.update_layout(height=320, barmode="group", yaxis_title="bps of notional",
                         title="Markouts: side x (mid after the horizon - fill price)",
                         margin={"l": 60, "r": 20, "t": 60, "b": 40})
    return figure


def _add_timeline(figure: go.Figure, ts: np.ndarray, actions: np.ndarray) -> None:
    """Stacked counts of decisions per action in equal time buckets."""
    if not len(ts):
        return
    start, stop = int(ts.min()), int(ts.max())
    edges = np.linspace(start, max(stop, start + 1), TIMELINE_BUCKETS + 1)
    centres = _times(((edges[:-1] + edges[1:]) / 2).astype(np.int64))
    for action in sorted(set(actions.tolist())):
        counts, _ = np.histogram(ts[actions == action], bins=edges)
        figure.add_trace(go.Bar(x=centres, y=counts, name=str(action)), row=4, col=1)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
caption { text-align: left; font-weight: bold; margin-bottom: 0.3em; }
"""


def _number(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _table(caption: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return (f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _time(ts_ns: int) -> str:
    return str(np.datetime64(int(ts_ns), "ns").astype("datetime64[ms]")).replace("T", " ")


def _headline_table(summaries: Sequence[RunSummary]) -> str:
    header = ("run", "strategy", "from (UTC)", "to (UTC)", "decisions", "fills", "volume",
              "fees", "realised", "unrealised", "total P&L", "max drawdown")
    rows = [(s.run_id, s.strategy, _time(s.run_start_ns), _time(s.run_end_ns),
             f"{s.decisions:,}", f"{s.fills:,}", _number(s.volume), _number(s.fees),
             _number(s.realised_pnl), _number(s.unrealised_pnl), _number(s.total_pnl),
             _number(s.max_drawdown)) for s in summaries]
    return _table("Runs (from/to: the run's first and last record)", header, rows)


def _performance_table(summaries: Sequence[RunSummary]) -> str:
    header = ("run", "strategy", "starting equity", "desk portfolio", "return on equity",
              "turnover", "Sharpe per day", "Sharpe annualised (x sqrt 365)",
              "sampled every", "intervals")
    rows = []
    for s in summaries:
        p = s.performance
        if p is None:
            continue
        rows.append((s.run_id, s.strategy, _number(p.starting_equity),
                     _number(s.desk_portfolio_value), _percent(p.return_on_equity),
                     _number(p.turnover, 4), _number(p.sharpe_per_day),
                     _number(p.sharpe_annualised),
                     f"{p.sharpe_interval_s:,} s" if p.sharpe_interval_s else "–",
                     f"{p.sharpe_intervals:,}"))
    return _table("Return, risk and turnover (Sharpe from the P&L curve sampled at equal "
                  "intervals, scaled to a day; annualised by sqrt(365): crypto trades "
                  "every day)", header, rows)


def _markout_table(summaries: Sequence[RunSummary]) -> str:
    header = ("run", "strategy", "fills", "horizon", "marked", "not marked (run ended)",
              "markout (quote)", "markout (bps)")
    rows = [(s.run_id, s.strategy, m.kind, f"{m.horizon_s} s", f"{m.marked:,}",
             f"{m.unmarked:,}", _number(m.markout), _number(m.markout_bps))
            for s in summaries if s.performance for m in s.performance.markouts]
    return _table("Markouts: side x (mid after the horizon - fill price); positive: the "
                  "market moved our way", header, rows)


def _percent(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4%}"


def _figures(summary: RunSummary) -> list[go.Figure]:
    """The run's figure, one per market, and its markouts."""
    figures = [run_figure(summary)]
    if summary.series is not None:
        figures += [market_figure(market) for market in summary.series.markets]
    if summary.performance is not None and summary.performance.markouts:
        figures.append(markout_figure(summary.performance.markouts))
    return figures


def report_html(summaries: Sequence[RunSummary], title: str, notes: Sequence[str] = ()) -> str:
    """The whole report as one HTML document (plotly.js inlined once)."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "".join(f"<p>{html.escape(note)}</p>" for note in notes),
        _headline_table(summaries), _performance_table(summaries), _markout_table(summaries),
    ]
    count = itertools.count()
    for index, summary in enumerate(summaries):
        parts.append(f"<h2>{html.escape(summary.strategy)} — {html.escape(summary.run_id)}"
                     f"</h2><p>{_time(summary.run_start_ns)} to {_time(summary.run_end_ns)} "
                     "UTC (the run's first and last record)</p>")
        for figure in _figures(summary):
            number = next(count)
            parts.append(figure.to_html(
                full_html=False, include_plotlyjs=number == 0,
                div_id=f"run-{index}-{number}",
                config={"responsive": True, "displaylogo": False}))
    parts.append("</body></html>")
    return "".join(parts)
