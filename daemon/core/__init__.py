"""The leaf of the daemon: imports nothing else of ours (the layers contract checks it).

model.py (Quote, Trade, intents, acks, fills, Decision), vocabulary.py (decision actions
and order states), clock.py (time constants, the feed and simulated clocks), routes.py
(how parsers hand events to the bus), records.py (what the runner records, and where),
logs.py (structured logging).
"""
