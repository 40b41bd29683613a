"""Decoded events shared by a test module: each set of files is decoded once (per chunk
size, which tests may patch), as an environment loads them once for every episode, and its
cache is copied into each run's data directory, so a run there reads it as a rerun would."""

from __future__ import annotations

import shutil
from pathlib import Path

import daemon.backtest.cache as cache_module
from adapters.recordings.replay import ReplaySpec
from daemon.backtest.cache import BacktestData, load


class Caches:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[tuple[object, ...], tuple[Path, BacktestData]] = {}

    async def load(self, specs: list[ReplaySpec], *data_dirs: Path) -> BacktestData:
        """The files' events, their cache copied into each of `data_dirs`."""
        key = (*map(str, specs), cache_module.CHUNK_ROWS)
        if key not in self.built:
            home = self.root / str(len(self.built))
            data, _ = await load(specs, home)
            assert data is not None
            self.built[key] = (home, data)
        home, data = self.built[key]
        for data_dir in data_dirs:
            shutil.copytree(home / "cache", data_dir / "cache")
        return data

