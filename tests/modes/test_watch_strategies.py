"""`--mode watch` shows where a running inventory-mm's k stands (issue 14, item 1: "k =
auto ... its warm-up state visible in decisions and `watch`"), read from the tail of the
strategy's decision log in the same data_dir (daemon/postmortem/tail.py)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from daemon.market.bus import Bus
from daemon.modes.watch import render_watch
from daemon.postmortem.tail import TAIL_BYTES, LogTails, latest_states, read_state
from tests.backtest.test_engine import backtest

REPO = Path(__file__).resolve().parents[2]
RECORDING = "binance_spot_btcusdt_20240808.gz"
AUTO = {"CRYPTOPIPE_STRATEGIES__INVENTORY_MM__K_BPS": "auto"}


def text_of(renderable: object) -> str:
    console = Console(width=220, record=True)
    console.print(renderable)
    return console.export_text()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory,
         shared_file: Callable[[str], Path]) -> Path:
    """Three inventory-mm runs over the shared recording: k auto that never finishes its
    warm-up, k auto with the default warm-up, k configured."""
    recording = shared_file(RECORDING)
    data_dir = tmp_path_factory.mktemp("watch") / "data"
    backtest(data_dir, "inventory-mm", "warm", recording, **AUTO,
             CRYPTOPIPE_STRATEGIES__INVENTORY_MM__K_AUTO_MIN_TRADES="100000")
    backtest(data_dir, "inventory-mm", "fit", recording, **AUTO)
    backtest(data_dir, "inventory-mm", "conf", recording)
    return data_dir


def test_each_run_s_k_state_is_read_from_its_log(logs: Path) -> None:
    states = {state.run_id: state for state in latest_states(logs)}
    assert set(states) == {"warm", "fit", "conf"}
    warm, fit, conf = states["warm"], states["fit"], states["conf"]
    # 346 s of BTC trades never reach 100,000 in the window: still warming up at the end,
    # with the count the last refit saw.
    assert (warm.k_state, warm.k_trades_needed, warm.action) == ("warming up", 100_000, "skip")
    assert 1_000 < warm.k_trades < 100_000
    assert warm.k_text == f"warming up: {warm.k_trades}/100000 trades"
    assert fit.k_state in ("fitted", "floored") and fit.k_bps > 0 and fit.k_trades >= 30
    assert fit.k_text.startswith(f"{fit.k_state}: k_bps ")
    assert (conf.k_state, conf.k_bps, conf.k_text) == ("configured", 0.5,
                                                       "configured: k_bps 0.5")
    assert all(state.ended for state in states.values())  # backtests end with run_end
    assert all(state.strategy == "inventory-mm" for state in states.values())


def test_the_table_shows_the_warm_up_under_the_book(logs: Path) -> None:
    bus = Bus()
    text = text_of(render_watch(bus.view, 0, latest_states(logs, run_id="warm")))
    assert "warming up: " in text and "/100000 trades" in text and "warm" in text
    assert "fit" not in text.split("strategies")[1]  # --run picks one run
    assert text_of(render_watch(bus.view, 0, [])).count("strategies") == 0


def test_only_logs_written_to_recently_count_unless_the_run_is_named(logs: Path) -> None:
    later = time.time() + 3_600  # an hour on: nothing is running any more
    assert latest_states(logs, wall_clock=lambda: later) == []
    (named,) = latest_states(logs, run_id="conf", wall_clock=lambda: later)
    assert named.run_id == "conf"
    assert latest_states(logs, strategy="arbitrage") == []


def decision(ts_ns: int, k_state: str, k_trades: int) -> bytes:
    return orjson.dumps({
        "v": 1, "type": "decision", "run_id": "live", "ts_ns": ts_ns,
        "strategy": "inventory-mm", "action": "skip", "reason": "k not estimated yet",
        "expected": None, "inputs": {"k_state": k_state, "k_trades": k_trades,
                                     "k_trades_needed": 30, "inventory": 0.0},
        "intents": [], "cancels": []}) + b"\n"


def test_a_long_log_s_tail_and_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "decisions" / "2024-08-09" / "live.jsonl"
    path.parent.mkdir(parents=True)
    filler = orjson.dumps({"v": 1, "type": "ack", "run_id": "live", "ts_ns": 1,
                           "client_order_id": "x" * 200}) + b"\n"
    with path.open("wb") as log:
        log.write(decision(1, "warming up", 3))
        log.write(filler * (2 * TAIL_BYTES // len(filler)))  # the decision is out of reach
    assert read_state(path) is None
    with path.open("ab") as log:
        log.write(decision(2, "warming up", 17))
        log.write(decision(3, "warming up", 29)[:40])  # torn: being written
    state = read_state(path)
    assert (state.k_trades, state.ts_ns, state.ended) == (17, 2, False)
    assert state.k_text == "warming up: 17/30 trades"


def test_the_screen_rereads_the_logs_at_most_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "decisions" / "2024-08-09" / "live.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(decision(1, "warming up", 5))
    clock = [100.0]
    tails = LogTails(tmp_path, refresh_s=1.0, monotonic=lambda: clock[0])
    assert tails.states()[0].k_trades == 5
    with path.open("ab") as log:
        log.write(decision(2, "warming up", 9))
    clock[0] += 0.5
    assert tails.states()[0].k_trades == 5  # the last answer
    clock[0] += 0.5
    assert tails.states()[0].k_trades == 9


def test_watch_on_a_terminal_draws_the_strategy_table(
    logs: Path, shared_file: Callable[[str], Path],
) -> None:
    """The real mode on a pseudo-terminal, beside the logs of the runs above."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    env.update(CRYPTOPIPE_DATA_DIR=str(logs), CRYPTOPIPE_METRICS__ENABLED="false",
               CRYPTOPIPE_LOGGING__LEVEL="warning", COLUMNS="200", LINES="60", TERM="xterm")
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), "--mode", "watch", "--run", "warm",
         "--feed", f"replay:{shared_file(RECORDING)}", "--speed", "20", "--duration", "4"],
        cwd=logs.parent, env=env, stdin=terminal, stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    screen = b""
    try:
        while process.poll() is None or select.select([controller], [], [], 0)[0]:
            if select.select([controller], [], [], 0.2)[0]:
                try:
                    screen += os.read(controller, 65536)
                except OSError:  # the terminal closed with the process
                    break
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)
    assert process.returncode == 0, stderr[-2000:]
    assert b"warming up: " in screen and b"/100000 trades" in screen
    assert b"consolidated top of book" in screen
