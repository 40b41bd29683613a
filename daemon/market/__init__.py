"""Market state in memory: the bus (bus.py) and its consolidated view (view.py), the ring
buffer of 24 h of top of book with Feather snapshots (ringbuffer.py), the numba kernels
over its windows (kernels.py), and the read-only `MarketView` strategies get
(market_view.py)."""
