"""The daemon: core (the model), market (bus, ring), trading (runner, gate, executors),
backtest, postmortem, ops, modes; run.py and app.py are the process. See README:
Architecture for the layers and where each thing lives."""
