"""The action layer: everything that mutates an account goes through here.

A runner builds one `GatedExecutor` (gate.py) around a `PaperExecutor` (paper.py) or a
`LiveExecutor` (live.py) and talks only to it:

    executor = GatedExecutor(PaperExecutor.from_settings(settings, run_id),
                             RiskGate(settings.risk), sink=sink)
    executor.kill_switch.install_signal_handler()   # SIGUSR1 (live / action mode)
    executor.listener = runner                 # on_ack / on_fill
    reason = executor.submit(intent, now_ns)   # None, or why the gate refused it
    executor.on_quote(quote); executor.on_trade(trade); executor.advance(now_ns)
    if executor.kill_switch.active: ...        # stop asking strategies for quotes

Modules: base.py (contracts), facade.py (listener fan-out, `submit_and_wait`,
`fills()`), ids.py (client order ids), paper.py, live.py, risk.py (limits, P&L,
`rejection_decision`), killswitch.py, gate.py, transfers.py, errors.py (error taxonomy,
`LiveTradingRefused`, credential scrubbing), ratelimit.py (token buckets). Nothing here
imports ccxt until the live executor (or error classification) is used.
"""
