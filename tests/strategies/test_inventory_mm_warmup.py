"""k = "auto": the warm-up's progress is in the decision log, not only its start (issue 14,
item 1: "its warm-up state visible in decisions and `watch`"; watch reads the log)."""

from __future__ import annotations

from daemon.core.model import Trade
from tests.strategies.test_inventory_mm import MID, SYMBOL, VENUE, Harness


def trades(h: Harness, count: int) -> None:
    for index in range(count):
        h.clock.advance(0.01)
        side = "buy" if index % 2 else "sell"
        price = MID * (1 + 2e-4) if side == "buy" else MID * (1 - 2e-4)
        h.strategy.on_trade(Trade(VENUE, SYMBOL, price, 0.01, side, 0, h.clock()))


def test_each_step_of_the_warm_up_is_logged_as_the_trade_count_grows() -> None:
    h = Harness(k_bps="auto", k_auto_min_trades=30)
    first = h.quote()
    assert first.action == "skip" and first.inputs["k_trades"] == 0
    trades(h, 12)
    progress = h.strategy.on_timer(h.clock.advance(1.0))  # the timer refits k
    assert progress is not None, "the warm-up went on but the log would still say 0 trades"
    assert progress.action == "skip" and progress.inputs["k_state"] == "warming up"
    assert (progress.inputs["k_trades"], progress.inputs["k_trades_needed"]) == (12, 30)
    assert "12 trades in the window, 30 needed" in progress.reason
    # Nothing new: no new line (logged when the reason changes, as every skip).
    assert h.strategy.on_timer(h.clock.advance(1.0)) is None
