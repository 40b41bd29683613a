"""Issue 16's end-to-end must-show: three OS processes and a real nats-server.

A feed process replays the shared Binance spot recording onto NATS; a strategy process
(inventory-mm on paper) takes its market data from NATS and decides; an archiver writes
the decision log it ships. The post-mortem over the archive equals the post-mortem over
the strategy's own local log: the same records, byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.bridge.test_archive_processes import (
    _differences,
    _logs,
    _post_mortem,
    _start_archiver,
    _stop,
    _wait_for_copy,
)
from tests.bridge.test_market_processes import Process, on_quotes, wait_for


def test_feed_strategy_and_archiver_processes_over_one_server(
        tmp_path: Path, nats_server, shared_file: Callable[[str], Path]) -> None:
    recording = shared_file("binance_spot_btcusdt_20240808.gz")
    market = ["--venues", "binance_spot", "--symbols", "BTC/USDT"]
    strategy = Process("strategy", ["--strategy", "inventory-mm", "--mode", "action",
                                    "--run-id", "mm-over-nats", "--feed", nats_server.url,
                                    *market], tmp_path)
    feed = Process("feed", ["--mode", "feed", "--feed", f"replay:{recording}", "--speed", "60",
                            "--bus-publish", nats_server.url, *market], tmp_path)
    archive_dir = tmp_path / "archive"
    archiver = _start_archiver(nats_server.url, archive_dir)
    try:
        strategy.start()
        wait_for("the strategy on the bus", lambda: strategy.get("/healthz")[0] != 0, strategy)
        feed.start()
        wait_for("a decision on a quote from the feed process", lambda: any(
            on_quotes(d) for d in strategy.decisions()), feed, strategy)
        wait_for("the end of the replay", lambda: not feed.alive, strategy)
        assert feed.process is not None and feed.process.returncode == 0, feed.log()[-3000:]
        assert strategy.stop() == 0, strategy.log()[-3000:]  # its log is all shipped on stop

        _wait_for_copy(strategy.data_dir, archive_dir, archiver)
        summary = _stop(archiver)
    finally:
        feed.stop()
        strategy.stop()
        if archiver.poll() is None:
            archiver.kill()
            archiver.wait(timeout=30)

    local = _logs(strategy.data_dir)
    assert [Path(name).name for name in local] == ["mm-over-nats.jsonl"]
    assert _logs(archive_dir) == local
    assert summary["runs"] == ["mm-over-nats"] and summary["duplicates"] == 0
    decisions = [d for d in strategy.decisions() if on_quotes(d)]
    assert len(decisions) > 10  # it traded on the stream, not on a handful of quotes

    over_local, over_archive = _post_mortem(strategy.data_dir), _post_mortem(archive_dir)
    assert over_archive["records"] == over_local["records"]
    assert _differences(over_archive["runs"], over_local["runs"]) == []
