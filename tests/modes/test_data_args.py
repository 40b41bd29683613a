"""`--data` takes directories and globs (issue 18, item 2): a directory is its files, a
glob its matches, in name order, a label applies to each; nothing there is one clear line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adapters.recordings.replay import SAMPLE_FILES, ReplaySpec
from config.settings import ConfigError
from daemon.cli import main
from daemon.modes.data import data_specs


@pytest.fixture
def day_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "days"
    directory.mkdir()
    for sample in SAMPLE_FILES:
        shutil.copy(sample, directory / sample.name)
    (directory / ".partial").write_bytes(b"")  # hidden files are not data
    return directory


def test_a_directory_is_its_files_and_a_glob_its_matches_in_name_order(day_dir: Path) -> None:
    names = sorted(sample.name for sample in SAMPLE_FILES)
    assert [spec.path.name for spec in data_specs([str(day_dir)], "backtest")] == names
    globbed = data_specs([str(day_dir / "*")], "backtest")
    assert [spec.path.name for spec in globbed] == names
    spot = next(sample.name for sample in SAMPLE_FILES if "spot" in sample.name)
    assert data_specs([str(day_dir / "*_spot_*")], "backtest") == [ReplaySpec(day_dir / spot)]
    labelled = data_specs([f"{day_dir}@bybit_spot:BTC/USDT"], "backtest")
    assert {(spec.venue, spec.symbol) for spec in labelled} == {("bybit_spot", "BTC/USDT")}


def test_nothing_there_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no files there"):
        data_specs([str(tmp_path / "empty")], "backtest")
    with pytest.raises(ConfigError, match="no files there"):
        data_specs([str(tmp_path / "*.gz")], "sweep")
    with pytest.raises(ConfigError, match="no such file"):
        data_specs([str(tmp_path / "missing.gz")], "train")


def test_a_backtest_over_a_directory_is_the_backtest_over_its_files(
        day_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CRYPTOPIPE_DATA_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("CRYPTOPIPE_METRICS__ENABLED", "false")
    files = [str(day_dir / sample.name) for sample in sorted(SAMPLE_FILES)]
    logs = {}
    for run_id, data in (("files", files), ("dir", [str(day_dir)])):
        assert main(["--strategy", "inventory-mm", "--mode", "backtest", "--run-id", run_id,
                     "--format", "json", "--data", *data]) == 0
        logs[run_id] = [line.replace(b'"dir"', b'"files"') for path in
                        sorted((tmp_path / "out" / "decisions").glob(f"*/{run_id}.jsonl"))
                        for line in path.read_bytes().splitlines()]
    capsys.readouterr()
    assert logs["dir"] and logs["dir"] == logs["files"]
