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
        ({"CRYPTOPIPE_RETENTION": "abc"}, "retention: invalid duration"),
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


# --- issue 13 item 7: bad settings exit 2 with one line naming the setting ------------------


def _exit_2_naming(capsys: pytest.CaptureFixture[str], setting: str) -> str:
    """main() refuses the settings: status 2, one stderr line that names `setting`."""
    assert main(["--mode", "watch", "--feed", "sample", "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("cryptopipe: invalid setting") and setting in err, err
    return err


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("BTC/USDT", ["BTC/USDT"]),
        ("BTC/USDT, ETH/USDT:USDT", ["BTC/USDT", "ETH/USDT:USDT"]),
        ('["BTC/USDT","ETH/USDT"]', ["BTC/USDT", "ETH/USDT"]),
    ],
)
def test_env_lists_take_commas_as_well_as_json(
    monkeypatch: pytest.MonkeyPatch, env: str, expected: list[str]
) -> None:
    monkeypatch.setenv("CRYPTOPIPE_SYMBOLS", env)
    assert load_settings().symbols == expected


def test_nested_env_lists_take_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYPTOPIPE_EXECUTION__WITHDRAWAL_WHITELIST", "addr1,addr2")
    assert load_settings().execution.withdrawal_whitelist == ["addr1", "addr2"]


@pytest.mark.parametrize("name", ["CRYPTOPIPE_RISK__MAX_POSITION", "CRYPTOPIPE_VENUES"])
def test_malformed_json_in_a_map_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    monkeypatch.setenv(name, '{"BTC": 0.5')
    setting = name.removeprefix("CRYPTOPIPE_").replace("__", ".").lower()
    with pytest.raises(ConfigError, match=setting):
        load_settings()
    err = _exit_2_naming(capsys, setting)
    assert name in err and "JSON" in err


@pytest.mark.parametrize(
    ("name", "value", "setting"),
    [
        ("CRYPTOPIPE_POSTMORTEM__FLUSH_INTERVAL_MS", "inf", "postmortem.flush_interval_ms"),
        ("CRYPTOPIPE_POSTMORTEM__FLUSH_INTERVAL_MS", "nan", "postmortem.flush_interval_ms"),
        ("CRYPTOPIPE_RISK__DAILY_LOSS_LIMIT", "inf", "risk.daily_loss_limit"),
        ("CRYPTOPIPE_RISK__MAX_ORDER_NOTIONAL", "inf", "risk.max_order_notional"),
        ("CRYPTOPIPE_RISK__PRICE_COLLAR_BPS", "nan", "risk.price_collar_bps"),
        ("CRYPTOPIPE_RISK__MAX_POSITION", '{"BTC": 1e999}', "risk.max_position.BTC"),
        ("CRYPTOPIPE_STRATEGIES__INTERNALIZE__MAX_INVENTORY", "inf",
         "strategies.internalize.max_inventory"),
        ("CRYPTOPIPE_STRATEGIES__INVENTORY_MM__K", "inf", "strategies.inventory_mm.k"),
        ("CRYPTOPIPE_EXECUTION__SUBMIT_LATENCY_MS", "inf", "execution.submit_latency_ms"),
        ("CRYPTOPIPE_BACKTEST__CACHE_MAX_MB", "nan", "backtest.cache_max_mb"),
        ("CRYPTOPIPE_VENUES__BINANCE_SPOT__MAX_ORDERS_PER_S", "inf",
         "venues.binance_spot.max_orders_per_s"),
    ],
)
def test_non_finite_numbers_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    name: str, value: str, setting: str,
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        load_settings()
    _exit_2_naming(capsys, setting)


@pytest.mark.parametrize(
    ("toml", "setting"),
    [
        ("retention = inf\n", "retention"),
        ("retention = nan\n", "retention"),
        ("[risk]\nstale_quote_s = inf\n", "risk.stale_quote_s"),
        ("[venues.binance_spot]\nstale_after_s = inf\n", "venues.binance_spot.stale_after_s"),
        ("[ring]\nsnapshot_interval_s = nan\n", "ring.snapshot_interval_s"),
        ("[execution.transfer_delay_s]\nBTC = inf\n", "execution.transfer_delay_s.BTC"),
    ],
)
def test_non_finite_numbers_from_toml_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, setting: str
) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        load_settings(config_file=path)


def test_every_float_setting_refuses_inf_and_nan() -> None:
    """One mechanism for every float field, so a new one cannot forget it."""
    from pydantic import BaseModel

    from config import reference

    models: list[type[BaseModel]] = [Settings]
    seen: set[type] = set()
    while models:
        model = models.pop()
        if model in seen:
            continue
        seen.add(model)
        assert model.model_config.get("allow_inf_nan") is False, model.__name__
        for field in model.model_fields.values():
            nested = reference._nested_model(field.annotation) or reference._venue_mapping(
                field.annotation)
            if nested is not None:
                models.append(nested)
    assert len(seen) > 10


def test_non_utf8_toml_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[venues.binance_spot]\nws_url = "ws://caf\xe9"\n')
    assert main(["--config", str(bad), "--mode", "watch", "--feed", "sample"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "UTF-8" in err


def test_non_utf8_secret_file_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "CRYPTOPIPE_VENUES__BYBIT_SPOT__API_SECRET").write_bytes(b"s3cr\xff\xfet\n")
    monkeypatch.setenv("CRYPTOPIPE_SECRETS_DIR", str(secrets))
    with pytest.raises(ConfigError, match=r"venues\.bybit_spot\.api_secret"):
        load_settings()
    err = _exit_2_naming(capsys, "venues.bybit_spot.api_secret")
    assert "s3cr" not in err and "UTF-8" in err


def test_non_utf8_dotenv_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".env").write_bytes(b"CRYPTOPIPE_RETENTION=\xff\xfe\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_settings()


def test_data_dir_that_is_a_file_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    monkeypatch.setenv("CRYPTOPIPE_DATA_DIR", str(a_file))
    with pytest.raises(ConfigError, match="data_dir"):
        load_settings()
    _exit_2_naming(capsys, "data_dir")
    monkeypatch.setenv("CRYPTOPIPE_DATA_DIR", str(a_file / "below"))  # cannot be created
    with pytest.raises(ConfigError, match="data_dir"):
        load_settings()
    _exit_2_naming(capsys, "data_dir")


def test_data_dir_that_does_not_exist_yet_is_fine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CRYPTOPIPE_DATA_DIR", str(tmp_path / "new" / "deeper"))
    assert load_settings().data_dir == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created, by loading the settings


@pytest.mark.parametrize(
    "name",
    [
        "CRYPTOPIPE_RETENTION",
        "CRYPTOPIPE_RISK__DAILY_LOSS_LIMIT",
        "CRYPTOPIPE_VENUES__BINANCE_SPOT__MAX_ORDERS_PER_S",
        "CRYPTOPIPE_SYMBOLS",
        "CRYPTOPIPE_EXECUTION__MODE",
        "CRYPTOPIPE_METRICS__PORT",
    ],
)
def test_a_secret_typed_into_a_plain_field_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    secret = "sk-live-9f8e7d6c5b4a"
    monkeypatch.setenv(name, secret)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert secret not in str(refused.value)
    setting = name.removeprefix("CRYPTOPIPE_").replace("__", ".").lower()
    err = _exit_2_naming(capsys, setting)
    assert secret not in err and "sk-live" not in err


def _run_main(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    full.update(env)
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=120)


def test_readme_docker_example_symbols_runs_and_exits_0(tmp_path: Path) -> None:
    """The README's `CRYPTOPIPE_SYMBOLS=BTC/USDT` (issue 13's "must show"), in a real process."""
    done = _run_main({"CRYPTOPIPE_SYMBOLS": "BTC/USDT", "CRYPTOPIPE_METRICS__PORT": "0"},
                     "--mode", "watch", "--feed", "sample", "--duration", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"CRYPTOPIPE_RISK__MAX_POSITION": "{not json"}, "risk.max_position"),
        ({"CRYPTOPIPE_POSTMORTEM__FLUSH_INTERVAL_MS": "inf"}, "postmortem.flush_interval_ms"),
    ],
)
def test_bad_settings_in_a_real_process_exit_2_with_one_line(
    tmp_path: Path, env: dict[str, str], setting: str
) -> None:
    done = _run_main(env, "--mode", "watch", "--feed", "sample", "--duration", "1",
                     cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and setting in done.stderr
    assert "Traceback" not in done.stderr
