"""A sweep's ranking as rows, `sweep.csv` and `sweep.html` in `data_dir/reports/<sweep-id>/`.

One row per run: its phase ("grid"; with a walk-forward split "train" for the grid on
the train span and "test" for the chosen combination on the test span), its rank by the
criterion (test: none), run id, the grid's values, then P&L, Sharpe per day, max drawdown,
fills, fees and mean |inventory| as the post-mortem computes them from the run's decision
log, and whether the run ran now, had finished before (a resumed sweep) or failed.

The HTML page (plotly, inlined as the post-mortem report's): for one setting P&L by its
value; for two a heatmap of P&L over both; for more, parallel coordinates of every
setting and P&L; then the ranking as a table.
"""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.backtest.sweep import Axis, RunFigures

CSV_NAME = "sweep.csv"
HTML_NAME = "sweep.html"
FIGURE_COLUMNS = ("pnl", "sharpe", "max_drawdown", "fills", "fees", "mean_abs_inventory")
HEADERS = {"pnl": "P&L", "sharpe": "Sharpe/day", "max_drawdown": "max drawdown",
           "fills": "fills", "fees": "fees", "mean_abs_inventory": "mean |inventory|"}


@dataclass(slots=True)
class SweepRow:
    phase: str  # "grid", "train" or "test"
    rank: int | None
    values: tuple[Any, ...]
    figures: RunFigures
    status: str  # "ran", "finished before", "failed: ..."

    def cells(self) -> dict[str, Any]:
        figures = self.figures
        return {"pnl": figures.pnl, "sharpe": figures.sharpe,
                "max_drawdown": figures.max_drawdown, "fills": figures.fills,
                "fees": figures.fees, "mean_abs_inventory": figures.mean_abs_inventory}

    def as_dict(self, axes: Sequence[Axis]) -> dict[str, Any]:
        return {"phase": self.phase, "rank": self.rank, "run_id": self.figures.run_id,
                **{axis.name: value for axis, value in zip(axes, self.values, strict=True)},
                **self.cells(), "status": self.status}


def number(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def table_rows(rows: Sequence[SweepRow], axes: Sequence[Axis]
               ) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of the ranking, as the terminal and the HTML show it (the
    phase only for a walk-forward; a setting's value as given, never rounded)."""
    phases = any(row.phase != "grid" for row in rows)
    header = [*(["phase"] if phases else []), "rank", "run", *(axis.name for axis in axes),
              *(HEADERS[name] for name in FIGURE_COLUMNS), "status"]
    body = [[*([row.phase] if phases else []), "" if row.rank is None else str(row.rank),
             row.figures.run_id, *(_setting(value) for value in row.values),
             *(number(value, 0 if name == "fills" else 4) for name, value in row.cells().items()),
             row.status] for row in rows]
    return header, body


def _setting(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_csv(rows: Sequence[SweepRow], axes: Sequence[Axis], path: Path) -> Path:
    """Every row, numbers in full (NaN as an empty cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        fields = ["phase", "rank", "run_id", *(axis.name for axis in axes), *FIGURE_COLUMNS,
                  "status"]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if isinstance(value, float) and math.isnan(value)
                             else value for key, value in row.as_dict(axes).items()})
    return path


def write_html(rows: Sequence[SweepRow], axes: Sequence[Axis], path: Path, title: str,
               notes: Sequence[str] = ()) -> Path:
    """The chart of P&L over the grid (see the module docstring) and the ranking."""
    grid_rows = [row for row in rows if row.phase != "test"]
    figure = _figure(grid_rows, axes)
    header, body = table_rows(rows, axes)
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in line)
                    + "</tr>" for line in body)
    page = [
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "".join(f"<p>{html.escape(note)}</p>" for note in notes),
        figure.to_html(full_html=False, include_plotlyjs=True, div_id="sweep-pnl",
                       config={"responsive": True, "displaylogo": False}),
        f"<table><caption>Ranking</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{cells}</tbody></table>",
        "</body></html>",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(page), encoding="utf-8")
    return path


def _figure(rows: Sequence[SweepRow], axes: Sequence[Axis]) -> Any:
    import plotly.graph_objects as go

    pnl = {row.values: row.figures.pnl for row in rows}
    if len(axes) == 1:
        axis = axes[0]
        figure = go.Figure(go.Bar(x=[str(v) for v in axis.values],
                                  y=[_nan_none(pnl.get((v,))) for v in axis.values]))
        figure.update_layout(title="P&L by " + axis.name, xaxis_title=axis.name,
                             yaxis_title="P&L")
        return figure
    if len(axes) == 2:
        across, down = axes
        z = [[_nan_none(pnl.get((x, y))) for x in across.values] for y in down.values]
        figure = go.Figure(go.Heatmap(
            x=[str(v) for v in across.values], y=[str(v) for v in down.values], z=z,
            colorscale="RdYlGn", zmid=0, colorbar={"title": "P&L"},
            texttemplate="%{z:.4f}", hovertemplate=(
                f"{across.name}=%{{x}}<br>{down.name}=%{{y}}<br>P&L %{{z}}<extra></extra>")))
        figure.update_layout(title=f"P&L over {across.name} x {down.name}",
                             xaxis_title=across.name, yaxis_title=down.name)
        return figure
    dimensions = [_dimension(axis.name, [row.values[i] for row in rows])
                  for i, axis in enumerate(axes)]
    values = [_nan_none(row.figures.pnl) for row in rows]
    dimensions.append({"label": "P&L", "values": values})
    figure = go.Figure(go.Parcoords(line={"color": values, "colorscale": "RdYlGn",
                                          "showscale": True}, dimensions=dimensions))
    figure.update_layout(title="P&L over the grid (one line per combination)")
    return figure


def _dimension(name: str, values: list[Any]) -> dict[str, Any]:
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return {"label": name, "values": values}
    labels = sorted({str(v) for v in values})
    return {"label": name, "values": [labels.index(str(v)) for v in values],
            "tickvals": list(range(len(labels))), "ticktext": labels}


def _nan_none(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


_STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;"
          "margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
          "caption{font-weight:bold;text-align:left}")
