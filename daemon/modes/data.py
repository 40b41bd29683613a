"""`--data` for the modes that read recorded files (backtest, evaluate, sweep, train)."""

from __future__ import annotations

from collections.abc import Sequence

from adapters.recordings.replay import ReplayError, ReplaySpec, expand_spec
from config.settings import ConfigError


def data_specs(texts: Sequence[str] | None, mode: str) -> list[ReplaySpec]:
    """Each `FILE[@VENUE:SYMBOL]` (a directory: its files; a glob: its matches) as replay
    specs; a missing argument, a bad spec or a missing file is a ConfigError (exit 2)."""
    if not texts:
        raise ConfigError(f"--mode {mode} needs recorded files: --data FILE|DIR|GLOB [...]")
    try:
        specs = [spec for text in texts for spec in expand_spec(str(text))]
    except ReplayError as exc:
        raise ConfigError(str(exc)) from None
    missing = [str(spec.path) for spec in specs if not spec.path.is_file()]
    if missing:
        raise ConfigError(f"--data: no such file: {', '.join(missing)}")
    return specs
