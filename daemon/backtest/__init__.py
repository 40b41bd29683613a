"""Backtests: the engine (engine.py) that drives a trading session over recorded data on a
simulated clock, the decoded-event cache (cache.py), the exact skip of events that change
nothing (skip.py), and the slippage calibration against recorded depth (calibrate.py).
The command-line entries are in daemon/modes/."""
