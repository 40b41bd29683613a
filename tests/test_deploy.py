"""deploy/: the compose file, Prometheus's targets and the Grafana dashboard, checked without
a Docker engine (and with `docker compose config` where one is usable)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from config.settings import NatsSettings, Settings
from daemon.app import App
from daemon.bridge.archive import Archiver
from daemon.bridge.control import Control
from daemon.bridge.dlog_ship import DecisionLogShipper
from daemon.cli import MODES, build_parser
from daemon.ops.metrics import build_registry
from daemon.postmortem.writer import DecisionLogWriter

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
IMAGE = "cryptopipe:local"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "cryptopipe.json").read_text())


def _ours(compose: dict) -> dict[str, dict]:
    return {name: service for name, service in compose["services"].items()
            if service.get("image") == IMAGE}


def test_every_service_has_a_health_check(compose):
    for name, service in compose["services"].items():
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name}: no health check"


def test_only_grafana_is_published_and_only_on_loopback(compose):
    published = {name: service["ports"] for name, service in compose["services"].items()
                 if service.get("ports")}
    assert list(published) == ["grafana"]
    for port in published["grafana"]:
        assert str(port).startswith("127.0.0.1:"), port
    assert "network_mode" not in compose["services"]["nats"]


def test_the_services_the_issue_asks_for(compose):
    services = compose["services"]
    assert services["nats"]["image"].startswith("nats:")
    assert "nats-data:/data" in services["nats"]["volumes"]
    conf = (DEPLOY / "nats" / "nats.conf").read_text()
    assert "jetstream" in conf and "token: $NATS_TOKEN" in conf
    ours = _ours(compose)
    commands = {name: service["command"] for name, service in ours.items()}
    feeds = [name for name, command in commands.items() if _flag(command, "--mode") == "feed"]
    assert len(feeds) >= 2
    assert {_flag(commands[name], "--venues") for name in feeds} >= {"binance_spot",
                                                                     "bybit_spot"}
    for name in feeds:
        assert _flag(commands[name], "--bus-publish") == "nats://nats:4222"
    strategies = [name for name, command in commands.items() if "--strategy" in command]
    assert strategies and all(_flag(commands[name], "--feed") == "nats://nats:4222"
                              for name in strategies)
    assert any(_flag(command, "--mode") == "archive" for command in commands.values())
    for name, service in ours.items():
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert (DEPLOY / service["build"]["context"] / "Dockerfile").is_file()
        assert service["environment"]["CRYPTOPIPE_METRICS__HOST"] == "0.0.0.0", name
        assert "grafana" in compose["services"] and "prometheus" in compose["services"]


def test_commands_are_ones_the_daemon_takes(compose):
    parser = build_parser()
    for name, service in _ours(compose).items():
        command = service["command"]
        if _flag(command, "--mode") not in MODES:
            pytest.skip(f"{name}: --mode {_flag(command, '--mode')} is built on another "
                        "branch of issue 16 (market data over NATS)")
        parser.parse_args(command)


def test_secrets_are_files_never_environment_values(compose):
    for name, service in _ours(compose).items():
        environment = service.get("environment", {})
        assert not {"CRYPTOPIPE_NATS__TOKEN", "CRYPTOPIPE_NATS__CONTROL_TOKEN",
                    "CRYPTOPIPE_NATS__PASSWORD"} & set(environment), name
        targets = {secret["target"] for secret in service["secrets"]}
        assert "CRYPTOPIPE_NATS__TOKEN" in targets, name
    assert "nats_token" in compose["services"]["nats"]["secrets"]


def test_prometheus_scrapes_every_service_of_ours(compose):
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {target for job in config["scrape_configs"]
               for static in job["static_configs"] for target in static["targets"]}
    for name in _ours(compose):
        assert f"{name}:9108" in targets, name


def test_mounted_files_exist(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"


def test_the_dashboard_has_grafanas_schema_fields(dashboard):
    for key, kind in (("title", str), ("uid", str), ("schemaVersion", int), ("panels", list),
                      ("time", dict), ("templating", dict)):
        assert isinstance(dashboard.get(key), kind), key
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uid = datasources["datasources"][0]["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert isinstance(panel["type"], str) and isinstance(panel["title"], str)
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] >= 0 and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["refId"] and target["expr"]
            assert target["datasource"]["uid"] == uid
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("frames", "staleness", "conflation", "decisions", "orders", "fills", "p&l",
                  "latency"):
        assert topic in titles, topic


def test_every_metric_the_dashboard_queries_is_exported(dashboard, tmp_path):
    exported = _exported_series(tmp_path)
    queried = {name for panel in dashboard["panels"] for target in panel.get("targets", [])
               for name in re.findall(r"\bcryptopipe_[a-z0-9_]+", target["expr"])}
    assert queried
    assert sorted(queried - exported) == []


def test_docker_compose_accepts_the_file():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client here")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"docker compose is not usable here: {probe.stderr.strip()[:120]}")
    done = subprocess.run([docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config",
                           "--quiet"], capture_output=True, text=True, cwd=DEPLOY,
                          env={"NATS_TOKEN": "t", "CONTROL_TOKEN": "c",
                               "GRAFANA_ADMIN_PASSWORD": "g", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr


def _flag(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def _exported_series(tmp_path: Path) -> set[str]:
    """Every series name daemon/ops/metrics.py's registry can export, for a process with
    every part running (decision log, shipper, archiver, control)."""
    settings = Settings(data_dir=tmp_path)
    app = App(settings=settings, args=argparse.Namespace(mode="action", feed="live"),
              run_id="r")
    app.decision_log = DecisionLogWriter(tmp_path, "r", synchronous=True)
    no_server = SimpleNamespace(jetstream=lambda: None)
    nats = NatsSettings()
    # Joined (the collector shows nothing otherwise), without a server to talk to.
    app.bridge.client = SimpleNamespace(is_connected=True, stats={"reconnects": 0})
    app.bridge.add_counters(DecisionLogShipper(no_server, app.decision_log, nats))
    app.bridge.add_counters(Archiver(no_server, nats, tmp_path))
    app.bridge.add_counters(Control(no_server, "p", app, nats))
    names: set[str] = set()
    for family in build_registry(app).collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(
            family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names
