"""The markets a strategy trades against the markets the data carries."""

from __future__ import annotations

import pytest

from daemon.core.clock import NS_PER_SECOND
from daemon.core.model import Quote
from daemon.market.bus import Bus
from daemon.trading.coverage import QUOTE_GRACE_NS, QuoteWatch, market_names

BTC = ("binance_spot", "BTC/USDT")
ETH = ("binance_spot", "ETH/USDT")


def publish(bus: Bus, key: tuple[str, str], ts_ns: int) -> None:
    bus.publish_quote(Quote(*key, bid=1.0, bid_qty=1.0, ask=1.01, ask_qty=1.0,
                            exchange_ts_ns=ts_ns, local_ts_ns=ts_ns))


def test_a_market_without_quotes_is_warned_once_after_the_grace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bus = Bus()
    watch = QuoteWatch("mm", frozenset({ETH}), bus)
    first = 1_000 * NS_PER_SECOND
    publish(bus, BTC, first)
    assert not watch.check(first, first + QUOTE_GRACE_NS - 1)  # not yet
    assert capsys.readouterr().err == ""
    assert watch.check(first, first + QUOTE_GRACE_NS)  # done: the caller drops it
    # The line on stderr (a structured log line may come with it when an earlier test in
    # the session configured logging).
    err = capsys.readouterr().err
    assert ("cryptopipe: warning: no quote for binance_spot ETH/USDT after 5 s of feed "
            "(markets quoting: binance_spot BTC/USDT)\n") in err
    assert err.count("cryptopipe: warning:") == 1


def test_no_warning_when_every_market_quoted_or_nothing_quotes_yet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bus = Bus()
    watch = QuoteWatch("mm", frozenset({BTC}), bus)
    first = NS_PER_SECOND
    assert not watch.check(first, first + QUOTE_GRACE_NS)  # nothing quotes: ask again later
    publish(bus, BTC, first + QUOTE_GRACE_NS)
    assert not watch.check(first, first + QUOTE_GRACE_NS + 1)  # not due again yet
    assert watch.check(first, first + 2 * QUOTE_GRACE_NS)
    assert capsys.readouterr().err == ""


def test_market_names_are_sorted_and_never_empty() -> None:
    assert market_names([ETH, BTC]) == "binance_spot BTC/USDT, binance_spot ETH/USDT"
    assert market_names([]) == "none"
