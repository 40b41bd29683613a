"""Past one process: the market stream, decision logs, heartbeats and control over NATS."""
