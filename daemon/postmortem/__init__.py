"""Post-mortem: the durable decision log (writer, schema) and `--mode post-mortem` (report).

The writer is imported by the live runner; the report (DuckDB, plotly) loads only when the
post-mortem mode runs.
"""

from daemon.postmortem.writer import BalanceSnapshots, DecisionLogWriter

__all__ = ["BalanceSnapshots", "DecisionLogWriter"]
