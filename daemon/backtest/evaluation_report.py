"""What `--mode evaluate` writes and prints: the terminal tables, the CSVs, the HTML chart.

Files, in `data_dir/reports/<run-id>/` (the post-mortem's report folder):

- `evaluation.csv`: one row per policy and seed (its run id: that run's decision log), then
  one summary row per policy (`seed` = "mean": every figure's mean over the seeds, and
  `pnl_std`, the P&L's standard deviation across seeds);
- `evaluation_differences.csv`: the agent minus each baseline, per metric (P&L in USDT and
  bps), over the seeds: mean, bootstrap 95 % interval (low, high), share of seeds better;
- `evaluation.html`: plotly charts (plotly.js inlined, opens offline) of the P&L per seed,
  its split per policy and the paired differences with their intervals.
"""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon.backtest.evaluation import METRICS, POLICIES, Evaluation
from daemon.postmortem.exports import exports_dir

CSV_NAME = "evaluation.csv"
DIFFERENCES_CSV = "evaluation_differences.csv"
HTML_NAME = "evaluation.html"
MEAN_ROW = "mean"
SPLIT = (("markup", "markup earned"), ("hedge_fees", "hedge fees"),
         ("crossing", "crossing cost"), ("inventory_mtm", "inventory mark-to-market"))


def report_folder(data_dir: Path, run_id: str) -> Path:
    return exports_dir(data_dir, run_id)


def write_files(evaluation: Evaluation, folder: Path) -> list[Path]:
    """The two CSVs and the HTML chart; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / CSV_NAME, folder / DIFFERENCES_CSV, folder / HTML_NAME]
    write_runs_csv(evaluation, paths[0])
    write_differences_csv(evaluation, paths[1])
    paths[2].write_text(evaluation_html(evaluation), encoding="utf-8")
    return paths


def write_runs_csv(evaluation: Evaluation, path: Path) -> None:
    columns = ["policy", "seed", "run_id", *METRICS, "pnl_std", "rejection"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for policy in POLICIES:
            for run in evaluation.runs_of(policy.name):
                writer.writerow(run.row())
        for name, means in evaluation.summary.items():
            writer.writerow({"policy": name, "seed": MEAN_ROW, "run_id": "",
                             **{metric: means[metric] for metric in (*METRICS, "pnl_std")}})


def write_differences_csv(evaluation: Evaluation, path: Path) -> None:
    columns = ["policy", "baseline", "metric", "seeds", "mean", "low", "high", "better"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for difference in evaluation.differences:
            writer.writerow(difference.row())


# -- terminal --------------------------------------------------------------------------


def _n(value: float, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def _pct(value: float) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.1%}"


def tables(evaluation: Evaluation) -> list[Any]:
    """The rich tables: P&L and its split, risk and flow, paired differences."""
    from rich.table import Table

    seeds = len(evaluation.seeds)
    pnl = Table(title=f"P&L per policy, mean over {seeds} flow seeds (USDT; bps of client "
                "notional)")
    for column in ("policy", "P&L", "± sd", "bps", "markup", "hedge fees", "crossing",
                   "inventory MTM", "Sharpe/day"):
        pnl.add_column(column, justify="left" if column == "policy" else "right")
    risk = Table(title="Inventory, hedging and clients (means over the seeds)")
    for column in ("policy", "mean |q|", "max |q|", "at limit", "hedge ratio", "accepted",
                   "markout 1s", "10s", "60s (bps)"):
        risk.add_column(column, justify="left" if column == "policy" else "right")
    for name, m in evaluation.summary.items():
        pnl.add_row(name, _n(m["pnl"]), _n(m["pnl_std"]), _n(m["pnl_bps"]), _n(m["markup"]),
                    _n(m["hedge_fees"]), _n(m["crossing"]), _n(m["inventory_mtm"]),
                    _n(m["sharpe_per_day"], 1))
        risk.add_row(name, _n(m["mean_abs_inventory"], 3), _n(m["max_abs_inventory"], 3),
                     _pct(m["time_at_limit"]), _pct(m["hedge_ratio"]), _pct(m["acceptance"]),
                     _n(m["markout_1s_bps"]), _n(m["markout_10s_bps"]),
                     _n(m["markout_60s_bps"]))
    paired = Table(title="Agent minus baseline, paired by seed: mean and bootstrap 95 % "
                   "interval")
    for column in ("baseline", "metric", "mean", "95 % interval", "agent better"):
        paired.add_column(column, justify="left" if column in ("baseline", "metric")
                          else "right")
    for d in evaluation.differences:
        unit = "USDT" if d.metric == "pnl" else "bps"
        paired.add_row(d.baseline, f"P&L ({unit})", _n(d.mean),
                       f"[{_n(d.low)}, {_n(d.high)}]", _pct(d.better))
    return [pnl, risk, paired]


# -- HTML ------------------------------------------------------------------------------


def warnings(evaluation: Evaluation) -> list[str]:
    """What makes the comparison suspect: hedge orders the paper venue or the risk gate
    rejected (they did not hedge, so the policies' hedging was not what it chose)."""
    rejected = [run for run in evaluation.runs if run.hedges_rejected]
    if not rejected:
        return []
    first = rejected[0]
    total = sum(run.hedges_rejected for run in rejected)
    return [f"warning: {total:,} hedge orders were rejected in {len(rejected)} of "
            f"{len(evaluation.runs)} runs (first: {first.run_id}: {first.rejection}); "
            "give the hedge venue's paper account enough (venues.<venue>.balances)"]


def figures(evaluation: Evaluation) -> list[Any]:
    """P&L per seed (box with the points), the mean split, the paired differences."""
    import plotly.graph_objects as go

    names = list(evaluation.summary)
    per_seed = go.Figure([go.Box(y=[run.pnl for run in evaluation.runs_of(name)], name=name,
                                 boxpoints="all", jitter=0.3, pointpos=0,
                                 text=[f"seed {run.seed}" for run in evaluation.runs_of(name)])
                          for name in names])
    per_seed.update_layout(title="P&L per flow seed (USDT)", yaxis_title="USDT",
                           showlegend=False)
    split = go.Figure([go.Bar(x=names, y=[evaluation.summary[n][key] for n in names],
                              name=label) for key, label in SPLIT])
    split.add_trace(go.Scatter(x=names, y=[evaluation.summary[n]["pnl"] for n in names],
                               mode="markers", name="P&L", marker={"size": 12,
                                                                   "color": "black"}))
    split.update_layout(barmode="relative", title="P&L split, mean over the seeds (USDT): "
                        "the bars add up to the P&L", yaxis_title="USDT")
    pnl_diffs = [d for d in evaluation.differences if d.metric == "pnl"]
    paired = go.Figure(go.Scatter(
        x=[d.baseline for d in pnl_diffs], y=[d.mean for d in pnl_diffs], mode="markers",
        marker={"size": 12},
        error_y={"type": "data", "symmetric": False,
                 "array": [d.high - d.mean for d in pnl_diffs],
                 "arrayminus": [d.mean - d.low for d in pnl_diffs]}))
    paired.add_hline(y=0.0, line_dash="dot")
    paired.update_layout(title="Agent minus baseline, P&L per seed (USDT): mean and "
                         "bootstrap 95 % interval", yaxis_title="USDT")
    return [per_seed, split, paired]


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def evaluation_html(evaluation: Evaluation) -> str:
    title = f"Evaluation {evaluation.run_id}: rl-internalize agent vs baselines"
    header = ("policy", "P&L (USDT)", "P&L (bps)", "markup", "hedge fees", "crossing",
              "inventory MTM", "mean |q|", "at limit", "hedge ratio", "acceptance",
              "Sharpe/day")
    rows = [(name, _n(m["pnl"]), _n(m["pnl_bps"]), _n(m["markup"]), _n(m["hedge_fees"]),
             _n(m["crossing"]), _n(m["inventory_mtm"]), _n(m["mean_abs_inventory"], 3),
             _pct(m["time_at_limit"]), _pct(m["hedge_ratio"]), _pct(m["acceptance"]),
             _n(m["sharpe_per_day"], 1)) for name, m in evaluation.summary.items()]
    parts = ["<!DOCTYPE html><html><head><meta charset=\"utf-8\">",
             f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif}}"
             "td,th{padding:2px 8px;text-align:right}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(evaluation.seeds)} flow seeds ({evaluation.seeds[0]}.."
             f"{evaluation.seeds[-1]}), every policy on the same data and clients; means "
             "over the seeds.</p>", _html_table(header, rows)]
    for number, figure in enumerate(figures(evaluation)):
        parts.append(figure.to_html(full_html=False, include_plotlyjs=number == 0,
                                    div_id=f"evaluation-{number}",
                                    config={"responsive": True, "displaylogo": False}))
    parts.append("</body></html>")
    return "".join(parts)
