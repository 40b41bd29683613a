"""Post-mortem: the durable decision log (writer.py, schema.py), and what is read back from
it: reader.py (DuckDB), figures.py (P&L and per-strategy figures), report.py and charts.py
(tables, CSV, HTML), exports.py (what strategies keep in memory for after the run).

The writer is imported by every trading session; the report (DuckDB, plotly) loads only
when `--mode post-mortem` runs.
"""
