"""Market data on the wire: subject per key (reversible symbol tokens), compact bodies."""

from __future__ import annotations

import pytest

from daemon.bridge.codec import (
    CodecError,
    decode_quote,
    decode_trade,
    encode_quote,
    encode_trade,
    parse_subject,
    subject,
    symbol_token,
    token_symbol,
)
from daemon.core.model import Quote, Trade

SYMBOLS = ["BTC/USDT", "BTC/USDT:USDT", "ETH/BTC", "1000PEPE/USDT:USDT",
           "BTC/USD:BTC-240927-50000-C", "A_B/C-D", "X.Y/Z", "WEIRD*>/~%", "ÄÖ/€"]


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_a_symbol_token_is_subject_safe_and_gives_back_the_exact_ccxt_symbol(symbol: str):
    token = symbol_token(symbol)
    assert not set(token) & set(".*> \t"), token
    assert token_symbol(token) == symbol
    assert parse_subject(subject("binance_usdm", symbol, "quote")) == (
        "binance_usdm", symbol, "quote")


def test_the_usual_symbols_read_as_they_are():
    assert subject("binance_spot", "BTC/USDT", "quote") == "md.binance_spot.BTC_USDT.quote"
    assert subject("bybit_linear", "BTC/USDT:USDT", "trade") == (
        "md.bybit_linear.BTC_USDT-USDT.trade")


def test_quotes_and_trades_come_back_equal_field_for_field():
    quote = Quote("binance_spot", "BTC/USDT", 61837.63, 1.25869, 61837.64, 0.1 + 0.2,
                  1723161254087000000, 1723161254087891268, 48213, True)
    body = encode_quote(quote)
    assert len(body) < 70
    assert decode_quote("binance_spot", "BTC/USDT", body) == quote
    trade = Trade("bybit_linear", "BTC/USDT:USDT", 61837.5, 0.003, "sell", 1723161254087000000,
                  1723161254087891268, "t-9f1")
    assert decode_trade("bybit_linear", "BTC/USDT:USDT", encode_trade(trade)) == trade


def test_a_body_that_is_not_ours_is_refused_clearly():
    with pytest.raises(CodecError, match="bad quote body"):
        decode_quote("binance_spot", "BTC/USDT", b"\x93garbage")
    with pytest.raises(CodecError, match="bad trade body"):
        decode_trade("binance_spot", "BTC/USDT", encode_quote(
            Quote("binance_spot", "BTC/USDT", 1.0, 1.0, 2.0, 1.0, 0, 0)))
    with pytest.raises(CodecError, match="not a market-data subject"):
        parse_subject("dlog.run.decision")
