"""Operations: Prometheus `/metrics` and `/healthz` (metrics.py, health.py) and the `/book`
WebSocket of consolidated views (booksocket.py), for the long-running modes."""
