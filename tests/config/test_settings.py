"""Settings: every precedence level wins over the next; every bad value is one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import ConfigError, Settings, load_settings, parse_duration
from daemon.cli import main

REPO = Path(__file__).resolve().parents[2]
URL = "venues.binance_spot.ws_url"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CRYPTOPIPE_ variable or .env of the developer's leaks into a test."""
    for name in list(os.environ):
        if name.startswith("CRYPTOPIPE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def ws_url(settings: Settings) -> str:
    return settings.venues["binance_spot"].ws_url


def write_toml(path: Path, url: str) -> Path:
    path.write_text(f'[venues.binance_spot]\nws_url = "{url}"\n')
    return path


def test_defaults_are_the_real_venues() -> None:
    settings = load_settings()
    assert ws_url(settings) == "wss://stream.binance.com:9443/ws"
    assert settings.venues["binance_usdm"].ws_url == "wss://fstream.binance.com/public/ws"
    assert settings.venues["bybit_spot"].ws_url == "wss://stream.bybit.com/v5/public/spot"
    assert settings.venues["bybit_linear"].ws_url == "wss://stream.bybit.com/v5/public/linear"
    assert settings.venues["binance_usdm"].rest_url == "https://fapi.binance.com"
    assert settings.venues["bybit_linear"].rest_url == "https://api.bybit.com"
    assert settings.execution.mode == "paper"
    assert settings.retention == 86_400.0


def test_each_precedence_level_wins_over_the_next(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    toml = write_toml(tmp_path / "mine.toml", "ws://toml")
    assert ws_url(load_settings(config_file=toml)) == "ws://toml"  # TOML > default.toml

    (tmp_path / ".env").write_text("CRYPTOPIPE_VENUES__BINANCE_SPOT__WS_URL=ws://dotenv\n")
    assert ws_url(load_settings(config_file=toml)) == "ws://dotenv"  # .env > TOML

    monkeypatch.setenv("CRYPTOPIPE_VENUES__BINANCE_SPOT__WS_URL", "ws://127.0.0.1:8765/ws")
    assert ws_url(load_settings(config_file=toml)) == "ws://127.0.0.1:8765/ws"  # env > .env

    cli = {"venues": {"binance_spot": {"ws_url": "ws://cli"}}}
    assert ws_url(load_settings(cli, config_file=toml)) == "ws://cli"  # CLI > env


def test_partial_venue_override_keeps_the_other_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYPTOPIPE_VENUES__BINANCE_USDM__WS_URL", "ws://127.0.0.1:9/ws")
    usdm = load_settings().venues["binance_usdm"]
    assert usdm.ws_url == "ws://127.0.0.1:9/ws"
    assert usdm.rest_url == "https://fapi.binance.com"
    assert usdm.market_type == "linear"


def test_cli_venues_and_symbols_choose_what_runs() -> None:
    from daemon.cli import build_parser, settings_overrides

    args = build_parser().parse_args(
        ["--venues", "binance_spot,bybit_linear", "--symbols", "BTC/USDT,ETH/USDT:USDT"]
    )
    settings = load_settings(settings_overrides(args))
    assert settings.enabled_venues() == ["binance_spot", "bybit_linear"]
    assert settings.symbols_for("binance_spot") == ["BTC/USDT"]
    assert settings.symbols_for("bybit_linear") == ["ETH/USDT:USDT"]


def test_secret_keys_are_secret_and_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYPTOPIPE_VENUES__BINANCE_SPOT__API_KEY", "AKIA-very-secret")
    settings = load_settings()
    key = settings.venues["binance_spot"].api_key
    assert key is not None and key.get_secret_value() == "AKIA-very-secret"
    assert "AKIA-very-secret" not in repr(settings) and "AKIA-very-secret" not in str(settings)


def test_secret_files_provide_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "CRYPTOPIPE_VENUES__BYBIT_SPOT__API_SECRET").write_text("s3cr3t-from-file\n")
    monkeypatch.setenv("CRYPTOPIPE_SECRETS_DIR", str(secrets))
    bybit = load_settings().venues["bybit_spot"]
    assert bybit.api_secret is not None
    assert bybit.api_secret.get_secret_value() == "s3cr3t-from-file"
    assert bybit.rest_url == "https://api.bybit.com"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CRYPTOPIPE_VENUES__NOSUCHVENUE__ENABLED": "true"}, "unknown venue 'nosuchvenue'"),
        ({"CRYPTOPIPE_VENUES__BINANCE_SPOT__TAKER_FEE_BPS": "-1"}, "taker_fee_bps"),
        ({"CRYPTOPIPE_RETENTION": "abc"}, "retention: invalid duration 'abc'"),
        ({"CRYPTOPIPE_SYMBOLS": '["BTCUSDT"]'}, "not a ccxt unified symbol"),
        ({"CRYPTOPIPE_EXECUTION__MODE": "yolo"}, "execution.mode"),
        ({"CRYPTOPIPE_NO_SUCH_SETTING": "1"}, None),  # unknown env names are ignored
    ],
)
def test_bad_values_exit_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict, expected: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if expected is None:
        load_settings()
        return
    with pytest.raises(ConfigError, match=expected):
        load_settings()
    assert main(["--mode", "watch", "--feed", "sample", "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err


def test_bad_cli_values_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--venues", "binance_spot,nowhere"]) == 2
    assert "unknown venue 'nowhere'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["--duration", "-3"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_malformed_toml_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[venues.binance_spot\nws_url = 'x'\n")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "malformed TOML" in err and str(bad) in err and err.count("\n") == 1
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_bad_value_from_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    env["CRYPTOPIPE_RETENTION"] = "abc"
    done = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--mode", "watch", "--feed", "sample"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("cryptopipe: invalid setting retention")
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("6m", 360),
                                                ("24h", 86400), ("1d", 86400), (2.5, 2.5)])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds
