"""Trading: everything that decides, checks or mutates an account, the same on paper, live
and in a backtest.

session.py builds one `TradingSession` per strategy: the runner (runner.py) drives the
strategy and records every decision; each intent goes to a `GatedExecutor` (gate.py: the
risk gate of risk.py and the kill switch of killswitch.py, which own every refusal) in
front of the `PaperExecutor` (paper.py) or the live ccxt executor
(adapters/ccxt/executor.py):

    session = open_session(settings, strategy, PaperExecutor.from_settings(settings, run_id),
                           sink=writer, market=market, clock=clock, writer=writer)
    session.runner.on_quote(quote); session.runner.advance(now_ns)
    if session.executor.kill_switch.active: ...

Also: executor.py (the Executor contracts), events.py (listener fan-out,
`submit_and_wait`, `fills()`), order_ids.py (deterministic client order ids),
transfers.py (paper and whitelisted live transfers), errors.py (the venue-neutral error
taxonomy, `LiveTradingRefused`, credential scrubbing), ratelimit.py (token buckets).
"""
