"""Public historical market data (Binance public data, Tardis.dev CSV) read as replay input.

`schemas.py` knows each provider's layouts and tells a file's format from its name and
first line; `parser.py` turns its rows into the same `Quote`/`Trade` the live parsers make;
`files.py` opens the containers (zip). `adapters.recordings.replay` merges them by time
with recordings, so the event cache, the backtest and `--feed replay:` are unchanged.
"""
