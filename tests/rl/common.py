"""Settings and files the RL tests share: the 2024-07-18/19 ETH/USDT USD-M recordings and
the rl-internalize desk on them with the quoted client flow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from config.settings import Settings, load_settings

TRAIN_FILE = "binance_usdm_ethusdt_20240718.gz"
OTHER_FILE = "binance_usdm_ethusdt_20240719.gz"
VENUE, SYMBOL = "binance_usdm", "ETH/USDT:USDT"
MARKET = {"tick": 0.01, "lot": 0.001}


def rl_settings(data_dir: Path, model: Path | None = None, *, rl: dict[str, Any] | None = None,
                **internalize: Any) -> Settings:
    """rl-internalize on the ETH perp, quoted flow, a 20 ETH limit (as
    tests/strategies/test_rl_internalize.py runs it)."""
    return load_settings({
        "data_dir": data_dir,
        "venues": {VENUE: {"enabled": True, "balances": {"USDT": 1_000_000.0},
                           "markets": {SYMBOL: MARKET}}},
        "strategies": {"internalize": {"venue": VENUE, "symbol": SYMBOL, "source": "quoted",
                                       "max_inventory": 20.0, **internalize},
                       "rl_internalize": {"model": model, **(rl or {})}},
    }, env_file=None)


def log_records(data_dir: Path, run_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for path in sorted(data_dir.glob(f"decisions/*/{run_id}.jsonl"))
            for line in path.read_bytes().splitlines()]


def log_bytes(data_dir: Path, run_id: str) -> dict[str, bytes]:
    root = data_dir / "decisions"
    return {str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.glob(f"*/{run_id}.jsonl"))}
