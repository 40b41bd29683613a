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

MAX_POINTS = 4_000
TIMELINE_BUCKETS = 200
ROW_TITLES = ("P&L (quote)", "Inventory (base)", "Portfolio value (quote)",
              "Decisions per interval")


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
    if len(series.portfolio_value):
        ts, value = downsample(series.portfolio_ts, series.portfolio_value)
        figure.add_trace(go.Scatter(x=_times(ts), y=value, name="portfolio value",
                                    mode="lines"), row=3, col=1)
    _add_timeline(figure, series.decision_ts, series.decision_action)
    figure.update_layout(height=1000, barmode="stack", hovermode="x unified",
                         title=f"{summary.strategy} — run {summary.run_id}",
                         margin={"l": 60, "r": 20, "t": 80, "b": 40})
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


def _headline_table(summaries: Sequence[RunSummary]) -> str:
    header = ("run", "strategy", "decisions", "fills", "volume", "fees", "realised",
              "unrealised", "total P&L", "max drawdown")
    rows = []
    for s in summaries:
        cells = (s.run_id, s.strategy, f"{s.decisions:,}", f"{s.fills:,}", _number(s.volume),
                 _number(s.fees), _number(s.realised_pnl), _number(s.unrealised_pnl),
                 _number(s.total_pnl), _number(s.max_drawdown))
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return (f"<table><caption>Runs</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def report_html(summaries: Sequence[RunSummary], title: str, notes: Sequence[str] = ()) -> str:
    """The whole report as one HTML document (plotly.js inlined once)."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "".join(f"<p>{html.escape(note)}</p>" for note in notes),
        _headline_table(summaries),
    ]
    for index, summary in enumerate(summaries):
        parts.append(f"<h2>{html.escape(summary.strategy)} — {html.escape(summary.run_id)}</h2>")
        parts.append(run_figure(summary).to_html(
            full_html=False, include_plotlyjs=index == 0,
            div_id=f"run-{index}", config={"responsive": True, "displaylogo": False},
        ))
    parts.append("</body></html>")
    return "".join(parts)
