"""Market data across OS processes and a real nats-server (issue 16's must-shows).

A feed process (`--mode feed`) replays the shared Binance spot recording onto NATS; a
strategy process (inventory-mm on paper, `--feed nats://`) joins late and decides. Then:

- the feed process is killed (SIGKILL, by its PID): the strategy flags its quote stale
  (its log, /healthz 503, a decision on the stale quote); a new feed process resumes it;
- the server is stopped: the feed process counts its drops on /metrics, the strategy
  flags stale, neither crashes; the server comes back: publishing and deciding resume.

Both processes run on the feed's clock (the recording's receive times): the restarted
feed replays from the start of the file, a few recorded seconds behind the strategy's
clock, which is why it is slowed to a quarter of real time (its first run stays short
in recorded time).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.helpers.nats_server import free_port

REPO = Path(__file__).resolve().parents[2]
STALE_AFTER_S = "4"
#: The span of binance_spot_btcusdt_20240808.gz (2024-08-08 23:54:13 to 24:00:00 UTC).
RECORDED_FROM_NS, RECORDED_TO_NS = 1723161253 * 10**9, 1723161601 * 10**9
WAIT_S = 180.0


class Process:
    """One `python main.py ...` with its own data dir, metrics port and log file."""

    def __init__(self, name: str, args: list[str], tmp_path: Path, **env: str) -> None:
        self.name, self.args = name, args
        self.data_dir = tmp_path / name
        self.port = free_port()
        self.log_path = tmp_path / f"{name}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
        self.env.update(CRYPTOPIPE_DATA_DIR=str(self.data_dir),
                        CRYPTOPIPE_METRICS__PORT=str(self.port),
                        CRYPTOPIPE_LOGGING__FORMAT="json",
                        CRYPTOPIPE_NATS__RECONNECT_WAIT_S="0.2",
                        CRYPTOPIPE_VENUES__BINANCE_SPOT__STALE_AFTER_S=STALE_AFTER_S, **env)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log_path.open("ab") as sink:
            self.process = subprocess.Popen([sys.executable, str(REPO / "main.py"), *self.args],
                                            cwd=self.data_dir.parent, env=self.env,
                                            stdout=sink, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM, the exit status (killed for good if it does not stop)."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        return process.returncode

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict]:
        found = []
        for line in self.log().splitlines():
            if f'"event":"{name}"' in line:
                found.append(orjson.loads(line))
        return found

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, ""

    def metric(self, name: str) -> float | None:
        _, text = self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def decisions(self) -> list[dict]:
        records = []
        for path in sorted((self.data_dir / "decisions").glob("*/*.jsonl")):
            records += [orjson.loads(line) for line in path.read_bytes().splitlines()]
        return [r for r in records if r["type"] == "decision"]


def wait_for(what: str, condition: Callable[[], bool], *processes: Process) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        for process in processes:
            assert process.alive, (
                f"{process.name} died waiting for {what}:\n{process.log()[-4000:]}")
        assert time.monotonic() < deadline, (
            f"no {what} after {WAIT_S} s:\n"
            + "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in processes))
        time.sleep(0.1)


def on_quotes(decision: dict) -> bool:
    """A decision made on a market quote (its inputs carry the quote's prices)."""
    inputs = decision["inputs"]
    return "mid" in inputs or ("bid" in inputs and "stale" in inputs)


def test_a_strategy_fed_over_nats_flags_stale_when_its_feed_dies_and_resumes_with_it(
        tmp_path: Path, nats_server, shared_file: Callable[[str], Path]) -> None:
    recording = shared_file("binance_spot_btcusdt_20240808.gz")
    market = ["--venues", "binance_spot", "--symbols", "BTC/USDT"]
    feed_args = ["--mode", "feed", "--feed", f"replay:{recording}", "--speed", "0.25",
                 "--bus-publish", nats_server.url, *market]
    feed = Process("feed", feed_args, tmp_path).start()
    strategy = Process("strategy", ["--strategy", "inventory-mm", "--mode", "action",
                                    "--run-id", "over-nats", "--feed", nats_server.url,
                                    *market], tmp_path)
    second_feed = Process("feed2", feed_args, tmp_path)
    try:
        wait_for("quotes published", lambda: (feed.metric(
            "cryptopipe_nats_md_published_total") or 0) > 0, feed)
        strategy.start()  # a late joiner: the feed has been publishing for a while

        # The strategy decides on the quotes from the feed process.
        wait_for("a decision on a quote", lambda: any(
            on_quotes(d) and not d["inputs"].get("stale") for d in strategy.decisions()),
            feed, strategy)
        wait_for("healthy", lambda: strategy.get("/healthz")[0] == 200, feed, strategy)
        assert feed.get("/healthz")[0] == 200  # the feed process serves its health too
        # The strategy's clock is the data's: the recording's receive times, not today's.
        assert all(RECORDED_FROM_NS <= d["ts_ns"] <= RECORDED_TO_NS
                   for d in strategy.decisions())

        # The feed process dies: within stale_after_s of silence the quote is flagged.
        feed.kill()
        wait_for("a stale flag", lambda: strategy.events("stale"), strategy)
        status, body = strategy.get("/healthz")
        assert status == 503 and "flagged stale" in body, body
        assert strategy.events("stale")[0]["venue"] == "binance_spot"
        wait_for("a decision on the stale quote", lambda: any(
            d["reason"] == "stale quote" for d in strategy.decisions()), strategy)

        # Another feed process: the strategy takes its quotes and is healthy again.
        second_feed.start()
        wait_for("fresh again", lambda: strategy.events("fresh"), second_feed, strategy)
        wait_for("healthy again", lambda: strategy.get("/healthz")[0] == 200, second_feed,
                 strategy)
        decisions = strategy.decisions()
        stale_at = max(i for i, d in enumerate(decisions) if d["reason"] == "stale quote")
        wait_for("a decision on a fresh quote after the stale one", lambda: any(
            on_quotes(d) and d["reason"] != "stale quote"
            for d in strategy.decisions()[stale_at + 1:]), second_feed, strategy)

        # The server goes away: the feed counts its drops, the strategy flags stale,
        # nobody crashes; it comes back and both carry on.
        nats_server.stop()
        wait_for("drops counted", lambda: (second_feed.metric(
            "cryptopipe_nats_md_dropped_total") or 0) > 0, second_feed, strategy)
        stale_flags = len(strategy.events("stale"))
        wait_for("a stale flag with the server away",
                 lambda: len(strategy.events("stale")) > stale_flags, second_feed, strategy)
        nats_server.start()
        published = second_feed.metric("cryptopipe_nats_md_published_total") or 0
        wait_for("publishing again", lambda: (second_feed.metric(
            "cryptopipe_nats_md_published_total") or 0) > published, second_feed, strategy)
        fresh_flags = len(strategy.events("fresh"))
        wait_for("fresh after the server came back",
                 lambda: len(strategy.events("fresh")) > fresh_flags, second_feed, strategy)
        assert second_feed.metric("cryptopipe_nats_reconnects_total") >= 1
    finally:
        codes = {p.name: p.stop() for p in (strategy, second_feed, feed)}
    assert codes["strategy"] == 0 and codes["feed2"] == 0, strategy.log()[-3000:]
