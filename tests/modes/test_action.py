"""`--mode action` end to end: strategies on paper over replayed recordings, decisions logged."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "adapters" / "recordings" / "samples"


def run_main(args: list[str], data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    environment.update(CRYPTOPIPE_DATA_DIR=str(data_dir), CRYPTOPIPE_METRICS__ENABLED="false",
                       **env)
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=data_dir.parent,
                          env=environment, capture_output=True, text=True, timeout=300)


def read_log(data_dir: Path) -> list[dict]:
    """The one run's records, day after day: a replay ends as a backtest does, its last
    cancels let through a latency after the data, which can be past midnight."""
    files = sorted((data_dir / "decisions").glob("*/*.jsonl"))
    assert files and len({path.name for path in files}) == 1, files
    return [orjson.loads(line) for path in files for line in path.read_bytes().splitlines()]


def test_arbitrage_on_paper_over_the_shared_recordings_as_two_venues(
    tmp_path: Path, shared_file: Callable[[str], Path]
) -> None:
    spot = shared_file("binance_spot_btcusdt_20240808.gz")
    usdm = shared_file("binance_usdm_btcusdt_20240808.gz")
    data_dir = tmp_path / "data"
    done = run_main(["--strategy", "arbitrage", "--mode", "action", "--speed", "max",
                     "--run-id", "e2e", "--feed", f"replay:{spot},{usdm}@bybit_spot:BTC/USDT"],
                    data_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    records = read_log(data_dir)
    kinds = Counter(r["type"] for r in records)
    assert kinds["decision"] > 100 and kinds["balance"] >= 4
    decisions = [r for r in records if r["type"] == "decision"]
    for decision in decisions:
        assert decision["run_id"] == "e2e" and decision["strategy"] == "arbitrage"
        assert decision["reason"]
        if decision["action"] in ("skip", "arbitrage"):
            inputs = decision["inputs"]
            for key in ("buy_venue", "sell_venue", "gross_edge_bps", "cost_bps", "net_edge_bps"):
                assert key in inputs
    # Spot vs USD-M differ by ~4 bps while taker fees cost 20: the strategy must not trade.
    assert {d["action"] for d in decisions} <= {"skip"}
    assert kinds["intent"] == 0 and kinds["fill"] == 0


def test_arbitrage_on_paper_over_the_shipped_sample_with_low_fees_trades(tmp_path: Path) -> None:
    spot = SAMPLES / "binance_spot_btcusdt_20240808_sample.gz"
    usdm = SAMPLES / "binance_usdm_btcusdt_20240808_sample.gz"
    data_dir = tmp_path / "data"
    zero_fees = {f"CRYPTOPIPE_VENUES__{venue}__{fee}": "0"
                 for venue in ("BINANCE_SPOT", "BYBIT_SPOT")
                 for fee in ("TAKER_FEE_BPS", "MAKER_FEE_BPS")}
    done = run_main(["--strategy", "arbitrage", "--mode", "action", "--speed", "max",
                     "--feed", f"replay:{spot},{usdm}@bybit_spot:BTC/USDT"], data_dir,
                    CRYPTOPIPE_STRATEGIES__ARBITRAGE__SLIPPAGE_BPS="0",
                    CRYPTOPIPE_STRATEGIES__ARBITRAGE__MIN_NET_EDGE_BPS="1",
                    **zero_fees)
    assert done.returncode == 0, done.stderr[-2000:]
    records = read_log(data_dir)
    taken = [r for r in records if r["type"] == "decision" and r["action"] == "arbitrage"]
    assert taken, "a 4 bps spot/perp gap with no fees must be traded"
    for decision in taken:
        assert decision["inputs"]["net_edge_bps"] >= 1.0
        assert len(decision["intents"]) == 2
    intents = [r for r in records if r["type"] == "intent"]
    assert {i["order_type"] for i in intents} <= {"ioc", "market"}
    assert any(r["type"] == "fill" for r in records)


def test_live_trading_without_keys_is_refused_with_exit_2(tmp_path: Path) -> None:
    done = run_main(["--strategy", "arbitrage", "--mode", "action", "--live", "--feed", "sample",
                     "--duration", "5"], tmp_path / "data")
    assert done.returncode == 2
    assert "api_key" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("strategy", ["inventory-mm", "internalize"])
def test_every_strategy_runs_in_action_mode_on_the_sample(tmp_path: Path, strategy: str) -> None:
    data_dir = tmp_path / "data"
    env = {}
    if strategy == "internalize":
        env = {"CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYMBOL": "BTC/USDT",
               "CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYNTHETIC_RATE_HZ": "20",
               "CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYNTHETIC_MEAN_QTY": "0.01"}
    done = run_main(["--strategy", strategy, "--mode", "action", "--feed", "sample",
                     "--speed", "max"], data_dir, **env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert any(r["type"] == "decision" for r in read_log(data_dir))
    (run_dir,) = (data_dir / "reports").iterdir()
    if strategy == "internalize":
        assert (run_dir / "flow_internalization_results.csv").is_file()
        assert (run_dir / "portfolio_tracking_results.csv").is_file()
    else:  # positions.csv: at the first quote, every 60 s of the ~75 s sample, at the end
        rows = (run_dir / "positions.csv").read_text().splitlines()
        assert rows[0].startswith("ts,ts_ns,venue,symbol,position,")
        assert [row.rsplit(",", 1)[1] for row in rows[1:]] == ["start", "interval", "end"]


def action_app(data_dir: Path, strategy: str, feed: str = "sample", **settings: object) -> Any:
    """An App for `--mode action` in this process (faults can be injected with monkeypatch)."""
    from config.settings import load_settings
    from daemon.app import App
    from daemon.cli import build_parser

    args = build_parser().parse_args(["--mode", "action", "--strategy", strategy, "--feed",
                                      feed, "--speed", "max", "--run-id", "inproc"])
    overrides = {"data_dir": data_dir, "metrics": {"enabled": False}, **settings}
    return App(settings=load_settings(overrides, env_file=None), args=args, run_id="inproc")


def test_a_dead_client_flow_task_trips_the_kill_switch_and_healthz(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from structlog.testing import capture_logs

    import adapters.client_flow
    from daemon.modes.action import run_action
    from daemon.run import _supervise

    async def dying_flow(source: object, deliver: object) -> int:
        raise OverflowError("client fill time out of range")

    monkeypatch.setattr(adapters.client_flow, "run_flow", dying_flow)
    # The /flow endpoint is a task of its own even on a replay (a synthetic or file flow
    # there is delivered by the trading loop, by the feed clock).
    app = action_app(tmp_path / "data", "internalize",
                     strategies={"internalize": {"symbol": "BTC/USDT", "source": "websocket",
                                                 "ingest_token": "secret", "ingest_port": 0}})
    with capture_logs() as logs:
        status = asyncio.run(_supervise(app, run_action))
    assert status == 0
    failed = [e for e in logs if e["event"] == "task_failed"]
    assert [e["task"] for e in failed] == ["client-flow"]
    assert isinstance(failed[0]["exc_info"], OverflowError)
    reasons = app.health.evaluate(app.bus.view, replaying=True).reasons
    assert "task client-flow died: OverflowError: client fill time out of range" in reasons
    assert app.health.kill_switch_reason is not None
    assert "client-flow" in app.health.kill_switch_reason
    # A kill before the first market event is dated by a feed clock still at 0 (1970).
    records = [orjson.loads(line) for path in (tmp_path / "data" / "decisions").glob("*/*")
               for line in path.read_bytes().splitlines()]
    kills = [r for r in records if r.get("action") == "kill"]
    assert len(kills) == 1 and "client-flow" in kills[0]["reason"]
    # Killed, but stopped cleanly: the log ends with its run_end record.
    ends = [r for r in records if r["type"] == "run_end"]
    assert len(ends) == 1 and ends[0]["status"] == "stopped"
    assert ends[0]["ts_ns"] == max(r["ts_ns"] for r in records)
    assert not [e for e in logs if "never retrieved" in str(e.get("message", ""))]


def test_an_unwritable_decision_log_stops_trading_and_the_stop_exits_1_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    import structlog

    from daemon.postmortem.writer import DecisionLogWriter
    from daemon.run import run_mode
    from daemon.trading.killswitch import KillSwitch

    def disk_full(self: DecisionLogWriter, batch: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    app_box: list[Any] = []
    at_kill: dict[str, Any] = {}
    real_fire = KillSwitch.fire

    def fire(self: KillSwitch, why: str, now_ns: int | None = None) -> bool:
        app = app_box[0]
        at_kill.setdefault("why", why)
        at_kill.setdefault("orders", sum(app.trading.orders.values()))
        at_kill.setdefault("quotes", app.bus.counters()["published_quotes"])
        return real_fire(self, why, now_ns)

    import daemon.run

    real_app = daemon.run.App

    def keep_app(**kwargs: Any) -> Any:
        app_box.append(real_app(**kwargs))
        return app_box[0]

    monkeypatch.setattr(DecisionLogWriter, "_write_all", disk_full)
    monkeypatch.setattr(KillSwitch, "fire", fire)
    monkeypatch.setattr(daemon.run, "App", keep_app)
    probe = action_app(tmp_path / "data", "inventory-mm",
                       postmortem={"flush_interval_ms": 1})
    try:
        status = run_mode(probe.settings, probe.args)
    finally:
        structlog.reset_defaults()
    app = app_box[0]
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("cryptopipe:")]
    assert len(lines) == 1 and "decision log not durable" in lines[0]
    assert "No space left on device" in lines[0]
    # Trading stopped at the first failed write, while the market went on.
    assert at_kill["why"].startswith("decision log not durable")
    assert sum(app.trading.orders.values()) == at_kill["orders"]
    assert app.bus.counters()["published_quotes"] > at_kill["quotes"]
    reasons = app.health.evaluate(app.bus.view, replaying=True).reasons
    assert any(reason.startswith("decision log not durable") for reason in reasons)
    assert not list((tmp_path / "data").rglob("*.tmp"))


#: tick and lot for ETH/USDT (the recording has none of it), BTC/USDT kept.
ETH_MARKETS = ('{"BTC/USDT": {"tick": 0.01, "lot": 0.00001},'
               ' "ETH/USDT": {"tick": 0.01, "lot": 0.0001}}')


def test_action_warns_once_when_a_traded_market_has_no_quote_while_others_do(
    tmp_path: Path,
) -> None:
    """inventory-mm on ETH/USDT over a BTC/USDT replay: a warning a few seconds of feed time
    in, once, naming the market and what is quoting; the run still ends cleanly."""
    sample = SAMPLES / "binance_spot_btcusdt_20240808_sample.gz"
    done = run_main(["--strategy", "inventory-mm", "--mode", "action", "--speed", "max",
                     "--run-id", "eth", "--feed", f"replay:{sample}"], tmp_path / "data",
                    CRYPTOPIPE_STRATEGIES__INVENTORY_MM__SYMBOL="ETH/USDT",
                    CRYPTOPIPE_VENUES__BINANCE_SPOT__MARKETS=ETH_MARKETS)
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in done.stderr.splitlines()
                if line.startswith("cryptopipe: warning: no quote for binance_spot ETH/USDT")]
    assert len(warnings) == 1, done.stderr[-2000:]
    assert "markets quoting: binance_spot BTC/USDT" in warnings[0]
    logged = [line for line in done.stderr.splitlines() if "market_without_data" in line]
    assert len(logged) == 1, done.stderr[-2000:]


def test_action_publishes_configured_crosses_on_its_bus(tmp_path: Path) -> None:
    import asyncio

    from daemon.modes.action import run_action
    from daemon.run import _supervise

    cross = {"symbol": "BTC/BTCPERP", "base_leg": "binance_spot:BTC/USDT",
             "quote_leg": "binance_usdm:BTC/USDT:USDT"}
    app = action_app(tmp_path / "data", "inventory-mm", synthetic={"crosses": [cross]})
    assert asyncio.run(_supervise(app, run_action)) == 0
    spot = app.bus.view.quote("binance_spot", "BTC/USDT")
    perp = app.bus.view.quote("binance_usdm", "BTC/USDT:USDT")
    synthetic = app.bus.view.quote("synthetic", "BTC/BTCPERP")
    assert spot is not None and perp is not None and synthetic is not None
    assert synthetic.bid == spot.bid / perp.ask and synthetic.ask == spot.ask / perp.bid
    assert app.bus.published_by("synthetic") > 100
