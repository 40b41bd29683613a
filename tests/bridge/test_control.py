"""Heartbeats on `hb.<process>` and the token-checked kill on `ctl.<process>.kill`, with a
real server: in process, and against a real action process trading on paper."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from pydantic import SecretStr

from config.settings import NatsSettings
from daemon.bridge.connection import connect
from daemon.bridge.control import Control
from daemon.ops.health import HealthReport
from tests.modes.test_action import REPO


@dataclass
class FakeApp:
    run_id: str = "r1"
    args: object = field(default_factory=lambda: type("A", (), {"mode": "feed",
                                                                "strategy": None})())
    replaying: bool = False
    killed: list[str] = field(default_factory=list)

    def health_report(self) -> HealthReport:
        why = self.killed[0] if self.killed else None
        return HealthReport(not self.killed, [f"kill switch on: {why}"] if why else [], why,
                            {"binance_spot BTC/USDT": {"status": "ok"}})

    def kill(self, why: str) -> tuple[bool, bool]:
        self.killed.append(why)
        return len(self.killed) == 1, False


async def test_heartbeats_and_a_kill_that_needs_the_token(nats_server, capsys):
    settings = NatsSettings(url=nats_server.url, heartbeat_interval_s=0.05,
                            control_token=SecretStr("tok-123"))
    client = await connect(settings, name="t")
    app = FakeApp()
    control = Control(client, "feed-1", app, settings)
    await control.start()
    try:
        beats = await client.subscribe("hb.feed-1")
        beat = orjson.loads((await beats.next_msg(timeout=10)).data)
        assert beat["process"] == "feed-1" and beat["run_id"] == "r1"
        assert beat["mode"] == "feed" and beat["status"] == "ok"
        assert beat["feeds"] == {"ok": 1, "stale": 0, "missing": 0}
        assert beat["kill_switch"] is None and beat["uptime_s"] >= 0

        refused = await client.request("ctl.feed-1.kill",
                                       orjson.dumps({"token": "wrong-token"}), timeout=10)
        assert orjson.loads(refused.data) == {"ok": False, "process": "feed-1",
                                              "error": "refused: bad token"}
        assert app.killed == []
        garbage = await client.request("ctl.feed-1.kill", b"[1, 2", timeout=10)
        assert orjson.loads(garbage.data)["ok"] is False

        answer = await client.request(
            "ctl.feed-1.kill", orjson.dumps({"token": "tok-123", "reason": "drill"}), timeout=10)
        reply = orjson.loads(answer.data)
        assert reply["ok"] is True and reply["tripped"] is True and reply["trading"] is False
        assert "drill" in reply["kill_switch"] and "drill" in app.killed[0]
        while (beat := orjson.loads((await beats.next_msg(timeout=10)).data))["kill_switch"] \
                is None:
            pass
        assert beat["status"] == "unhealthy" and "drill" in beat["kill_switch"]
    finally:
        await control.aclose()
        await client.close()
    assert control.kills_refused == 2 and control.kills_accepted == 1
    out = capsys.readouterr()
    assert "kill_request_refused" in out.out + out.err
    assert "wrong-token" not in out.out + out.err and "tok-123" not in out.out + out.err


async def test_without_a_control_token_every_kill_is_refused(nats_server):
    settings = NatsSettings(url=nats_server.url)
    client = await connect(settings, name="t")
    app = FakeApp()
    control = Control(client, "arch", app, settings)
    await control.start()
    try:
        answer = await client.request("ctl.arch.kill", orjson.dumps({"token": ""}), timeout=10)
        assert "control_token unset" in orjson.loads(answer.data)["error"]
        assert app.killed == []
    finally:
        await control.aclose()
        await client.close()


async def test_a_kill_on_the_bus_stops_a_real_strategy_process(nats_server, tmp_path: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    environment.update(CRYPTOPIPE_DATA_DIR=str(data_dir), CRYPTOPIPE_METRICS__ENABLED="false",
                       CRYPTOPIPE_NATS__PROCESS_NAME="mm-ctl",
                       CRYPTOPIPE_NATS__CONTROL_TOKEN="tok-123",
                       CRYPTOPIPE_NATS__HEARTBEAT_INTERVAL_S="0.2")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), "--strategy", "inventory-mm", "--mode",
         "action", "--feed", "sample", "--speed", "1", "--duration", "120", "--run-id",
         "ctl-1", "--bus-publish", nats_server.url],
        cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    client = await connect(NatsSettings(url=nats_server.url), name="operator")
    try:
        beats = await client.subscribe("hb.mm-ctl")
        async with asyncio.timeout(90):  # until the strategy trades on quotes
            while True:
                beat = orjson.loads((await beats.next_msg(timeout=90)).data)
                if beat["feeds"]["ok"] >= 1:
                    break
        assert (beat["run_id"], beat["mode"], beat["strategy"]) == (
            "ctl-1", "action", "inventory-mm")
        assert beat["kill_switch"] is None

        refused = await client.request("ctl.mm-ctl.kill", orjson.dumps(
            {"token": "wrong-token", "reason": "x"}), timeout=10)
        assert orjson.loads(refused.data)["ok"] is False
        answer = orjson.loads((await client.request("ctl.mm-ctl.kill", orjson.dumps(
            {"token": "tok-123", "reason": "drill"}), timeout=10)).data)
        assert answer["ok"] and answer["tripped"] and answer["trading"]
        assert "drill" in answer["kill_switch"]
        again = orjson.loads((await client.request("ctl.mm-ctl.kill", orjson.dumps(
            {"token": "tok-123", "reason": "twice"}), timeout=10)).data)
        assert again["ok"] and not again["tripped"] and "drill" in again["kill_switch"]
        while (beat := orjson.loads((await beats.next_msg(timeout=10)).data))[
                "kill_switch"] is None:
            pass
        assert beat["status"] == "unhealthy"
    finally:
        await client.close()
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    assert "wrong-token" not in out + err and "tok-123" not in out + err
    records = [orjson.loads(line) for path in (data_dir / "decisions").glob("*/ctl-1.jsonl")
               for line in path.read_bytes().splitlines()]
    kills = [r for r in records if r["type"] == "decision" and r["action"] == "kill"]
    assert kills and "drill" in kills[0]["reason"]
