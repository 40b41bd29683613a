"""The layers contract in pyproject.toml holds, and a module that breaks it fails lint-imports.

lint-imports runs on a copy of the packages, so the breaking import never touches the tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("daemon", "adapters", "strategies", "config")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.is_file(),
                                reason="import-linter is not installed (pip install -e '.[dev]')")


def copy_tree(root: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__", "samples"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_the_layers(tmp_path: Path) -> None:
    done = lint_imports(copy_tree(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("module", "forbidden"), [
    ("daemon/core/model.py", "daemon.market.bus"),   # the core imports nothing of ours
    ("strategies/base.py", "daemon.trading.paper"),  # strategies never see an executor
    ("config/settings.py", "strategies.arbitrage"),   # config sits below the strategies
])
def test_an_import_of_a_higher_layer_fails(tmp_path: Path, module: str, forbidden: str) -> None:
    root = copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\nimport {forbidden}  # breaks the layers\n")
    done = lint_imports(root)
    assert done.returncode == 1
    importer = module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {forbidden}" in done.stdout
