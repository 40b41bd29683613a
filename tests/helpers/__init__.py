"""Shared test helpers: fake venues on 127.0.0.1 and strategy fakes.

Imported one way everywhere: `from tests.helpers.<module> import ...`."""
