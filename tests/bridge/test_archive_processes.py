"""Strategy process -> real NATS server -> archiver process -> post-mortem: the archive is
the strategy's own log byte for byte, across an archiver restart and two runs."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.modes.test_action import REPO, run_main


def _environment(data_dir: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    environment.update(CRYPTOPIPE_DATA_DIR=str(data_dir), CRYPTOPIPE_METRICS__ENABLED="false")
    return environment


def _start_archiver(url: str, data_dir: Path) -> subprocess.Popen[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), "--mode", "archive", "--feed", url,
         "--format", "json"],
        cwd=data_dir.parent, env=_environment(data_dir), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def _stop(process: subprocess.Popen[str]) -> dict:
    os.kill(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    return orjson.loads(out.strip().splitlines()[-1])


def _logs(data_dir: Path) -> dict[str, bytes]:
    return {str(path.relative_to(data_dir)): path.read_bytes()
            for path in sorted((data_dir / "decisions").glob("*/*.jsonl"))}


def _wait_for_copy(strategy_dir: Path, archive_dir: Path, archiver, timeout_s=120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _logs(archive_dir) != _logs(strategy_dir):
        assert archiver.poll() is None, archiver.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the archive never caught up"
        time.sleep(0.1)


def _post_mortem(data_dir: Path) -> dict:
    done = run_main(["--mode", "post-mortem", "--format", "json"], data_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    return orjson.loads(done.stdout)


def test_the_archive_is_the_strategy_log_and_one_post_mortem_reads_every_run(
        nats_server, tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    recording = shared_file("binance_spot_btcusdt_20240808.gz")
    strategy_dir, archive_dir = tmp_path / "strategy", tmp_path / "archive"

    def strategy_run(run_id: str) -> None:
        done = run_main(["--strategy", "inventory-mm", "--mode", "action", "--speed", "max",
                         "--feed", f"replay:{recording}", "--run-id", run_id,
                         "--bus-publish", nats_server.url], strategy_dir)
        assert done.returncode == 0, done.stderr[-2000:]

    strategy_run("mm-a")
    archiver = _start_archiver(nats_server.url, archive_dir)
    _wait_for_copy(strategy_dir, archive_dir, archiver)
    first = _stop(archiver)
    assert first["runs"] == ["mm-a"] and first["duplicates"] == 0

    strategy_run("mm-b")  # shipped while no archiver runs: the stream keeps it
    archiver = _start_archiver(nats_server.url, archive_dir)  # the same durable consumer
    _wait_for_copy(strategy_dir, archive_dir, archiver)
    second = _stop(archiver)
    assert second["runs"] == ["mm-b"]  # went on where it stopped: mm-a not offered again
    assert second["duplicates"] == 0

    local, archived = _logs(strategy_dir), _logs(archive_dir)
    assert archived == local
    assert {Path(name).name for name in archived} == {"mm-a.jsonl", "mm-b.jsonl"}
    assert first["archived_records"] + second["archived_records"] == sum(
        blob.count(b"\n") for blob in local.values())

    over_local, over_archive = _post_mortem(strategy_dir), _post_mortem(archive_dir)
    assert [run["run_id"] for run in over_archive["runs"]] == ["mm-a", "mm-b"]
    assert _differences(over_archive["runs"], over_local["runs"]) == []
    assert over_archive["records"] == over_local["records"]


def _differences(left: object, right: object, where: str = "") -> list[str]:
    """Where two reports differ (floats compared to 12 significant digits: DuckDB sums in
    parallel, so the last bits of a sum may vary from one read to the next)."""
    if isinstance(left, dict) and isinstance(right, dict):
        if left.keys() != right.keys():
            return [f"{where}: keys {sorted(left)} != {sorted(right)}"]
        return [d for key in left for d in _differences(left[key], right[key], f"{where}.{key}")]
    if isinstance(left, list) and isinstance(right, list):
        if len(left) != len(right):
            return [f"{where}: {len(left)} items != {len(right)}"]
        return [d for i, (a, b) in enumerate(zip(left, right, strict=True))
                for d in _differences(a, b, f"{where}[{i}]")]
    if isinstance(left, float) and isinstance(right, float):
        return [] if math.isclose(left, right, rel_tol=1e-12, abs_tol=1e-12) else [
            f"{where}: {left!r} != {right!r}"]
    return [] if left == right else [f"{where}: {left!r} != {right!r}"]


def test_a_server_restart_costs_the_archive_nothing(nats_server, tmp_path: Path) -> None:
    """The server goes away while a strategy trades and ships: the strategy keeps trading
    (its log is the queue), ships the rest when the server is back, and the archive is its
    log all the same."""
    strategy_dir, archive_dir = tmp_path / "strategy", tmp_path / "archive"
    strategy_dir.mkdir()
    environment = _environment(strategy_dir)
    environment.update(CRYPTOPIPE_NATS__PROCESS_NAME="mm-restart",
                       CRYPTOPIPE_NATS__RECONNECT_WAIT_S="0.1",
                       CRYPTOPIPE_POSTMORTEM__FLUSH_INTERVAL_MS="50")
    strategy = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), "--strategy", "inventory-mm", "--mode",
         "action", "--feed", "sample", "--speed", "5", "--run-id", "mm-r", "--bus-publish",
         nats_server.url], cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not any((strategy_dir / "decisions").glob("*/mm-r.jsonl.shipped")):
            assert strategy.poll() is None, strategy.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "nothing shipped"
            time.sleep(0.05)
        nats_server.stop()
        time.sleep(3)  # the strategy trades on, records pile up in its file
        assert strategy.poll() is None
        nats_server.start()
        _out, err = strategy.communicate(timeout=180)
    finally:
        if strategy.poll() is None:
            strategy.kill()
            strategy.communicate()
    assert strategy.returncode == 0, err[-2000:]
    assert "dlog_ship_waiting" in err  # it noticed, counted, and went on
    archiver = _start_archiver(nats_server.url, archive_dir)
    _wait_for_copy(strategy_dir, archive_dir, archiver)
    figures = _stop(archiver)
    assert figures["runs"] == ["mm-r"] and figures["duplicates"] == 0
    assert _logs(archive_dir) == _logs(strategy_dir)


def test_an_archiver_killed_mid_stream_and_restarted_loses_and_doubles_nothing(
        nats_server, tmp_path: Path) -> None:
    """The archiver dies (SIGKILL: no clean stop, perhaps mid-write) while a strategy
    ships; the restarted one finishes the copy, byte for byte."""
    strategy_dir, archive_dir = tmp_path / "strategy", tmp_path / "archive"
    strategy_dir.mkdir()
    environment = _environment(strategy_dir)
    environment.update(CRYPTOPIPE_POSTMORTEM__FLUSH_INTERVAL_MS="50")
    strategy = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), "--strategy", "inventory-mm", "--mode",
         "action", "--feed", "sample", "--speed", "5", "--run-id", "mm-k", "--bus-publish",
         nats_server.url], cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    archiver = _start_archiver(nats_server.url, archive_dir)
    try:
        deadline = time.monotonic() + 90
        while not _logs(archive_dir):  # the archiver has written some of the run
            assert archiver.poll() is None, archiver.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "nothing archived"
            time.sleep(0.05)
        os.kill(archiver.pid, signal.SIGKILL)
        archiver.communicate(timeout=30)
        assert strategy.poll() is None  # killed mid-stream: the strategy still ships
        _out, err = strategy.communicate(timeout=180)
        assert strategy.returncode == 0, err[-2000:]
        archiver = _start_archiver(nats_server.url, archive_dir)
        _wait_for_copy(strategy_dir, archive_dir, archiver)
        figures = _stop(archiver)
    finally:
        for process in (strategy, archiver):
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert figures["runs"] == ["mm-k"] and figures["archived_records"] > 0
    assert _logs(archive_dir) == _logs(strategy_dir)
